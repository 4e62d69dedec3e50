// Package lock serialises the work of haagent commands that changes the machine: a manual
// `haagent run --once` while the service boots must not start a second fetch or installer. It
// is held while that work runs, not for a process's life: the service holds it during the boot
// steps and around each later action that writes (a periodic key backup), so an on-demand
// `haagent backup keys` works while the service watches the frontend.
package lock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrHeld means another haagent holds the lock.
var ErrHeld = errors.New("another haagent is running")

// Lock is a held lock; Release frees it (the kernel frees it too when the process dies).
type Lock struct{ f *os.File }

// Acquire takes the lock at path (layout.LockFile under --root: /run is per boot, so a lock
// never outlives a reboot) without waiting.
func Acquire(path string) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating lock directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b[:n]))
			return nil, fmt.Errorf("%w (pid %s holds %s); wait for it, or stop it with systemctl stop haagent", ErrHeld, pid, path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Lock{f: f}, nil
}

// Release frees the lock; a second call does nothing.
func (l *Lock) Release() {
	if l != nil && l.f != nil {
		unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}

package atomicfile

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/haagent/haagent/internal/layout"
	"golang.org/x/sys/unix"
)

// GroupAdd creates a system group; the group's name is appended, and under --root
// "--prefix ROOT" before it. shadow's groupadd (4.13 on Debian bookworm) has --prefix, which
// writes ROOT/etc/group without a chroot, so the root needs no tools of its own; --root would
// chroot and run nothing there. Docker's packages create their group with
// `addgroup --system docker`, which accepts a group that already exists.
var GroupAdd = []string{"groupadd", "--system"}

// UnknownNameError is a user or group name the root's database does not hold.
type UnknownNameError struct {
	Kind string // "user" or "group"
	Name string
	DB   string // the file searched, e.g. /etc/group under the root
}

func (e *UnknownNameError) Error() string {
	return fmt.Sprintf("%s %q does not exist in %s", e.Kind, e.Name, e.DB)
}

// LookupGroup returns the gid of the group name in ROOT/etc/group. Names are looked up in the
// root's own file, never through the host's NSS: under --root the host's groups are not the
// machine's. A missing name is an *UnknownNameError.
func LookupGroup(root, name string) (int, error) {
	return lookup(filepath.Join(root, layout.GroupFile), "group", name, 2)
}

// LookupUser returns the uid of the user name in ROOT/etc/passwd.
func LookupUser(root, name string) (int, error) {
	return lookup(filepath.Join(root, layout.PasswdFile), "user", name, 2)
}

func lookup(db, kind, name string, field int) (int, error) {
	data, err := os.ReadFile(db)
	if errors.Is(err, fs.ErrNotExist) {
		return -1, &UnknownNameError{Kind: kind, Name: name, DB: db}
	}
	if err != nil {
		return -1, fmt.Errorf("reading %s to look up %s %q: %w", db, kind, name, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		parts := strings.Split(sc.Text(), ":")
		if len(parts) <= field || parts[0] != name {
			continue
		}
		id, err := strconv.Atoi(parts[field])
		if err != nil || id < 0 {
			return -1, fmt.Errorf("%s %q in %s has no valid id (%q)", kind, name, db, parts[field])
		}
		return id, nil
	}
	return -1, &UnknownNameError{Kind: kind, Name: name, DB: db}
}

// EnsureSystemGroup returns the gid of the group name in ROOT/etc/group, creating it as a
// system group first when it does not exist (so a file can be owned by the docker group from
// its first byte, before Docker is installed). created says whether it was made now. Under a
// root other than /, only ROOT/etc/group (and ROOT/etc/gshadow when it exists) change.
func EnsureSystemGroup(ctx context.Context, root, name string) (gid int, created bool, err error) {
	gid, err = LookupGroup(root, name)
	var unknown *UnknownNameError
	if !errors.As(err, &unknown) {
		return gid, false, err
	}
	argv := append([]string(nil), GroupAdd...)
	if filepath.Clean(root) != "/" {
		// groupadd --prefix needs ROOT/etc; a fresh temp root may not have it yet.
		if err := MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
			return -1, false, err
		}
		argv = append(argv, "--prefix", root)
	}
	argv = append(argv, name)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return -1, false, &CommandError{Argv: argv, Err: err, Stderr: tail(stderr.String())}
	}
	gid, err = LookupGroup(root, name)
	if err != nil {
		return -1, false, fmt.Errorf("after %s: %w", strings.Join(argv, " "), err)
	}
	return gid, true, nil
}

// CommandError is an external command that failed: its argv, exit status and the end of its
// stderr.
type CommandError struct {
	Argv   []string
	Err    error
	Stderr string
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("running %s: %v", strings.Join(e.Argv, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 500 {
		s = "..." + s[len(s)-500:]
	}
	return s
}

// ErrSymlink means a symbolic link stands where haagent expected its own file or directory.
// haagent never follows one there: a link planted at /etc/license.rli must not make a chmod
// land on /etc/shadow.
var ErrSymlink = errors.New("a symbolic link is in the place of the file; haagent does not follow it")

// Converge gives the file (or, with dir, the directory) at path exactly mode's permission
// bits and the owner uid:gid (-1 leaves that id as it is), without following a symlink at
// path: the inode is opened with O_NOFOLLOW and changed through that descriptor, so nothing
// can be swapped in between the check and the change. It reports whether anything changed.
func Converge(path string, mode os.FileMode, uid, gid int, dir bool) (bool, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
	if dir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return false, fmt.Errorf("setting mode and owner of %s: %w", path, ErrSymlink)
		}
		if errors.Is(err, unix.ENOTDIR) {
			if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
				return false, fmt.Errorf("setting mode and owner of %s: %w", path, ErrSymlink)
			}
		}
		return false, fmt.Errorf("opening %s to set its mode and owner: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("reading the mode of %s: %w", path, err)
	}
	want := uint32(unix.S_IFREG)
	if dir {
		want = unix.S_IFDIR
	}
	if st.Mode&unix.S_IFMT != want {
		return false, fmt.Errorf("setting mode and owner of %s: it is not a %s; move it aside and run haagent again", path, map[bool]string{true: "directory", false: "regular file"}[dir])
	}
	changed := false
	perm := uint32(mode.Perm())
	if st.Mode&0o7777 != perm {
		if err := unix.Fchmod(fd, perm); err != nil {
			return false, fmt.Errorf("setting mode %#o on %s: %w", perm, path, err)
		}
		changed = true
	}
	if (uid >= 0 && st.Uid != uint32(uid)) || (gid >= 0 && st.Gid != uint32(gid)) {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return false, fmt.Errorf("setting owner %d:%d on %s: %w", uid, gid, path, err)
		}
		changed = true
	}
	return changed, nil
}

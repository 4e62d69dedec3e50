package bootstrap

import (
	"path/filepath"
	"testing"

	"github.com/haagent/haagent/internal/lock"
)

// A keys scan (or the guard's keysNotInS3) that starts while the boot steps hold the run lock
// is one more holder: when the boot then ends, the lock stays until the scan's write returns,
// and `haagent backup keys` cannot run beside it.
func TestAScanStartedDuringTheStepsKeepsTheLockUntilItsWriteEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	boot, err := lock.Acquire(path) // the service's lock for its boot steps
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{}
	e.LockPath = path
	releaseBoot := e.AdoptLock(boot)
	release, err := e.lockForWrite() // the periodic scan starts during backup-keys/address-check
	if err != nil {
		t.Fatal(err)
	}
	// The boot's last step ends while the scan still uploads.
	releaseBoot()
	if other, err := lock.Acquire(path); err == nil { // haagent backup keys
		other.Release()
		t.Fatal("an on-demand command took the run lock while the service's keys scan was still writing")
	}
	release()
	other, err := lock.Acquire(path)
	if err != nil {
		t.Fatalf("the run lock is still held after the boot and the scan both returned: %v", err)
	}
	other.Release()
	// With no holder left, the next write takes the flock itself.
	release, err = e.lockForWrite()
	if err != nil {
		t.Fatal(err)
	}
	if other, err := lock.Acquire(path); err == nil {
		other.Release()
		t.Fatal("a monitor write after the boot did not take the run lock")
	}
	release()
}

// The backup-keys step and a keys scan of the same process never compare and upload at once.
func TestTheBackupStepAndAScanOfOneProcessNeverOverlap(t *testing.T) {
	e := &Env{}
	release, err := e.lockForWrite() // a scan writes
	if err != nil {
		t.Fatal(err)
	}
	if e.keysMu.TryLock() {
		t.Fatal("the backup-keys step could take the keys while a scan writes them")
	}
	release()
	if !e.keysMu.TryLock() {
		t.Fatal("the keys stay taken after the scan returned")
	}
	e.keysMu.Unlock()
}

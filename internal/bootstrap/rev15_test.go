package bootstrap

import (
	"path/filepath"
	"testing"

	"github.com/haagent/haagent/internal/lock"
)

// rev15: a keys scan (or a guard decision's keysNotInS3) that starts while the boot steps hold
// the run lock takes nothing (HoldsLock); when the boot then ends (run.go: HoldsLock=false,
// release()) the scan goes on writing to the bucket with no lock held, and `haagent backup keys`
// takes the lock and runs beside it.
func TestRev15ScanStartedDuringTheStepsLosesTheLockWhenTheBootEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	boot, err := lock.Acquire(path) // the service's lock for its boot steps
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{}
	e.LockPath = path
	e.HoldsLock.Store(true)
	release, err := e.lockForWrite() // the periodic scan starts during backup-keys/address-check
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// The boot's last step ends while the scan still uploads.
	e.HoldsLock.Store(false)
	boot.Release()
	other, err := lock.Acquire(path) // haagent backup keys
	if err == nil {
		other.Release()
		t.Fatal("an on-demand command took the run lock while the service's keys scan was still writing")
	}
}

// Package bootstrap is the boot of a Services machine: an ordered table of steps (steps.go),
// one runner that executes it (runner.go), and the monitors that live on after the steps
// (monitors.go, asg.go). docs/ARCHITECTURE.md says what runs when and who owns what.
package bootstrap

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/lock"
	"github.com/haagent/haagent/internal/state"
	"github.com/haagent/haagent/internal/supervisor"
	"github.com/haagent/haagent/internal/watch"
)

// Inputs is what the command gives the boot. It is set before the runner starts and never
// written afterwards.
type Inputs struct {
	// Root is where every machine path lives (--root); every path goes through Path.
	Root string
	Log  *slog.Logger
	// ConfigPath is the config file's path; FileConfig its contents, nil when there is no file
	// (the config step then takes the config from the user-data the imds step read).
	ConfigPath  string
	FileConfig  *config.Config
	IMDSTimeout time.Duration
	// Reinstall forces the Replicated installer to run again (haagent run --reinstall).
	Reinstall bool
	// LockPath is the run lock (layout.LockFile under --root).
	LockPath string
}

// State is what the steps have produced so far. Only the table's wiring (steps.go) writes it,
// on the runner's goroutine between two steps; a monitor reads what was set before it started.
type State struct {
	IMDS     *imds.Client
	Instance imds.Info
	UserData []byte
	Config   *config.Config
	Bucket   *bucket.Bucket
	// Bundle is the fetched files, staged until validate-files commits them; nil offline (a
	// reboot that goes on with the files in place) and after a failed validation.
	Bundle  *fetch.Bundle
	Watcher *watch.Watcher
}

// Env is one boot: the command's Inputs, the steps' State, and what belongs to the runner (the
// run record, the findings, the monitors). Steps never see it: each gets its own input from
// the table's wiring and returns its output and findings.
type Env struct {
	Inputs
	State

	// Record and Run are the run record and this run in it: the runner writes them, the table's
	// wiring copies a step's output into them, and monitors' findings reach them through the
	// supervisor (its Changed saves the record).
	Record *state.Record
	Run    *state.Run

	// runLock is the run lock as this process holds it: the boot steps are one holder
	// (AdoptLock), each monitor write another (lockForWrite); the flock is freed only when the
	// last of them returns, so `haagent backup keys` never runs beside a scan still uploading.
	runLock runLock
	// keysMu keeps the keys' writers in this process apart (the backup-keys step, the
	// periodic scan, the guard's backup before a replacement): holding the run lock together
	// does not stop them comparing and uploading the same keys at once.
	keysMu sync.Mutex

	// ledger is the runner's: where the record goes, its lock, and the steps' findings.
	ledger ledger

	// runCtx is the context of the whole run (set by the runner): monitors run under it, never
	// under a step's own context, which ends with the step (or its timeout).
	runCtx context.Context
	// sup runs what lives beside and after the steps (supervise.go), made on first use.
	sup     *supervisor.Supervisor
	supOnce sync.Once
	// asg is the Auto Scaling part (asg.go): its state, shared by the asg and lifecycle-complete
	// steps and the monitors, and safe for their concurrent use.
	asg     autoScaling
	asgOnce sync.Once

	mu sync.Mutex
	// keyConflicts is the latest comparison's key conflicts; the runner's save copies it into
	// the record (a backup scan finds them from its own goroutine).
	keyConflicts    []fetch.KeyConflict
	keyConflictsSet bool
}

// ledger is what the runner keeps of a run besides the record itself.
type ledger struct {
	// mu guards every write of the record and its save: the runner's (between steps, the
	// wiring's output included) and the supervisor's (a monitor's findings or state changed),
	// from the monitors' goroutines.
	mu sync.Mutex
	// path is where the record is saved ("" saves nothing: `haagent backup keys`), steps the
	// table whose order the findings keep; both set when the run starts.
	path  string
	steps []Step
	// book holds the steps' findings; the supervisor holds each monitor's under its name.
	book book
	// saver puts the record's snapshots on disk; dirty: the record changed since the last
	// encoding.
	saver saver
	dirty bool
}

// saver writes the run record's snapshots: each one durably (atomicfile: fsync'd, renamed,
// directory fsync'd), but only the points that matter wait for theirs (the run's start, a
// step marked Durable, a retry, the end, a monitor's change); the rest are written by a
// goroutine of their own while the boot goes on, and a snapshot overtaken by a newer one
// before its turn is never written. Two syncs per step for fifteen steps were a tenth of a
// second of a replacement's boot. A crash (kill -9, power) leaves the last snapshot written
// whole: at worst a step behind, never behind a durable point.
type saver struct {
	mu      sync.Mutex // guards pending and seq
	pending []byte
	seq     uint64
	// writing serializes the writes; written is the seq of the last one (under writing).
	writing sync.Mutex
	written uint64
}

// writeRecord is state.WriteEncoded; a test holds writes back through it.
var writeRecord = state.WriteEncoded

// submit makes data the latest snapshot, and writes it before returning when durable (else
// the caller flushes it).
func (s *saver) submit(log *slog.Logger, path string, data []byte, durable bool) {
	s.mu.Lock()
	s.seq++
	s.pending = data
	s.mu.Unlock()
	if durable {
		s.flush(log, path)
	}
}

// flush writes the latest snapshot unless a write already took it.
func (s *saver) flush(log *slog.Logger, path string) {
	s.writing.Lock()
	defer s.writing.Unlock()
	s.mu.Lock()
	data, seq := s.pending, s.seq
	s.mu.Unlock()
	if seq <= s.written {
		return
	}
	s.written = seq
	if err := writeRecord(path, data); err != nil {
		log.Error("cannot save the run record; `haagent status` will be stale", "path", path, "error", err.Error())
	}
}

// NewEnv is a boot of these inputs over this run record.
func NewEnv(in Inputs, rec *state.Record) *Env {
	return &Env{Inputs: in, Record: rec}
}

// runLock counts this process's holders of the run lock.
type runLock struct {
	mu      sync.Mutex
	holders int
	lk      *lock.Lock
}

// AdoptLock makes the run lock lk, taken by the caller for the boot steps, one holder of the
// count; the returned release (safe to call more than once) gives that hold back, and the
// flock goes when no monitor write holds it either.
func (e *Env) AdoptLock(lk *lock.Lock) (release func()) {
	e.runLock.mu.Lock()
	e.runLock.lk, e.runLock.holders = lk, e.runLock.holders+1
	e.runLock.mu.Unlock()
	return e.holdRelease()
}

// holdRelease gives back one hold, once.
func (e *Env) holdRelease() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			e.runLock.mu.Lock()
			defer e.runLock.mu.Unlock()
			e.runLock.holders--
			if e.runLock.holders == 0 && e.runLock.lk != nil {
				e.runLock.lk.Release()
				e.runLock.lk = nil
			}
		})
	}
}

// lockForWrite takes the run lock around a monitor's write of the keys (a scan's or the
// guard's backup), and the process's keys mutex, so it never overlaps the backup-keys step.
// While this process holds the lock (the boot steps, another write) the write is one more
// holder; when another haagent command holds it, the action waits for its next round
// (lock.ErrHeld).
func (e *Env) lockForWrite() (release func(), err error) {
	e.runLock.mu.Lock()
	switch {
	case e.runLock.holders > 0:
		e.runLock.holders++
	case e.LockPath == "":
		e.runLock.mu.Unlock()
		e.keysMu.Lock()
		return e.keysMu.Unlock, nil
	default:
		lk, err := lock.Acquire(e.LockPath)
		if err != nil {
			e.runLock.mu.Unlock()
			return nil, err
		}
		e.runLock.lk, e.runLock.holders = lk, 1
	}
	e.runLock.mu.Unlock()
	hold := e.holdRelease()
	e.keysMu.Lock()
	return func() { e.keysMu.Unlock(); hold() }, nil
}

// monitorCtx is the context for work that outlives its step.
func (e *Env) monitorCtx() context.Context {
	if e.runCtx == nil {
		return context.Background()
	}
	return e.runCtx
}

// Path maps an absolute machine path under --root.
func (e *Env) Path(p string) string { return filepath.Join(e.Root, p) }

// Notify sends an sd_notify state; a no-op without NOTIFY_SOCKET.
func Notify(s string) {
	daemon.SdNotify(false, s)
}

// BootID is the kernel's id for this boot (not under --root: it is the running kernel's). It is
// recorded for people; what counts as "this boot" for status --wait is layout.BootRuns.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// write saves the record with the run's current findings and monitors; ledger.mu is held.
// Before the run started (no path yet) nothing is saved. Unless durable, the record is encoded
// and written behind the boot (writeBehind): with a bundle's files it is ~150 KB of JSON, a
// millisecond or more of CPU per save, thirty saves a boot.
func (e *Env) write(durable bool) {
	if e.ledger.path == "" {
		if e.Run != nil {
			e.Run.Findings = e.ledger.book.stepFindings(e.ledger.steps)
			e.Run.Monitors = e.monitorRecord()
		}
		return
	}
	if !durable {
		e.ledger.dirty = true
		go e.writeBehind()
		return
	}
	e.ledger.dirty = false
	e.encode(true)
}

// writeBehind encodes the record as it is now, unless a save since took the change, and writes
// it; several changes in a row cost one encoding.
func (e *Env) writeBehind() {
	e.ledger.mu.Lock()
	if !e.ledger.dirty {
		e.ledger.mu.Unlock()
		return
	}
	e.ledger.dirty = false
	e.encode(false)
	e.ledger.mu.Unlock()
	e.ledger.saver.flush(e.Log, e.ledger.path)
}

// refresh copies the run's findings and monitors, and what other goroutines found, into the
// record; ledger.mu is held.
func (e *Env) refresh() {
	if e.Run != nil {
		e.Run.Findings = e.ledger.book.stepFindings(e.ledger.steps)
		e.Run.Monitors = e.monitorRecord()
	}
	e.syncRecord()
}

// encode refreshes and encodes the record and hands it to the saver (written before encode
// returns when durable); ledger.mu is held.
func (e *Env) encode(durable bool) {
	e.refresh()
	data, err := e.Record.Encode()
	if err != nil {
		e.Log.Error("cannot save the run record; `haagent status` will be stale", "path", e.ledger.path, "error", err.Error())
		return
	}
	e.ledger.saver.submit(e.Log, e.ledger.path, data, durable)
}

// setKeyConflicts records the outcome of a full comparison of the keys: the record keeps it
// from the next save on. The slice is replaced, never changed in place.
func (e *Env) setKeyConflicts(cs []fetch.KeyConflict) {
	e.mu.Lock()
	e.keyConflicts, e.keyConflictsSet = append([]fetch.KeyConflict(nil), cs...), true
	e.mu.Unlock()
}

// syncRecord copies what other goroutines found into the record before it is saved; it runs
// only where the record is written (under ledger.mu).
func (e *Env) syncRecord() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.keyConflictsSet {
		e.Record.KeyConflicts = e.keyConflicts
	}
}

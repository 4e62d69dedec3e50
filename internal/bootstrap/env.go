// Package bootstrap is the boot of a Services machine: an ordered table of steps, one runner
// that executes it, and the Env every step works through.
package bootstrap

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/lock"
	"github.com/haagent/haagent/internal/state"
	"github.com/haagent/haagent/internal/watch"
)

// Env carries everything a step needs. Every path goes through Path so the whole boot can run
// inside a temp dir (--root).
type Env struct {
	Root string
	Log  *slog.Logger
	// Config is set before the run when the config file exists; otherwise the config step
	// takes it from the user-data the imds step read.
	Config      *config.Config
	ConfigPath  string
	IMDSTimeout time.Duration
	// Reinstall forces the Replicated installer to run again (haagent run --reinstall).
	Reinstall bool

	IMDS     *imds.Client
	Instance imds.Info
	UserData []byte
	Bucket   *bucket.Bucket
	Bundle   *fetch.Bundle

	Record *state.Record
	Run    *state.Run
	// persist saves the run record once the runner is done with it; findings raised later
	// (a crash loop, from the watch's goroutine) go through LateFinding.
	persistMu sync.Mutex
	persist   func()
	Watcher   *watch.Watcher
	// background holds what must finish its last write before the process exits (the log
	// forwarding's mark).
	background sync.WaitGroup

	// ASG is nil unless asg.enabled and the instance is in a group.
	ASG *asg.Client
	// heartbeats run while the launch lifecycle action waits; nil while none run.
	heartbeats *heartbeats
	// lifecycle is what is known of the launch lifecycle action.
	lifecycle  lifecycleState
	monitoring sync.Once

	// LockPath is the run lock (layout.LockFile under --root). While HoldsLock is set, this process
	// holds it (the boot steps); afterwards each monitor action that writes takes it itself.
	LockPath  string
	HoldsLock atomic.Bool

	// runCtx is the context of the whole run (set by the runner): what outlives the step that
	// starts it (heartbeats, the log forwarding, crash loops, the guard, the keys scan) runs
	// under it, never under the step's own context, which ends with the step (or its timeout).
	runCtx context.Context
	// keyScan is the periodic keys backup, started once.
	keyScan sync.Once

	mu sync.Mutex
	// keyConflicts is the latest comparison's key conflicts; the runner's save copies it into
	// the record (a backup scan finds them from its own goroutine).
	keyConflicts    []fetch.KeyConflict
	keyConflictsSet bool
	current         string
	byStep          map[string][]findings.Finding
	reported        map[string]bool
	// late holds the findings of what runs beside or after the steps (a crash loop, the guard's
	// decision, an engine that does not answer): they belong to no step, so a step's retry must
	// not delete them.
	late []findings.Finding
}

// lockForWrite takes the run lock around a monitor's write (a key backup). While this process
// holds it for the boot steps there is nothing to take; when another haagent command holds it,
// the action waits for its next round (lock.ErrHeld).
func (e *Env) lockForWrite() (release func(), err error) {
	if e.HoldsLock.Load() || e.LockPath == "" {
		return func() {}, nil
	}
	lk, err := lock.Acquire(e.LockPath)
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
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

// Report records a finding for the current step and logs it once per run (a retried step
// reports the same findings again; the journal should not fill with copies).
func (e *Env) Report(f findings.Finding) {
	f = e.adjust(f)[0]
	if e.record(f) {
		return
	}
	e.logFinding(f)
}

func (e *Env) logFinding(f findings.Finding) {
	level := slog.LevelInfo
	switch f.Severity {
	case findings.Error:
		level = slog.LevelError
	case findings.Warning:
		level = slog.LevelWarn
	}
	attrs := []any{"finding", f.Code.String(), "severity", string(f.Severity), "blocking", f.Blocking}
	if f.Target != "" {
		attrs = append(attrs, "target", f.Target)
	}
	if f.Evidence != "" {
		attrs = append(attrs, "evidence", f.Evidence)
	}
	if f.Fix != "" {
		attrs = append(attrs, "fix", f.Fix)
	}
	if len(f.Suppressed) > 0 {
		attrs = append(attrs, "also_suppressed", strings.Join(f.Suppressed, "; "))
	}
	e.Log.Log(context.Background(), level, f.Code.String()+": "+f.Summary, attrs...)
}

// record keeps f for the current step; it reports whether f was already logged this run.
func (e *Env) record(f findings.Finding) bool {
	e.mu.Lock()
	if e.byStep == nil {
		e.byStep = map[string][]findings.Finding{}
		e.reported = map[string]bool{}
	}
	key := f.Code.String() + "\x00" + f.Target + "\x00" + f.Summary
	dup := false
	for _, g := range e.byStep[e.current] {
		dup = dup || g.Code.String()+"\x00"+g.Target+"\x00"+g.Summary == key
	}
	if !dup {
		e.byStep[e.current] = append(e.byStep[e.current], f)
	}
	seen := e.reported[key]
	e.reported[key] = true
	e.mu.Unlock()
	return seen
}

// adjust applies the config's overrides (probes.overrides: any code but the safety codes), so
// what is logged, recorded and acted on is what the operator configured.
func (e *Env) adjust(fs ...findings.Finding) []findings.Finding {
	if e.Config == nil || len(e.Config.Probes.Overrides) == 0 {
		return fs
	}
	return findings.Apply(fs, e.Config.Probes.FindingOverrides())
}

// ReportAll reports a step's findings: the config's overrides, then findings.Fold (what an
// upstream finding explains is listed in it, not reported beside it), then each is recorded
// and logged.
func (e *Env) ReportAll(fs []findings.Finding) {
	for _, f := range findings.Fold(e.adjust(fs...)) {
		if !e.record(f) {
			e.logFinding(f)
		}
	}
}

func (e *Env) beginStep(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.current = name
	if e.byStep != nil {
		delete(e.byStep, name) // a retry replaces the step's earlier findings
	}
}

// Findings returns the current findings of every step, in table order, then the late ones.
func (e *Env) Findings(steps []Step) []findings.Finding {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []findings.Finding
	for _, s := range steps {
		out = append(out, e.byStep[s.Name]...)
	}
	return append(out, e.late...)
}

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

// Drain waits, up to timeout, for the background work started by the steps to wind down once
// the context that runs them has ended.
func (e *Env) Drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() { e.background.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		e.Log.Warn("the frontend log forwarding did not stop in time; exiting without its last mark (the next haagent may forward up to "+watch.DefaultMarkEvery.String()+" of lines again)",
			"waited", timeout.String(), "mark", layout.FrontendMark)
	}
}

// LateFinding reports a finding raised outside the step table's flow (a crash loop, from the
// watch's goroutine). While the runner still owns the run record the finding joins the current
// step's and the runner saves it; after the run, it is saved here.
func (e *Env) LateFinding(f findings.Finding) {
	f = e.adjust(f)[0]
	key := findingKey(f)
	e.mu.Lock()
	if e.reported == nil {
		e.reported = map[string]bool{}
	}
	seen := e.reported[key]
	e.reported[key] = true
	dup := slices.ContainsFunc(e.late, func(g findings.Finding) bool { return findingKey(g) == key })
	if !dup {
		e.late = append(e.late, f)
	}
	e.mu.Unlock()
	if !seen {
		e.logFinding(f)
	}
	e.save()
}

func findingKey(f findings.Finding) string {
	return f.Code.String() + "\x00" + f.Target + "\x00" + f.Summary
}

// lateDecision records a finding its reporter has already logged in its own words, in place
// of earlier ones with the same target and any of the codes given: a decision taken again
// every few minutes for days keeps one entry, the latest.
func (e *Env) lateDecision(f findings.Finding, codes ...findings.Code) {
	e.mu.Lock()
	e.late = slices.DeleteFunc(e.late, func(g findings.Finding) bool {
		return g.Target == f.Target && slices.Contains(codes, g.Code)
	})
	e.late = append(e.late, f)
	e.mu.Unlock()
	e.save()
}

// lateKeys replaces the periodic keys scan's late findings with those of the latest scan: a
// key backed up since, or a conflict resolved, leaves the record; one that lasts is logged once.
func (e *Env) lateKeys(fs []findings.Finding) {
	if len(fs) > 0 {
		fs = e.adjust(fs...)
	}
	var fresh []findings.Finding
	e.mu.Lock()
	if e.reported == nil {
		e.reported = map[string]bool{}
	}
	e.late = slices.DeleteFunc(e.late, func(g findings.Finding) bool { return strings.HasPrefix(g.Code.String(), "KEYS_") })
	for _, f := range fs {
		key := findingKey(f)
		if !e.reported[key] {
			fresh = append(fresh, f)
		}
		e.reported[key] = true
		if !slices.ContainsFunc(e.late, func(g findings.Finding) bool { return findingKey(g) == key }) {
			e.late = append(e.late, f)
		}
	}
	e.mu.Unlock()
	for _, f := range fresh {
		e.logFinding(f)
	}
	e.save()
}

// clearLate withdraws a late finding whose condition has ended (the engine answers again), so
// status shows the machine as it is.
func (e *Env) clearLate(code findings.Code, target string) {
	e.mu.Lock()
	e.late = slices.DeleteFunc(e.late, func(g findings.Finding) bool { return g.Code == code && g.Target == target })
	for k := range e.reported {
		if strings.HasPrefix(k, code.String()+"\x00"+target+"\x00") {
			delete(e.reported, k) // a later recurrence is logged again
		}
	}
	e.mu.Unlock()
	e.save()
}

func (e *Env) save() {
	e.persistMu.Lock()
	defer e.persistMu.Unlock()
	if e.persist != nil {
		e.persist()
	}
}

// setKeyConflicts records the outcome of a full comparison of the keys: the record keeps it
// from the next save on. The slice is replaced, never changed in place.
func (e *Env) setKeyConflicts(cs []fetch.KeyConflict) {
	e.mu.Lock()
	e.keyConflicts, e.keyConflictsSet = append([]fetch.KeyConflict(nil), cs...), true
	e.mu.Unlock()
}

// syncRecord copies what other goroutines found into the record before it is saved; it runs
// only where the record is written (the runner, or persist under persistMu).
func (e *Env) syncRecord() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.keyConflictsSet {
		e.Record.KeyConflicts = e.keyConflicts
	}
}

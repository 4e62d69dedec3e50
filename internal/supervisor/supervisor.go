// Package supervisor runs what lives on after the boot steps (log forwarding, crash-loop
// detection, lifecycle heartbeats, the replacement guard, the periodic key scan) as monitors
// under one supervisor. It restarts a monitor that returns or panics, with backoff, and says so
// with a finding when one keeps failing; it owns each monitor's findings under the monitor's
// name; and it tells whether every monitor's loop still iterates, which is the condition for
// feeding systemd's watchdog.
//
// Liveness is not activity: a monitor calls Handle.Alive each time its loop goes round, idle
// waits included (a quiet log stream, a guard with nothing to decide wake up to say so). A loop
// blocked in a call that never returns is what the watchdog is for: the supervisor cannot stop a
// goroutine, a restart of haagent can. A Docker call past its deadline is not that: the engine
// not answering is a state its monitor reports (DOCKER_NOT_ANSWERING) while it goes on iterating.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/haagent/haagent/internal/backoff"
	"github.com/haagent/haagent/internal/findings"
)

// ErrDone is what a monitor returns when its work is over for good (the lifecycle action is
// completed, the replacement was requested): it is not restarted, and its findings stay. Any
// other return while the supervisor runs, nil included, is a failure and the monitor is
// restarted: a loop that ends by mistake must not end self-healing silently.
var ErrDone = errors.New("monitor done")

// Monitor is one long-running loop.
type Monitor struct {
	// Name files its findings (and the journal's lines about it) under this name.
	Name string
	// Within is the longest its loop may go without Handle.Alive (zero: DefaultWithin). Waits
	// inside the loop must wake up more often than this.
	Within time.Duration
	// Run is the loop. It returns when ctx ends, with ErrDone when its work is over, or with
	// an error to be restarted.
	Run func(ctx context.Context, h *Handle) error
}

// DefaultWithin is the liveness bound of a monitor that sets none.
const DefaultWithin = 5 * time.Minute

// DefaultFailingAfter is how many failures in a row make a monitor MONITOR_FAILING.
const DefaultFailingAfter = 3

// DefaultSettleAfter is how long a restarted monitor must run before its failures are
// forgiven (the count starts again and MONITOR_FAILING is withdrawn).
const DefaultSettleAfter = 10 * time.Minute

// DefaultBackoff is the wait before the n-th restart in a row: a monitor that fails at once
// (a bug, a refused permission) must not spin, one that failed once comes back quickly.
var DefaultBackoff = backoff.Policy{Base: time.Second, Max: 5 * time.Minute}

// Options configure a Supervisor. Every field has a working zero value.
type Options struct {
	Log *slog.Logger
	// Notify sends an sd_notify state ("WATCHDOG=1"); nil sends nothing.
	Notify func(state string)
	// Watchdog is systemd's watchdog interval: Watch feeds it at half of that. Zero: Watch
	// sends nothing (run --once, no WatchdogSec).
	Watchdog time.Duration
	// Tick drives Watch's loop (tests); nil is a ticker at Watchdog/2 (or a minute).
	Tick <-chan time.Time
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
	// After is the wait before a restart (tests); nil is time.After.
	After func(d time.Duration) <-chan time.Time
	// Backoff is the wait before each restart in a row (zero: DefaultBackoff).
	Backoff backoff.Policy
	// FailingAfter is how many failures in a row make MONITOR_FAILING (zero: the default).
	FailingAfter int
	// SettleAfter is how long a monitor must run to be forgiven its failures (zero: default).
	SettleAfter time.Duration
	// Adjust applies the config's finding overrides to what monitors Set (nil: none).
	Adjust func(fs ...findings.Finding) []findings.Finding
	// Changed is called after a monitor's findings or state changed, outside the supervisor's
	// lock: the run record is saved from it.
	Changed func()
}

// Supervisor runs monitors. Its methods are safe for concurrent use.
type Supervisor struct {
	o   Options
	ctx context.Context
	wg  sync.WaitGroup

	mu      sync.Mutex
	entries []*entry // in the order they were first started: the record's order
}

// entry is what the supervisor knows of one monitor, across its restarts.
type entry struct {
	m       Monitor
	state   string // StateRunning, ...
	last    time.Time
	started time.Time
	// failures counts failures in a row; restarts every restart.
	failures, restarts int
	lastErr            string
	stalled            bool
	own                []findings.Finding // what the monitor Set
	sup                []findings.Finding // what the supervisor says about it
	cancel             context.CancelFunc
	done               chan struct{}
}

// Monitor states, as the run record shows them.
const (
	StateRunning    = "running"
	StateRestarting = "restarting" // failed, waiting to be started again
	StateDone       = "done"       // returned ErrDone
	StateStopped    = "stopped"    // stopped by its owner or the supervisor's context
	StateStalled    = "stalled"    // running, but its loop went past its bound without Alive
)

// New returns a supervisor whose monitors run under ctx: they outlive whatever step starts
// them, and end when ctx does.
func New(ctx context.Context, o Options) *Supervisor {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Backoff == (backoff.Policy{}) {
		o.Backoff = DefaultBackoff
	}
	if o.FailingAfter <= 0 {
		o.FailingAfter = DefaultFailingAfter
	}
	if o.SettleAfter <= 0 {
		o.SettleAfter = DefaultSettleAfter
	}
	return &Supervisor{o: o, ctx: ctx}
}

// Handle is a monitor's side of the supervisor.
type Handle struct {
	s *Supervisor
	e *entry
}

// Alive says the monitor's loop went round (idle waits included).
func (h *Handle) Alive() {
	s := h.s
	s.mu.Lock()
	now := s.o.Now()
	h.e.last = now
	changed := false
	if h.e.stalled {
		h.e.stalled, changed = false, true
		h.e.sup = dropCode(h.e.sup, MonitorStalled)
		s.o.Log.Info("monitor "+h.e.m.Name+" iterates again", "monitor", h.e.m.Name)
	}
	if h.e.failures > 0 && now.Sub(h.e.started) >= s.o.SettleAfter {
		// It has run long enough since its last restart: its failures are history.
		h.e.failures = 0
		if slices.ContainsFunc(h.e.sup, func(f findings.Finding) bool { return f.Code == MonitorFailing }) {
			h.e.sup, changed = dropCode(h.e.sup, MonitorFailing), true
			s.o.Log.Info("monitor "+h.e.m.Name+" has run for "+s.o.SettleAfter.String()+" since its last restart; no longer failing", "monitor", h.e.m.Name)
		}
	}
	s.mu.Unlock()
	if changed {
		s.changed()
	}
}

// Set replaces this monitor's findings with fs (none: it has nothing to say now). They stay
// across its restarts until it sets them again. A finding not in its previous set is logged.
func (h *Handle) Set(fs ...findings.Finding) { h.set(true, fs) }

// Keep replaces the findings as Set does, without logging them: for a monitor that has logged
// the same in its own words (the guard's decisions).
func (h *Handle) Keep(fs ...findings.Finding) { h.set(false, fs) }

func (h *Handle) set(log bool, fs []findings.Finding) {
	s := h.s
	if s.o.Adjust != nil && len(fs) > 0 {
		fs = s.o.Adjust(fs...)
	}
	fs = slices.Clone(fs)
	s.mu.Lock()
	var fresh []findings.Finding
	for _, f := range fs {
		if !slices.ContainsFunc(h.e.own, func(g findings.Finding) bool { return key(g) == key(f) }) {
			fresh = append(fresh, f)
		}
	}
	same := len(fresh) == 0 && len(fs) == len(h.e.own)
	h.e.own = fs
	s.mu.Unlock()
	for _, f := range fresh {
		if log {
			s.logFinding(h.e.m.Name, f)
		}
	}
	if !same {
		s.changed()
	}
}

// Log is the monitor's logger: every line carries its name (HAAGENT_MONITOR in the journal).
func (h *Handle) Log() *slog.Logger { return h.s.o.Log.With("monitor", h.e.m.Name) }

func key(f findings.Finding) string { return f.Code.String() + "\x00" + f.Target + "\x00" + f.Summary }

func dropCode(fs []findings.Finding, code findings.Code) []findings.Finding {
	return slices.DeleteFunc(slices.Clone(fs), func(f findings.Finding) bool { return f.Code == code })
}

// Running is a started monitor.
type Running struct {
	s *Supervisor
	e *entry
}

// Start runs m under the supervisor's context. A monitor of that name that is running (or
// waiting to restart) already, or that is done (ErrDone), is left as it is and returned:
// starting twice is harmless, and work that is over (a replacement requested) is not done
// again. One that was stopped is started afresh; its findings stay until it sets new ones.
func (s *Supervisor) Start(m Monitor) *Running {
	if m.Within <= 0 {
		m.Within = DefaultWithin
	}
	s.mu.Lock()
	var e *entry
	for _, x := range s.entries {
		if x.m.Name == m.Name {
			e = x
		}
	}
	if e != nil && e.state != StateStopped {
		s.mu.Unlock()
		return &Running{s: s, e: e}
	}
	if e == nil {
		e = &entry{}
		s.entries = append(s.entries, e)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	e.m, e.state, e.cancel, e.done = m, StateRunning, cancel, make(chan struct{})
	e.failures, e.stalled = 0, false
	e.sup = nil
	e.last, e.started = s.o.Now(), s.o.Now()
	s.wg.Add(1)
	s.mu.Unlock()
	go s.loop(ctx, e)
	return &Running{s: s, e: e}
}

// Stop ends the monitor and waits until its loop has returned: nothing it does lands after
// Stop (a heartbeat after the lifecycle action is completed). Its findings stay.
func (r *Running) Stop() {
	r.s.mu.Lock()
	cancel, done := r.e.cancel, r.e.done
	r.s.mu.Unlock()
	cancel()
	<-done
}

// Stop stops the monitor of that name as Running.Stop does, and reports whether one was
// running (or waiting to restart).
func (s *Supervisor) Stop(name string) bool {
	s.mu.Lock()
	var e *entry
	for _, x := range s.entries {
		if x.m.Name == name && (x.state == StateRunning || x.state == StateRestarting) {
			e = x
		}
	}
	s.mu.Unlock()
	if e == nil {
		return false
	}
	(&Running{s: s, e: e}).Stop()
	return true
}

// Done returns a channel closed when the monitor of that name has returned for good (done,
// or stopped), or nil when none of that name was started.
func (s *Supervisor) Done(name string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.entries {
		if e.m.Name == name {
			return e.done
		}
	}
	return nil
}

// loop runs one monitor, restarting it until its context ends or it is done.
func (s *Supervisor) loop(ctx context.Context, e *entry) {
	defer s.wg.Done()
	defer close(e.done)
	h := &Handle{s: s, e: e}
	for {
		err, panicked := s.once(ctx, h)
		s.mu.Lock()
		name := e.m.Name
		if ctx.Err() != nil || errors.Is(err, ErrDone) {
			e.state = StateStopped
			if errors.Is(err, ErrDone) {
				e.state = StateDone
			}
			e.sup = dropCode(e.sup, MonitorStalled)
			s.mu.Unlock()
			s.changed()
			return
		}
		if err == nil {
			err = errors.New("its loop returned although nothing asked it to stop")
		}
		if s.o.Now().Sub(e.started) >= s.o.SettleAfter {
			e.failures = 0 // it ran well for a while before this failure
		}
		e.failures++
		e.restarts++
		n := e.failures
		wait := s.o.Backoff.Delay(n)
		e.state, e.lastErr = StateRestarting, err.Error()
		if panicked || n >= s.o.FailingAfter {
			code, what := MonitorFailing, fmt.Sprintf("failed %d times in a row", n)
			if panicked {
				code, what = MonitorPanicked, "panicked"
			}
			f := findings.New(code, name, fmt.Sprintf("monitor %s %s; restarting it in %s (restart %d)", name, what, wait, e.restarts), err.Error()).
				WithFix(fixFor(code, name))
			e.sup = append(dropCode(dropCode(e.sup, MonitorFailing), MonitorPanicked), f)
		}
		s.mu.Unlock()
		s.o.Log.Warn(fmt.Sprintf("monitor %s stopped: %s; restarting it in %s", name, err, wait),
			"monitor", name, "failures_in_a_row", n, "restarts", e.restarts)
		s.changed()
		select {
		case <-ctx.Done():
			s.mu.Lock()
			e.state = StateStopped
			s.mu.Unlock()
			s.changed()
			return
		case <-s.o.After(wait):
		}
		s.mu.Lock()
		e.state, e.started, e.last = StateRunning, s.o.Now(), s.o.Now()
		s.mu.Unlock()
	}
}

// once runs the monitor one time; a panic is its error, logged with the stack (a bug to report).
func (s *Supervisor) once(ctx context.Context, h *Handle) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("panic: %v", r), true
			s.o.Log.Error("monitor "+h.e.m.Name+" panicked (a bug in haagent: please report it with this stack)",
				"monitor", h.e.m.Name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	return h.e.m.Run(ctx, h), false
}

func fixFor(code findings.Code, name string) string {
	if code == MonitorPanicked {
		return "a bug in haagent: report it with the stack logged just before (journalctl -u haagent HAAGENT_MONITOR=" + name + "); haagent restarts the monitor meanwhile"
	}
	return "read the monitor's last error (evidence) and its lines in the journal (journalctl -u haagent HAAGENT_MONITOR=" + name + "); fix what it names (a permission, a route, the Docker engine); haagent keeps restarting it with backoff"
}

// Healthy returns nil while every running monitor went round within its bound, else an error
// naming the ones that did not. The first time a monitor is found stalled it is logged and
// given MONITOR_STALLED.
func (s *Supervisor) Healthy() error {
	s.mu.Lock()
	now := s.o.Now()
	var stalled []string
	var fresh []*entry
	for _, e := range s.entries {
		if e.state != StateRunning {
			continue
		}
		quiet := now.Sub(e.last)
		if quiet <= e.m.Within {
			continue
		}
		stalled = append(stalled, fmt.Sprintf("%s (quiet for %s, bound %s)", e.m.Name, quiet.Round(time.Second), e.m.Within))
		if !e.stalled {
			e.stalled = true
			e.sup = append(dropCode(e.sup, MonitorStalled), findings.New(MonitorStalled, e.m.Name,
				fmt.Sprintf("monitor %s has not gone round its loop for %s (its bound is %s): it is blocked, so haagent stops feeding systemd's watchdog and systemd restarts it", e.m.Name, quiet.Round(time.Second), e.m.Within), ""))
			fresh = append(fresh, e)
		}
	}
	s.mu.Unlock()
	for _, e := range fresh {
		s.o.Log.Error(fmt.Sprintf("monitor %s is blocked: no iteration within %s; no more watchdog pings, so systemd restarts haagent", e.m.Name, e.m.Within),
			"monitor", e.m.Name, "finding", MonitorStalled.String())
		if s.o.Notify != nil && s.o.Watchdog > 0 {
			// What `systemctl status haagent` shows until the watchdog acts.
			s.o.Notify(fmt.Sprintf("STATUS=monitor %s is blocked; waiting for systemd's watchdog to restart haagent", e.m.Name))
		}
	}
	if len(fresh) > 0 {
		s.changed()
	}
	if len(stalled) > 0 {
		return fmt.Errorf("monitors not iterating: %s", strings.Join(stalled, ", "))
	}
	return nil
}

// Watch feeds systemd's watchdog while every monitor is healthy, until ctx ends: after the
// boot it is haagent's main loop. A stalled monitor stops the pings; one that iterates again
// before systemd acts resumes them.
func (s *Supervisor) Watch(ctx context.Context) {
	tick := s.o.Tick
	if tick == nil {
		every := time.Minute
		if s.o.Watchdog > 0 {
			every = s.o.Watchdog / 2
		}
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		if s.Healthy() == nil && s.o.Watchdog > 0 && s.o.Notify != nil {
			s.o.Notify("WATCHDOG=1")
		}
	}
}

// Wait blocks until every monitor has returned (the supervisor's context ended), or until
// timeout; it reports whether they all did.
func (s *Supervisor) Wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Status is one monitor as the run record shows it.
type Status struct {
	Name      string             `json:"name"`
	State     string             `json:"state"`
	Restarts  int                `json:"restarts,omitempty"`
	LastError string             `json:"last_error,omitempty"`
	Findings  []findings.Finding `json:"findings,omitempty"`
}

// Statuses returns every monitor started, in the order they were first started.
func (s *Supervisor) Statuses() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.entries))
	for _, e := range s.entries {
		st := Status{Name: e.m.Name, State: e.state, Restarts: e.restarts, LastError: findings.Redact(e.lastErr)}
		st.Findings = append(append(st.Findings, e.sup...), e.own...)
		if e.stalled {
			st.State = StateStalled
		}
		out = append(out, st)
	}
	return out
}

// Findings returns every monitor's findings, monitor by monitor in start order: what the
// supervisor says about one first, then what it set.
func (s *Supervisor) Findings() []findings.Finding {
	var out []findings.Finding
	for _, st := range s.Statuses() {
		out = append(out, st.Findings...)
	}
	return out
}

func (s *Supervisor) changed() {
	if s.o.Changed != nil {
		s.o.Changed()
	}
}

// logFinding logs a finding Set did not hold before: one that lasts is logged once, one that
// comes back after it was withdrawn is logged again.
func (s *Supervisor) logFinding(monitor string, f findings.Finding) {
	findings.Log(s.o.Log, f, "monitor", monitor)
}

// Finding codes the supervisor reports about its monitors (registered in internal/findings).
var (
	MonitorFailing  = findings.MonitorFailing
	MonitorPanicked = findings.MonitorPanicked
	MonitorStalled  = findings.MonitorStalled
)

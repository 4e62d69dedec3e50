package bootstrap

import (
	"context"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/state"
	"github.com/haagent/haagent/internal/supervisor"
	"github.com/haagent/haagent/internal/watch"
)

// Monitor is something that lives on after the step that starts it (the log forwarding, crash
// loops, the guard, the keys scan): a step returns it, the runner hands it to the supervisor.
type Monitor = supervisor.Monitor

// Handle is what a running monitor reports through: Alive each time its loop goes round, Set
// its current findings.
type Handle = supervisor.Handle

// monitors is the run's supervisor, made on first use under the run's context: what it runs
// outlives the step that starts it. Its findings changes save the run record.
func (e *Env) monitors() *supervisor.Supervisor {
	e.supOnce.Do(func() {
		watchdog, _ := daemon.SdWatchdogEnabled(false)
		e.sup = supervisor.New(e.monitorCtx(), supervisor.Options{
			Log: e.Log, Notify: Notify, Watchdog: watchdog, Adjust: e.adjust, Changed: e.save,
		})
	})
	return e.sup
}

// supervise starts each monitor not already running (or done) under its name: two steps may
// ask for the same one (the guard, on a reboot and once the frontend is up).
func (e *Env) supervise(ms ...Monitor) {
	for _, m := range ms {
		e.monitors().Start(m)
	}
}

// monitorsHealthy reports whether every monitor iterates: the runner feeds the watchdog during
// the steps only then.
func (e *Env) monitorsHealthy() bool { return e.monitors().Healthy() == nil }

// WatchMonitors is haagent's main loop after the boot, until ctx ends: it feeds systemd's
// watchdog while every monitor iterates, so a wedged one gets haagent restarted.
func (e *Env) WatchMonitors(ctx context.Context) { e.monitors().Watch(ctx) }

// monitorRecord is each monitor as the run record shows it.
func (e *Env) monitorRecord() []state.Monitor {
	var out []state.Monitor
	for _, s := range e.monitors().Statuses() {
		out = append(out, state.Monitor{Name: s.Name, State: s.State, Restarts: s.Restarts, LastError: s.LastError, Findings: s.Findings})
	}
	return out
}

// Drain waits, up to timeout, for the monitors to wind down once the context that runs them
// has ended: the log forwarding saves how far it got, for the next haagent.
func (e *Env) Drain(timeout time.Duration) {
	if !e.monitors().Wait(timeout) {
		e.Log.Warn("the monitors did not stop in time; exiting without the log forwarding's last mark (the next haagent may forward up to "+watch.DefaultMarkEvery.String()+" of lines again)",
			"waited", timeout.String(), "mark", layout.FrontendMark)
	}
}

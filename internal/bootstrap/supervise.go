package bootstrap

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/watch"
)

// Monitor is something that lives on after the step that starts it (the log forwarding, crash
// loops, the guard, the keys scan), to the interface agreed with internal/supervisor: a step
// returns it, the runner starts it.
//
// Until internal/supervisor lands, this adapter runs each monitor once, in a goroutine of its
// own, and keeps its findings under its name; the supervisor will restart one that returns and
// feed the watchdog from the monitors' liveness.
type Monitor struct {
	Name   string        // its findings are filed under this name
	Within time.Duration // the longest its loop may go without h.Alive()
	Run    func(ctx context.Context, h *Handle) error
}

// Handle is what a running monitor reports through.
type Handle struct {
	env  *Env
	name string
}

// Alive says the monitor's loop iterated (idle waits included).
func (h *Handle) Alive() {}

// Set makes fs this monitor's current findings, replacing its earlier ones.
func (h *Handle) Set(fs ...findings.Finding) { h.env.setLate(h.name, fs...) }

// monitorSet is the monitors started in this run.
type monitorSet struct {
	mu      sync.Mutex
	started map[string]bool
	// wg holds every monitor, so the process can let them finish their last write (the log
	// forwarding's mark) before it exits.
	wg sync.WaitGroup
}

// supervise starts each monitor not already running under its name, under the run's context:
// two steps may ask for the same one (the guard, on a reboot and once the frontend is up).
func (e *Env) supervise(ms ...Monitor) {
	ctx := e.monitorCtx()
	e.monitors.mu.Lock()
	defer e.monitors.mu.Unlock()
	if e.monitors.started == nil {
		e.monitors.started = map[string]bool{}
	}
	for _, m := range ms {
		if e.monitors.started[m.Name] {
			continue
		}
		e.monitors.started[m.Name] = true
		h := &Handle{env: e, name: m.Name}
		e.monitors.wg.Add(1)
		go func() {
			defer e.monitors.wg.Done()
			if err := m.Run(ctx, h); err != nil && ctx.Err() == nil {
				e.Log.Warn(fmt.Sprintf("monitor %s stopped: %s", m.Name, err), "monitor", m.Name)
			}
		}()
	}
}

// Drain waits, up to timeout, for the monitors to wind down once the context that runs them
// has ended.
func (e *Env) Drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() { e.monitors.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		e.Log.Warn("the monitors did not stop in time; exiting without the log forwarding's last mark (the next haagent may forward up to "+watch.DefaultMarkEvery.String()+" of lines again)",
			"waited", timeout.String(), "mark", watch.MarkPath)
	}
}

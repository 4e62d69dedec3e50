package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/haagent/haagent/internal/backoff"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/state"
)

// Runner executes a table of steps.
type Runner struct {
	Steps []Step
	// Once stops at the first failure; otherwise a failed step is retried with capped
	// backoff, for ever: exiting would only run into systemd's start limit and leave nobody
	// driving the boot.
	Once bool
	// Backoff is the wait before the n-th retry (n from 1).
	Backoff func(n int) time.Duration
	// StatePath is where the run record lives (under --root).
	StatePath string
	// BootRunsPath, if set, is where each run is marked as this boot's (layout.BootRuns
	// under --root), for `status --wait`.
	BootRunsPath string
	// Grace is how long a step may run past its timeout (its context ended) before it counts
	// as hung (default DefaultGrace).
	Grace time.Duration
	// OnHung, if set, is called when a step counts as hung (tests).
	OnHung func(step string)
	// Started, if set, is called once this run is in the record. READY=1 is sent from it:
	// `systemctl restart haagent` returns on READY, and a `haagent status --wait` right after
	// must find this run, not the previous run's "complete".
	Started func()
}

// DefaultGrace is how long a step may ignore its ended context before it counts as hung.
const DefaultGrace = time.Minute

// DefaultBackoff doubles from 5 s up to 5 min: a new instance's IAM role, network or bucket
// may need a minute, a database may need longer.
func DefaultBackoff(n int) time.Duration { return stepBackoff.Delay(n) }

var stepBackoff = backoff.Policy{Base: 5 * time.Second, Max: 5 * time.Minute}

// Run executes the steps in order. The returned error names the failed step.
func (r *Runner) Run(ctx context.Context, env *Env) error {
	if err := CheckSteps(r.Steps); err != nil {
		return err
	}
	if r.Backoff == nil {
		r.Backoff = DefaultBackoff
	}
	mode := "service"
	if r.Once {
		mode = "once"
	}
	env.runCtx = ctx
	if r.StatePath != "" {
		// The record's writes run behind the boot (saver): a kill may land in one.
		state.RemoveStaleTemps(r.StatePath)
	}
	now := time.Now().UTC()
	// Durable: `haagent status --wait`, woken by READY=1, must find this run.
	r.update(env, true, func() {
		// From here on every save writes the record, the monitors' too (Env.save), from their
		// own goroutines: a crash loop is in `haagent status` while the watch still waits.
		env.ledger.path, env.ledger.steps = r.StatePath, r.Steps
		env.Record.Runs = append(env.Record.Runs, state.Run{
			ID:     now.Format("20060102T150405Z") + fmt.Sprintf("-%d", os.Getpid()),
			BootID: BootID(), Mode: mode, PID: os.Getpid(), Start: now, Status: state.Running,
		})
		env.Run = env.Record.Last()
	})
	// That save trimmed the history into a new slice if it was full: this run (the newest,
	// always kept) is changed there from now on, not in the old one. Nothing adds a run
	// after it, so no later save trims again.
	env.ledger.mu.Lock()
	env.Run = env.Record.Last()
	env.ledger.mu.Unlock()
	if r.BootRunsPath != "" {
		if err := state.MarkThisBoot(r.BootRunsPath, env.Run.ID); err != nil {
			env.Log.Error("cannot mark the run as this boot's; `haagent status --wait` will not see it", "error", err.Error())
		}
	}
	if r.Started != nil {
		r.Started()
	}

	watchdog, _ := daemon.SdWatchdogEnabled(false)
	attempts := map[string]int{}
	for i := 0; i < len(r.Steps); i++ {
		s := r.Steps[i]
		attempts[s.Name]++
		attempt := attempts[s.Name]
		err := r.runStep(ctx, env, s, i, attempt, watchdog)
		if err == nil {
			attempts[s.Name] = 0
			continue
		}
		if ctx.Err() != nil {
			return r.finish(env, "interrupted", fmt.Errorf("%s: interrupted: %w", s.Name, ctx.Err()))
		}
		if r.Once {
			return r.finish(env, state.Failed, fmt.Errorf("%s: %w", s.Name, err))
		}
		wait := r.Backoff(attempt)
		r.update(env, true, func() { env.Run.Status, env.Run.Error = state.Retrying, fmt.Sprintf("%s: %s", s.Name, err) })
		Notify("STATUS=" + truncate(fmt.Sprintf("%s failed (attempt %d), retrying in %s: %s", s.Name, attempt, wait, headline(err)), 200))
		if err := sleep(ctx, wait, watchdog, env.monitorsHealthy); err != nil {
			return r.finish(env, "interrupted", fmt.Errorf("%s: interrupted: %w", s.Name, err))
		}
		r.update(env, true, func() { env.Run.Status, env.Run.Error = state.Running, "" })
		// Retry the step itself, or the earlier step it depends on (a fix in the bucket must
		// be fetched again before it can be validated).
		i = retryIndex(r.Steps, i) - 1
	}
	env.Log.Info("boot complete", "steps", len(r.Steps), "duration", time.Since(env.Run.Start).Round(time.Millisecond).String())
	Notify("STATUS=boot complete")
	return r.finish(env, state.Complete, nil)
}

// CheckSteps refuses a table whose retry target is not an earlier step: a mistyped name would
// otherwise make the step silently retry only itself.
func CheckSteps(steps []Step) error {
	seen := map[string]bool{}
	for _, s := range steps {
		if seen[s.Name] {
			return fmt.Errorf("boot step table: step %q appears twice", s.Name)
		}
		if s.Retry.from != "" && !seen[s.Retry.from] {
			return fmt.Errorf("boot step table: step %q retries from %q, which is not an earlier step", s.Name, s.Retry.from)
		}
		if s.Do == nil {
			return fmt.Errorf("boot step table: step %q has nothing to do", s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

// retryIndex is where a failed step i starts again: the earlier step it retries from, or itself.
func retryIndex(steps []Step, i int) int {
	for j := range steps[:i] {
		if steps[j].Name == steps[i].Retry.from {
			return j
		}
	}
	return i
}

// outcome is what an attempt returned.
type outcome struct {
	apply func(*Env)
	fs    []findings.Finding
	err   error
}

func (r *Runner) runStep(ctx context.Context, env *Env, s Step, i, attempt int, watchdog time.Duration) error {
	env.ledger.book.beginStep(s.Name)
	log := env.Log.With("step", s.Name)
	start := time.Now()
	r.update(env, s.Durable, func() {
		rec := r.stepRecord(env, s.Name)
		rec.Status, rec.Attempts, rec.Start, rec.Duration, rec.Error = "running", attempt, start.UTC(), "", ""
	})
	log.Info("[started] " + s.Name)
	Notify(fmt.Sprintf("STATUS=step %d/%d: %s", i+1, len(r.Steps), s.Name))

	sctx, cancel := ctx, context.CancelFunc(func() {})
	var timeout time.Duration
	if s.Timeout != nil {
		timeout = s.Timeout(&env.State)
		sctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	x := Exec{
		Log:    log,
		Report: func(f findings.Finding) { env.recordStep(log, s.Name, []findings.Finding{f}) },
		Status: func(st string) { Notify("STATUS=" + truncate(st, 200)) },
	}
	run := s.Do(env, x)
	done := make(chan outcome, 1)
	go func() {
		apply, fs, err := run(sctx)
		done <- outcome{apply, fs, err}
	}()
	out, err := r.await(s, log, done, timeout, watchdog, env.monitorsHealthy)
	if err != nil && timeout > 0 && errors.Is(sctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	// The step's findings, then those of its failure, with the config's overrides: the
	// runner is the only place a finding is recorded and logged.
	fs := out.fs
	var fail *findings.Failure
	if errors.As(err, &fail) {
		// Folded in place, so the [failed] line and STATUS= name the cause, not its echoes.
		fail.Findings = findings.Fold(fail.Findings)
		fs = append(fs, fail.Findings...)
	}
	env.recordStep(log, s.Name, fs)
	d := time.Since(start)
	r.update(env, s.Durable, func() {
		if out.apply != nil {
			out.apply(env)
		}
		rec := r.stepRecord(env, s.Name)
		rec.Duration = d.Round(time.Millisecond).String()
		if err != nil {
			rec.Status, rec.Error = "failed", err.Error()
		} else {
			rec.Status = "ok"
		}
	})
	if err != nil {
		log.Error(fmt.Sprintf("[failed] %s: %s", s.Name, err), "attempt", attempt, "duration", d.Round(time.Millisecond).String())
		return err
	}
	log.Info(fmt.Sprintf("[finished] %s (%s)", s.Name, d.Round(time.Millisecond)))
	return nil
}

// await waits for the step, feeding the watchdog from this loop while the step is within its
// time and every monitor started so far iterates (healthy). A step that goes on past its
// timeout and the grace ignores its context: the pings stop, so systemd's watchdog restarts
// haagent (the installer runs in a unit of its own and survives that). Without a watchdog
// (run --once, tests) a hung step fails the run instead.
// An attempt given up on as hung returns no outcome: its output is never applied.
func (r *Runner) await(s Step, log *slog.Logger, done <-chan outcome, timeout, watchdog time.Duration, healthy func() bool) (outcome, error) {
	grace := r.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	var hungAt <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout + grace)
		defer t.Stop()
		hungAt = t.C
	}
	var ping <-chan time.Time
	if watchdog > 0 {
		t := time.NewTicker(watchdog / 2)
		defer t.Stop()
		ping = t.C
	}
	for {
		select {
		case out := <-done:
			return out, out.err
		case <-ping:
			if healthy() {
				Notify("WATCHDOG=1")
			}
		case <-hungAt:
			hungAt = nil
			log.Error(fmt.Sprintf("step %s is still running %s past its timeout of %s and ignores it; no more watchdog pings, so systemd restarts haagent", s.Name, grace, timeout))
			Notify("STATUS=" + truncate(fmt.Sprintf("step %s hung past its timeout (%s); waiting for systemd's watchdog to restart haagent", s.Name, timeout), 200))
			if r.OnHung != nil {
				r.OnHung(s.Name)
			}
			if watchdog == 0 {
				return outcome{}, fmt.Errorf("hung: still running %s past its timeout of %s", grace, timeout)
			}
			ping = nil
		}
	}
}

func (r *Runner) stepRecord(env *Env, name string) *state.Step {
	for i := range env.Run.Steps {
		if env.Run.Steps[i].Name == name {
			return &env.Run.Steps[i]
		}
	}
	env.Run.Steps = append(env.Run.Steps, state.Step{Name: name})
	return &env.Run.Steps[len(env.Run.Steps)-1]
}

func (r *Runner) finish(env *Env, status string, err error) error {
	end := time.Now().UTC()
	r.update(env, true, func() {
		env.Run.End = &end
		env.Run.Status = status
		if err != nil {
			env.Run.Error = err.Error()
		}
	})
	if err != nil {
		Notify("STATUS=" + truncate("boot "+status+": "+headline(err), 200))
	}
	return err
}

// update changes the run record and saves it, under ledger.mu: the supervisor saves it from
// the monitors' goroutines too (Env.save), and must never see it half changed. Durable waits
// until the record is on disk; otherwise it is written behind the boot (saver).
func (r *Runner) update(env *Env, durable bool, change func()) {
	env.ledger.mu.Lock()
	defer env.ledger.mu.Unlock()
	change()
	env.write(durable)
}

// sleep waits d between two attempts, feeding the watchdog while the monitors are healthy.
func sleep(ctx context.Context, d time.Duration, watchdog time.Duration, healthy func() bool) error {
	t := time.NewTimer(d)
	defer t.Stop()
	var tick <-chan time.Time
	if watchdog > 0 {
		tk := time.NewTicker(watchdog / 2)
		defer tk.Stop()
		tick = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-tick:
			if healthy() {
				Notify("WATCHDOG=1")
			}
		}
	}
}

// headline is the first finding's code and summary, or the error's first line: what STATUS=
// can hold.
func headline(err error) string {
	var fail *findings.Failure
	if errors.As(err, &fail) && len(fail.Findings) > 0 {
		return fail.Findings[0].String()
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/backoff"
	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/state"
	"github.com/haagent/haagent/internal/supervisor"
)

// The Auto Scaling part of the boot. Its state (membership, the launch lifecycle action, what
// the boot asked for) has one home, asg.State; what acts on it beside the steps are monitors:
// asg-lookup (a lookup that failed at boot, retried), lifecycle-heartbeats and
// replacement-guard. Nothing here blocks the boot: CircleCI coming up matters more than the
// group's bookkeeping, and a hook that defaults to CONTINUE puts the instance in service on
// its own.

// autoScaling is the boot's Auto Scaling state and the monitor it stops and starts itself.
type autoScaling struct {
	asg.State
	mu         sync.Mutex
	heartbeats *supervisor.Running // nil while none run
	every      time.Duration       // their cadence, for a restart after a failed completion
}

// Monitor names (HAAGENT_MONITOR in the journal, the run record's monitors).
const (
	monitorASGLookup  = "asg-lookup"
	monitorHeartbeats = "lifecycle-heartbeats"
	monitorGuard      = "replacement-guard"
)

// setUpASG is the asg step: find the group, check it, keep the launch lifecycle action alive.
// Its findings are the step's. A lookup that fails (a throttled DescribeAutoScalingInstances,
// a route not yet up) is not the end of self-healing: the asg-lookup monitor retries it for
// as long as haagent runs and does, once it succeeds, what this step and the later ones would
// have done.
func setUpASG(ctx context.Context, env *Env) []findings.Finding {
	a := env.Config.ASG
	if !a.Enabled {
		env.Log.Info("the Auto Scaling part is disabled in the config (asg.enabled: false)")
		env.asg.SetMembership(asg.Disabled)
		return nil
	}
	if cli := env.asg.Client(); cli != nil {
		fs, _ := joinedGroup(ctx, env, cli) // the step again: check again
		return fs
	}
	region := a.Region
	if region == "" {
		region = env.Instance.Region
	}
	cli, err := asg.New(ctx, asg.Options{InstanceID: env.Instance.InstanceID, Region: region, Endpoint: a.Endpoint,
		Hook: a.LifecycleHook, Log: env.Log})
	if err != nil {
		// No region, a broken SDK configuration: nothing a retry changes.
		env.asg.SetMembership(asg.Disabled)
		return []findings.Finding{findings.New(findings.ASGAPIFailed, env.Instance.InstanceID, "cannot set up Auto Scaling access", err.Error())}
	}
	group, err := resolveGroup(ctx, env, cli)
	if err != nil {
		env.Log.Warn("cannot look up the instance's Auto Scaling group; the boot goes on and the "+monitorASGLookup+" monitor retries the lookup in the background",
			"error", err.Error())
		env.asg.SetMembership(asg.MemberUnknown)
		env.monitors().Start(lookupMonitor(env, cli, err))
		return nil
	}
	if group == "" {
		env.asg.SetMembership(asg.NotMember)
		return []findings.Finding{findings.New(findings.ASGNotMember, env.Instance.InstanceID, "instance "+env.Instance.InstanceID+" is in no Auto Scaling group", "")}
	}
	fs, _ := joinedGroup(ctx, env, cli)
	// At the asg step nothing can have asked for the completion or the guard yet.
	env.asg.Join(cli)
	return fs
}

func resolveGroup(ctx context.Context, env *Env, cli *asg.Client) (string, error) {
	return cli.Resolve(ctx, env.Config.ASG.Group, func(ctx context.Context) (string, error) { return env.IMDS.Tag(ctx, asg.GroupTag) })
}

// joinedGroup is what the boot does once the group is known: check the group's settings, ask
// once whether a launch action waits, and keep it alive while it does. It runs before the
// client is published (asg.State.Join), so the completion never races the first heartbeat.
func joinedGroup(ctx context.Context, env *Env, cli *asg.Client) ([]findings.Finding, error) {
	a := env.Config.ASG
	chk, err := cli.CheckGroup(ctx)
	fs := chk.Findings
	if err != nil {
		fs = append(fs, apiFinding(err, cli.Group))
	}
	env.Log.Info("Auto Scaling group checked", "group", cli.Group, "hook", a.LifecycleHook, "findings", findings.Codes(chk.Findings))
	if a.LifecycleHook == "" || env.asg.Lifecycle() != asg.LifecycleUnknown {
		return fs, err
	}
	// A first heartbeat at once: haagent may start late in the instance's boot, and its answer
	// tells whether a launch action waits at all.
	err = cli.Heartbeat(ctx)
	switch {
	case errors.Is(err, asg.ErrNoLifecycleAction):
		env.asg.SetLifecycle(asg.LifecycleNone)
		env.Log.Info("no launch lifecycle action waits for this instance (a reboot, or the group already put it in service): nothing to complete",
			"group", cli.Group, "hook", a.LifecycleHook)
		return fs, nil
	case err != nil:
		fs = append(fs, apiFinding(err, cli.Group+"/"+a.LifecycleHook))
		var ae *asg.APIError
		if errors.As(err, &ae) && ae.Denied() {
			return fs, nil
		}
	default:
		env.asg.SetLifecycle(asg.LifecyclePending)
	}
	every := asg.HeartbeatEvery(a.HeartbeatEvery.D(), chk.HeartbeatTimeout)
	env.startHeartbeats(cli, every)
	env.Log.Info("keeping the launch lifecycle action alive while the boot runs", "group", cli.Group, "hook", a.LifecycleHook, "every", every.String())
	return fs, nil
}

// startHeartbeats runs the lifecycle-heartbeats monitor.
func (env *Env) startHeartbeats(cli *asg.Client, every time.Duration) {
	env.asg.mu.Lock()
	defer env.asg.mu.Unlock()
	env.asg.MoveLifecycle(asg.LifecycleHeartbeating, asg.LifecyclePending)
	env.asg.every = every
	target := cli.Group + "/" + cli.Hook()
	env.asg.heartbeats = env.monitors().Start(supervisor.Monitor{
		Name: monitorHeartbeats,
		// One heartbeat is at most a few SDK attempts of 30 s each; the wait between two wakes
		// every asg.AliveEvery.
		Within: 5 * time.Minute,
		Run: func(ctx context.Context, h *supervisor.Handle) error {
			err := cli.Heartbeats(ctx, every, nil, h.Alive)
			if err == nil {
				return nil // stopped
			}
			// Gone while the boot still ran: expired, unless the boot completed it meanwhile.
			if env.asg.MoveLifecycle(asg.LifecycleExpired, asg.LifecyclePending, asg.LifecycleHeartbeating) {
				h.Set(findings.New(findings.ASGLifecycleExpired, target, "the launch lifecycle action ended while the boot was still running", err.Error()))
			}
			env.asg.MoveLifecycle(asg.LifecycleNone, asg.LifecycleUnknown) // none waited after all
			return supervisor.ErrDone
		},
	})
}

// stopHeartbeats ends the heartbeats and waits until none is in flight, so none lands after
// the action is completed. It returns their cadence and whether they ran.
func (env *Env) stopHeartbeats() (time.Duration, bool) {
	env.asg.mu.Lock()
	r, every := env.asg.heartbeats, env.asg.every
	env.asg.heartbeats = nil
	env.asg.mu.Unlock()
	if r == nil {
		return every, false
	}
	r.Stop()
	env.asg.MoveLifecycle(asg.LifecyclePending, asg.LifecycleHeartbeating)
	return every, true
}

// completeLifecycle is the lifecycle-complete step: tell the group the instance is ready
// (CONTINUE puts it in service and behind a load balancer). When the group is not known yet,
// the asg-lookup monitor completes the action once it finds it.
func completeLifecycle(ctx context.Context, env *Env) ([]findings.Finding, error) {
	cli := env.asg.WantComplete()
	if cli == nil {
		m, _, _ := env.asg.Snapshot()
		if m == asg.MemberUnknown && env.Config.ASG.Enabled {
			env.Log.Info("the Auto Scaling group is not known yet (its lookup failed at boot); the " + monitorASGLookup + " monitor completes the launch lifecycle action once it finds the group")
			return nil, nil
		}
		env.Log.Info("no Auto Scaling group to tell (see the asg step): nothing to complete", "membership", m.String())
		return nil, nil
	}
	return completeWith(ctx, env, cli)
}

// completeWith completes the launch lifecycle action through cli. A transient failure is
// returned (the caller tries again) with the heartbeats running again meanwhile.
func completeWith(ctx context.Context, env *Env, cli *asg.Client) ([]findings.Finding, error) {
	hook := env.Config.ASG.LifecycleHook
	if hook == "" {
		env.Log.Info("no launch lifecycle hook configured (asg.lifecycle_hook): nothing to complete", "group", cli.Group)
		return nil, nil
	}
	switch env.asg.Lifecycle() {
	case asg.LifecycleNone, asg.LifecycleCompleted, asg.LifecycleExpired:
		env.Log.Info("no launch lifecycle action waits for this instance: nothing to complete", "group", cli.Group, "hook", hook)
		return nil, nil
	}
	every, beating := env.stopHeartbeats()
	err := cli.Complete(ctx)
	var ae *asg.APIError
	switch {
	case err == nil:
		env.asg.SetLifecycle(asg.LifecycleCompleted)
		env.Log.Info("launch lifecycle action completed with CONTINUE: the group puts the instance in service", "group", cli.Group, "hook", hook)
	case errors.Is(err, asg.ErrNoLifecycleAction):
		if env.asg.MoveLifecycle(asg.LifecycleExpired, asg.LifecyclePending, asg.LifecycleHeartbeating) {
			return []findings.Finding{findings.New(findings.ASGLifecycleExpired, cli.Group+"/"+hook,
				"the launch lifecycle action ended before the boot completed", err.Error())}, nil
		}
		env.asg.SetLifecycle(asg.LifecycleNone)
		env.Log.Info("no launch lifecycle action to complete", "group", cli.Group, "hook", hook)
	case errors.As(err, &ae) && ae.Denied():
		return []findings.Finding{ae.Finding(cli.Group + "/" + hook)}, nil
	default:
		// Transient: tried again; the action is kept alive meanwhile.
		if beating {
			env.startHeartbeats(cli, every)
		}
		return nil, err
	}
	return nil, nil
}

// lookupMonitor retries the group lookup that failed at boot, with backoff, until it succeeds;
// then it does what the boot would have done with the group: the checks and the heartbeats
// (while the launch action still waits), the guard (when the frontend was up already), the
// lifecycle completion (when the boot already reached it). Its findings say where it stands.
func lookupMonitor(env *Env, cli *asg.Client, first error) supervisor.Monitor {
	id := env.Instance.InstanceID
	// The heartbeat cadence bounds the wait: the action waiting for this instance must hear
	// from it before its heartbeat timeout.
	every := asg.HeartbeatEvery(env.Config.ASG.HeartbeatEvery.D(), 0)
	policy := backoff.Policy{Base: min(10*time.Second, every), Max: every}
	return supervisor.Monitor{
		Name:   monitorASGLookup,
		Within: 5 * time.Minute,
		Run: func(ctx context.Context, h *supervisor.Handle) error {
			failed := func(err error) {
				f := apiFinding(err, id)
				f.Summary = "cannot look up the instance's Auto Scaling group: self-healing waits until it succeeds; haagent retries it in the background"
				h.Set(f)
			}
			err := first
			for n := 1; ; n++ {
				if err != nil {
					failed(err)
					if !waitAlive(ctx, h, policy.Delay(n)) {
						return nil
					}
				}
				var group string
				group, err = resolveGroup(ctx, env, cli)
				if ctx.Err() != nil {
					return nil
				}
				if err != nil {
					h.Log().Warn("the Auto Scaling group lookup failed again; retrying", "attempt", n+1, "error", err.Error())
					continue
				}
				if group == "" {
					env.asg.SetMembership(asg.NotMember)
					h.Set(findings.New(findings.ASGNotMember, id, "instance "+id+" is in no Auto Scaling group", ""))
					return supervisor.ErrDone
				}
				break
			}
			h.Log().Info("the Auto Scaling group is known now: taking over what the boot would have done with it", "group", cli.Group)
			fs, _ := joinedGroup(ctx, env, cli)
			h.Set(fs...)
			complete, guard := env.asg.Join(cli)
			if guard {
				env.startGuard(cli)
			}
			for n := 1; complete; n++ {
				cfs, err := completeWith(ctx, env, cli)
				if err == nil {
					h.Set(append(fs, cfs...)...)
					break
				}
				h.Set(append(fs, apiFinding(err, cli.Group+"/"+cli.Hook()))...)
				if !waitAlive(ctx, h, policy.Delay(n)) {
					return nil
				}
			}
			return supervisor.ErrDone
		},
	}
}

// waitAlive waits d, or until ctx ends (false), saying it is alive meanwhile.
func waitAlive(ctx context.Context, h *supervisor.Handle, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	wake := time.NewTicker(min(d, asg.AliveEvery))
	defer wake.Stop()
	for {
		h.Alive()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-wake.C:
		}
	}
}

func apiFinding(err error, target string) findings.Finding {
	var ae *asg.APIError
	if errors.As(err, &ae) {
		return ae.Finding(target)
	}
	return findings.New(findings.ASGAPIFailed, target, "the Auto Scaling part failed", err.Error())
}

// startGuard starts the replacement guard once the frontend was up on this instance: now if
// the group is known, else when the asg-lookup monitor finds it.
func startGuard(env *Env) {
	if cli := env.asg.WantGuard(); cli != nil {
		env.startGuard(cli)
	}
}

// startGuard runs the replacement-guard monitor: while the frontend is down, it takes the
// replacement decision every recheck_every. Started twice, it runs once.
func (env *Env) startGuard(cli *asg.Client) {
	if env.Watcher == nil {
		return
	}
	a := env.Config.ASG
	g := &asg.Guard{
		Enabled: a.Replace.Enabled, FailingFor: a.Replace.FailingFor.D(), Instance: env.Instance.InstanceID, ASG: cli, Log: env.Log,
		Probe:  func(ctx context.Context) []findings.Finding { return runProbes(ctx, env).Findings },
		Keys:   func(ctx context.Context) ([]string, error) { return keysNotInS3(ctx, env) },
		Budget: &asg.Budget{Bucket: env.Bucket, Max: a.Replace.Budget, Window: a.Replace.Window.D(), DailyMax: a.Replace.DailyBudget},
		Hold:   func(ctx context.Context) string { return replacementHold(ctx, env) },
	}
	env.monitors().Start(supervisor.Monitor{
		Name: monitorGuard,
		// A decision runs the probes, backs the keys up and calls Auto Scaling, each bounded.
		Within: 30 * time.Minute,
		Run:    func(ctx context.Context, h *supervisor.Handle) error { return guard(ctx, env, h, g, a.Replace) },
	})
}

func guard(ctx context.Context, env *Env, h *supervisor.Handle, g *asg.Guard, c config.Replace) error {
	poll := env.Watcher.Poll()
	t := time.NewTicker(poll)
	defer t.Stop()
	var since, next time.Time
	for {
		h.Alive()
		s, err := env.Watcher.Inspect(ctx)
		state := s.String()
		if err != nil {
			state = "unreachable through the Docker engine (" + err.Error() + ")"
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil && s.Ready():
			if !since.IsZero() {
				env.Log.Info("the frontend is up again; no replacement", "down_for", time.Since(since).Round(time.Second).String())
				h.Set() // the last decision is history
			}
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
			next = since.Add(c.FailingFor.D())
			env.Log.Warn(fmt.Sprintf("the frontend is down (%s); a replacement is considered if it stays down for %s", state, c.FailingFor.D()),
				"container", env.Config.Watch.Container)
		case !time.Now().Before(next):
			d := g.Decide(ctx, state, since)
			if d.Finding != nil {
				// Decide logged it in its own words; the record keeps the latest decision.
				h.Keep(*d.Finding)
			}
			if d.Replace {
				return supervisor.ErrDone
			}
			next = time.Now().Add(c.RecheckEvery.D())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// replacementHold is why a person or Replicated holds replacements now, or "": a maintenance
// window (haagent maintenance on), or Replicated meaning the app to be down or moving. When
// replicatedctl does not answer, nothing is held on its account: a wedged Replicated is local
// to this machine, which a new instance fixes.
func replacementHold(ctx context.Context, env *Env) string {
	m, err := state.LoadMaintenance(env.Path(state.MaintenancePath))
	if err != nil {
		return err.Error() // a marker nobody can read still meant "hold"
	}
	if m.Active(time.Now()) {
		why := "maintenance until " + m.Until.Local().Format(time.RFC3339) + " (haagent maintenance on"
		if m.Reason != "" {
			why += ": " + m.Reason
		}
		return why + "); `haagent maintenance off` ends it"
	}
	app, err := replicated.ReadAppStatus(ctx, env.Root, 30*time.Second)
	if err != nil {
		env.Log.Debug("cannot read Replicated's app status; not holding the replacement on its account", "error", err.Error())
		return ""
	}
	return app.HoldReason()
}

// keysNotInS3 backs the keys up first, then names the ones still not in S3 (a conflict counts:
// the bucket's copy is not this machine's key).
func keysNotInS3(ctx context.Context, env *Env) ([]string, error) {
	release, err := env.lockForWrite()
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := backup.Keys(ctx, env.Bucket, env.keysOptions())
	if err != nil {
		return nil, err
	}
	return append(res.NotBackedUp, res.Conflicts...), nil
}

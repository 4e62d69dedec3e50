package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/backoff"
	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/state"
	"github.com/haagent/haagent/internal/supervisor"
)

// The Auto Scaling part of the boot. Its state (membership, the launch lifecycle action,
// whether the boot asked for the completion) has one home, asg.State, inside autoScaling,
// which the asg and lifecycle-complete steps get as their input and the monitors share. Unlike
// other steps' monitors, the Auto Scaling ones are started by this part itself, not returned:
// they start and stop each other (the heartbeats stop before the completion and start again
// when it fails; the lookup starts the heartbeats and completes the action once the group
// answers). Nothing here blocks the boot: CircleCI coming up matters more than the group's
// bookkeeping, and a hook that defaults to CONTINUE puts the instance in service on its own.

// Monitor names (HAAGENT_MONITOR in the journal, the run record's monitors).
const (
	monitorASGLookup  = "asg-lookup"
	monitorHeartbeats = "heartbeats"
	monitorGuard      = "guard"
)

// autoScaling is the boot's Auto Scaling state and what acts on it.
type autoScaling struct {
	asg.State
	env *Env // for the supervisor and what the monitors read (set by Env.autoScaling)

	mu    sync.Mutex
	every time.Duration // the heartbeats' cadence, for a restart after a failed completion
}

// autoScaling is the boot's Auto Scaling part.
func (e *Env) autoScaling() *autoScaling {
	e.asgOnce.Do(func() { e.asg.env = e })
	return &e.asg
}

type asgIn struct {
	Config   config.ASG
	Instance imds.Info
	IMDS     *imds.Client
	Auto     *autoScaling
}

// stepASG finds the instance's group, checks the settings a safe replacement relies on, and
// keeps the launch lifecycle action alive while the boot runs. A lookup that fails (a
// throttled DescribeAutoScalingInstances, a route not yet up) is not the end of self-healing:
// the asg-lookup monitor retries it for as long as haagent runs and does, once it succeeds,
// what this step and the later ones would have done.
func stepASG(ctx context.Context, x Exec, in asgIn) (struct{}, []findings.Finding, error) {
	a, auto := in.Config, in.Auto
	if !a.Enabled {
		x.Log.Info("the Auto Scaling part is disabled in the config (asg.enabled: false)")
		auto.SetMembership(asg.Disabled)
		return struct{}{}, nil, nil
	}
	if cli := auto.Client(); cli != nil {
		return struct{}{}, auto.joined(ctx, x.Log, cli), nil // the step again: check again
	}
	region := a.Region
	if region == "" {
		region = in.Instance.Region
	}
	cli, err := asg.New(ctx, asg.Options{InstanceID: in.Instance.InstanceID, Region: region, Endpoint: a.Endpoint,
		Hook: a.LifecycleHook, Log: x.Log})
	if err != nil {
		// No region, a broken SDK configuration: nothing a retry changes.
		auto.SetMembership(asg.Disabled)
		return struct{}{}, []findings.Finding{findings.New(findings.ASGAPIFailed, in.Instance.InstanceID, "cannot set up Auto Scaling access", err.Error())}, nil
	}
	resolve := func(ctx context.Context) (string, error) {
		return cli.Resolve(ctx, a.Group, func(ctx context.Context) (string, error) { return in.IMDS.Tag(ctx, asg.GroupTag) })
	}
	group, err := resolve(ctx)
	if err != nil {
		x.Log.Warn("cannot look up the instance's Auto Scaling group; the boot goes on and the "+monitorASGLookup+" monitor retries the lookup in the background",
			"error", err.Error())
		auto.SetMembership(asg.MemberUnknown)
		auto.env.monitors().Start(auto.lookupMonitor(cli, resolve, err))
		return struct{}{}, nil, nil
	}
	if group == "" {
		auto.SetMembership(asg.NotMember)
		return struct{}{}, []findings.Finding{notMember(in.Instance.InstanceID)}, nil
	}
	fs := auto.joined(ctx, x.Log, cli)
	auto.Join(cli) // at the asg step nothing can have asked for the completion yet
	return struct{}{}, fs, nil
}

func notMember(id string) findings.Finding {
	return findings.New(findings.ASGNotMember, id, "instance "+id+" is in no Auto Scaling group", "")
}

// joined is what the boot does once the group is known: check the group's settings, ask once
// whether a launch action waits, and keep it alive while it does. It runs before the client is
// published (asg.State.Join), so the completion never races the first heartbeat.
func (a *autoScaling) joined(ctx context.Context, log *slog.Logger, cli *asg.Client) []findings.Finding {
	c := a.env.Config.ASG
	chk, err := cli.CheckGroup(ctx)
	fs := chk.Findings
	if err != nil {
		fs = append(fs, apiFinding(err, cli.Group))
	}
	log.Info("Auto Scaling group checked", "group", cli.Group, "hook", c.LifecycleHook, "findings", findings.Codes(chk.Findings))
	if c.LifecycleHook == "" || a.Lifecycle() != asg.LifecycleUnknown {
		return fs
	}
	// A first heartbeat at once: haagent may start late in the instance's boot, and its answer
	// tells whether a launch action waits at all.
	err = cli.Heartbeat(ctx)
	switch {
	case errors.Is(err, asg.ErrNoLifecycleAction):
		a.SetLifecycle(asg.LifecycleNone)
		log.Info("no launch lifecycle action waits for this instance (a reboot, or the group already put it in service): nothing to complete",
			"group", cli.Group, "hook", c.LifecycleHook)
		return fs
	case err != nil:
		fs = append(fs, apiFinding(err, cli.Group+"/"+c.LifecycleHook))
		var ae *asg.APIError
		if errors.As(err, &ae) && ae.Denied() {
			return fs
		}
	default:
		a.SetLifecycle(asg.LifecyclePending)
	}
	every := asg.HeartbeatEvery(c.HeartbeatEvery.D(), chk.HeartbeatTimeout)
	a.startHeartbeats(cli, every)
	log.Info("keeping the launch lifecycle action alive while the boot runs", "group", cli.Group, "hook", c.LifecycleHook, "every", every.String())
	return fs
}

// startHeartbeats runs the heartbeats monitor.
func (a *autoScaling) startHeartbeats(cli *asg.Client, every time.Duration) {
	a.mu.Lock()
	a.every = every
	a.mu.Unlock()
	a.MoveLifecycle(asg.LifecycleHeartbeating, asg.LifecyclePending)
	target := cli.Group + "/" + cli.Hook()
	a.env.monitors().Start(supervisor.Monitor{
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
			if a.MoveLifecycle(asg.LifecycleExpired, asg.LifecyclePending, asg.LifecycleHeartbeating) {
				h.Set(findings.New(findings.ASGLifecycleExpired, target, "the launch lifecycle action ended while the boot was still running", err.Error()))
			}
			a.MoveLifecycle(asg.LifecycleNone, asg.LifecycleUnknown) // none waited after all
			return supervisor.ErrDone
		},
	})
}

// stopHeartbeats ends the heartbeats and waits until none is in flight, so none lands after
// the action is completed. It returns their cadence and whether they ran.
func (a *autoScaling) stopHeartbeats() (time.Duration, bool) {
	ran := a.env.monitors().Stop(monitorHeartbeats)
	a.MoveLifecycle(asg.LifecyclePending, asg.LifecycleHeartbeating)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.every, ran
}

type lifecycleIn struct {
	Enabled bool
	Auto    *autoScaling
}

// stepLifecycleComplete tells the group the instance is ready: CONTINUE puts it in service
// (and behind a load balancer). It runs once the frontend is up, before the keys backup, which
// is what a later replacement needs, not what this instance needs to serve. When the group is
// not known yet, the asg-lookup monitor completes the action once it finds it.
func stepLifecycleComplete(ctx context.Context, x Exec, in lifecycleIn) (struct{}, []findings.Finding, error) {
	cli := in.Auto.WantComplete()
	if cli == nil {
		m, _, _ := in.Auto.Snapshot()
		if m == asg.MemberUnknown && in.Enabled {
			x.Log.Info("the Auto Scaling group is not known yet (its lookup failed at boot); the " + monitorASGLookup + " monitor completes the launch lifecycle action once it finds the group")
			return struct{}{}, nil, nil
		}
		x.Log.Info("no Auto Scaling group to tell (see the asg step): nothing to complete")
		return struct{}{}, nil, nil
	}
	fs, err := in.Auto.complete(ctx, x.Log, cli)
	return struct{}{}, fs, err
}

// complete completes the launch lifecycle action through cli. A transient failure is returned
// (the caller tries again) with the heartbeats running again meanwhile.
func (a *autoScaling) complete(ctx context.Context, log *slog.Logger, cli *asg.Client) ([]findings.Finding, error) {
	hook := a.env.Config.ASG.LifecycleHook
	if hook == "" {
		log.Info("no launch lifecycle hook configured (asg.lifecycle_hook): nothing to complete", "group", cli.Group)
		return nil, nil
	}
	switch a.Lifecycle() {
	case asg.LifecycleNone, asg.LifecycleCompleted, asg.LifecycleExpired:
		log.Info("no launch lifecycle action waits for this instance: nothing to complete", "group", cli.Group, "hook", hook)
		return nil, nil
	}
	every, beating := a.stopHeartbeats()
	err := cli.Complete(ctx)
	var ae *asg.APIError
	switch {
	case err == nil:
		a.SetLifecycle(asg.LifecycleCompleted)
		log.Info("launch lifecycle action completed with CONTINUE: the group puts the instance in service", "group", cli.Group, "hook", hook)
	case errors.Is(err, asg.ErrNoLifecycleAction):
		if a.MoveLifecycle(asg.LifecycleExpired, asg.LifecyclePending, asg.LifecycleHeartbeating) {
			return []findings.Finding{findings.New(findings.ASGLifecycleExpired, cli.Group+"/"+hook,
				"the launch lifecycle action ended before the boot completed", err.Error())}, nil
		}
		a.SetLifecycle(asg.LifecycleNone)
		log.Info("no launch lifecycle action to complete", "group", cli.Group, "hook", hook)
	case errors.As(err, &ae) && ae.Denied():
		return []findings.Finding{ae.Finding(cli.Group + "/" + hook)}, nil
	case ctx.Err() != nil:
		return nil, err // haagent stops: nothing to keep alive
	default:
		// Transient: tried again; the action is kept alive meanwhile.
		if beating {
			a.startHeartbeats(cli, every)
		}
		return nil, err
	}
	return nil, nil
}

// lookupMonitor retries the group lookup that failed at boot, with backoff, until it succeeds;
// then it does what the boot would have done with the group: the checks and the heartbeats
// (while the launch action still waits) and the lifecycle completion (when the boot already
// reached it); the guard, waiting for the group, takes it from the state. Its findings say
// where it stands.
func (a *autoScaling) lookupMonitor(cli *asg.Client, resolve func(context.Context) (string, error), first error) supervisor.Monitor {
	id := a.env.Instance.InstanceID
	// The heartbeat cadence bounds the wait: the action waiting for this instance must hear
	// from it before its heartbeat timeout.
	every := asg.HeartbeatEvery(a.env.Config.ASG.HeartbeatEvery.D(), 0)
	policy := backoff.Policy{Base: min(10*time.Second, every), Max: every}
	return supervisor.Monitor{
		Name: monitorASGLookup,
		// A lookup and, once it succeeds, the checks, a heartbeat and the completion: a few
		// Auto Scaling calls in a row, each at most three SDK attempts of 30 s.
		Within: 15 * time.Minute,
		Run: func(ctx context.Context, h *supervisor.Handle) error {
			err := first
			for n := 1; ; n++ {
				if err != nil {
					f := apiFinding(err, id)
					f.Summary = "cannot look up the instance's Auto Scaling group: self-healing waits until it succeeds; haagent retries it in the background"
					h.Set(f)
					if !waitAlive(ctx, h, policy.Delay(n)) {
						return nil
					}
				}
				var group string
				group, err = resolve(ctx)
				if ctx.Err() != nil {
					return nil
				}
				if err != nil {
					h.Log().Warn("the Auto Scaling group lookup failed again; retrying", "attempt", n+1, "error", err.Error())
					continue
				}
				if group == "" {
					a.SetMembership(asg.NotMember)
					h.Set(notMember(id))
					return supervisor.ErrDone
				}
				break
			}
			log := h.Log()
			log.Info("the Auto Scaling group is known now: taking over what the boot would have done with it", "group", cli.Group)
			h.Alive()
			fs := a.joined(ctx, log, cli)
			h.Set(fs...)
			h.Alive()
			for n := 1; a.Join(cli); n++ {
				cfs, err := a.complete(ctx, log, cli)
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

// guardMonitor watches the frontend after it was once up on this instance and, while it is
// down, takes the replacement decision every recheck_every. While the group is not known (its
// lookup failed at boot and is retried) it waits for it; without a group or a watcher it has
// nothing to do.
func guardMonitor(env *Env) supervisor.Monitor {
	return supervisor.Monitor{
		Name: monitorGuard,
		// A decision runs the probes, backs the keys up and calls Auto Scaling, each bounded.
		Within: 30 * time.Minute,
		Run: func(ctx context.Context, h *supervisor.Handle) error {
			if env.Watcher == nil {
				return supervisor.ErrDone
			}
			auto := env.autoScaling()
			waiting := false
			for {
				switch m, _, cli := auto.Snapshot(); m {
				case asg.Member:
					return guard(ctx, env, h, newGuard(env, cli, h.Alive), env.Config.ASG.Replace)
				case asg.MemberUnknown:
					if !waiting {
						h.Log().Info("the replacement guard waits for the Auto Scaling group (its lookup is retried by the " + monitorASGLookup + " monitor)")
						waiting = true
					}
					if !waitAlive(ctx, h, env.Watcher.Poll()) {
						return nil
					}
				default:
					return supervisor.ErrDone // no group, or the Auto Scaling part is off
				}
			}
		},
	}
}

// newGuard is the guard of this boot; alive is its monitor's, told after each key the backup
// before a replacement uploads or compares.
func newGuard(env *Env, cli *asg.Client, alive func()) *asg.Guard {
	a := env.Config.ASG
	return &asg.Guard{
		Enabled: a.Replace.Enabled, FailingFor: a.Replace.FailingFor.D(), Instance: env.Instance.InstanceID, ASG: cli, Log: env.Log,
		Probe:  func(ctx context.Context) []findings.Finding { return runProbes(ctx, env).Findings },
		Keys:   func(ctx context.Context) ([]string, error) { return keysNotInS3(ctx, env, alive) },
		Budget: &asg.Budget{Bucket: env.Bucket, Max: a.Replace.Budget, Window: a.Replace.Window.D(), DailyMax: a.Replace.DailyBudget},
		Hold:   func(ctx context.Context) string { return replacementHold(ctx, env) },
	}
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
				// Decide logged it in its own words: recorded, not logged again.
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
	m, err := state.LoadMaintenance(env.Path(layout.MaintenanceFile))
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
func keysNotInS3(ctx context.Context, env *Env, alive func()) ([]string, error) {
	release, err := env.lockForWrite()
	if err != nil {
		return nil, err
	}
	defer release()
	o := env.keysOptions()
	o.Progress = alive
	res, err := backup.Keys(ctx, env.Bucket, o)
	if err != nil {
		return nil, err
	}
	return append(res.NotBackedUp, res.Conflicts...), nil
}

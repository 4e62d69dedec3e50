package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/state"
)

type lifecycleState int

const (
	lifecycleUnknown lifecycleState = iota // not asked, or the question failed
	lifecyclePending                       // a heartbeat went through: the action waits for us
	lifecycleNone                          // no action waits (a reboot, or it expired)
)

// stepASG finds the instance's group, checks the settings a safe replacement relies on, and
// keeps the launch lifecycle action alive while the boot runs. Nothing here blocks the boot:
// CircleCI coming up matters more than the group's bookkeeping, and a hook that defaults to
// CONTINUE puts the instance in service on its own.
func stepASG(ctx context.Context, env *Env) error {
	a := env.Config.ASG
	if !a.Enabled {
		env.Log.Info("the Auto Scaling part is disabled in the config (asg.enabled: false)")
		return nil
	}
	if env.ASG == nil {
		region := a.Region
		if region == "" {
			region = env.Instance.Region
		}
		cli, err := asg.New(ctx, asg.Options{InstanceID: env.Instance.InstanceID, Region: region, Endpoint: a.Endpoint,
			Hook: a.LifecycleHook, Log: env.Log})
		if err != nil {
			// Like every Auto Scaling problem, a finding, not a reason to hold the boot.
			env.Report(findings.New(findings.ASGAPIFailed, env.Instance.InstanceID, "cannot set up Auto Scaling access", err.Error()))
			return nil
		}
		group, err := cli.Resolve(ctx, a.Group, func(ctx context.Context) (string, error) { return env.IMDS.Tag(ctx, asg.GroupTag) })
		if err != nil {
			env.Report(apiFinding(err, env.Instance.InstanceID))
			return nil // the next boot asks again
		}
		if group == "" {
			env.Report(findings.New(findings.ASGNotMember, env.Instance.InstanceID, "instance "+env.Instance.InstanceID+" is in no Auto Scaling group", ""))
			return nil
		}
		env.ASG = cli
	}
	chk, err := env.ASG.CheckGroup(ctx)
	env.ReportAll(chk.Findings)
	if err != nil {
		env.Report(apiFinding(err, env.ASG.Group))
	}
	env.Log.Info("Auto Scaling group checked", "group", env.ASG.Group, "hook", a.LifecycleHook, "findings", findings.Codes(chk.Findings))
	if a.LifecycleHook == "" || env.heartbeats != nil {
		return nil
	}
	// A first heartbeat at once: haagent may start late in the instance's boot, and its answer
	// tells whether a launch action waits at all.
	err = env.ASG.Heartbeat(ctx)
	switch {
	case errors.Is(err, asg.ErrNoLifecycleAction):
		env.lifecycle = lifecycleNone
		env.Log.Info("no launch lifecycle action waits for this instance (a reboot, or the group already put it in service): nothing to complete",
			"group", env.ASG.Group, "hook", a.LifecycleHook)
		return nil
	case err != nil:
		env.Report(apiFinding(err, env.ASG.Group+"/"+a.LifecycleHook))
		var ae *asg.APIError
		if errors.As(err, &ae) && ae.Denied() {
			return nil
		}
	default:
		env.lifecycle = lifecyclePending
	}
	env.heartbeats = &heartbeats{every: asg.HeartbeatEvery(a.HeartbeatEvery.D(), chk.HeartbeatTimeout)}
	env.heartbeats.start(env.monitorCtx(), env)
	env.Log.Info("keeping the launch lifecycle action alive while the boot runs", "group", env.ASG.Group, "hook", a.LifecycleHook, "every", env.heartbeats.every.String())
	return nil
}

// heartbeats is the goroutine that records lifecycle heartbeats.
type heartbeats struct {
	every  time.Duration
	cancel context.CancelFunc
	done   chan struct{}
}

func (h *heartbeats) start(ctx context.Context, env *Env) {
	hctx, cancel := context.WithCancel(ctx)
	h.cancel, h.done = cancel, make(chan struct{})
	target := env.ASG.Group + "/" + env.ASG.Hook()
	go func() {
		defer close(h.done)
		env.ASG.Heartbeats(hctx, h.every, nil, func(error) {
			env.LateFinding(findings.New(findings.ASGLifecycleExpired, target, "the launch lifecycle action ended while the boot was still running", ""))
		})
	}()
}

// stop ends the heartbeats and waits until none is in flight, so none lands after the
// action is completed.
func (h *heartbeats) stop() {
	h.cancel()
	<-h.done
}

func apiFinding(err error, target string) findings.Finding {
	var ae *asg.APIError
	if errors.As(err, &ae) {
		return ae.Finding(target)
	}
	return findings.New(findings.ASGAPIFailed, target, "the Auto Scaling part failed", err.Error())
}

// stepLifecycleComplete tells the group the instance is ready: CONTINUE puts it in service
// (and behind a load balancer). It runs once the frontend is up, before the keys backup, which
// is what a later replacement needs, not what this instance needs to serve.
func stepLifecycleComplete(ctx context.Context, env *Env) error {
	hook := env.Config.ASG.LifecycleHook
	switch {
	case env.ASG == nil:
		env.Log.Info("no Auto Scaling group to tell (see the asg step): nothing to complete")
		return nil
	case hook == "":
		env.Log.Info("no launch lifecycle hook configured (asg.lifecycle_hook): nothing to complete", "group", env.ASG.Group)
		return nil
	case env.lifecycle == lifecycleNone:
		env.Log.Info("no launch lifecycle action waits for this instance: nothing to complete", "group", env.ASG.Group, "hook", hook)
		return nil
	}
	if env.heartbeats != nil {
		env.heartbeats.stop()
	}
	err := env.ASG.Complete(ctx)
	var ae *asg.APIError
	switch {
	case err == nil:
		env.Log.Info("launch lifecycle action completed with CONTINUE: the group puts the instance in service", "group", env.ASG.Group, "hook", hook)
	case errors.Is(err, asg.ErrNoLifecycleAction):
		if env.lifecycle == lifecyclePending {
			env.Report(findings.New(findings.ASGLifecycleExpired, env.ASG.Group+"/"+hook,
				"the launch lifecycle action ended before the boot completed", err.Error()))
		} else {
			env.Log.Info("no launch lifecycle action to complete", "group", env.ASG.Group, "hook", hook)
		}
	case errors.As(err, &ae) && ae.Denied():
		env.Report(ae.Finding(env.ASG.Group + "/" + hook))
	default:
		// Transient: the runner retries; the action is kept alive meanwhile.
		if env.heartbeats != nil {
			env.heartbeats.start(env.monitorCtx(), env)
		}
		return err
	}
	env.lifecycle = lifecycleNone
	return nil
}

// startGuard watches the frontend after it was once up on this instance and, while it is down,
// takes the replacement decision every recheck_every.
func startGuard(ctx context.Context, env *Env) {
	a := env.Config.ASG
	if env.ASG == nil || env.Watcher == nil {
		return
	}
	env.monitoring.Do(func() {
		g := &asg.Guard{
			Enabled: a.Replace.Enabled, FailingFor: a.Replace.FailingFor.D(), Instance: env.Instance.InstanceID, ASG: env.ASG, Log: env.Log,
			Probe:  func(ctx context.Context) []findings.Finding { return runProbes(ctx, env).Findings },
			Keys:   func(ctx context.Context) ([]string, error) { return keysNotInS3(ctx, env) },
			Budget: &asg.Budget{Bucket: env.Bucket, Max: a.Replace.Budget, Window: a.Replace.Window.D(), DailyMax: a.Replace.DailyBudget},
			Hold:   func(ctx context.Context) string { return replacementHold(ctx, env) },
		}
		go guard(env.monitorCtx(), env, g, a.Replace)
	})
}

func guard(ctx context.Context, env *Env, g *asg.Guard, c config.Replace) {
	poll := env.Watcher.Poll()
	t := time.NewTicker(poll)
	defer t.Stop()
	var since, next time.Time
	for {
		s, err := env.Watcher.Inspect(ctx)
		state := s.String()
		if err != nil {
			state = "unreachable through the Docker engine (" + err.Error() + ")"
		}
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && s.Ready():
			if !since.IsZero() {
				env.Log.Info("the frontend is up again; no replacement", "down_for", time.Since(since).Round(time.Second).String())
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
				env.lateDecision(*d.Finding, findings.ASGReplacementWithheld, findings.ASGReplacementRequested)
			}
			if d.Replace {
				return
			}
			next = time.Now().Add(c.RecheckEvery.D())
		}
		select {
		case <-ctx.Done():
			return
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

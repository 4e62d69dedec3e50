package bootstrap

import (
	"context"
	"fmt"
	"time"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/state"
)

type lifecycleState int

const (
	lifecycleUnknown lifecycleState = iota // not asked, or the question failed
	lifecyclePending                       // a heartbeat went through: the action waits for us
	lifecycleNone                          // no action waits (a reboot, or it expired)
)

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
			env.LateFinding(findings.New("ASG_LIFECYCLE_EXPIRED", target, "the launch lifecycle action ended while the boot was still running", ""))
		})
	}()
}

// stop ends the heartbeats and waits until none is in flight, so none lands after the
// action is completed.
func (h *heartbeats) stop() {
	h.cancel()
	<-h.done
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
				env.lateDecision(*d.Finding, "ASG_REPLACEMENT_WITHHELD", "ASG_REPLACEMENT_REQUESTED")
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

package asg

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/findings"
)

// Guard decides whether a new instance would fare better than this one. A replacement runs
// the same boot from the same bucket against the same databases, so it helps only with what
// is local to this machine (a broken disk, Docker, a wedged kernel). It is asked for only when
// all of these hold, in this order:
//
//  1. the frontend has been failing for FailingFor (after it was once up on this instance);
//  2. no operator holds replacements (haagent maintenance on) and Replicated does not mean the
//     app to be down (desired state stopped, or a transition such as an upgrade under way);
//  3. every probe passes, conclusively: a database outage, a bad setting, or a probe that could
//     not tell (too many connections, a database starting up, DNS SERVFAIL) would meet the next
//     instance too;
//  4. every local encryption key is in S3: a replacement must not lose one;
//  5. replacement is enabled in the config;
//  6. the budget in the bucket has a slot (Max within Window and DailyMax within a day, across
//     instances);
//
// and it is done only once the group reports the instance UNHEALTHY: until then the guard asks
// again at each decision, without spending another slot.
type Guard struct {
	Enabled    bool
	FailingFor time.Duration
	// Probe runs the probes now.
	Probe func(ctx context.Context) []findings.Finding
	// Keys backs up the local keys and returns those still not in S3 (conflicts included).
	Keys     func(ctx context.Context) (missing []string, err error)
	Budget   *Budget
	ASG      *Client
	Instance string
	Log      *slog.Logger
	// Hold, if set, returns why replacements are held right now ("" for none): an operator's
	// maintenance window, Replicated's own intent for the app.
	Hold func(ctx context.Context) string
	// Now is the clock (tests).
	Now func() time.Time

	// asked is set once SetInstanceHealth went through and its slot was taken; the health is
	// read back until the group reports UNHEALTHY.
	asked bool
}

// inconclusive codes say a probe could not tell: not a pass.
var inconclusive = map[findings.Code]bool{findings.ProbeInconclusive: true}

// Decision is the outcome of one evaluation.
type Decision struct {
	Replace bool
	// Reason says why, in words an operator acts on.
	Reason string
	// Finding records the decision; zero when the frontend is not yet failing long enough.
	Finding *findings.Finding
}

// Decide evaluates once. state is the frontend's state in words; since is when it started
// failing. A request that went through is final: the caller stops asking.
func (g *Guard) Decide(ctx context.Context, state string, since time.Time) Decision {
	now := time.Now
	if g.Now != nil {
		now = g.Now
	}
	down := now().Sub(since).Round(time.Second)
	if down < g.FailingFor {
		return Decision{Reason: fmt.Sprintf("frontend %s for %s, under asg.replace.failing_for (%s)", state, down, g.FailingFor)}
	}
	head := fmt.Sprintf("frontend %s for %s", state, down)
	stay := func(why string) Decision {
		f := findings.New(findings.ASGReplacementWithheld, g.Instance, head+"; no replacement: "+why, "")
		g.log(false, head, why)
		return Decision{Reason: why, Finding: &f}
	}
	if g.Hold != nil {
		if why := g.Hold(ctx); why != "" {
			return stay(why)
		}
	}
	var failing []findings.Finding
	for _, f := range g.Probe(ctx) {
		if f.Severity == findings.Error || inconclusive[f.Code] {
			failing = append(failing, f)
		}
	}
	if len(failing) > 0 {
		var ev []string
		for _, f := range failing {
			ev = append(ev, f.String())
		}
		d := stay("probes fail or cannot tell (" + findings.Codes(failing) + "): a new instance would meet the same databases and settings; fix them and the frontend recovers here")
		*d.Finding = d.Finding.WithEvidence(strings.Join(ev, "; ")) // capped: many failing probes make a long list
		return d
	}
	missing, err := g.Keys(ctx)
	if err != nil {
		return stay("cannot confirm the encryption keys are in S3 (" + err.Error() + "); a replacement could lose them")
	}
	if len(missing) > 0 {
		return stay(fmt.Sprintf("%d encryption key(s) are not in S3 (%s); a replacement would lose them", len(missing), strings.Join(missing, ", ")))
	}
	if !g.Enabled {
		return stay("asg.replace.enabled is false (probes pass and keys are in S3: a replacement would be allowed otherwise)")
	}
	reason := head + "; probes pass and the encryption keys are in S3"
	if !g.asked {
		if err := g.Budget.Take(ctx, Replacement{InstanceID: g.Instance, At: now().UTC(), Reason: reason}); err != nil {
			return stay(err.Error())
		}
		g.asked = true // the slot is this request's, however many calls it takes
	}
	if err := g.ASG.SetUnhealthy(ctx); err != nil {
		return stay("marking the instance unhealthy failed (" + err.Error() + "); the budget slot stays used and the request is made again at the next decision")
	}
	// AWS can answer success and ignore the call (a grace period): believe the group's view.
	health, err := g.ASG.Health(ctx)
	if err != nil {
		return stay("marked unhealthy, but reading the instance's health back failed (" + err.Error() + "); asking again at the next decision")
	}
	if health != "UNHEALTHY" {
		return stay("marked unhealthy, but the group still reports it " + health + "; asking again at the next decision")
	}
	f := findings.New(findings.ASGReplacementRequested, g.Instance, "marked unhealthy for replacement: "+reason, "")
	g.log(true, head, reason)
	return Decision{Replace: true, Reason: reason, Finding: &f}
}

func (g *Guard) log(replace bool, head, why string) {
	if g.Log == nil {
		return
	}
	if replace {
		g.Log.Warn("replacement requested: "+why+"; marked unhealthy, the group terminates this instance and launches another", "decision", "replace", "instance_id", g.Instance)
		return
	}
	g.Log.Warn(head+"; replacement withheld: "+why, "decision", "stay", "instance_id", g.Instance)
}

package asg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

const bkt = "circleci-ha"

func newBudget(t *testing.T, max int) (*Budget, *peertest.S3) {
	t.Helper()
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	return &Budget{Bucket: b, Max: max, Window: time.Hour}, s
}

func TestBudgetAcrossInstances(t *testing.T) {
	ctx := context.Background()
	b, s := newBudget(t, 2)
	t0 := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)
	if err := b.Take(ctx, Replacement{InstanceID: "i-1", At: t0}); err != nil {
		t.Fatal(err)
	}
	if err := b.Take(ctx, Replacement{InstanceID: "i-2", At: t0.Add(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	err := b.Take(ctx, Replacement{InstanceID: "i-3", At: t0.Add(20 * time.Minute)})
	var spent *SpentError
	if !errors.As(err, &spent) || len(spent.Recent) != 2 || !strings.Contains(err.Error(), "i-1 at 2026-11-28T03:00:00Z") {
		t.Fatalf("third within the hour: %v", err)
	}
	// Past the window the oldest no longer counts.
	if err := b.Take(ctx, Replacement{InstanceID: "i-3", At: t0.Add(61 * time.Minute)}); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	var led Ledger
	if err := json.Unmarshal(s.Object(bkt, LedgerKey), &led); err != nil || len(led.Replacements) != 3 || led.Version != 1 {
		t.Fatalf("ledger: %+v %v", led, err)
	}
}

// Six instances race for two slots: the conditional writes let exactly two through.
func TestBudgetRace(t *testing.T) {
	b, _ := newBudget(t, 2)
	now := time.Now().UTC()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.Take(context.Background(), Replacement{InstanceID: fmt.Sprintf("i-%d", i), At: now})
		}()
	}
	wg.Wait()
	granted := 0
	for _, err := range errs {
		var spent *SpentError
		switch {
		case err == nil:
			granted++
		case !errors.As(err, &spent):
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if granted != 2 {
		t.Fatalf("%d granted, want 2", granted)
	}
}

// An hourly budget alone lets a fault that follows every instance replace one an hour for
// days: the daily cap stops it.
func TestBudgetDailyCap(t *testing.T) {
	ctx := context.Background()
	b, _ := newBudget(t, 2)
	b.DailyMax = 3
	t0 := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)
	for i := 0; i < 3; i++ {
		if err := b.Take(ctx, Replacement{InstanceID: fmt.Sprintf("i-%d", i), At: t0.Add(time.Duration(i) * 61 * time.Minute)}); err != nil {
			t.Fatalf("replacement %d: %v", i, err)
		}
	}
	err := b.Take(ctx, Replacement{InstanceID: "i-3", At: t0.Add(4 * 61 * time.Minute)})
	var spent *SpentError
	if !errors.As(err, &spent) || spent.Window != 24*time.Hour || len(spent.Recent) != 3 {
		t.Fatalf("fourth within a day: %v", err)
	}
	if err := b.Take(ctx, Replacement{InstanceID: "i-4", At: t0.Add(25 * time.Hour)}); err != nil {
		t.Fatalf("a day later: %v", err)
	}
}

func TestBudgetCorruptLedgerGrantsNothing(t *testing.T) {
	b, s := newBudget(t, 2)
	s.Put(t, bkt, LedgerKey, []byte("{not json"))
	err := b.Take(context.Background(), Replacement{InstanceID: "i-1", At: time.Now()})
	if err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("corrupt ledger: %v", err)
	}
	if string(s.Object(bkt, LedgerKey)) != "{not json" {
		t.Fatal("the corrupt ledger was overwritten")
	}
}

type guardWorld struct {
	asg    *peertest.ASG
	g      *Guard
	probe  []findings.Finding
	keys   []string
	keyErr error
}

func newGuard(t *testing.T) *guardWorld {
	w := &guardWorld{asg: peertest.StartASG(t, "AKIDASGTEST", "asg-secret-key")}
	w.asg.AddGroup(healthyGroup())
	c := newClient(t, w.asg, "haagent-launch")
	c.Group = "circleci-services"
	budget, _ := newBudget(t, 1)
	now := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)
	w.g = &Guard{Enabled: true, FailingFor: 15 * time.Minute, ASG: c, Budget: budget, Instance: instance,
		Probe: func(context.Context) []findings.Finding { return w.probe },
		Keys:  func(context.Context) ([]string, error) { return w.keys, w.keyErr },
		Now:   func() time.Time { return now },
	}
	return w
}

func (w *guardWorld) sets() int { return len(w.asg.Calls("SetInstanceHealth")) }

func TestGuardDecisions(t *testing.T) {
	ctx := context.Background()
	since := time.Date(2026, 11, 28, 2, 40, 0, 0, time.UTC) // down for 20 minutes

	t.Run("not down long enough", func(t *testing.T) {
		w := newGuard(t)
		d := w.g.Decide(ctx, "not running", since.Add(10*time.Minute))
		if d.Replace || d.Finding != nil || w.sets() != 0 {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("a probe fails", func(t *testing.T) {
		w := newGuard(t)
		w.probe = []findings.Finding{findings.New(findings.PGAuthFailed, "postgres://circle@db:5432/circle", "password authentication failed", ""),
			findings.New(findings.TLSExpired, "db:5432", "expired", "")}
		w.probe[1].Severity = findings.Warning // overridden to a warning: does not hold the decision back
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 0 || d.Finding.Code != findings.ASGReplacementWithheld || !strings.Contains(d.Reason, findings.PGAuthFailed.String()) || strings.Contains(d.Reason, findings.TLSExpired.String()) {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("a probe cannot tell", func(t *testing.T) {
		// Too many connections (53300) or a database starting up: not a pass.
		w := newGuard(t)
		w.probe = []findings.Finding{findings.New(findings.ProbeInconclusive, "postgres://circle@db:5432/circle", "PostgreSQL at db:5432 refused the connection", "SQLSTATE 53300")}
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 0 || !strings.Contains(d.Reason, findings.ProbeInconclusive.String()) {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("held by an operator or by Replicated", func(t *testing.T) {
		w := newGuard(t)
		w.g.Hold = func(context.Context) string { return "maintenance until 05:00 (haagent maintenance on)" }
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 0 || !strings.Contains(d.Reason, "maintenance") {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("inside the group's grace period", func(t *testing.T) {
		// With ShouldRespectGracePeriod=true AWS answers success and ignores the call.
		w := newGuard(t)
		g := healthyGroup()
		g.InGracePeriod = true
		w.asg.AddGroup(g)
		d := w.g.Decide(ctx, "not running", since)
		if !d.Replace || len(w.asg.Unhealthy()) != 1 {
			t.Fatalf("replacement not in effect: %+v, unhealthy %v", d, w.asg.Unhealthy())
		}
	})
	t.Run("the group has not acted yet", func(t *testing.T) {
		w := newGuard(t)
		w.asg.SetIgnoresHealth("circleci-services", true)
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 1 || !strings.Contains(d.Reason, "still reports it HEALTHY") {
			t.Fatalf("first decision: %+v, %d SetInstanceHealth", d, w.sets())
		}
		// Asked again without another budget slot (the budget has one, already this request's).
		d = w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 2 || strings.Contains(d.Reason, "budget") {
			t.Fatalf("second decision: %+v, %d SetInstanceHealth", d, w.sets())
		}
		w.asg.SetIgnoresHealth("circleci-services", false)
		if d = w.g.Decide(ctx, "not running", since); !d.Replace || w.sets() != 3 {
			t.Fatalf("third decision: %+v, %d SetInstanceHealth", d, w.sets())
		}
	})
	t.Run("a key is not in S3", func(t *testing.T) {
		w := newGuard(t)
		w.keys = []string{"circle-storage-key"}
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 0 || !strings.Contains(d.Reason, "circle-storage-key") {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("keys cannot be compared", func(t *testing.T) {
		w := newGuard(t)
		w.keyErr = errors.New("listing s3://circleci-ha/circleci-encryption-keys/: AccessDenied")
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 0 || !strings.Contains(d.Reason, "AccessDenied") {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		w := newGuard(t)
		w.g.Enabled = false
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 0 || !strings.Contains(d.Reason, "asg.replace.enabled is false") {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("replace, then the budget is spent", func(t *testing.T) {
		w := newGuard(t)
		d := w.g.Decide(ctx, "not running", since)
		if !d.Replace || w.sets() != 1 || d.Finding.Code != findings.ASGReplacementRequested {
			t.Fatalf("%+v, %d SetInstanceHealth", d, w.sets())
		}
		if u := w.asg.Unhealthy(); len(u) != 1 || u[0] != instance {
			t.Fatalf("unhealthy: %v", u)
		}
		// A second instance sharing the bucket within the hour: budget 1 is spent.
		second := &Guard{Enabled: true, FailingFor: w.g.FailingFor, ASG: w.g.ASG, Budget: w.g.Budget, Instance: "i-0second",
			Probe: w.g.Probe, Keys: w.g.Keys, Now: w.g.Now}
		d = second.Decide(ctx, "not running", since)
		if d.Replace || w.sets() != 1 || !strings.Contains(d.Reason, "budget is spent") {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("SetInstanceHealth refused", func(t *testing.T) {
		w := newGuard(t)
		w.asg.Deny("SetInstanceHealth")
		d := w.g.Decide(ctx, "not running", since)
		if d.Replace || !strings.Contains(d.Reason, "autoscaling") && !strings.Contains(d.Reason, "AccessDenied") {
			t.Fatalf("%+v", d)
		}
	})
}

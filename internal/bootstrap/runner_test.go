package bootstrap

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/state"
)

func TestTheBootTableIsWellFormed(t *testing.T) {
	if err := CheckSteps(Steps); err != nil {
		t.Fatal(err)
	}
	// A fix made in the bucket (a setting, a CA) only helps once it is fetched again.
	for _, name := range []string{"validate-files", "ca-certs", "probe"} {
		i := slices.IndexFunc(Steps, func(s Step) bool { return s.Name == name })
		if i < 0 {
			t.Fatalf("no step %q", name)
		}
		if Steps[retryIndex(Steps, i)].Name != "fetch" {
			t.Errorf("step %q retries from %q, want fetch", name, Steps[retryIndex(Steps, i)].Name)
		}
	}
}

func TestMistypedRetryTargetIsAStartUpError(t *testing.T) {
	ran := 0
	step := func(context.Context, *Env) error { ran++; return nil }
	r := &Runner{Steps: []Step{{Name: "fetch", Run: step}, {Name: "probe", Run: step, RetryFrom: "fecth"}}, Once: true}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	err := r.Run(context.Background(), env)
	if err == nil || !strings.Contains(err.Error(), `"fecth"`) {
		t.Fatalf("want an error naming the unknown retry target, got %v", err)
	}
	if ran != 0 || len(env.Record.Runs) != 0 {
		t.Fatalf("steps ran (%d) or a run was recorded before the table was checked", ran)
	}
}

func TestAFailedStepGoesBackToItsRetryTarget(t *testing.T) {
	var order []string
	probeFails := 1
	step := func(name string) func(context.Context, *Env) error {
		return func(context.Context, *Env) error {
			order = append(order, name)
			if name == "probe" && probeFails > 0 {
				probeFails--
				return errors.New("SETTING_MISSING")
			}
			return nil
		}
	}
	r := &Runner{
		Steps:   []Step{{Name: "config", Run: step("config")}, {Name: "fetch", Run: step("fetch")}, {Name: "probe", Run: step("probe"), RetryFrom: "fetch"}},
		Backoff: func(int) time.Duration { return 0 },
	}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	if err := r.Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(order, ","), "config,fetch,probe,fetch,probe"; got != want {
		t.Fatalf("steps ran %s, want %s", got, want)
	}
}

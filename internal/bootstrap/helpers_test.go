package bootstrap

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/state"
)

// do is a step of a plain function, for runner tests.
func do(f func(ctx context.Context) error) Do {
	return Wire(func(*Env) struct{} { return struct{}{} },
		func(ctx context.Context, _ Exec, _ struct{}) (struct{}, []findings.Finding, error) {
			return struct{}{}, nil, f(ctx)
		},
		nil)
}

// quietEnv is a boot over rec (a fresh record when nil) that logs nowhere.
func quietEnv(in Inputs, rec *state.Record) *Env {
	if in.Log == nil {
		in.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if rec == nil {
		rec = &state.Record{Version: state.Version}
	}
	e := NewEnv(in, rec)
	if len(rec.Runs) > 0 {
		e.Run = rec.Last()
	}
	return e
}

// attempt runs one attempt of the table's step of that name through its wiring, as the runner
// does (without recording): its findings (those of a failure included) and error.
func attempt(t *testing.T, ctx context.Context, env *Env, name string) ([]findings.Finding, error) {
	t.Helper()
	i := slices.IndexFunc(Steps, func(s Step) bool { return s.Name == name })
	if i < 0 {
		t.Fatalf("no step %q", name)
	}
	var early []findings.Finding
	x := Exec{Log: env.Log.With("step", name), Report: func(f findings.Finding) { early = append(early, f) }, Status: func(string) {}}
	apply, fs, err := Steps[i].Do(env, x)(ctx)
	apply(env)
	return append(early, fs...), err
}

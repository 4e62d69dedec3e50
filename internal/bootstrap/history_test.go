package bootstrap

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/haagent/haagent/internal/state"
)

// A history holding MaxRuns instances' complete runs (a record carried from instance
// to instance) must still record this run, and never write it into an old instance's run.
func TestAHistoryOfManyInstancesStillRecordsTheRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	rec := &state.Record{Version: state.Version}
	for i := 0; i < state.MaxRuns; i++ {
		rec.Runs = append(rec.Runs, state.Run{ID: fmt.Sprintf("c%d", i), InstanceID: fmt.Sprintf("i-%d", i), Status: state.Complete})
	}
	r := &Runner{Once: true, StatePath: path, Steps: []Step{{Name: "a", Do: do(func(context.Context) error { return fmt.Errorf("boom") })}}}
	r.Run(context.Background(), quietEnv(Inputs{}, rec))
	got, err := state.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	last := got.Last()
	if last.ID == fmt.Sprintf("c%d", state.MaxRuns-1) {
		t.Fatalf("this run was trimmed away and written into instance i-%d's complete run: %+v", state.MaxRuns-1, last)
	}
}

package bootstrap

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/state"
)

// A step does not wait for the record's write of its start or end, except a Durable one: its
// start is on disk, with everything before it, when it runs; the end is on disk when Run
// returns. Every record write after the run's start is held back until step "a" runs: were
// the runner to wait for the write of a's start, a would never run.
func TestOnlyDurablePointsWaitForTheRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	release := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	gate, heldTooLong := false, false
	old := writeRecord
	t.Cleanup(func() { writeRecord = old })
	writeRecord = func(p string, data []byte) error {
		mu.Lock()
		g := gate
		mu.Unlock()
		if g {
			select {
			case <-release:
			case <-time.After(20 * time.Second): // a failure detector, not a wait for an event
				mu.Lock()
				heldTooLong = true
				mu.Unlock()
				once.Do(func() { close(release) })
			}
		}
		return old(p, data)
	}
	onDisk := func() string {
		rec, err := state.Load(path)
		if err != nil || rec.Last() == nil {
			t.Fatalf("the record on disk: %v", err)
		}
		var out []string
		for _, s := range rec.Last().Steps {
			out = append(out, s.Name+"="+s.Status)
		}
		return rec.Last().Status + ": " + strings.Join(out, " ")
	}
	var atB string
	r := &Runner{Once: true, StatePath: path,
		Started: func() { mu.Lock(); gate = true; mu.Unlock() },
		Steps: []Step{
			{Name: "a", Do: do(func(context.Context) error { once.Do(func() { close(release) }); return nil })},
			{Name: "b", Durable: true, Do: do(func(context.Context) error { atB = onDisk(); return nil })},
		}}
	if err := r.Run(context.Background(), quietEnv(Inputs{}, nil)); err != nil {
		t.Fatal(err)
	}
	if heldTooLong {
		t.Fatal("the runner waited for the record's write of a non-durable step")
	}
	if want := "running: a=ok b=running"; atB != want {
		t.Errorf("on disk when the durable step b ran: %q, want %q", atB, want)
	}
	if got, want := onDisk(), "complete: a=ok b=ok"; got != want {
		t.Errorf("on disk after Run: %q, want %q", got, want)
	}
}

// A record that already holds MaxRuns runs is trimmed when this run is added: the run's steps
// and end still reach the file (trimming copies the runs into a new slice).
func TestAFullHistoryStillRecordsTheRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	rec := &state.Record{Version: state.Version}
	for i := 0; i < state.MaxRuns; i++ {
		rec.Runs = append(rec.Runs, state.Run{ID: "old", Status: state.Failed})
	}
	r := &Runner{Once: true, StatePath: path, Steps: []Step{{Name: "a", Do: do(func(context.Context) error { return nil })}}}
	if err := r.Run(context.Background(), quietEnv(Inputs{}, rec)); err != nil {
		t.Fatal(err)
	}
	got, err := state.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	last := got.Last()
	if len(got.Runs) != state.MaxRuns || last.Status != state.Complete || len(last.Steps) != 1 || last.Steps[0].Status != "ok" {
		t.Fatalf("runs %d, the last %+v", len(got.Runs), last)
	}
}

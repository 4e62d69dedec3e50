package state

import (
	"fmt"
	"path/filepath"
	"testing"
)

// Trimming keeps the newest complete run of each of the latest instances (up to MaxRuns/2),
// however old, and the newest runs besides.
func TestTrimKeepsEachInstancesNewestCompleteRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	r := &Record{Version: Version}
	r.Runs = append(r.Runs, Run{ID: "a-old", InstanceID: "i-a", Status: Complete}, Run{ID: "a", InstanceID: "i-a", Status: Complete}, Run{ID: "b", InstanceID: "i-b", Status: Complete})
	for i := 0; i < 3*MaxRuns; i++ {
		r.Runs = append(r.Runs, Run{ID: fmt.Sprintf("f%d", i), Status: Failed})
	}
	if err := r.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Runs) != MaxRuns || !got.CompletedOn("i-a") || !got.CompletedOn("i-b") {
		t.Fatalf("runs=%d, completed a=%v b=%v", len(got.Runs), got.CompletedOn("i-a"), got.CompletedOn("i-b"))
	}
	if got.Runs[0].ID != "a" || got.Runs[1].ID != "b" || got.Last().ID != fmt.Sprintf("f%d", 3*MaxRuns-1) {
		t.Fatalf("order or choice wrong: %s %s ... %s", got.Runs[0].ID, got.Runs[1].ID, got.Last().ID)
	}
}

// With MaxRuns instances' complete runs in the history, the newest run (this boot's,
// still running) must survive the trim; the runner re-points env.Run at Last() after it.
func TestTrimKeepsNewestRunWithManyInstances(t *testing.T) {
	r := &Record{Version: Version}
	for i := 0; i < MaxRuns; i++ {
		r.Runs = append(r.Runs, Run{ID: fmt.Sprintf("c%d", i), InstanceID: fmt.Sprintf("i-%d", i), Status: Complete})
	}
	r.Runs = append(r.Runs, Run{ID: "now", Status: Running})
	if _, err := r.Encode(); err != nil {
		t.Fatal(err)
	}
	if r.Last().ID != "now" {
		t.Fatalf("the running run was trimmed away; Last() is %s (%s of %s): the runner would write this boot into it", r.Last().ID, r.Last().Status, r.Last().InstanceID)
	}
}

// The record stays within MaxRuns however many instances completed (a record carried across
// machines in an image).
func TestTrimBoundWithManyInstances(t *testing.T) {
	r := &Record{Version: Version}
	for i := 0; i < 5*MaxRuns; i++ {
		r.Runs = append(r.Runs, Run{ID: fmt.Sprintf("c%d", i), InstanceID: fmt.Sprintf("i-%d", i), Status: Complete})
	}
	r.Encode()
	if len(r.Runs) > MaxRuns {
		t.Errorf("kept %d runs (MaxRuns %d): one per instance ever completed, unbounded", len(r.Runs), MaxRuns)
	}
}

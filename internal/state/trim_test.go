package state

import (
	"fmt"
	"path/filepath"
	"testing"
)

// Trimming keeps the newest MaxRuns runs and the newest complete run of each instance, however
// old.
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

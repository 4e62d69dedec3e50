package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/state"
)

// rev15: systemd restarts haagent every 10 s (Restart=always, RestartSec=10s); each start with an
// invalid config now appends a failed run. After MaxRuns of them the instance's last "complete"
// run is trimmed away, so CompletedOn (the offline reboot, the guard at watch-start, the keys
// backup's S3-down leniency) forgets that this instance ever booted.
func TestRev15ConfigFailureLoopForgetsTheCompletedBoot(t *testing.T) {
	w := newWorld(t, "i-0rev15evict00000")
	path := filepath.Join(w.root, layout.StateFile)
	rec, err := state.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	rec.Runs = append(rec.Runs, state.Run{ID: "20261201T000000Z-1", InstanceID: "i-0rev15evict00000", Mode: "service", Start: now, End: &now, Status: state.Complete})
	if err := rec.Save(path); err != nil {
		t.Fatal(err)
	}
	if !w.record().CompletedOn("i-0rev15evict00000") {
		t.Fatal("seed not read back")
	}
	w.writeConfig(w.s3.URL, "bogus_field: 1\n")
	for i := 0; i < state.MaxRuns; i++ {
		if r := w.run("run"); r.code != 2 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
	}
	if !w.record().CompletedOn("i-0rev15evict00000") {
		t.Fatalf("after %d restarts with an invalid config (about %s of systemd's Restart=always) the record no longer knows this instance completed a boot", state.MaxRuns, time.Duration(state.MaxRuns)*10*time.Second)
	}
}

package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/state"
)

// systemd restarts haagent every 10 s on an invalid config (Restart=always, RestartSec=10s).
// The starts fold into one failed run with a count, and the instance's complete boot stays in
// the record: once the config is fixed, the reboot is a reboot (with S3 down it goes on with
// the last good files, as only a reboot may).
func TestAConfigFailureLoopKeepsTheCompletedBoot(t *testing.T) {
	const id = "i-0configloop00000"
	w := newWorld(t, id)
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("first boot: exit %d\n%s", r.code, r.stderr)
	}
	const starts = 30
	w.writeConfig(w.s3.URL, "bogus_field: 1\n")
	for i := 0; i < starts; i++ {
		if r := w.run("run"); r.code != 2 {
			t.Fatalf("start %d: exit %d\n%s", i, r.code, r.stderr)
		}
	}
	rec := w.record()
	if !rec.CompletedOn(id) {
		t.Fatalf("after %d restarts with an invalid config the record no longer knows this instance completed a boot", starts)
	}
	last := rec.Last()
	if len(rec.Runs) != 2 || last.Status != state.Failed || last.Starts != starts {
		t.Fatalf("want the boot and one failed run for %d starts; runs=%d, last=%+v", starts, len(rec.Runs), last)
	}
	st := w.run("status")
	if st.code != 1 || !strings.Contains(st.stdout, fmt.Sprintf("starts:   %d with this same failure", starts)) {
		t.Fatalf("status must say how many starts failed alike: exit %d\n%s\n%s", st.code, st.stdout, st.stderr)
	}
	// The config fixed, S3 down: a reboot goes on with the last good files.
	w.writeConfig(fmt.Sprintf("http://127.0.0.1:%d", peertest.ClosedPort(t)), "")
	r := w.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, findings.S3OfflineLastGood.String()) {
		t.Fatalf("the reboot after the config loop was taken for a first boot: exit %d\n%s", r.code, r.stderr)
	}
}

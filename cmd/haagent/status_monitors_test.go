package main

import (
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/state"
)

// `haagent status` shows the monitors that need a look: those with findings, and one being
// restarted or blocked even before it has a finding; a healthy quiet one is left out.
func TestStatusShowsTroubledMonitors(t *testing.T) {
	rec := &state.Record{Version: state.Version, Runs: []state.Run{{ID: "r1", Mode: "service", Start: time.Now(), Status: state.Complete,
		Monitors: []state.Monitor{
			{Name: "frontend-logs", State: "running"},
			{Name: "crash-loops", State: "restarting", Restarts: 1, LastError: "event stream: connection refused"},
			{Name: "guard", State: "stalled", Findings: []findings.Finding{findings.New(findings.MonitorStalled, "guard", "monitor guard has not gone round its loop for 31m0s", "")}},
			{Name: "docker-engine", State: "running", Findings: []findings.Finding{findings.New(findings.DockerNotAnswering, "dockerd", "the Docker engine does not answer", "")}},
		}}}}
	var b strings.Builder
	(&statusCmd{g: &globals{root: t.TempDir()}}).print(&b, rec)
	out := b.String()
	for _, want := range []string{
		"  crash-loops: restarting (restarted 1 times; last error: event stream: connection refused)\n",
		"  guard: stalled\n", "MONITOR_STALLED",
		"  docker-engine:\n", "DOCKER_NOT_ANSWERING",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "frontend-logs") {
		t.Errorf("a healthy monitor without findings is listed:\n%s", out)
	}
}

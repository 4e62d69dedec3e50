package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/state"
)

// haagent as the service goes from boot to complete against a real dockerd: the installer
// starts the frontend late, the watch waits for it (STATUS says so), feeds the watchdog, and
// forwards the container's lines; `status --wait` then returns 0.
func TestBootToCompleteWithDocker(t *testing.T) {
	d := peertest.StartDocker(t)
	image := d.BusyboxImage(t)
	w := newWorld(t, "i-0docker000000000")
	w.watchCfg = "watch:\n  stuck_after: 1h\n"
	// The test installer starts the frontend after a pause, in the background, as Replicated
	// would; it prints on both streams.
	w.installer.setScript(standinWith(t, fmt.Sprintf(`(sleep 2; DOCKER_HOST=%s docker run -d --name frontend --network none %s sh -c 'echo frontend says hello; echo frontend warns >&2; sleep 3600') >/dev/null 2>&1 &`, d.Host, image)))
	w.writeConfig(w.s3.URL, "")

	cmd, stderr, msgs := w.startService("DOCKER_HOST="+d.Host, "WATCHDOG_USEC=1000000")

	seen := map[string]bool{}
	deadline := time.After(120 * time.Second)
	for !(seen["waiting"] && seen["complete"] && seen["watchdog"]) {
		select {
		case m := <-msgs:
			switch {
			case strings.HasPrefix(m, "STATUS=waiting for frontend"):
				seen["waiting"] = true
			case m == "STATUS=boot complete":
				seen["complete"] = true
			case m == "WATCHDOG=1":
				seen["watchdog"] = true
			}
		case <-deadline:
			t.Fatalf("saw %v; log:\n%s", seen, stderr.String())
		}
	}
	if st := w.run("status", "--wait", "--timeout", "30s"); st.code != 0 {
		t.Fatalf("status --wait: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
	if rec := w.record(); rec.Last().Status != state.Complete {
		t.Fatalf("record: %s", rec.Last().Status)
	}
	// The frontend's lines reach the log (the journal under systemd), stderr as a warning.
	for !(strings.Contains(stderr.String(), "frontend says hello") && strings.Contains(stderr.String(), `level=WARN msg="frontend warns"`)) {
		select {
		case <-deadline:
			t.Fatalf("frontend lines not forwarded:\n%s", stderr.String())
		case <-msgs:
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the service must exit cleanly on SIGTERM: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe to read while the child process writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

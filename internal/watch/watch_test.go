package watch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

type recSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *recSink) Line(stream, text string, ts time.Time) {
	s.mu.Lock()
	s.lines = append(s.lines, stream+":"+text)
	s.mu.Unlock()
}

func (s *recSink) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// eventually polls a condition (the engine works at its own pace; no fixed sleeps).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newWatcher(t *testing.T, d *peertest.Docker, o Options) *Watcher {
	t.Helper()
	t.Setenv("DOCKER_HOST", d.Host)
	o.Name = "frontend"
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	o.Poll = 200 * time.Millisecond
	w, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func TestWatch(t *testing.T) {
	d := peertest.StartDocker(t)
	d.BusyboxImage(t)

	t.Run("late start, unhealthy then healthy, stuck re-probe", func(t *testing.T) {
		defer d.Run("rm", "-f", "frontend")
		var mu sync.Mutex
		var statuses []string
		probed := make(chan struct{}, 10)
		w := newWatcher(t, d, Options{
			StuckAfter: time.Millisecond, ReprobeEvery: time.Hour,
			Status: func(s string) { mu.Lock(); statuses = append(statuses, s); mu.Unlock() },
			Probe: func(context.Context) []findings.Finding {
				probed <- struct{}{}
				return []findings.Finding{{Code: "PG_AUTH_FAILED"}}
			},
		})
		done := make(chan error, 1)
		go func() { done <- w.WaitReady(context.Background()) }()
		eventually(t, "STATUS waiting for a container", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(statuses) > 0 && strings.Contains(statuses[len(statuses)-1], "waiting for frontend") &&
				strings.Contains(statuses[len(statuses)-1], "no container yet")
		})
		<-probed // the stuck threshold re-ran the probes
		d.Frontend(t, []string{"--health-cmd", "test -f /tmp/healthy", "--health-interval", "1s", "--health-retries", "1"},
			"sleep 3600")
		eventually(t, "the health check to report unhealthy", func() bool {
			s, _ := w.Inspect(context.Background())
			return s.Health == "unhealthy"
		})
		select {
		case err := <-done:
			t.Fatalf("ready while unhealthy: %v", err)
		default:
		}
		d.MustRun(t, "exec", "frontend", "touch", "/tmp/healthy")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("logs across restarts and re-creation, no loss, no duplicates, crash loop", func(t *testing.T) {
		defer d.Run("rm", "-f", "frontend")
		sink := &recSink{}
		var loops []int
		var lmu sync.Mutex
		w := newWatcher(t, d, Options{Sink: sink, CrashRestarts: 3, CrashWindow: time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go w.CrashLoops(ctx, func(n int, _ time.Duration) { lmu.Lock(); loops = append(loops, n); lmu.Unlock() })
		go w.Follow(ctx, time.Time{})
		// Each run prints unique lines on both streams and a last line without a newline,
		// then crashes; Docker restarts it.
		script := `n=$(cat /tmp/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/n
if [ $n -gt 4 ]; then echo "run $n out"; sleep 3600; fi
echo "run $n out"; echo "run $n err" >&2; printf "run $n partial"; exit 1`
		d.Frontend(t, []string{"--restart", "always"}, script)
		defer func() {
			if t.Failed() {
				out, _ := d.Run("logs", "-t", "frontend")
				st, _ := d.Run("inspect", "-f", "{{.State.Status}} {{.RestartCount}}", "frontend")
				t.Logf("sink: %q\ndocker logs:\n%s\nstate: %s", sink.snapshot(), out, st)
			}
		}()
		eventually(t, "five runs of logs", func() bool {
			for _, l := range sink.snapshot() {
				if l == "stdout:run 5 out" {
					return true
				}
			}
			return false
		})
		lmu.Lock()
		if len(loops) != 1 || loops[0] != 3 {
			t.Errorf("crash loop reports %v, want one at 3 dies", loops)
		}
		lmu.Unlock()
		// Re-created container: its lines arrive too.
		d.MustRun(t, "rm", "-f", "frontend")
		d.Frontend(t, nil, "echo recreated; sleep 3600")
		eventually(t, "the re-created container's line", func() bool {
			for _, l := range sink.snapshot() {
				if l == "stdout:recreated" {
					return true
				}
			}
			return false
		})
		got := sink.snapshot()
		count := map[string]int{}
		for _, l := range got {
			count[l]++
		}
		for n := 1; n <= 4; n++ {
			for _, want := range []string{fmt.Sprintf("stdout:run %d out", n), fmt.Sprintf("stderr:run %d err", n), fmt.Sprintf("stdout:run %d partial", n)} {
				if count[want] != 1 {
					t.Errorf("%q forwarded %d times, want once (all: %q)", want, count[want], got)
				}
			}
		}
		if w.Forwarded() != int64(len(got)) {
			t.Errorf("forwarded counter %d, sink got %d", w.Forwarded(), len(got))
		}
	})
}

// Goroutines and file descriptors stay flat across many restarts of the followed container.
func TestWatchStableAcrossRestarts(t *testing.T) {
	d := peertest.StartDocker(t)
	d.BusyboxImage(t)
	sink := &recSink{}
	w := newWatcher(t, d, Options{Sink: sink, CrashRestarts: 1000, CrashWindow: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.CrashLoops(ctx, func(int, time.Duration) {})
	go w.Follow(ctx, time.Time{})
	d.Frontend(t, nil, `n=$(cat /tmp/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/n; echo "start $n"; sleep 3600`)
	has := func(line string) func() bool {
		return func() bool {
			for _, l := range sink.snapshot() {
				if l == line {
					return true
				}
			}
			return false
		}
	}
	eventually(t, "the first start", has("stdout:start 1"))
	goroutines, fds := runtime.NumGoroutine(), openFDs()
	const restarts = 25
	for i := 2; i <= restarts+1; i++ {
		d.MustRun(t, "restart", "-t", "0", "frontend")
		eventually(t, fmt.Sprintf("start %d", i), has(fmt.Sprintf("stdout:start %d", i)))
	}
	if got := len(sink.snapshot()); got != restarts+1 {
		t.Fatalf("%d lines forwarded for %d starts: %q", got, restarts+1, sink.snapshot())
	}
	// Let idle connections settle before counting.
	eventually(t, "goroutines back near their count before the restarts", func() bool {
		return runtime.NumGoroutine() <= goroutines+5
	})
	if n := openFDs(); n > fds+5 {
		t.Fatalf("file descriptors grew from %d to %d across %d restarts", fds, n, restarts)
	}
}

func openFDs() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	return len(entries)
}

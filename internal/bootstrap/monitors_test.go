package bootstrap

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/supervisor"
)

// signal closes a channel the first time a log line holds a string.
type signal struct {
	mu   sync.Mutex
	want string
	seen chan struct{}
	done bool
}

func (s *signal) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done && strings.Contains(string(p), s.want) {
		s.done = true
		close(s.seen)
	}
	return len(p), nil
}

// After the boot the supervisor's loop feeds the watchdog, and only while every monitor's loop
// iterates: one that is blocked (here in a wait nothing ends, as a call without a deadline
// would be) stops the pings, so systemd restarts haagent; once it goes round again they resume.
func TestAWedgedMonitorStopsTheWatchdogAfterTheBoot(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "20000") // pings every 10 ms
	t.Setenv("WATCHDOG_PID", "")
	pings := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(pings)
				return
			}
			pings <- string(buf[:n])
		}
	}()

	unblock := make(chan struct{})
	stalled := &signal{want: "monitor wedged is blocked", seen: make(chan struct{})}
	env := quietEnv(Inputs{Log: slog.New(slog.NewTextHandler(stalled, nil))}, nil)
	r := &Runner{Steps: []Step{{Name: "start", Do: Wire(func(e *Env) *Env { return e }, func(ctx context.Context, _ Exec, env *Env) (struct{}, []findings.Finding, error) {
		env.monitors().Start(supervisor.Monitor{Name: "wedged", Within: 50 * time.Millisecond, Run: func(ctx context.Context, h *supervisor.Handle) error {
			h.Alive()
			select { // blocked until the test lets it go
			case <-ctx.Done():
				return nil
			case <-unblock:
			}
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			for {
				h.Alive()
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
			}
		}})
		return struct{}{}, nil, nil
	}, nil)}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); env.Drain(10 * time.Second) }()
	if err := r.Run(ctx, env); err != nil {
		t.Fatal(err)
	}
	go env.WatchMonitors(ctx)
	// The supervisor says so in STATUS= when it finds the monitor blocked; the socket keeps
	// the order of what one process sends, so no WATCHDOG=1 may follow that line.
	untilBlocked(t, pings, "wedged")
	<-stalled.seen
	if got := findings.Codes(env.monitors().Findings()); got != supervisor.MonitorStalled.String() {
		t.Fatalf("findings of a blocked monitor: %s", got)
	}
	quiet := time.After(100 * time.Millisecond)
	for done := false; !done; {
		select {
		case m := <-pings:
			if m == "WATCHDOG=1" {
				t.Fatal("the watchdog is still fed while a monitor is blocked")
			}
		case <-quiet:
			done = true
		}
	}
	// It goes round again: the pings resume.
	close(unblock)
	for m := range pings {
		if m == "WATCHDOG=1" {
			break
		}
	}
	if got := env.monitors().Findings(); len(got) != 0 {
		t.Fatalf("findings once the monitor iterates again: %+v", got)
	}
}

// During the steps the runner's loop feeds the watchdog, and asks the supervisor first: a
// monitor started by an earlier step (the log forwarding, while the watch waits for a first
// install for half an hour) that is blocked stops the pings there too.
func TestAWedgedMonitorStopsTheWatchdogDuringTheSteps(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "20000") // pings every 10 ms
	t.Setenv("WATCHDOG_PID", "")
	pings := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(pings)
				return
			}
			pings <- string(buf[:n])
		}
	}()
	stalled := &signal{want: "monitor wedged is blocked", seen: make(chan struct{})}
	env := quietEnv(Inputs{Log: slog.New(slog.NewTextHandler(stalled, nil))}, nil)
	unblock, finish := make(chan struct{}), make(chan struct{})
	start := Wire(func(e *Env) *Env { return e }, func(ctx context.Context, _ Exec, env *Env) (struct{}, []findings.Finding, error) {
		env.supervise(Monitor{Name: "wedged", Within: 50 * time.Millisecond, Run: func(ctx context.Context, h *Handle) error {
			h.Alive()
			select {
			case <-ctx.Done():
				return nil
			case <-unblock:
			}
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			for {
				h.Alive()
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
			}
		}})
		return struct{}{}, nil, nil
	}, nil)
	r := &Runner{Steps: []Step{{Name: "start", Do: start}, {Name: "wait", Do: do(func(ctx context.Context) error { <-finish; return nil })}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); env.Drain(10 * time.Second) }()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, env) }()
	untilBlocked(t, pings, "wedged")
	<-stalled.seen
	quiet := time.After(100 * time.Millisecond)
	for q := false; !q; {
		select {
		case m := <-pings:
			if m == "WATCHDOG=1" {
				t.Fatal("the runner still feeds the watchdog while a monitor is blocked")
			}
		case <-quiet:
			q = true
		}
	}
	close(unblock)
	for m := range pings {
		if m == "WATCHDOG=1" {
			break
		}
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// untilBlocked reads the notify socket's messages until the supervisor's STATUS= that the
// monitor is blocked.
func untilBlocked(t *testing.T, msgs <-chan string, monitor string) {
	t.Helper()
	for m := range msgs {
		if m == "STATUS=monitor "+monitor+" is blocked; waiting for systemd's watchdog to restart haagent" {
			return
		}
	}
	t.Fatal("the notify socket closed before the supervisor found the monitor blocked")
}

// Work run from a monitor's loop that is bounded by its own timeouts (the crash-loop report's
// probes, as long as probes.timeout) keeps the monitor alive while it runs: the probes wait
// here until the monitor has said it is alive three times.
func TestSlowProbesInALoopKeepItAlive(t *testing.T) {
	alive := make(chan struct{}, 3)
	seen := 0
	aliveWhile(func() {
		if seen < 3 {
			seen++
			alive <- struct{}{}
		}
	}, time.Millisecond, func() {
		for i := 0; i < 3; i++ {
			<-alive
		}
	})
	if seen != 3 {
		t.Fatalf("alive %d times while the probes ran, want 3", seen)
	}
}

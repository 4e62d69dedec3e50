package watch

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
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
				return []findings.Finding{{Code: findings.PGAuthFailed}}
			},
		})
		// The wait logs with the logger it is given: the boot's watch step passes its own, so
		// the progress lines carry HAAGENT_STEP=watch.
		var logged bytes.Buffer
		stepLog := slog.New(slog.NewTextHandler(&logged, nil)).With("step", "watch")
		done := make(chan error, 1)
		go func() { done <- w.WaitReady(context.Background(), stepLog) }()
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
		for _, want := range []string{"waiting for the frontend", "not ready after"} {
			found := false
			for _, line := range strings.Split(logged.String(), "\n") {
				if strings.Contains(line, want) && strings.Contains(line, "step=watch") {
					found = true
				}
			}
			if !found {
				t.Errorf("no %q line with step=watch in the step's log:\n%s", want, logged.String())
			}
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
		go w.CrashLoops(ctx, nil, func(n int, _ time.Duration) { lmu.Lock(); loops = append(loops, n); lmu.Unlock() })
		go w.Follow(ctx, time.Time{}, nil)
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
	go w.CrashLoops(ctx, nil, func(int, time.Duration) {})
	go w.Follow(ctx, time.Time{}, nil)
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

// A TTY container's stream is not framed: its lines are forwarded as they are printed, not
// when the stream ends.
func TestWatchTTYLinesAsTheyCome(t *testing.T) {
	d := peertest.StartDocker(t)
	d.BusyboxImage(t)
	sink := &recSink{}
	w := newWatcher(t, d, Options{Sink: sink})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Follow(ctx, time.Time{}, nil)
	d.Frontend(t, []string{"-t"}, `echo "tty one"; echo "tty two"; sleep 3600`)
	eventually(t, "both TTY lines while the container runs", func() bool {
		return strings.Join(sink.snapshot(), "|") == "stdout:tty one|stdout:tty two"
	})
}

// The mark: a haagent that stops (a restart, a reboot) leaves how far it forwarded, and the
// next one goes on from there: the lines printed while none ran arrive, none twice.
func TestWatchNextFollowerGoesOnFromTheMark(t *testing.T) {
	d := peertest.StartDocker(t)
	d.BusyboxImage(t)
	mark := t.TempDir() + "/var/lib/haagent/frontend-logs.json"
	// One stream only: the engine may log a stdout and a stderr line printed together in either order.
	d.Frontend(t, nil, `echo a1; echo a2; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo b1; echo b2; sleep 3600`)

	first := &recSink{}
	w1 := newWatcher(t, d, Options{Sink: first, MarkPath: mark, MarkEvery: time.Hour})
	ctx1, cancel1 := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w1.Follow(ctx1, time.Time{}, nil); close(done) }()
	eventually(t, "the first follower's lines", func() bool { return strings.Join(first.snapshot(), "|") == "stdout:a1|stdout:a2" })
	cancel1()
	<-done
	var m Mark
	if b, err := os.ReadFile(mark); err != nil || json.Unmarshal(b, &m) != nil || m.Container != "frontend" || m.AtUntil != 1 {
		t.Fatalf("the mark after the first follower stopped: %s %v (%+v)", b, err, m)
	}
	if fi, err := os.Stat(mark); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mark mode: %v %v", fi, err)
	}

	// Lines printed while no follower runs, then a follower whose run started after them.
	d.MustRun(t, "exec", "frontend", "touch", "/tmp/go")
	eventually(t, "the container to print b2", func() bool {
		out, _ := d.Run("logs", "frontend")
		return strings.Contains(out, "b2")
	})
	second := &recSink{}
	defer func() {
		if t.Failed() {
			out, _ := d.Run("logs", "-t", "frontend")
			b, _ := os.ReadFile(mark)
			t.Logf("first follower: %q\nsecond follower: %q\nmark: %s\ndocker logs:\n%s", first.snapshot(), second.snapshot(), b, out)
		}
	}()
	w2 := newWatcher(t, d, Options{Sink: second, MarkPath: mark, MarkEvery: time.Hour})
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	defer func() { cancel2(); <-done2 }() // its last save lands before the temp dir goes
	go func() { w2.Follow(ctx2, time.Now(), nil); close(done2) }()
	eventually(t, "b2 from the second follower", func() bool {
		s := second.snapshot()
		return len(s) > 0 && s[len(s)-1] == "stdout:b2"
	})
	if got := strings.Join(second.snapshot(), "|"); got != "stdout:b1|stdout:b2" {
		t.Fatalf("the second follower forwarded %q, want exactly the lines printed after the mark", got)
	}
}

// Where a follower starts when the mark is missing, foreign, corrupt or very old.
func TestFollowStart(t *testing.T) {
	from := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	recent := from.Add(-3 * time.Minute)
	write := func(t *testing.T, content string) string {
		p := t.TempDir() + "/frontend-logs.json"
		if content != "" {
			os.WriteFile(p, []byte(content), 0o600)
		}
		return p
	}
	mk := func(name string, until time.Time, at int) string {
		b, _ := json.Marshal(Mark{Version: 1, Container: name, Until: until, AtUntil: at})
		return string(b)
	}
	for _, c := range []struct {
		name, mark string
		want       time.Time
		dup        int
		warns      bool
	}{
		{"no mark", "", from, 0, false},
		{"recent mark", mk("frontend", recent, 2), recent, 2, false},
		{"another container's mark", mk("other", recent, 2), from, 0, false},
		{"corrupt mark", `{"version": 1, "until": `, from, 0, true},
		{"unknown version", `{"version": 9, "container": "frontend", "until": "2026-11-28T08:57:00Z"}`, from, 0, true},
		{"mark from days ago", mk("frontend", from.Add(-72*time.Hour), 5), from.Add(-MaxReplay), 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs strings.Builder
			w := &Watcher{o: Options{Name: "frontend", MarkPath: write(t, c.mark), Log: slog.New(slog.NewTextHandler(&logs, nil))}}
			got, dup := w.start(from)
			if !got.Equal(c.want) || dup != c.dup {
				t.Fatalf("start = %s, %d; want %s, %d", got, dup, c.want, c.dup)
			}
			if warned := strings.Contains(logs.String(), "level=WARN"); warned != c.warns {
				t.Fatalf("warned=%v, want %v: %s", warned, c.warns, logs.String())
			}
		})
	}
}

// frame builds Docker's multiplexed log stream: stream id, size, then "<RFC3339Nano> text".
func frame(lines ...string) *bytes.Buffer {
	var b bytes.Buffer
	t0 := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	for _, l := range lines {
		// "o5 text" is stdout at t0+5ms, "e5 text" stderr.
		var ms int
		fmt.Sscanf(l[1:], "%d", &ms)
		_, text, _ := strings.Cut(l, " ")
		payload := t0.Add(time.Duration(ms)*time.Millisecond).Format(time.RFC3339Nano) + " " + text + "\n"
		hdr := [8]byte{1}
		if l[0] == 'e' {
			hdr[0] = 2
		}
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(payload)))
		b.Write(hdr[:])
		b.WriteString(payload)
	}
	return &b
}

// Which lines of a stream are forwarded: the head repeats what the last attachment forwarded
// (skipped), and a line stamped a hair before its predecessor (stdout and stderr are stamped
// in separate goroutines of the engine) is still new.
func TestPumpResumeAndReordering(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, c := range []struct {
		name     string
		stream   []string
		last     time.Time
		dup      int
		want     string
		wantLast time.Time
		wantDup  int
	}{
		{"fresh", []string{"o1 a", "e2 b", "o2 c"}, time.Time{}, 0, "stdout:a|stderr:b|stdout:c", ms(2), 2},
		{"resume skips the head", []string{"o1 a", "o2 b", "o2 c", "o3 d"}, ms(2), 1, "stdout:c|stdout:d", ms(3), 1},
		{"resume after all at the mark", []string{"o2 b", "o2 c", "o4 d"}, ms(2), 2, "stdout:d", ms(4), 1},
		{"reordered by the engine", []string{"o5 a", "e4 b", "o6 c"}, ms(3), 0, "stdout:a|stderr:b|stdout:c", ms(6), 1},
		{"reordered at the end", []string{"o5 a", "e4 b"}, time.Time{}, 0, "stdout:a|stderr:b", ms(5), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			sink := &recSink{}
			w := &Watcher{o: Options{Sink: sink}}
			last, dup := w.pump(frame(c.stream...), c.last, c.dup)
			if got := strings.Join(sink.snapshot(), "|"); got != c.want {
				t.Fatalf("forwarded %q, want %q", got, c.want)
			}
			if !last.Equal(c.wantLast) || dup != c.wantDup {
				t.Fatalf("mark %s/%d, want %s/%d", last, dup, c.wantLast, c.wantDup)
			}
		})
	}
}

// A wedged dockerd (SIGSTOPped: the socket accepts, nothing answers) makes every call return
// ErrEngineNotAnswering within CallTimeout instead of hanging the watch, and the engine's
// state is reported on each change.
func TestWedgedEngineIsNotAnswering(t *testing.T) {
	d := peertest.StartDocker(t)
	d.Frontend(t, nil, "echo up; sleep 3600")
	changes := make(chan error, 10)
	w := newWatcher(t, d, Options{CallTimeout: 500 * time.Millisecond, Engine: func(err error) { changes <- err }})
	if s, err := w.Inspect(context.Background()); err != nil || !s.Running {
		t.Fatalf("inspect before the freeze: %+v %v", s, err)
	}
	d.Freeze(t)
	inspected := make(chan error, 1)
	go func() { _, err := w.Inspect(context.Background()); inspected <- err }()
	var err error
	select {
	case err = <-inspected:
	case <-time.After(60 * time.Second):
		t.Fatal("inspect of a wedged engine never returned")
	}
	if !errors.Is(err, ErrEngineNotAnswering) {
		t.Fatalf("inspect of a wedged engine: %v, want ErrEngineNotAnswering", err)
	}
	if got := <-changes; !errors.Is(got, ErrEngineNotAnswering) {
		t.Fatalf("engine state change: %v", got)
	}
	if w.EngineErr() == nil {
		t.Fatal("EngineErr is nil while the engine does not answer")
	}
	// WaitReady keeps its loop going (and says why) rather than blocking in one call.
	ctx, cancel := context.WithCancel(context.Background())
	statuses := make(chan string, 100)
	other, err := New(Options{Name: "other", Log: slog.New(slog.DiscardHandler), Poll: 100 * time.Millisecond, CallTimeout: 300 * time.Millisecond,
		Status: func(s string) {
			select {
			case statuses <- s:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { defer close(waited); other.WaitReady(ctx, nil) }()
	for n := 0; n < 2; {
		if s := <-statuses; strings.Contains(s, "not answering") {
			n++
		}
	}
	cancel()
	<-waited
	other.Close()
	d.Thaw(t)
	eventually(t, "the engine answering again", func() bool {
		s, err := w.Inspect(context.Background())
		return err == nil && s.Running
	})
	if got := <-changes; got != nil {
		t.Fatalf("engine state after the thaw: %v, want answering", got)
	}
}

// The event stream ends when dockerd restarts; crash-loop detection follows it again and
// counts the dies after the restart.
func TestCrashLoopsSurviveAnEngineRestart(t *testing.T) {
	d := peertest.StartDocker(t)
	d.Frontend(t, nil, "sleep 3600")
	w := newWatcher(t, d, Options{CrashRestarts: 3, CrashWindow: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loops := make(chan int, 10)
	done := make(chan struct{})
	go func() { defer close(done); w.CrashLoops(ctx, nil, func(dies int, _ time.Duration) { loops <- dies }) }()
	defer func() { cancel(); <-done }()
	// One die the stream sees before the restart, so the test knows it is being followed.
	d.MustRun(t, "kill", "frontend")
	d.Restart(t)
	for i := 0; i < 2; i++ {
		d.MustRun(t, "start", "frontend")
		d.MustRun(t, "kill", "frontend")
	}
	select {
	case n := <-loops:
		if n < 3 {
			t.Fatalf("crash loop reported at %d dies, want >= 3", n)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no crash loop reported after the engine restarted: the detection stopped with the event stream")
	}
}

// Liveness, not activity: a frontend that logs one line and then nothing leaves its log stream
// open and quiet, and the follower still says it is alive (every Poll), as does the crash-loop
// detection waiting for a die that does not come. A supervisor that took quiet for dead would
// get haagent restarted for a healthy, silent frontend.
func TestQuietStreamsAreAlive(t *testing.T) {
	d := peertest.StartDocker(t)
	d.BusyboxImage(t)
	sink := &recSink{}
	w := newWatcher(t, d, Options{Sink: sink})
	d.Frontend(t, nil, `echo "the only line"; sleep 3600`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const want = 5
	follows, crashes := make(chan struct{}, 100), make(chan struct{}, 100)
	go w.Follow(ctx, time.Time{}, func() { follows <- struct{}{} })
	go w.CrashLoops(ctx, func() { crashes <- struct{}{} }, func(int, time.Duration) {})
	eventually(t, "the line forwarded", func() bool { return len(sink.snapshot()) == 1 })
	// From here the stream stays open and quiet: the container runs and prints nothing.
	for len(follows) > 0 {
		<-follows
	}
	for len(crashes) > 0 {
		<-crashes
	}
	deadline := time.After(60 * time.Second)
	for n, m := 0, 0; n < want || m < want; {
		select {
		case <-follows:
			n++
		case <-crashes:
			m++
		case <-deadline:
			t.Fatalf("in a quiet minute the follower said it was alive %d times and the crash-loop detection %d times, want %d each", n, m, want)
		}
	}
	if got := sink.snapshot(); len(got) != 1 {
		t.Fatalf("lines: %v", got)
	}
}

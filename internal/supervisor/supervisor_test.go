package supervisor

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
)

// clock is a test clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// waits records the restart delays asked for and lets each restart go at once.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) After(d time.Duration) <-chan time.Time {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

func (w *waits) got() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.d...)
}

// syncBuf is a log sink several goroutines write to.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTest(t *testing.T, o Options) (*Supervisor, *clock, *waits, *syncBuf) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &clock{t: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)}
	w := &waits{}
	logs := &syncBuf{}
	o.Now, o.After = c.Now, w.After
	o.Log = slog.New(slog.NewTextHandler(logs, nil))
	s := New(ctx, o)
	t.Cleanup(func() {
		cancel()
		if !s.Wait(10 * time.Second) {
			t.Error("monitors did not return after the supervisor's context ended")
		}
	})
	return s, c, w, logs
}

func codes(fs []findings.Finding) string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Code.String())
	}
	return strings.Join(out, ",")
}

// stepper is a monitor whose loop goes round once per value sent on step, and says so on went.
type stepper struct {
	step chan struct{}
	went chan struct{}
}

func newStepper() *stepper { return &stepper{step: make(chan struct{}), went: make(chan struct{})} }

func (p *stepper) run(ctx context.Context, h *Handle) error {
	for {
		h.Alive()
		select {
		case p.went <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.step:
		}
	}
}

func TestStalledMonitorStopsThePings(t *testing.T) {
	pings, statuses := make(chan string, 16), make(chan string, 16)
	tick := make(chan time.Time)
	s, c, _, logs := newTest(t, Options{Watchdog: 10 * time.Second, Tick: tick, Notify: func(st string) {
		if strings.HasPrefix(st, "STATUS=") {
			statuses <- st
			return
		}
		pings <- st
	}})
	p := newStepper()
	s.Start(Monitor{Name: "log-forwarding", Within: time.Minute, Run: p.run})
	<-p.went
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx)

	tick <- time.Time{}
	if got := <-pings; got != "WATCHDOG=1" {
		t.Fatalf("sent %q, want WATCHDOG=1", got)
	}
	// The monitor's loop is blocked (nothing sent on step) past its bound.
	c.Add(2 * time.Minute)
	tick <- time.Time{}
	tick <- time.Time{} // received only once the tick before it was handled
	// The first tick's ping, had there been one, is in the channel now; the second's cannot
	// come while the monitor stays blocked.
	if n := len(pings); n != 0 {
		t.Errorf("%d watchdog pings were sent while the monitor was blocked", n)
	}
	if got := codes(s.Findings()); got != MonitorStalled.String() {
		t.Errorf("findings while blocked = %q, want %s", got, MonitorStalled)
	}
	if err := s.Healthy(); err == nil || !strings.Contains(err.Error(), "log-forwarding") {
		t.Errorf("Healthy() = %v, want an error naming the blocked monitor", err)
	}
	if !strings.Contains(logs.String(), "monitor log-forwarding is blocked") {
		t.Errorf("the journal does not say which monitor is blocked:\n%s", logs)
	}
	if st := <-statuses; !strings.Contains(st, "log-forwarding is blocked") {
		t.Errorf("STATUS= while blocked: %q", st)
	}
	// It goes round again: the pings resume, the finding goes.
	p.step <- struct{}{}
	<-p.went
	tick <- time.Time{}
	if got := <-pings; got != "WATCHDOG=1" {
		t.Fatalf("sent %q once the monitor iterates again, want WATCHDOG=1", got)
	}
	if got := codes(s.Findings()); got != "" {
		t.Errorf("findings once it iterates again = %q, want none", got)
	}
}

// An idle monitor that wakes within its bound is alive however little it does.
func TestIdleMonitorThatWakesIsAlive(t *testing.T) {
	s, c, _, _ := newTest(t, Options{})
	p := newStepper()
	s.Start(Monitor{Name: "guard", Within: time.Minute, Run: p.run})
	<-p.went
	for range 5 {
		c.Add(50 * time.Second)
		p.step <- struct{}{}
		<-p.went
		if err := s.Healthy(); err != nil {
			t.Fatalf("Healthy() = %v for a monitor that woke within its bound", err)
		}
	}
}

func TestReturningMonitorIsRestartedWithBackoff(t *testing.T) {
	s, _, w, _ := newTest(t, Options{})
	runs := make(chan int)
	n := 0
	s.Start(Monitor{Name: "crash-loops", Within: time.Minute, Run: func(ctx context.Context, h *Handle) error {
		n++
		runs <- n
		switch n {
		case 1:
			return nil // a loop that ends by mistake is restarted too
		case 2, 3:
			return errors.New("event stream: connection refused")
		}
		<-ctx.Done()
		return nil
	}})
	for want := 1; want <= 4; want++ {
		if got := <-runs; got != want {
			t.Fatalf("run %d, want %d", got, want)
		}
	}
	if got, want := w.got(), []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}; !equal(got, want) {
		t.Errorf("restart waits = %v, want %v", got, want)
	}
	st := s.Statuses()
	if len(st) != 1 || st[0].State != StateRunning || st[0].Restarts != 3 || st[0].LastError != "event stream: connection refused" {
		t.Fatalf("status = %+v", st)
	}
	fs := s.Findings()
	if len(fs) != 1 || fs[0].Code != MonitorFailing || fs[0].Target != "crash-loops" ||
		fs[0].Evidence != "event stream: connection refused" || !strings.Contains(fs[0].Summary, "failed 3 times in a row") {
		t.Fatalf("findings = %+v, want MONITOR_FAILING naming the monitor and its last error", fs)
	}
	if !strings.Contains(fs[0].Fix, "HAAGENT_MONITOR=crash-loops") {
		t.Errorf("fix %q does not say where to read the monitor's lines", fs[0].Fix)
	}
}

func TestMonitorFailingIsWithdrawnOnceItSettles(t *testing.T) {
	s, c, _, _ := newTest(t, Options{FailingAfter: 1, SettleAfter: time.Hour})
	p := newStepper()
	first := true
	s.Start(Monitor{Name: "keys-scan", Within: 2 * time.Hour, Run: func(ctx context.Context, h *Handle) error {
		if first {
			first = false
			return errors.New("listing the keys: access denied")
		}
		return p.run(ctx, h)
	}})
	<-p.went
	if got := codes(s.Findings()); got != MonitorFailing.String() {
		t.Fatalf("findings = %q, want %s", got, MonitorFailing)
	}
	c.Add(time.Hour)
	p.step <- struct{}{}
	<-p.went
	if got := codes(s.Findings()); got != "" {
		t.Errorf("findings after an hour of running = %q, want none", got)
	}
}

func TestPanickingMonitorIsRestartedAndReported(t *testing.T) {
	s, _, _, logs := newTest(t, Options{})
	p := newStepper()
	first := true
	s.Start(Monitor{Name: "replacement-guard", Within: time.Minute, Run: func(ctx context.Context, h *Handle) error {
		if first {
			first = false
			var calls []func()
			calls[len(calls)]() // index out of range: a runtime panic
		}
		return p.run(ctx, h)
	}})
	<-p.went
	fs := s.Findings()
	if len(fs) != 1 || fs[0].Code != MonitorPanicked || fs[0].Target != "replacement-guard" || !strings.Contains(fs[0].Evidence, "index out of range") {
		t.Fatalf("findings = %+v, want MONITOR_PANICKED with the panic as evidence", fs)
	}
	if l := logs.String(); !strings.Contains(l, "monitor replacement-guard panicked") || !strings.Contains(l, "supervisor_test.go") {
		t.Errorf("the journal lacks the panic and its stack:\n%s", l)
	}
	if st := s.Statuses(); st[0].State != StateRunning || st[0].Restarts != 1 {
		t.Errorf("status = %+v, want running after one restart", st)
	}
}

func TestFindingsPerMonitor(t *testing.T) {
	changes := make(chan struct{}, 64)
	s, _, _, logs := newTest(t, Options{Changed: func() { changes <- struct{}{} }})
	engine := findings.New(findings.DockerNotAnswering, "dockerd", "the Docker engine does not answer", "")
	crash := findings.New(findings.FrontendCrashLoop, "frontend", "frontend died 5 times within 10m0s", "")
	withheld := findings.New(findings.ASGReplacementWithheld, "i-1", "no replacement: PG_AUTH_FAILED", "")

	type cmd struct {
		set  []findings.Finding
		fail bool
	}
	monitor := func(cmds chan cmd, done chan struct{}) func(ctx context.Context, h *Handle) error {
		return func(ctx context.Context, h *Handle) error {
			for {
				h.Alive()
				select {
				case <-ctx.Done():
					return nil
				case c := <-cmds:
					if c.fail {
						done <- struct{}{}
						return errors.New("stream ended")
					}
					h.Set(c.set...)
					done <- struct{}{}
				}
			}
		}
	}
	wc, wd := make(chan cmd), make(chan struct{})
	gc, gd := make(chan cmd), make(chan struct{})
	s.Start(Monitor{Name: "watch", Within: time.Minute, Run: monitor(wc, wd)})
	s.Start(Monitor{Name: "guard", Within: time.Minute, Run: monitor(gc, gd)})

	gc <- cmd{set: []findings.Finding{withheld}}
	<-gd
	wc <- cmd{set: []findings.Finding{engine, crash}}
	<-wd
	if got := codes(s.Findings()); got != "DOCKER_NOT_ANSWERING,FRONTEND_CRASH_LOOP,ASG_REPLACEMENT_WITHHELD" {
		t.Fatalf("findings = %q, want the watch's (started first), then the guard's", got)
	}
	// Set replaces the monitor's own findings only.
	wc <- cmd{set: []findings.Finding{crash}}
	<-wd
	if got := codes(s.Findings()); got != "FRONTEND_CRASH_LOOP,ASG_REPLACEMENT_WITHHELD" {
		t.Fatalf("findings after the engine answers = %q", got)
	}
	// They survive a restart until the monitor sets them again.
	wc <- cmd{fail: true}
	<-wd
	wc <- cmd{set: []findings.Finding{crash}} // the restarted loop takes it
	<-wd
	st := s.Statuses()
	if st[0].Name != "watch" || st[0].Restarts != 1 || codes(st[0].Findings) != "FRONTEND_CRASH_LOOP" ||
		st[1].Name != "guard" || codes(st[1].Findings) != "ASG_REPLACEMENT_WITHHELD" {
		t.Fatalf("statuses = %+v", st)
	}
	// A finding that lasts is logged once.
	if n := strings.Count(logs.String(), "FRONTEND_CRASH_LOOP: "); n != 1 {
		t.Errorf("FRONTEND_CRASH_LOOP logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "monitor=guard finding=ASG_REPLACEMENT_WITHHELD") {
		t.Errorf("the guard's finding is not logged under its name:\n%s", logs)
	}
	if len(changes) == 0 {
		t.Error("Changed was never called: the run record would not show the findings")
	}
}

func TestDoneMonitorIsNotRestartedNorWatched(t *testing.T) {
	s, c, w, _ := newTest(t, Options{})
	ran := make(chan struct{}, 4)
	m := Monitor{Name: "lifecycle-heartbeats", Within: time.Minute, Run: func(ctx context.Context, h *Handle) error {
		h.Set(findings.New(findings.ASGLifecycleExpired, "g/h", "the launch lifecycle action ended", ""))
		ran <- struct{}{}
		return ErrDone
	}}
	r := s.Start(m)
	<-ran
	<-s.Done(m.Name) // the state below is final
	s.Start(m)       // work that is over is not done again
	r.Stop()
	c.Add(time.Hour)
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy() = %v: a monitor that is done is not blocked", err)
	}
	if st := s.Statuses(); st[0].State != StateDone || codes(st[0].Findings) != "ASG_LIFECYCLE_EXPIRED" {
		t.Errorf("status = %+v, want done with its finding kept", st)
	}
	if len(w.got()) != 0 || len(ran) != 0 {
		t.Errorf("a monitor that returned ErrDone was restarted")
	}
}

func TestStopWaitsAndStartTwiceIsOne(t *testing.T) {
	s, _, _, _ := newTest(t, Options{})
	var mu sync.Mutex
	inFlight := false
	started := make(chan struct{}, 4)
	run := func(ctx context.Context, h *Handle) error {
		started <- struct{}{}
		<-ctx.Done()
		mu.Lock()
		inFlight = true // work done while stopping, which Stop must wait for
		mu.Unlock()
		return nil
	}
	r := s.Start(Monitor{Name: "hb", Within: time.Minute, Run: run})
	if r2 := s.Start(Monitor{Name: "hb", Within: time.Minute, Run: run}); r2.e != r.e {
		t.Fatal("a second Start of a running monitor started another")
	}
	<-started
	r.Stop()
	mu.Lock()
	defer mu.Unlock()
	if !inFlight {
		t.Error("Stop returned before the monitor's loop did")
	}
	if len(started) != 0 {
		t.Error("two loops ran for one monitor")
	}
	if st := s.Statuses(); st[0].State != StateStopped {
		t.Errorf("state = %s, want stopped", st[0].State)
	}
}

func equal(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

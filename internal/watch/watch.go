// Package watch follows the CircleCI frontend container through the Docker Engine API: it
// waits for it to run (and be healthy), forwards its logs to the journal across restarts and
// re-creations without losing or repeating lines, and recognises a crash loop.
package watch

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/haagent/haagent/internal/findings"
)

// Sink receives the container's log lines.
type Sink interface {
	Line(stream string, text string, ts time.Time)
}

// Options configure a Watcher.
type Options struct {
	Name string // the container, "frontend"
	// StuckAfter is when a frontend that is not running is "stuck": the probes run again and
	// their findings are logged, then every ReprobeEvery.
	StuckAfter   time.Duration
	ReprobeEvery time.Duration
	// A crash loop is CrashRestarts dies within CrashWindow.
	CrashRestarts int
	CrashWindow   time.Duration
	// Probe re-runs the probes (nil: none).
	Probe  func(ctx context.Context) []findings.Finding
	Log    *slog.Logger
	Sink   Sink
	Status func(string) // sd_notify STATUS=
	// Poll is how often the container's state is read while waiting.
	Poll time.Duration
	// MarkPath, if set, is where Follow keeps how far it forwarded, so the next haagent (a
	// restart, a reboot) goes on from there. MarkEvery is how often it is saved while lines
	// flow (default DefaultMarkEvery).
	MarkPath  string
	MarkEvery time.Duration
	// CallTimeout bounds every Docker API call (default DefaultCallTimeout): a wedged dockerd
	// accepts connections and never answers, and an unbounded call would freeze the watch,
	// the guard and the crash-loop detection with it.
	CallTimeout time.Duration
	// Engine, if set, is told when the engine stops answering within CallTimeout (err says
	// how) and when it answers again (err nil). It is called on changes only.
	Engine func(err error)
}

// DefaultCallTimeout is the default bound of one Docker API call. The engine answers an
// inspect in milliseconds; seconds mean it is wedged, not busy.
const DefaultCallTimeout = 15 * time.Second

// ErrEngineNotAnswering means a Docker API call got no answer within Options.CallTimeout.
var ErrEngineNotAnswering = errors.New("the Docker engine is not answering")

// Watcher watches one container.
type Watcher struct {
	o   Options
	cli *client.Client

	forwarded atomic.Int64
	// The Docker client negotiates its API version lazily on first use, racily when used from
	// several goroutines; every call first goes through ready, which does it once, serialised.
	negMu      sync.Mutex
	negotiated bool
	mu         sync.Mutex
	last       []string
	dies       []time.Time
	looping    bool

	markMu sync.Mutex
	mark   Mark // what pump forwarded last
	saved  Mark // what is on disk; only Follow's goroutines touch it, one at a time

	engineMu  sync.Mutex
	engineErr error // nil while the engine answers
}

// New connects to the engine (DOCKER_HOST or the default socket), negotiating the API
// version: the engine on an instance may be older or newer than the one in tests.
func New(o Options) (*Watcher, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("connecting to the Docker engine: %w", err)
	}
	if o.Poll <= 0 {
		o.Poll = 2 * time.Second
	}
	if o.CrashRestarts <= 0 {
		o.CrashRestarts = 5
	}
	if o.CrashWindow <= 0 {
		o.CrashWindow = 10 * time.Minute
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	return &Watcher{o: o, cli: cli}, nil
}

// Poll is how often the container's state is read.
func (w *Watcher) Poll() time.Duration { return w.o.Poll }

// Close releases the client.
func (w *Watcher) Close() error { return w.cli.Close() }

// Forwarded is how many log lines went to the sink (journald may still drop some: compare).
func (w *Watcher) Forwarded() int64 { return w.forwarded.Load() }

// LastLines returns the most recent log lines.
func (w *Watcher) LastLines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.last...)
}

// State is the container's state as far as boot completion goes.
type State struct {
	Exists, Running, Restarting bool
	Health                      string // "", starting, healthy, unhealthy
	RestartCount                int
	ID                          string
}

// Ready reports boot completion: running and, when it has a health check, healthy.
func (s State) Ready() bool {
	return s.Running && !s.Restarting && (s.Health == "" || s.Health == "healthy")
}

func (s State) String() string {
	switch {
	case !s.Exists:
		return "no container yet"
	case s.Restarting:
		return "restarting"
	case !s.Running:
		return "not running"
	case s.Health != "" && s.Health != "healthy":
		return "running, health " + s.Health
	}
	return "running"
}

// call runs one Docker API call under CallTimeout. A call that runs out of time (while ctx
// itself is still live) is ErrEngineNotAnswering; the engine's state is updated either way.
func (w *Watcher) call(ctx context.Context, what string, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, w.o.CallTimeout)
	defer cancel()
	err := f(cctx)
	if err != nil && ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%s: no answer from %s within %s: %w", what, w.cli.DaemonHost(), w.o.CallTimeout, ErrEngineNotAnswering)
		w.setEngine(err)
		return err
	}
	if ctx.Err() == nil {
		w.setEngine(nil) // an answer, even an error, is the engine answering
	}
	return err
}

func (w *Watcher) setEngine(err error) {
	w.engineMu.Lock()
	changed := (w.engineErr == nil) != (err == nil)
	w.engineErr = err
	w.engineMu.Unlock()
	if changed && w.o.Engine != nil {
		w.o.Engine(err)
	}
}

// EngineErr is nil while the engine answers, else why it does not.
func (w *Watcher) EngineErr() error {
	w.engineMu.Lock()
	defer w.engineMu.Unlock()
	return w.engineErr
}

// ready pings the engine and fixes the API version, once.
func (w *Watcher) ready(ctx context.Context) error {
	w.negMu.Lock()
	defer w.negMu.Unlock()
	if w.negotiated {
		return nil
	}
	var p types.Ping
	err := w.call(ctx, "pinging the Docker engine", func(ctx context.Context) (err error) {
		p, err = w.cli.Ping(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("reaching the Docker engine at %s: %w", w.cli.DaemonHost(), err)
	}
	w.cli.NegotiateAPIVersionPing(p)
	w.negotiated = true
	return nil
}

// Inspect reads the container's state.
func (w *Watcher) Inspect(ctx context.Context) (State, error) {
	if err := w.ready(ctx); err != nil {
		return State{}, err
	}
	var info container.InspectResponse
	err := w.call(ctx, "inspecting container "+w.o.Name, func(ctx context.Context) (err error) {
		info, err = w.cli.ContainerInspect(ctx, w.o.Name)
		return err
	})
	if errors.Is(err, ErrEngineNotAnswering) {
		return State{}, err
	}
	if cerrdefs.IsNotFound(err) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("inspecting container %s: %w", w.o.Name, err)
	}
	s := State{Exists: true, ID: info.ID, RestartCount: info.RestartCount}
	if info.State != nil {
		s.Running, s.Restarting = info.State.Running, info.State.Restarting
		if info.State.Health != nil {
			s.Health = info.State.Health.Status
		}
	}
	return s, nil
}

// WaitReady blocks until the frontend is ready, keeping STATUS= on what is awaited; past
// StuckAfter the probes run again and their findings are logged (the runbook's
// troubleshooting, automated), then every ReprobeEvery. Its lines go to log (nil: the
// watcher's own): the boot's watch step passes its own, so they carry HAAGENT_STEP=watch.
func (w *Watcher) WaitReady(ctx context.Context, log *slog.Logger) error {
	if log == nil {
		log = w.o.Log
	}
	start := time.Now()
	nextProbe := start.Add(w.o.StuckAfter)
	lastState := ""
	t := time.NewTicker(w.o.Poll)
	defer t.Stop()
	for {
		s, err := w.Inspect(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			w.status(fmt.Sprintf("waiting for the Docker engine (%s): %v", since(start), err))
		case s.Ready():
			return nil
		default:
			if s.String() != lastState {
				log.Info("waiting for the frontend", "container", w.o.Name, "state", s.String(), "restarts", s.RestartCount)
				lastState = s.String()
			}
			w.status(fmt.Sprintf("waiting for %s (%s): %s", w.o.Name, since(start), s.String()))
		}
		if w.o.StuckAfter > 0 && time.Now().After(nextProbe) && w.o.Probe != nil {
			fs := w.o.Probe(ctx)
			codes := findings.Codes(fs)
			if len(fs) == 0 {
				codes = "none (the databases and Vault look fine: read the frontend's log)"
			}
			log.Warn(fmt.Sprintf("%s not ready after %s; findings: %s", w.o.Name, since(start), codes),
				"container", w.o.Name, "findings", findings.Codes(fs))
			nextProbe = time.Now().Add(w.o.ReprobeEvery)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func since(t time.Time) string { return time.Since(t).Round(time.Second).String() }

func (w *Watcher) status(s string) {
	if w.o.Status != nil {
		w.o.Status(s)
	}
}

// Follow forwards the container's logs until ctx ends, across stops, restarts and
// re-creations. It starts at the mark the haagent before it left (Options.MarkPath), else at
// from. Each reattachment asks for the lines since the last one forwarded (not a tail), and
// skips the lines it already forwarded at that exact timestamp.
//
// alive (nil: none) is called each time its loop goes round, and at least every Poll while a
// quiet stream is open: a frontend that logs nothing for hours is not a dead forwarder.
func (w *Watcher) Follow(ctx context.Context, from time.Time, alive func()) {
	if alive == nil {
		alive = func() {}
	}
	last, dupAtLast := w.start(from)
	every := w.o.MarkEvery
	if every <= 0 {
		every = DefaultMarkEvery
	}
	saver := make(chan struct{})
	go func() {
		defer close(saver)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.saveMark()
			}
		}
	}()
	defer func() {
		<-saver
		w.saveMark() // the stream has ended: this is exactly how far the journal got
	}()
	for ctx.Err() == nil {
		alive()
		s, err := w.Inspect(ctx)
		if err != nil || !s.Exists {
			sleepCtx(ctx, w.o.Poll)
			continue
		}
		opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true}
		if !last.IsZero() {
			opts.Since = fmt.Sprintf("%d.%09d", last.Unix(), last.Nanosecond())
		}
		// The stream lives as long as the container runs; only opening it is bounded.
		lctx, cancel := context.WithCancel(ctx)
		timer := time.AfterFunc(w.o.CallTimeout, cancel)
		rc, err := w.cli.ContainerLogs(lctx, s.ID, opts)
		if !timer.Stop() && ctx.Err() == nil {
			w.setEngine(fmt.Errorf("opening the log stream of %s: no answer from %s within %s: %w", w.o.Name, w.cli.DaemonHost(), w.o.CallTimeout, ErrEngineNotAnswering))
		}
		if err != nil {
			cancel()
			sleepCtx(ctx, w.o.Poll)
			continue
		}
		last, dupAtLast = w.pumpAlive(rc, last, dupAtLast, alive)
		rc.Close()
		cancel()
		// The stream ends at every stop or restart; wait for a change before reattaching so a
		// stopped container is not polled in a tight loop.
		w.waitChange(ctx, s, alive)
	}
}

// pumpAlive reads one log stream in a goroutine of its own while this loop calls alive every
// Poll: a read that waits for the next line is the stream being quiet, which is alive. The
// stream ends when the container stops or ctx ends (the caller's context closes it).
func (w *Watcher) pumpAlive(rc io.Reader, last time.Time, dup int, alive func()) (time.Time, int) {
	type result struct {
		last time.Time
		dup  int
	}
	done := make(chan result, 1)
	go func() {
		l, d := w.pump(rc, last, dup)
		done <- result{l, d}
	}()
	t := time.NewTicker(w.o.Poll)
	defer t.Stop()
	for {
		select {
		case r := <-done:
			return r.last, r.dup
		case <-t.C:
			alive()
		}
	}
}

// pump reads one log stream. Docker frames every log message (8-byte header: stream and
// size), so a last line without a newline stays its own entry instead of swallowing the next
// run's first line; a message longer than Docker's 16 KiB chunks arrives as several entries.
func (w *Watcher) pump(rc io.Reader, last time.Time, dup int) (time.Time, int) {
	br := bufio.NewReaderSize(rc, 64<<10)
	// Only the stream's head can repeat what was forwarded: the lines before the resume point,
	// and the first dup lines at it. After that every line is new, even one whose timestamp
	// is a hair older than the line before (the engine stamps stdout and stderr in separate
	// goroutines, so their lines can reach the log out of order).
	resume, atResume, seenAtResume := last, dup, 0
	emit := func(stream, text string, ts time.Time) {
		if ts.Before(resume) {
			return
		}
		if ts.Equal(resume) {
			if seenAtResume++; seenAtResume <= atResume {
				return // already forwarded before the reattachment
			}
		}
		switch {
		case ts.After(last):
			last, dup = ts, 1
		case ts.Equal(last):
			dup++
		}
		w.forward(stream, text, ts)
		w.advance(last, dup)
	}
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return last, dup
		}
		stream := "stdout"
		switch hdr[0] {
		case 1:
		case 2:
			stream = "stderr"
		default:
			// A TTY container's stream is not framed: read it as lines, as they come (the
			// timestamp that starts each line leaves no newline in the 8 bytes read).
			pre := string(hdr[:])
			for {
				l, err := br.ReadString('\n')
				l, pre = pre+l, ""
				if l = strings.TrimRight(l, "\r\n"); l != "" {
					ts, text := splitTimestamp(l)
					emit(stream, text, ts)
				}
				if err != nil {
					return last, dup
				}
			}
		}
		size := binary.BigEndian.Uint32(hdr[4:])
		payload := make([]byte, size)
		if _, err := io.ReadFull(br, payload); err != nil {
			return last, dup
		}
		ts, text := splitTimestamp(strings.TrimSuffix(string(payload), "\n"))
		emit(stream, text, ts)
	}
}

func (w *Watcher) forward(stream, text string, ts time.Time) {
	w.forwarded.Add(1)
	w.mu.Lock()
	w.last = append(w.last, text)
	if len(w.last) > 20 {
		w.last = w.last[len(w.last)-20:]
	}
	w.mu.Unlock()
	if w.o.Sink != nil {
		w.o.Sink.Line(stream, text, ts)
	}
}

// splitTimestamp separates the RFC3339Nano timestamp Docker puts before each line.
func splitTimestamp(s string) (time.Time, string) {
	head, rest, ok := strings.Cut(s, " ")
	if !ok {
		head = s
	}
	ts, err := time.Parse(time.RFC3339Nano, head)
	if err != nil {
		return time.Time{}, s
	}
	return ts, rest
}

func (w *Watcher) waitChange(ctx context.Context, was State, alive func()) {
	t := time.NewTicker(w.o.Poll / 4)
	defer t.Stop()
	for {
		alive()
		s, err := w.Inspect(ctx)
		if err == nil && (s.ID != was.ID || s.Running || s.RestartCount != was.RestartCount) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// CrashLoops watches the engine's events for the container dying, and calls report once
// each time it dies CrashRestarts times within CrashWindow. It runs until ctx ends: the event
// stream ends whenever dockerd restarts (an upgrade, systemctl restart docker), and is then
// followed again from the last event seen, so no die in between is missed. alive (nil: none)
// is called each time its loop goes round, and every Poll while no event comes.
func (w *Watcher) CrashLoops(ctx context.Context, alive func(), report func(dies int, window time.Duration)) {
	if alive == nil {
		alive = func() {}
	}
	var lastEvent int64 // TimeNano of the last die counted
	for ctx.Err() == nil {
		alive()
		if err := w.ready(ctx); err != nil {
			sleepCtx(ctx, w.o.Poll)
			continue
		}
		since := time.Now()
		if lastEvent > 0 {
			since = time.Unix(0, lastEvent)
		}
		err := w.followDies(ctx, since, &lastEvent, alive, report)
		if ctx.Err() != nil {
			return
		}
		w.o.Log.Warn("the Docker event stream ended; following it again from the last event seen (crash-loop detection goes on)",
			"container", w.o.Name, "error", fmt.Sprint(err))
		sleepCtx(ctx, w.o.Poll)
	}
}

// followDies reads one event stream until it ends.
func (w *Watcher) followDies(ctx context.Context, since time.Time, lastEvent *int64, alive func(), report func(dies int, window time.Duration)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)), filters.Arg("container", w.o.Name), filters.Arg("event", "die"))
	msgs, errs := w.cli.Events(ctx, events.ListOptions{Filters: f, Since: fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())})
	wake := time.NewTicker(w.o.Poll)
	defer wake.Stop()
	for {
		select {
		case <-wake.C:
			alive() // no die for a while: the usual case
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			if err == nil {
				err = io.EOF
			}
			return err
		case m := <-msgs:
			if m.TimeNano <= *lastEvent {
				continue // replayed by Since after a reconnection
			}
			*lastEvent = m.TimeNano
			now := time.Unix(0, m.TimeNano)
			w.mu.Lock()
			w.dies = append(w.dies, now)
			cut := 0
			for cut < len(w.dies) && now.Sub(w.dies[cut]) > w.o.CrashWindow {
				cut++
			}
			w.dies = w.dies[cut:]
			n := len(w.dies)
			fire := n >= w.o.CrashRestarts && !w.looping
			if fire {
				w.looping = true
			}
			if n < w.o.CrashRestarts {
				w.looping = false
			}
			w.mu.Unlock()
			if fire {
				report(n, w.o.CrashWindow)
			}
		}
	}
}

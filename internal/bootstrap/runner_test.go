package bootstrap

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/state"
)

func TestTheBootTableIsWellFormed(t *testing.T) {
	if err := CheckSteps(Steps); err != nil {
		t.Fatal(err)
	}
	// A fix made in the bucket (a setting, a CA) only helps once it is fetched again.
	for _, name := range []string{"validate-files", "ca-certs", "probe"} {
		i := slices.IndexFunc(Steps, func(s Step) bool { return s.Name == name })
		if i < 0 {
			t.Fatalf("no step %q", name)
		}
		if Steps[retryIndex(Steps, i)].Name != "fetch" {
			t.Errorf("step %q retries from %q, want fetch", name, Steps[retryIndex(Steps, i)].Name)
		}
	}
}

func TestMistypedRetryTargetIsAStartUpError(t *testing.T) {
	ran := 0
	step := func(context.Context, *Env) error { ran++; return nil }
	r := &Runner{Steps: []Step{{Name: "fetch", Run: step}, {Name: "probe", Run: step, RetryFrom: "fecth"}}, Once: true}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	err := r.Run(context.Background(), env)
	if err == nil || !strings.Contains(err.Error(), `"fecth"`) {
		t.Fatalf("want an error naming the unknown retry target, got %v", err)
	}
	if ran != 0 || len(env.Record.Runs) != 0 {
		t.Fatalf("steps ran (%d) or a run was recorded before the table was checked", ran)
	}
}

func TestAFailedStepGoesBackToItsRetryTarget(t *testing.T) {
	var order []string
	probeFails := 1
	step := func(name string) func(context.Context, *Env) error {
		return func(context.Context, *Env) error {
			order = append(order, name)
			if name == "probe" && probeFails > 0 {
				probeFails--
				return errors.New("SETTING_MISSING")
			}
			return nil
		}
	}
	r := &Runner{
		Steps:   []Step{{Name: "config", Run: step("config")}, {Name: "fetch", Run: step("fetch")}, {Name: "probe", Run: step("probe"), RetryFrom: "fetch"}},
		Backoff: func(int) time.Duration { return 0 },
	}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	if err := r.Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(order, ","), "config,fetch,probe,fetch,probe"; got != want {
		t.Fatalf("steps ran %s, want %s", got, want)
	}
}

// A finding raised beside the steps (a crash loop, the guard's decision) belongs to no step:
// retrying the step that happened to run must not delete it.
func TestLateFindingsOutliveAStepRetry(t *testing.T) {
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	steps := []Step{{Name: "watch"}}
	env.beginStep("watch")
	env.LateFinding(findings.New(findings.FrontendCrashLoop, "frontend", "frontend died 5 times within 10m0s", ""))
	env.lateDecision(findings.New(findings.ASGReplacementWithheld, "i-1", "first decision", ""), findings.ASGReplacementWithheld, findings.ASGReplacementRequested)
	env.lateDecision(findings.New(findings.ASGReplacementWithheld, "i-1", "second decision", ""), findings.ASGReplacementWithheld, findings.ASGReplacementRequested)
	env.beginStep("watch") // the step is retried
	got := env.Findings(steps)
	if len(got) != 2 || got[0].Code != findings.FrontendCrashLoop || got[1].Summary != "second decision" {
		t.Fatalf("late findings after a retry: %+v", got)
	}
	env.LateFinding(findings.New(findings.DockerNotAnswering, "dockerd", "no answer", ""))
	env.clearLate(findings.DockerNotAnswering, "dockerd")
	if got := env.Findings(steps); len(got) != 2 {
		t.Fatalf("a cleared late finding is still there: %+v", got)
	}
}

// A step that ignores its context past its timeout stops the watchdog pings, so systemd
// restarts haagent; a step that honours it fails with the timeout and is retried.
func TestAHungStepStopsTheWatchdog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "20000") // pings every 10 ms
	t.Setenv("WATCHDOG_PID", "")
	release := make(chan struct{})
	defer close(release)
	hung := make(chan string, 1)
	r := &Runner{
		Steps: []Step{{Name: "stuck", Timeout: fixed(30 * time.Millisecond), Run: func(ctx context.Context, _ *Env) error {
			<-release // ignores ctx, as a step blocked in a syscall would
			return nil
		}}},
		Grace:  30 * time.Millisecond,
		OnHung: func(s string) { hung <- s },
	}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	go r.Run(context.Background(), env)
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
	// Pings flow while the step is within its time...
	for m := range pings {
		if m == "WATCHDOG=1" {
			break
		}
	}
	if s := <-hung; s != "stuck" {
		t.Fatalf("hung step %q", s)
	}
	// ...and none after it counts as hung: drain what was queued, then watch ten intervals.
	for len(pings) > 0 {
		<-pings
	}
	quiet := time.After(100 * time.Millisecond)
	for {
		select {
		case m := <-pings:
			if m == "WATCHDOG=1" {
				t.Fatal("the watchdog is still fed while a step hangs past its timeout")
			}
		case <-quiet:
			return
		}
	}
}

func TestAStepThatHonoursItsTimeoutFailsAndIsRetried(t *testing.T) {
	calls := 0
	r := &Runner{
		Steps: []Step{{Name: "slow", Timeout: fixed(20 * time.Millisecond), Run: func(ctx context.Context, _ *Env) error {
			calls++
			if calls == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		}}},
		Backoff: func(int) time.Duration { return 0 },
	}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}}
	if err := r.Run(context.Background(), env); err != nil || calls != 2 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
	if st := env.Run.Steps[0]; st.Attempts != 2 {
		t.Fatalf("step record %+v", st)
	}
}

// probes.overrides applies to any code a step reports, not only the probes' (README), and never
// to a safety code.
func TestOverridesApplyToEveryCodeButTheSafetyCodes(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: abc\nprobes:\n  overrides:\n    FILE_INVALID: {severity: warning, blocking: false}\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	// Validation refuses an override of a safety code; one that got in all the same is ignored.
	cfg.Probes.Overrides[findings.KeysConflict.String()] = config.Override{Severity: "info"}
	env := &Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Record: &state.Record{}, Config: cfg}
	env.beginStep("validate-files")
	env.Report(findings.New(findings.FileInvalid, "/etc/replicated.conf", "TlsBootstrapHostname is empty", ""))
	env.Report(findings.New(findings.KeysConflict, "/data/circle/circleci-encryption-keys/k", "differs", ""))
	got := env.Findings([]Step{{Name: "validate-files"}})
	if got[0].Severity != findings.Warning || got[0].Blocking {
		t.Errorf("the override did not apply to a validate-files code: %+v", got[0])
	}
	if e := findings.KeysConflict.Entry(); got[1].Blocking != e.Blocking || got[1].Severity != e.Severity {
		t.Errorf("a safety code changed: %+v", got[1])
	}
}

// A step's findings are folded before they are recorded and logged: what an upstream finding
// explains is listed in it (and in its journal line), not recorded beside it; the config's
// overrides apply first.
func TestStepFindingsAreFoldedBeforeTheyAreRecorded(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: abc\nprobes:\n  overrides:\n    PG_AUTH_FAILED: {severity: warning, blocking: false}\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	env := &Env{Log: slog.New(slog.NewTextHandler(&log, nil)), Record: &state.Record{}, Config: cfg}
	env.beginStep("probe")
	env.ReportAll([]findings.Finding{
		findings.New(findings.TLSUnknownAuthority, "circle@db.internal:5432", "the certificate of db.internal:5432 is signed by an unknown CA", "").WithHost("db.internal:5432"),
		findings.New(findings.PGAuthFailed, "circle@db.internal:5432", "PostgreSQL rejected the password", "").WithHost("db.internal:5432"),
		findings.New(findings.VaultSealed, "https://vault:8200", "Vault is sealed", "").WithHost("vault:8200"),
	})
	got := env.Findings([]Step{{Name: "probe"}})
	if len(got) != 2 || got[0].Code != findings.TLSUnknownAuthority || got[1].Code != findings.VaultSealed {
		t.Fatalf("recorded %+v", got)
	}
	if len(got[0].Suppressed) != 1 || !strings.HasPrefix(got[0].Suppressed[0], "PG_AUTH_FAILED PostgreSQL rejected the password") {
		t.Errorf("TLS_UNKNOWN_AUTHORITY does not list what it explains: %+v", got[0])
	}
	// Folded after the override: the absorbed PG_AUTH_FAILED no longer blocks, so neither
	// does the (non-blocking) TLS finding that took it in.
	if got[0].Blocking || got[0].Severity != findings.Error {
		t.Errorf("the override of the folded code was not applied first: %+v", got[0])
	}
	if n := strings.Count(log.String(), findings.PGAuthFailed.String()); n != 1 || !strings.Contains(log.String(), "also_suppressed=") {
		t.Errorf("the journal names PG_AUTH_FAILED %d times, want once, in TLS_UNKNOWN_AUTHORITY's also_suppressed:\n%s", n, log.String())
	}
}

// A step that fails on blocking findings has them folded too: the [failed] line and the run
// record's error name the cause, not what it explains.
func TestAFailedStepsFindingsAreFolded(t *testing.T) {
	step := func(context.Context, *Env) error {
		return &findings.Failure{Findings: []findings.Finding{
			findings.New(findings.DNSNotFound, "mongo-old.internal.test:27017", "mongo-old.internal.test does not resolve", "").WithHost("mongo-old.internal.test"),
			findings.New(findings.MongoMemberUnreachable, "mongo-old.internal.test:27017", "replica set rs0 advertises member mongo-old.internal.test:27017", "").WithHost("mongo-old.internal.test:27017"),
		}}
	}
	var log strings.Builder
	r := &Runner{Steps: []Step{{Name: "probe", Run: step}}, Once: true}
	env := &Env{Log: slog.New(slog.NewTextHandler(&log, nil)), Record: &state.Record{}}
	err := r.Run(context.Background(), env)
	if err == nil || strings.Contains(err.Error(), "MONGO_MEMBER_UNREACHABLE") || !strings.Contains(err.Error(), "DNS_NOT_FOUND") {
		t.Fatalf("the run failed with %v", err)
	}
	if n := strings.Count(log.String(), "MONGO_MEMBER_UNREACHABLE"); n != 1 || !strings.Contains(log.String(), "also_suppressed=") {
		t.Errorf("the journal names MONGO_MEMBER_UNREACHABLE %d times, want once, in also_suppressed:\n%s", n, log.String())
	}
}

package bootstrap

import (
	"context"
	"errors"
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
	step := do(func(context.Context) error { ran++; return nil })
	r := &Runner{Steps: []Step{{Name: "fetch", Do: step}, {Name: "probe", Do: step, Retry: From("fecth")}}, Once: true}
	env := quietEnv(Inputs{}, &state.Record{})
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
	step := func(name string) Do {
		return do(func(context.Context) error {
			order = append(order, name)
			if name == "probe" && probeFails > 0 {
				probeFails--
				return errors.New("SETTING_MISSING")
			}
			return nil
		})
	}
	r := &Runner{
		Steps:   []Step{{Name: "config", Do: step("config")}, {Name: "fetch", Do: step("fetch")}, {Name: "probe", Do: step("probe"), Retry: From("fetch")}},
		Backoff: func(int) time.Duration { return 0 },
	}
	env := quietEnv(Inputs{}, &state.Record{})
	if err := r.Run(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(order, ","), "config,fetch,probe,fetch,probe"; got != want {
		t.Fatalf("steps ran %s, want %s", got, want)
	}
}

// A finding raised beside the steps (a crash loop, the guard's decision) belongs to no step but
// to its monitor: retrying the step that happened to run must not delete it, and the record
// shows it under the monitor's name.
func TestLateFindingsOutliveAStepRetry(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	env := quietEnv(Inputs{}, nil)
	env.runCtx = ctx
	defer func() { cancel(); env.Drain(10 * time.Second) }()
	// A monitor that sets what it is sent, and says when it has.
	type set struct{ fs []findings.Finding }
	monitor := func(name string) (chan<- set, <-chan struct{}) {
		in, done := make(chan set), make(chan struct{})
		env.supervise(Monitor{Name: name, Within: time.Hour, Run: func(ctx context.Context, h *Handle) error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case s := <-in:
					h.Set(s.fs...)
					done <- struct{}{}
				}
			}
		}})
		return in, done
	}
	crash, crashed := monitor("crash-loops")
	guard, guarded := monitor("guard")
	engine, engined := monitor("docker-engine")
	env.ledger.book.beginStep("watch")
	crash <- set{[]findings.Finding{findings.New(findings.FrontendCrashLoop, "frontend", "frontend died 5 times within 10m0s", "")}}
	<-crashed
	guard <- set{[]findings.Finding{findings.New(findings.ASGReplacementWithheld, "i-1", "first decision", "")}}
	<-guarded
	guard <- set{[]findings.Finding{findings.New(findings.ASGReplacementWithheld, "i-1", "second decision", "")}}
	<-guarded
	env.ledger.book.beginStep("watch") // the step is retried
	got := env.monitorRecord()
	if len(got) != 3 || got[0].Name != "crash-loops" || got[0].Findings[0].Code != findings.FrontendCrashLoop ||
		got[1].Name != "guard" || len(got[1].Findings) != 1 || got[1].Findings[0].Summary != "second decision" {
		t.Fatalf("monitor findings after a retry: %+v", got)
	}
	engine <- set{[]findings.Finding{findings.New(findings.DockerNotAnswering, "dockerd", "no answer", "")}}
	<-engined
	engine <- set{}
	<-engined
	if got := env.monitors().Findings(); len(got) != 2 {
		t.Fatalf("a withdrawn monitor finding is still there: %+v", got)
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
		Steps: []Step{{Name: "stuck", Timeout: fixed(30 * time.Millisecond), Do: do(func(ctx context.Context) error {
			<-release // ignores ctx, as a step blocked in a syscall would
			return nil
		})}},
		Grace:  30 * time.Millisecond,
		OnHung: func(s string) { hung <- s },
	}
	env := quietEnv(Inputs{}, &state.Record{})
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
		Steps: []Step{{Name: "slow", Timeout: fixed(20 * time.Millisecond), Do: do(func(ctx context.Context) error {
			calls++
			if calls == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})}},
		Backoff: func(int) time.Duration { return 0 },
	}
	env := quietEnv(Inputs{}, &state.Record{})
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
	cfg.Probes.Overrides["KEYS_CONFLICT"] = config.Override{Severity: "info"}
	env := quietEnv(Inputs{}, &state.Record{})
	env.Config = cfg
	env.ledger.book.beginStep("validate-files")
	env.recordStep(env.Log, "validate-files", []findings.Finding{
		findings.New(findings.FileInvalid, "/etc/replicated.conf", "TlsBootstrapHostname is empty", ""),
		findings.New(findings.KeysConflict, "/data/circle/circleci-encryption-keys/k", "differs", ""),
	})
	got := env.ledger.book.stepFindings([]Step{{Name: "validate-files"}})
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
	env := quietEnv(Inputs{Log: slog.New(slog.NewTextHandler(&log, nil))}, &state.Record{})
	env.Config = cfg
	env.ledger.book.beginStep("probe")
	env.recordStep(env.Log, "probe", []findings.Finding{
		findings.New(findings.TLSUnknownAuthority, "circle@db.internal:5432", "the certificate of db.internal:5432 is signed by an unknown CA", "").WithHost("db.internal:5432"),
		findings.New(findings.PGAuthFailed, "circle@db.internal:5432", "PostgreSQL rejected the password", "").WithHost("db.internal:5432"),
		findings.New(findings.VaultSealed, "https://vault:8200", "Vault is sealed", "").WithHost("vault:8200"),
	})
	got := env.ledger.book.stepFindings([]Step{{Name: "probe"}})
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
	step := do(func(context.Context) error {
		return &findings.Failure{Findings: []findings.Finding{
			findings.New(findings.DNSNotFound, "mongo-old.internal.test:27017", "mongo-old.internal.test does not resolve", "").WithHost("mongo-old.internal.test"),
			findings.New(findings.MongoMemberUnreachable, "mongo-old.internal.test:27017", "replica set rs0 advertises member mongo-old.internal.test:27017", "").WithHost("mongo-old.internal.test:27017"),
		}}
	})
	var log strings.Builder
	r := &Runner{Steps: []Step{{Name: "probe", Do: step}}, Once: true}
	env := quietEnv(Inputs{Log: slog.New(slog.NewTextHandler(&log, nil))}, &state.Record{})
	err := r.Run(context.Background(), env)
	if err == nil || strings.Contains(err.Error(), "MONGO_MEMBER_UNREACHABLE") || !strings.Contains(err.Error(), "DNS_NOT_FOUND") {
		t.Fatalf("the run failed with %v", err)
	}
	if n := strings.Count(log.String(), "MONGO_MEMBER_UNREACHABLE"); n != 1 || !strings.Contains(log.String(), "also_suppressed=") {
		t.Errorf("the journal names MONGO_MEMBER_UNREACHABLE %d times, want once, in also_suppressed:\n%s", n, log.String())
	}
}

package bootstrap

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/logging"
	"github.com/haagent/haagent/internal/state"
)

// lines is a slog handler that keeps every record with its attributes (the logger's own
// included), as the journal handler would turn them into fields.
type lines struct {
	mu    *sync.Mutex
	attrs []slog.Attr
	out   *[]line
}

type line struct {
	msg    string
	fields map[string]string
}

func newLines() (*lines, *[]line) {
	out := &[]line{}
	return &lines{mu: &sync.Mutex{}, out: out}, out
}

func (h *lines) Enabled(context.Context, slog.Level) bool { return true }
func (h *lines) Handle(_ context.Context, r slog.Record) error {
	l := line{msg: r.Message, fields: map[string]string{}}
	for _, a := range h.attrs {
		l.fields[logging.FieldName(a.Key)] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { l.fields[logging.FieldName(a.Key)] = a.Value.String(); return true })
	h.mu.Lock()
	*h.out = append(*h.out, l)
	h.mu.Unlock()
	return nil
}
func (h *lines) WithAttrs(as []slog.Attr) slog.Handler {
	return &lines{mu: h.mu, attrs: append(slices.Clone(h.attrs), as...), out: h.out}
}
func (h *lines) WithGroup(string) slog.Handler { return h }

// A step has no way to log a finding but through the runner: what it returns, what it reports
// early and what its failure carries are all recorded, each logged once (a finding reported
// twice is one line), every line of the step with HAAGENT_STEP, its findings with
// HAAGENT_FINDING.
func TestEveryFindingAStepLogsIsRecordedAndItsLinesCarryTheStep(t *testing.T) {
	h, out := newLines()
	returned := findings.New(findings.FileInvalid, "/etc/replicated.conf", "returned", "")
	early := findings.New(findings.InstallerUnpinned, "https://get.replicated.com/docker", "reported early", "")
	failed := findings.New(findings.SettingMissing, "settings.conf", "in the failure", "")
	type in struct{ Word string }
	step := Step{Name: "probe", Do: Wire(
		func(*Env) in { return in{Word: "hello"} },
		func(ctx context.Context, x Exec, i in) (struct{}, []findings.Finding, error) {
			x.Log.Info("the step says " + i.Word)
			x.Report(early)
			x.Report(early)
			return struct{}{}, []findings.Finding{returned, returned}, &findings.Failure{Findings: []findings.Finding{failed, returned}}
		}, nil)}
	r := &Runner{Steps: []Step{step}, Once: true}
	env := quietEnv(Inputs{Log: slog.New(h)}, &state.Record{})
	if err := r.Run(context.Background(), env); err == nil {
		t.Fatal("the failing step did not fail the run")
	}
	var recorded []string
	for _, f := range env.Run.Findings {
		recorded = append(recorded, f.Code.String())
	}
	slices.Sort(recorded)
	var logged []string
	for _, l := range *out {
		if l.fields["HAAGENT_STEP"] != "probe" {
			t.Errorf("a line of the step lacks HAAGENT_STEP=probe: %q %v", l.msg, l.fields)
		}
		if code := l.fields["HAAGENT_FINDING"]; code != "" {
			logged = append(logged, code)
		}
	}
	slices.Sort(logged)
	if want := []string{"FILE_INVALID", "INSTALLER_UNPINNED", "SETTING_MISSING"}; !slices.Equal(logged, want) || !slices.Equal(recorded, want) {
		t.Fatalf("logged %v and recorded %v, want each of %v once", logged, recorded, want)
	}
}

// The runner gives up on a step that hangs past its timeout; whatever that step produces when
// it returns at last is never written into the boot (an attempt's output is applied only by
// the runner, when it returned in time).
func TestAHungStepsOutputIsNeverApplied(t *testing.T) {
	release, returned := make(chan struct{}), make(chan struct{})
	step := Step{Name: "imds", Timeout: fixed(10 * time.Millisecond), Do: Wire(
		func(*Env) struct{} { return struct{}{} },
		func(ctx context.Context, _ Exec, _ struct{}) ([]byte, []findings.Finding, error) {
			defer close(returned)
			<-release // ignores ctx
			return []byte("late"), nil, nil
		},
		func(e *Env, ud []byte) { e.UserData = ud })}
	r := &Runner{Steps: []Step{step}, Once: true, Grace: 10 * time.Millisecond}
	env := quietEnv(Inputs{}, &state.Record{})
	if err := r.Run(context.Background(), env); err == nil || !strings.Contains(err.Error(), "hung") {
		t.Fatalf("want the hung step to fail the run, got %v", err)
	}
	close(release)
	<-returned
	if env.UserData != nil {
		t.Fatalf("the hung step's output was applied after the runner gave up on it: %q", env.UserData)
	}
}

// A monitor's findings reach the run record on disk as they are set, under the monitor's name,
// while the steps still run (the watch may wait half an hour for the frontend): `haagent
// status` shows a crash loop during the boot, not after it.
func TestMonitorFindingsReachTheRecordWhileStepsRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	started, set := make(chan struct{}), make(chan struct{})
	crash := findings.New(findings.FrontendCrashLoop, "frontend", "frontend died 5 times within 10m0s", "")
	mon := Monitor{Name: "crash-loops", Run: func(ctx context.Context, h *Handle) error {
		<-started // the runner wrote the record for the watch step's start: what follows is the monitor's own save
		h.Set(crash)
		close(set)
		<-ctx.Done()
		return nil
	}}
	var during *state.Record
	steps := []Step{
		{Name: "watch-start", Do: Wire(func(*Env) struct{} { return struct{}{} },
			func(context.Context, Exec, struct{}) ([]Monitor, []findings.Finding, error) {
				return []Monitor{mon}, nil, nil
			},
			func(e *Env, ms []Monitor) { e.supervise(ms...) })},
		{Name: "watch", Do: do(func(context.Context) error {
			close(started)
			<-set
			var err error
			during, err = state.Load(path)
			return err
		})},
	}
	ctx, cancel := context.WithCancel(context.Background())
	env := quietEnv(Inputs{}, &state.Record{Version: state.Version})
	defer env.Drain(time.Minute)
	defer cancel()
	if err := (&Runner{Steps: steps, Once: true, StatePath: path}).Run(ctx, env); err != nil {
		t.Fatal(err)
	}
	ms := during.Last().Monitors
	if len(ms) != 1 || ms[0].Name != "crash-loops" || len(ms[0].Findings) != 1 || ms[0].Findings[0].Code != findings.FrontendCrashLoop {
		t.Fatalf("the record on disk while the watch ran: monitors %+v", ms)
	}
	if fs := during.Last().Findings; len(fs) != 0 {
		t.Fatalf("a monitor's finding was filed under a step: %+v", fs)
	}
}

// README's "What a boot does" and docs/ARCHITECTURE.md list the steps as the table has them:
// names, order, retry scopes and timeouts.
func TestTheDocsListTheStepsAsTheTableHasThem(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: abc\nreplicated:\n  timeout: 47m\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, s := range Steps {
		retry := "itself"
		if s.Retry.from != "" {
			retry = "`" + s.Retry.from + "`"
		}
		timeout := "none"
		if s.Timeout != nil {
			d := s.Timeout(&State{Config: cfg})
			timeout = strings.TrimSuffix(d.String(), "0s")
			if s.Name == "replicated-install" {
				timeout = "`replicated.timeout` + " + strings.TrimSuffix((d-47*time.Minute).String(), "0s")
			}
		}
		want = append(want, strings.Join([]string{"`" + s.Name + "`", retry, timeout}, " | "))
	}
	// The rows of the first table whose header is "| step | retry from | timeout | ...".
	row := regexp.MustCompile("^\\| (`[a-z-]+`) \\| ([^|]+?) \\| ([^|]+?) \\|")
	for _, doc := range []string{"../../README.md", "../../docs/ARCHITECTURE.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		_, table, ok := strings.Cut(string(b), "\n| step | retry from | timeout |")
		if !ok {
			t.Fatalf("%s has no table of the steps (| step | retry from | timeout | ...)", doc)
		}
		var got []string
		for _, l := range strings.Split(table, "\n")[2:] {
			m := row.FindStringSubmatch(l)
			if m == nil {
				break
			}
			got = append(got, strings.Join(m[1:], " | "))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s lists the steps as\n  %s\nthe table has\n  %s", doc, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
}

// A step is a function of its input: no step function takes the Env, and no step's input
// carries it, so a step cannot record, log a finding around the runner, or write the boot's
// state behind the wiring's back. The rule is checked on the source, not hoped for.
func TestNoStepTakesTheEnv(t *testing.T) {
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	isEnv := func(e ast.Expr) bool {
		if s, ok := e.(*ast.StarExpr); ok {
			e = s.X
		}
		id, ok := e.(*ast.Ident)
		return ok && id.Name == "Env"
	}
	steps, inputs := 0, map[string]bool{}
	for _, f := range files {
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(strings.ToLower(fn.Name.Name), "step") {
				continue
			}
			steps++
			ps := fn.Type.Params.List
			if len(ps) != 3 || fn.Type.Results == nil || len(fn.Type.Results.List) != 3 {
				t.Errorf("%s is not func(ctx, Exec, In) (Out, []findings.Finding, error)", fn.Name.Name)
				continue
			}
			for _, p := range ps {
				if isEnv(p.Type) {
					t.Errorf("%s takes the Env", fn.Name.Name)
				}
			}
			if id, ok := ps[2].Type.(*ast.Ident); ok {
				inputs[id.Name] = true
			}
		}
	}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || !inputs[ts.Name.Name] {
				return true
			}
			for _, fld := range ts.Type.(*ast.StructType).Fields.List {
				if isEnv(fld.Type) {
					t.Errorf("the input %s carries the Env", ts.Name.Name)
				}
			}
			return true
		})
	}
	if steps < len(Steps) {
		t.Fatalf("found %d step functions for %d steps: the check missed some", steps, len(Steps))
	}
}

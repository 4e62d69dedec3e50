package bootstrap

import (
	"log/slog"
	"slices"
	"sync"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
)

// book is the steps' findings (a retry replaces that step's earlier ones); each monitor's are
// the supervisor's, under its name, so a step's retry never deletes them. Every finding a step
// reports is logged once per run, however often it is reported again.
type book struct {
	mu     sync.Mutex
	steps  map[string][]findings.Finding
	logged map[string]bool
}

func findingKey(f findings.Finding) string {
	return f.Code.String() + "\x00" + f.Target + "\x00" + f.Summary
}

func (b *book) init() {
	if b.steps == nil {
		b.steps, b.logged = map[string][]findings.Finding{}, map[string]bool{}
	}
}

// beginStep forgets the step's findings of its earlier attempt.
func (b *book) beginStep(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	delete(b.steps, name)
}

// addStep files fs under the step and returns those not yet logged this run.
func (b *book) addStep(name string, fs []findings.Finding) (fresh []findings.Finding) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	for _, f := range fs {
		key := findingKey(f)
		if !slices.ContainsFunc(b.steps[name], func(g findings.Finding) bool { return findingKey(g) == key }) {
			b.steps[name] = append(b.steps[name], f)
		}
		if !b.logged[key] {
			fresh = append(fresh, f)
		}
		b.logged[key] = true
	}
	return fresh
}

// stepFindings is every step's current findings, in table order.
func (b *book) stepFindings(steps []Step) []findings.Finding {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []findings.Finding
	for _, s := range steps {
		out = append(out, b.steps[s.Name]...)
	}
	return out
}

// recordStep files a step's findings, with the config's overrides applied and then folded
// (findings.Fold: what an upstream finding explains is listed in it, not filed beside it), and
// logs each one not yet logged this run through the step's logger.
func (e *Env) recordStep(log *slog.Logger, name string, fs []findings.Finding) {
	for _, f := range e.ledger.book.addStep(name, findings.Fold(e.adjust(fs...))) {
		logFinding(log, f)
	}
}

// adjust applies the config's overrides (probes.overrides: any code but the safety codes), so
// what is logged, recorded and acted on is what the operator configured.
func (e *Env) adjust(fs ...findings.Finding) []findings.Finding {
	return adjust(e.Config, fs)
}

// adjust applies cfg's overrides to fs; a nil config (before the config step) has none.
func adjust(cfg *config.Config, fs []findings.Finding) []findings.Finding {
	if cfg == nil || len(cfg.Probes.Overrides) == 0 {
		return fs
	}
	return findings.Apply(fs, cfg.Probes.FindingOverrides())
}

func logFinding(log *slog.Logger, f findings.Finding) { findings.Log(log, f) }

func (e *Env) save() {
	e.ledger.mu.Lock()
	defer e.ledger.mu.Unlock()
	e.write(true)
}

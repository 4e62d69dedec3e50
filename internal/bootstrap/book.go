package bootstrap

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/state"
)

// book is the run's findings: each step's (a retry replaces that step's earlier ones) and each
// monitor's under its name (its latest Set replaces its earlier ones, so a step's retry never
// deletes them). Every finding is logged once per run, however often it is reported again.
type book struct {
	mu       sync.Mutex
	steps    map[string][]findings.Finding
	monitors map[string][]findings.Finding
	order    []string // monitors in the order they first reported
	logged   map[string]bool
}

func findingKey(f findings.Finding) string {
	return f.Code.String() + "\x00" + f.Target + "\x00" + f.Summary
}

func (b *book) init() {
	if b.steps == nil {
		b.steps, b.monitors, b.logged = map[string][]findings.Finding{}, map[string][]findings.Finding{}, map[string]bool{}
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

// setMonitor replaces the monitor's findings with fs and returns those not yet logged this run.
// A finding that left it is forgotten as logged: when its condition comes back, it is logged
// again.
func (b *book) setMonitor(name string, fs []findings.Finding) (fresh []findings.Finding) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	if _, ok := b.monitors[name]; !ok {
		b.order = append(b.order, name)
	}
	var now []findings.Finding
	for _, f := range fs {
		key := findingKey(f)
		if slices.ContainsFunc(now, func(g findings.Finding) bool { return findingKey(g) == key }) {
			continue
		}
		now = append(now, f)
		if !b.logged[key] {
			fresh = append(fresh, f)
		}
		b.logged[key] = true
	}
	for _, g := range b.monitors[name] {
		key := findingKey(g)
		if !slices.ContainsFunc(now, func(f findings.Finding) bool { return findingKey(f) == key }) {
			delete(b.logged, key)
		}
	}
	b.monitors[name] = now
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

// monitorFindings is each monitor's current findings, under its name, in the order the
// monitors first reported; a monitor whose findings were all withdrawn is left out.
func (b *book) monitorFindings() []state.Monitor {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []state.Monitor
	for _, name := range b.order {
		if fs := b.monitors[name]; len(fs) > 0 {
			out = append(out, state.Monitor{Name: name, Findings: slices.Clone(fs)})
		}
	}
	return out
}

// recordStep files a step's findings, with the config's overrides applied, and logs each one
// not yet logged this run through the step's logger.
func (e *Env) recordStep(log *slog.Logger, name string, fs []findings.Finding) {
	for _, f := range e.book.addStep(name, e.adjust(fs...)) {
		logFinding(log, f)
	}
}

// setLate replaces a monitor's findings (its Handle.Set) with fs, logs each one not yet logged
// this run, and saves the record.
func (e *Env) setLate(monitor string, fs ...findings.Finding) {
	log := e.Log.With("monitor", monitor)
	for _, f := range e.book.setMonitor(monitor, e.adjust(fs...)) {
		logFinding(log, f)
	}
	e.save()
}

// recordLate replaces a monitor's findings with fs that its monitor has already logged in its
// own words (the guard's decision, taken again every few minutes for days): recorded, not
// logged again.
func (e *Env) recordLate(monitor string, fs ...findings.Finding) {
	e.book.setMonitor(monitor, e.adjust(fs...))
	e.save()
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

func logFinding(log *slog.Logger, f findings.Finding) {
	level := slog.LevelInfo
	switch f.Severity {
	case findings.Error:
		level = slog.LevelError
	case findings.Warning:
		level = slog.LevelWarn
	}
	attrs := []any{"finding", f.Code.String(), "severity", string(f.Severity), "blocking", f.Blocking}
	if f.Target != "" {
		attrs = append(attrs, "target", f.Target)
	}
	if f.Evidence != "" {
		attrs = append(attrs, "evidence", f.Evidence)
	}
	if f.Fix != "" {
		attrs = append(attrs, "fix", f.Fix)
	}
	log.Log(context.Background(), level, f.Code.String()+": "+f.Summary, attrs...)
}

func (e *Env) save() {
	e.persistMu.Lock()
	defer e.persistMu.Unlock()
	if e.persist != nil {
		e.persist()
	}
}

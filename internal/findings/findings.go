// Package findings holds the Finding type every step and probe reports, and the catalogue of
// their stable codes. A finding is a value: what is wrong, where, the evidence, and the fix.
package findings

import (
	"fmt"
	"sort"
	"strings"
)

// Severity orders findings: info < warning < error.
type Severity string

// Severities, lowest first.
const (
	Info    Severity = "info"
	Warning Severity = "warning"
	Error   Severity = "error"
)

func (s Severity) rank() int {
	switch s {
	case Error:
		return 2
	case Warning:
		return 1
	}
	return 0
}

// Finding is one diagnosed condition. Evidence and Target never carry secrets: callers redact
// URIs with Redact before building one.
type Finding struct {
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	// Blocking findings stop the boot before the installer runs.
	Blocking bool   `json:"blocking"`
	Service  string `json:"service,omitempty"`
	Target   string `json:"target,omitempty"`
	Summary  string `json:"summary"`
	Evidence string `json:"evidence,omitempty"`
	Fix      string `json:"fix,omitempty"`
}

// New builds a finding for a catalogued code with the catalogue's severity, blocking flag and
// default fix. An uncatalogued code is a programming error: Lookup panics on it.
func New(code, target, summary, evidence string) Finding {
	e := Lookup(code)
	return Finding{
		Code:     code,
		Severity: e.Severity,
		Blocking: e.Blocking,
		Service:  e.Service,
		Target:   target,
		Summary:  summary,
		Evidence: evidence,
		Fix:      e.Fix,
	}
}

// WithFix returns a copy of f whose fix is the more specific text given.
func (f Finding) WithFix(fix string) Finding {
	f.Fix = fix
	return f
}

// String is the one-line form used in logs and errors.
func (f Finding) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", f.Code, f.Summary)
	if f.Target != "" {
		fmt.Fprintf(&b, " [%s]", f.Target)
	}
	return b.String()
}

// Failure lets blocking findings travel as an error through a step and still be classified
// with errors.As.
type Failure struct{ Findings []Finding }

func (e *Failure) Error() string {
	parts := make([]string, 0, len(e.Findings))
	for _, f := range e.Findings {
		s := f.String()
		if f.Fix != "" {
			s += "; fix: " + f.Fix
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// Sort orders findings most severe first, then by code and target, so reports are stable.
func Sort(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Severity.rank() != b.Severity.rank() {
			return a.Severity.rank() > b.Severity.rank()
		}
		if a.Code != b.Code {
			return a.Code < b.Code
		}
		return a.Target < b.Target
	})
}

// Worst returns the highest severity among fs, Info when empty.
func Worst(fs []Finding) Severity {
	w := Info
	for _, f := range fs {
		if f.Severity.rank() > w.rank() {
			w = f.Severity
		}
	}
	return w
}

// Codes lists the findings' codes for a one-line message ("none" when there are none).
func Codes(fs []Finding) string {
	if len(fs) == 0 {
		return "none"
	}
	// Each code once, in first-seen order: five SETTING_MISSING say no more than one.
	var codes []string
	seen := map[string]bool{}
	for _, f := range fs {
		if !seen[f.Code] {
			seen[f.Code] = true
			codes = append(codes, f.Code)
		}
	}
	return strings.Join(codes, " ")
}

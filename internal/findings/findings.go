// Package findings holds the Finding type every step and probe reports, and the catalogue of
// their stable codes. A finding is a value: what is wrong, where, the evidence, and the fix.
package findings

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
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

// Finding is one diagnosed condition. Target, Summary and Evidence never carry secrets: New,
// WithEvidence, String and MarshalJSON redact URIs and DSNs, but no redaction knows a bare
// password, so a reporter never puts a setting's value (or a parser's text about it) in one.
type Finding struct {
	Code     Code     `json:"code"`
	Severity Severity `json:"severity"`
	// Blocking findings stop the boot before the installer runs.
	Blocking bool   `json:"blocking"`
	Service  string `json:"service,omitempty"`
	Target   string `json:"target,omitempty"`
	Summary  string `json:"summary"`
	Evidence string `json:"evidence,omitempty"`
	Fix      string `json:"fix,omitempty"`
	// Host is the server the finding concerns, host:port, or a bare host when every port on it
	// is concerned (DNS_NOT_FOUND); empty for findings about no server. Fold matches on it.
	Host string `json:"host,omitempty"`
	// Suppressed lists, one line each (String's form), the findings Fold folded into this one
	// because its code explains them (their entries' DependsOn).
	Suppressed []string `json:"suppressed,omitempty"`
}

// MaxEvidence bounds a finding's evidence, in bytes. Evidence is a server's error text, a
// file's line or a response body: a Vault error body can be a megabyte, and every finding is
// copied into the journal, STATUS= headlines, the run record and `haagent check --json`. A few
// hundred bytes hold any diagnosis worth reading at 3 a.m.
const MaxEvidence = 400

// New builds a finding for a catalogued code with the catalogue's severity, blocking flag and
// default fix. Summary, target and evidence pass through Redact, and the evidence is capped at
// MaxEvidence, so a reporter that forgot either cannot leak a URI's password or flood the
// journal.
func New(code Code, target, summary, evidence string) Finding {
	e := code.Entry()
	return Finding{
		Code:     code,
		Severity: e.Severity,
		Blocking: e.Blocking,
		Service:  e.Service,
		Target:   Redact(target),
		Summary:  Redact(summary),
		Evidence: CapEvidence(Redact(evidence)),
		Fix:      e.Fix,
	}
}

// CapEvidence cuts s to at most MaxEvidence bytes (on a UTF-8 boundary) and says how much was
// cut.
func CapEvidence(s string) string {
	if len(s) <= MaxEvidence {
		return s
	}
	const mark = " [... %d bytes cut]"
	keep := MaxEvidence - len(fmt.Sprintf(mark, len(s)))
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + fmt.Sprintf(mark, len(s)-keep)
}

// WithFix returns a copy of f whose fix is the more specific text given, redacted as New
// redacts the rest: a fix is built from settings as the summary is.
func (f Finding) WithFix(fix string) Finding {
	f.Fix = Redact(fix)
	return f
}

// WithHost returns a copy of f concerning the server host (host:port, or a bare host for every
// port on it), so Fold can tell which findings an upstream one explains.
func (f Finding) WithHost(host string) Finding {
	f.Host = host
	return f
}

// WithEvidence returns a copy of f with the evidence given, redacted and capped as New does.
func (f Finding) WithEvidence(evidence string) Finding {
	f.Evidence = CapEvidence(Redact(evidence))
	return f
}

// WithSeverity returns a copy of f at severity s. Below Error the finding no longer blocks:
// only errors block (the catalogue test holds every entry to that too).
func (f Finding) WithSeverity(s Severity) Finding {
	f.Severity = s
	if s != Error {
		f.Blocking = false
	}
	return f
}

// MarshalJSON redacts and caps the evidence once more, for findings whose fields were set
// directly: the run record, `status --json` and `check --json` all serialise through here.
func (f Finding) MarshalJSON() ([]byte, error) {
	type plain Finding // without the method, so this does not recurse
	p := plain(f)
	p.Target, p.Summary, p.Fix = Redact(p.Target), Redact(p.Summary), Redact(p.Fix)
	p.Evidence = CapEvidence(Redact(p.Evidence))
	if len(p.Suppressed) > 0 {
		p.Suppressed = append([]string(nil), p.Suppressed...)
		for i, s := range p.Suppressed {
			p.Suppressed[i] = Redact(s)
		}
	}
	return json.Marshal(p)
}

// String is the one-line form used in logs and errors.
func (f Finding) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", f.Code, Redact(f.Summary))
	if f.Target != "" {
		fmt.Fprintf(&b, " [%s]", Redact(f.Target))
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
			s += "; fix: " + Redact(f.Fix)
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
			return a.Code.name < b.Code.name
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
	seen := map[Code]bool{}
	for _, f := range fs {
		if !seen[f.Code] {
			seen[f.Code] = true
			codes = append(codes, f.Code.String())
		}
	}
	return strings.Join(codes, " ")
}

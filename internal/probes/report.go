package probes

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
)

// OptionsFrom builds probe options from the config (nil: the defaults).
func OptionsFrom(cfg *config.Config) Options {
	o := Options{Timeout: config.DefaultProbeTimeout, Postgres: DefaultPostgres()}
	if cfg == nil {
		return o
	}
	o.Timeout = cfg.Probes.Timeout.D()
	o.Postgres = postgresOptions(cfg.Probes.Postgres.Effective())
	if len(cfg.Probes.Overrides) > 0 {
		o.Overrides = cfg.Probes.FindingOverrides()
	}
	return o
}

// WriteJSON writes the report in the documented JSON shape.
func (r *Report) WriteJSON(w io.Writer) error {
	fs := r.Findings
	if fs == nil {
		fs = []findings.Finding{}
	}
	ch := r.Checked
	if ch == nil {
		ch = []Checked{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Findings   []findings.Finding `json:"findings"`
		Checked    []Checked          `json:"checked"`
		DurationMS int64              `json:"duration_ms"`
	}{fs, ch, r.Duration.Milliseconds()})
}

// WriteText writes a short terminal report, grouped by service, a fix line under each problem.
func (r *Report) WriteText(w io.Writer) {
	groups := append(append([]string{"settings"}, Services...), "keys")
	for _, svc := range groups {
		var fs []findings.Finding
		for _, f := range r.Findings {
			if f.Service == svc {
				fs = append(fs, f)
			}
		}
		var ch []Checked
		for _, c := range r.Checked {
			if c.Service == svc {
				ch = append(ch, c)
			}
		}
		if len(fs) == 0 && len(ch) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s\n", svc)
		for _, c := range ch {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			line := fmt.Sprintf("  %s %s", mark, c.Target)
			var notes []string
			if c.Detail != "" {
				notes = append(notes, c.Detail)
			}
			if c.UsedBy != "" {
				notes = append(notes, "used by "+c.UsedBy)
			}
			if len(notes) > 0 {
				line += " (" + strings.Join(notes, "; ") + ")"
			}
			fmt.Fprintln(w, line)
		}
		for _, f := range fs {
			tag := strings.ToUpper(string(f.Severity))
			if f.Blocking {
				tag += ", blocks install"
			}
			fmt.Fprintf(w, "  %s [%s] %s\n", f.Code, tag, f.Summary)
			if f.Target != "" && !strings.Contains(f.Summary, f.Target) {
				fmt.Fprintf(w, "      at:  %s\n", f.Target)
			}
			if f.Evidence != "" {
				fmt.Fprintf(w, "      why: %s\n", oneLine(f.Evidence))
			}
			if f.Fix != "" {
				fmt.Fprintf(w, "      fix: %s\n", f.Fix)
			}
		}
	}
	errs, warns := 0, 0
	for _, f := range r.Findings {
		switch f.Severity {
		case findings.Error:
			errs++
		case findings.Warning:
			warns++
		}
	}
	fmt.Fprintf(w, "%d error(s), %d warning(s) in %s\n", errs, warns, r.Duration.Round(time.Millisecond))
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:297] + "..."
	}
	return s
}

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/state"
)

type statusCmd struct {
	g       *globals
	json    bool
	wait    bool
	timeout time.Duration
	runs    int
}

func (c *statusCmd) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	fs.BoolVar(&c.wait, "wait", false, "block until the boot completes (exit 0) or fails (exit 1)")
	fs.DurationVar(&c.timeout, "timeout", 0, "with --wait, give up after this long (exit 1); 0 waits for ever")
	fs.IntVar(&c.runs, "runs", 5, "how many runs to show")
}

// pollEvery is how often --wait rereads the record; the record is tiny.
const pollEvery = 500 * time.Millisecond

func (c *statusCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	path := c.g.path(layout.StateFile)
	var deadline <-chan time.Time
	if c.wait && c.timeout > 0 {
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		deadline = t.C
	}
	shownRetry, shownNote := "", ""
	for {
		rec, err := state.Load(path)
		if err != nil {
			return err
		}
		last := rec.Last()
		if !c.wait {
			if last == nil {
				return fmt.Errorf("no run recorded in %s yet: haagent has not run on this machine (systemctl status haagent)", path)
			}
			c.print(stdout, rec)
			if last.Status == state.Failed || last.Status == state.Retrying {
				return &exitError{code: 1, err: fmt.Errorf("the last run is %s: %s", last.Status, last.Error)}
			}
			return nil
		}
		// --wait is about this boot: a run recorded before the machine rebooted (its "complete"
		// or its failure) says nothing about the boot haagent is driving now.
		if last != nil {
			thisBoot, err := state.RunsThisBoot(c.g.path(layout.BootRuns))
			if err != nil {
				return err
			}
			if !thisBoot[last.ID] {
				last = nil
			}
		}
		if last != nil {
			switch last.Status {
			case state.Complete:
				c.print(stdout, rec)
				return nil
			case state.Failed:
				c.print(stdout, rec)
				return &exitError{code: 1, err: fmt.Errorf("boot failed: %s", last.Error)}
			case state.Retrying:
				if last.Error != shownRetry {
					shownRetry = last.Error
					fmt.Fprintf(stderr, "haagent: still waiting; the service is retrying: %s\n", last.Error)
				}
			}
		}
		// No run of this boot yet: a start that failed before it could record one left a note.
		note := ""
		if last == nil {
			if b, err := os.ReadFile(c.g.path(layout.StartFailure)); err == nil {
				note = strings.TrimSpace(string(b))
			}
			if note != "" && note != shownNote {
				shownNote = note
				fmt.Fprintf(stderr, "haagent: still waiting; haagent could not start (systemd starts it again): %s\n", note)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			state := "no run of this boot recorded yet (is the haagent service running? systemctl status haagent)"
			if note != "" {
				state = "no run of this boot recorded; the last start failed: " + note
			}
			if last != nil {
				state = "last run is " + last.Status
				if last.Error != "" {
					state += ": " + last.Error
				}
			}
			return &exitError{code: 1, err: fmt.Errorf("boot not complete after %s (%s)", c.timeout, state)}
		case <-time.After(pollEvery):
		}
	}
}

func (c *statusCmd) print(w io.Writer, rec *state.Record) {
	m, merr := state.LoadMaintenance(c.g.path(layout.MaintenanceFile))
	runs := rec.Runs
	if c.runs > 0 && len(runs) > c.runs {
		runs = runs[len(runs)-c.runs:]
	}
	if c.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		var active *state.Maintenance
		if m.Active(time.Now()) {
			active = m
		}
		enc.Encode(struct {
			Version      int                 `json:"version"`
			Maintenance  *state.Maintenance  `json:"maintenance,omitempty"`
			Runs         []state.Run         `json:"runs"`
			KeyConflicts []fetch.KeyConflict `json:"key_conflicts,omitempty"`
		}{rec.Version, active, runs, rec.KeyConflicts})
		return
	}
	last := runs[len(runs)-1]
	fmt.Fprintf(w, "status:   %s\n", last.Status)
	fmt.Fprintf(w, "run:      %s (%s mode, pid %d)\n", last.ID, last.Mode, last.PID)
	if last.InstanceID != "" {
		fmt.Fprintf(w, "instance: %s\n", last.InstanceID)
	}
	fmt.Fprintf(w, "started:  %s", last.Start.Local().Format(time.RFC3339))
	if last.End != nil {
		fmt.Fprintf(w, "   ended: %s (%s)", last.End.Local().Format(time.RFC3339), last.End.Sub(last.Start).Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	if last.Starts > 1 {
		fmt.Fprintf(w, "starts:   %d with this same failure, the first at %s, the last at %s\n", last.Starts, last.Start.Local().Format(time.RFC3339), last.End.Local().Format(time.RFC3339))
	}
	if last.Error != "" {
		fmt.Fprintf(w, "error:    %s\n", last.Error)
	}
	switch {
	case merr != nil:
		fmt.Fprintf(w, "maintenance: %v\n", merr)
	case m.Active(time.Now()):
		line := fmt.Sprintf("maintenance: on until %s (replacements held)", m.Until.Local().Format(time.RFC3339))
		if m.Reason != "" {
			line += ": " + m.Reason
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, "steps:")
	for _, s := range last.Steps {
		line := fmt.Sprintf("  %-20s %-8s", s.Name, s.Status)
		if s.Duration != "" {
			line += " " + s.Duration
		}
		if s.Attempts > 1 {
			line += fmt.Sprintf(" (attempt %d)", s.Attempts)
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	if n := len(last.Files); n > 0 {
		changed := 0
		for _, f := range last.Files {
			if f.Changed {
				changed++
			}
		}
		fmt.Fprintf(w, "files:    %d in place, %d changed by this run\n", n, changed)
	}
	// A key conflict is shown from the record's current list, not the run's findings: it lasts
	// across runs until a person resolves it, and disappears once a comparison finds the copies
	// equal.
	var fs []findings.Finding
	for _, f := range last.Findings {
		if f.Code != findings.KeysConflict {
			fs = append(fs, f)
		}
	}
	for _, kc := range rec.KeyConflicts {
		fs = append(fs, kc.Finding())
	}
	if len(fs) > 0 {
		fmt.Fprintln(w, "findings:")
		printFindings(w, fs)
	}
	// What runs beside and after the steps, each monitor's current findings under its name.
	var mons []string
	for _, m := range last.Monitors {
		var fs []findings.Finding
		for _, f := range m.Findings {
			if f.Code != findings.KeysConflict {
				fs = append(fs, f)
			}
		}
		// A monitor that is being restarted or is blocked is news even without a finding yet.
		trouble := m.State == "restarting" || m.State == "stalled"
		if len(fs) > 0 || trouble {
			var b strings.Builder
			fmt.Fprintf(&b, "  %s:", m.Name)
			if trouble {
				fmt.Fprintf(&b, " %s", m.State)
				if m.Restarts > 0 {
					fmt.Fprintf(&b, " (restarted %d times; last error: %s)", m.Restarts, m.LastError)
				}
			}
			b.WriteString("\n")
			printFindings(&b, fs)
			mons = append(mons, b.String())
		}
	}
	if len(mons) > 0 {
		fmt.Fprint(w, "monitors:\n"+strings.Join(mons, ""))
	}
	if len(runs) > 1 {
		fmt.Fprintln(w, "earlier runs:")
		for i := len(runs) - 2; i >= 0; i-- {
			r := runs[i]
			fmt.Fprintf(w, "  %s  %-10s %s", r.ID, r.Status, r.InstanceID)
			if r.Starts > 1 {
				fmt.Fprintf(w, "  (%d starts, the last at %s)", r.Starts, r.End.Local().Format(time.RFC3339))
			}
			if r.Error != "" {
				fmt.Fprintf(w, "  %s", r.Error)
			}
			fmt.Fprintln(w)
		}
	}
}

func printFindings(w io.Writer, fs []findings.Finding) {
	findings.Sort(fs)
	for _, f := range fs {
		fmt.Fprintf(w, "  %-7s %s: %s\n", f.Severity, f.Code, f.Summary)
		if f.Fix != "" {
			fmt.Fprintf(w, "          fix: %s\n", f.Fix)
		}
		for _, s := range f.Suppressed {
			fmt.Fprintf(w, "          also suppressed: %s\n", findings.Redact(s))
		}
	}
}

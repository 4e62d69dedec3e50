package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/probes"
	"github.com/haagent/haagent/internal/state"
)

type checkCmd struct {
	g       *globals
	format  string
	only    string
	timeout time.Duration
}

func (c *checkCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.format, "format", "text", "text or json")
	fs.StringVar(&c.only, "only", "", "comma-separated services to check: postgres,mongo,vault (default all)")
	fs.DurationVar(&c.timeout, "timeout", 0, "bound for each service's probe (default the config's probes.timeout, 5s)")
}

// check reads the same settings files the services read (under --root) and probes every
// database and Vault they name. Exit 0: no error finding; 1: error findings; 2: could not run.
func (c *checkCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	if c.format != "text" && c.format != "json" {
		return usageErr("--format must be text or json")
	}
	cfg, err := config.Load(c.g.configPath())
	if err != nil && !errors.Is(err, config.ErrNoConfig) {
		return &exitError{code: 2, err: err}
	}
	o := probes.OptionsFrom(cfg)
	if c.timeout > 0 {
		o.Timeout = c.timeout
	}
	if c.only != "" {
		for _, s := range strings.Split(c.only, ",") {
			s = strings.TrimSpace(s)
			known := false
			for _, k := range probes.Services {
				known = known || k == s
			}
			if !known {
				return usageErr("--only: unknown service %q (postgres, mongo, vault)", s)
			}
			o.Only = append(o.Only, s)
		}
	}
	rep := probes.Run(ctx, c.g.layout(cfg), o)
	if c.only == "" {
		// Local state, no network: an encryption key conflict lasts until a person resolves
		// it, and check is where an operator looks first.
		rep.Findings = append(rep.Findings, keyConflicts(c.g.root, c.g.path(layout.StateFile))...)
	}
	if c.format == "json" {
		if err := rep.WriteJSON(stdout); err != nil {
			return &exitError{code: 2, err: err}
		}
	} else {
		rep.WriteText(stdout)
	}
	if n := rep.Errors(); n > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d error finding(s)", n)}
	}
	return nil
}

// keyConflicts are the KEYS_CONFLICT findings of the run record that still hold on this
// machine: the local key still has the content it had when the conflict was found. (Whether the
// bucket's copy changed is for the next fetch or backup to tell; until then it stands.)
func keyConflicts(root, recordPath string) []findings.Finding {
	rec, err := state.Load(recordPath)
	if err != nil {
		return nil
	}
	var out []findings.Finding
	for _, kc := range rec.KeyConflicts {
		if cur, err := atomicfile.HashFile(filepath.Join(root, kc.Path)); err == nil && cur.SHA256 == kc.LocalSHA256 {
			out = append(out, kc.Finding())
		}
	}
	return out
}

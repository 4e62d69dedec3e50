package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/validate"
)

type validateCmd struct {
	g *globals
}

func (c *validateCmd) flags(fs *flag.FlagSet) {}

func (c *validateCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	cfg, err := config.Load(c.g.configPath())
	if errors.Is(err, config.ErrNoConfig) {
		fmt.Fprintf(stdout, "no config file at %s (haagent would look for one in the user-data); checking the files in place\n", c.g.configPath())
		return c.files(stdout, c.g.layout(nil), nil, nil)
	}
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	fmt.Fprintf(stdout, "config %s is valid\n", cfg.Origin)
	fmt.Fprintf(stdout, "source: s3://%s/%s", cfg.Source.Bucket, cfg.Source.Prefix)
	if cfg.Source.Region != "" {
		fmt.Fprintf(stdout, " (region %s)", cfg.Source.Region)
	}
	if cfg.Source.Endpoint != "" {
		fmt.Fprintf(stdout, " via %s", cfg.Source.Endpoint)
	}
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout, "layout:")
	for _, e := range cfg.Layout {
		req := "optional"
		if e.Required {
			req = "required"
		}
		fmt.Fprintf(stdout, "  %-28s -> %-40s %#o %s %s\n", e.Key, e.Dest, e.Mode, owner(e), req)
	}
	// Names are resolved as the fetch will resolve them, in the root's own etc/passwd and
	// etc/group, without creating anything.
	_, notes, owners := fetch.ResolveOwners(ctx, c.g.root, cfg.Layout, false, nil)
	for _, n := range notes {
		fmt.Fprintln(stdout, n)
	}
	return c.files(stdout, c.g.layout(cfg), owners, cfg.Probes.FindingOverrides())
}

// owner is how the layout table shows an entry's owner: names as given, ids as numbers,
// root for haagent's own.
func owner(e config.Entry) string {
	u, g := "root", "root"
	switch {
	case e.User != "":
		u = e.User
	case e.UID >= 0:
		u = strconv.Itoa(e.UID)
	}
	switch {
	case e.Group != "":
		g = e.Group
	case e.GID >= 0:
		g = strconv.Itoa(e.GID)
	}
	return u + ":" + g
}

// files runs validate-files' checks on the files in place, offline, and reports them with
// the findings already made (the config's owners), with the config's overrides applied as the
// boot applies them.
func (c *validateCmd) files(stdout io.Writer, l layout.Layout, fs []findings.Finding, ov map[findings.Code]findings.Override) error {
	in := validate.InPlace(l)
	if in.Fetched() {
		fs = append(fs, validate.Check(in)...)
		// What the Replicated daemon will meet: the modes and owners of the files in place.
		fs = append(fs, validate.Readable(l)...)
	} else {
		// Before the first boot (in an image build, say) there is nothing fetched to check.
		fmt.Fprintf(stdout, "no fetched files under %s yet: only the config was checked\n", c.g.root)
	}
	fs = findings.Apply(fs, ov)
	findings.Sort(fs)
	errs := 0
	for _, f := range fs {
		fmt.Fprintf(stdout, "%s [%s] %s\n", f.Code, f.Severity, f.Summary)
		if f.Evidence != "" {
			fmt.Fprintf(stdout, "    why: %s\n", f.Evidence)
		}
		if f.Fix != "" {
			fmt.Fprintf(stdout, "    fix: %s\n", f.Fix)
		}
		if f.Severity == findings.Error {
			errs++
		}
	}
	if errs > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d error(s) in the files under %s", errs, c.g.root)}
	}
	if in.Fetched() {
		fmt.Fprintf(stdout, "files under %s: replicated.conf, settings.conf and the licence are valid, and readable by the Replicated daemon\n", c.g.root)
	}
	return nil
}

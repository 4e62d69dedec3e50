package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
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
		return c.files(stdout)
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
		fmt.Fprintf(stdout, "  %-28s -> %-40s %#o %s\n", e.Key, e.Dest, e.Mode, req)
	}
	return c.files(stdout)
}

// files runs validate-files' checks on the files in place, offline.
func (c *validateCmd) files(stdout io.Writer) error {
	in := validate.InPlace(c.g.root)
	if !in.Exists(validate.ReplicatedConf) && !in.Exists(validate.SettingsConf) && !in.Exists(validate.DefaultLicense) {
		// Before the first boot (in an image build, say) there is nothing fetched to check.
		fmt.Fprintf(stdout, "no fetched files under %s yet: only the config was checked\n", c.g.root)
		return nil
	}
	fs := validate.Check(in)
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
	fmt.Fprintf(stdout, "files under %s: replicated.conf, settings.conf and the licence are valid\n", c.g.root)
	return nil
}

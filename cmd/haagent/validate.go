package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/haagent/haagent/internal/config"
)

type validateCmd struct {
	g *globals
}

func (c *validateCmd) flags(fs *flag.FlagSet) {}

func (c *validateCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	cfg, err := config.Load(c.g.configPath())
	if errors.Is(err, config.ErrNoConfig) {
		return &exitError{code: 2, err: fmt.Errorf("%w; write one, or put a document starting with %s in the user-data", err, config.UserDataMarker)}
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
	return nil
}

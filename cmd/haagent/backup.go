package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/haagent/haagent/internal/bootstrap"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/lock"
	"github.com/haagent/haagent/internal/logging"
	"github.com/haagent/haagent/internal/state"
)

// backupCmd is `haagent backup keys`: the backup-keys step on demand.
type backupCmd struct {
	g    *globals
	what string
}

func (c *backupCmd) flags(fs *flag.FlagSet) {}

func (c *backupCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	if c.what != "keys" {
		return usageErr("usage: haagent backup keys")
	}
	log := logging.New(stderr, 0)
	cfg, err := config.Load(c.g.configPath())
	if err != nil && !errors.Is(err, config.ErrNoConfig) {
		return &exitError{code: 2, err: err}
	}
	lk, err := lock.Acquire(c.g.path(lock.Path))
	if err != nil {
		return err
	}
	defer lk.Release()
	rec, err := state.Load(c.g.path(state.Path))
	if err != nil {
		return err
	}
	env := &bootstrap.Env{Root: c.g.root, Log: log, Config: cfg, ConfigPath: c.g.configPath(),
		IMDSTimeout: config.DefaultIMDSTimeout, Record: rec}
	steps := []bootstrap.Step{bootstrap.Steps[0], bootstrap.Steps[1], {Name: "backup-keys", Run: bootstrap.StepBackupKeys}}
	// Not recorded as a run: `haagent status` reports boots.
	r := &bootstrap.Runner{Steps: steps, Once: true}
	if err := r.Run(ctx, env); err != nil {
		return fmt.Errorf("backup failed at step %w", err)
	}
	fmt.Fprintln(stdout, "encryption keys: every local key is in the bucket")
	return nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/haagent/haagent/internal/bootstrap"
	"github.com/haagent/haagent/internal/logging"
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
	env, release, err := c.g.prepare(log)
	if err != nil {
		return err
	}
	defer release()
	steps := []bootstrap.Step{bootstrap.Steps[0], bootstrap.Steps[1], {Name: "backup-keys", Run: bootstrap.StepBackupKeys}}
	// Not recorded as a run: `haagent status` reports boots.
	r := &bootstrap.Runner{Steps: steps, Once: true}
	if err := r.Run(ctx, env); err != nil {
		return fmt.Errorf("backup failed at step %w", err)
	}
	fmt.Fprintln(stdout, "encryption keys: every local key is in the bucket")
	return nil
}

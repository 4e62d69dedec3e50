package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/haagent/haagent/internal/backup"
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
	env, release, err := c.g.prepare(log, false)
	if err != nil {
		return err
	}
	defer release()
	var res backup.Result
	steps := []bootstrap.Step{bootstrap.Steps[0], bootstrap.Steps[1], bootstrap.BackupKeysNow(&res)}
	// Not recorded as a run: `haagent status` reports boots.
	r := &bootstrap.Runner{Steps: steps, Once: true}
	err = r.Run(ctx, env)
	// What was done, even on failure: a person asked, and a partial backup is worth knowing.
	list := func(what string, names []string) {
		if len(names) > 0 {
			fmt.Fprintf(stdout, "encryption keys %s (%d): %s\n", what, len(names), strings.Join(names, ", "))
		}
	}
	list("uploaded", res.Uploaded)
	list("already in the bucket", res.InSync)
	list("in conflict with the bucket's copy (neither replaced)", res.Conflicts)
	list("NOT backed up", res.NotBackedUp)
	if err != nil {
		return fmt.Errorf("backup failed at step %w", err)
	}
	fmt.Fprintln(stdout, "encryption keys: every local key is in the bucket")
	return nil
}

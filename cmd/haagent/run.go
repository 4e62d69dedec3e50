package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/haagent/haagent/internal/bootstrap"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/lock"
	"github.com/haagent/haagent/internal/logging"
	"github.com/haagent/haagent/internal/state"
)

type runCmd struct {
	g         *globals
	once      bool
	debug     bool
	reinstall bool
}

func (c *runCmd) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.once, "once", false, "run the boot steps once and exit: 0 when all passed, 1 when one failed")
	fs.BoolVar(&c.debug, "debug", false, "log debug messages")
	fs.BoolVar(&c.reinstall, "reinstall", false, "run the Replicated installer again even though it completed on this instance (it stops CircleCI while it upgrades)")
}

func (c *runCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	level := slog.LevelInfo
	if c.debug {
		level = slog.LevelDebug
	}
	log := logging.New(stderr, level)

	// The config is validated before any side effect; an absent file is not an error yet:
	// the imds step may find the config in the user-data.
	cfg, err := config.Load(c.g.configPath())
	switch {
	case errors.Is(err, config.ErrNoConfig):
		log.Info("no config file; will look for a haagent config in the instance user-data", "path", c.g.configPath())
		cfg = nil
	case err != nil:
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
	imdsTimeout := config.DefaultIMDSTimeout
	if cfg != nil {
		imdsTimeout = cfg.IMDS.Timeout.D()
	}
	env := &bootstrap.Env{
		Root: c.g.root, Log: log, Config: cfg, ConfigPath: c.g.configPath(),
		IMDSTimeout: imdsTimeout, Record: rec, Reinstall: c.reinstall,
	}
	r := &bootstrap.Runner{Steps: bootstrap.Steps, Once: c.once, StatePath: c.g.path(state.Path)}
	if !c.once {
		// READY means "the agent is up and driving the boot"; the boot itself can take half an
		// hour and is reported through STATUS= and the run record, not systemd's start job.
		bootstrap.Notify("READY=1")
	}
	log.Info("haagent starting", "version", version, "root", c.g.root, "mode", map[bool]string{true: "once", false: "service"}[c.once])
	if err := r.Run(ctx, env); err != nil {
		if c.once {
			return fmt.Errorf("boot failed at step %w", err)
		}
		return err
	}
	if c.once {
		return nil
	}
	// Later steps (the frontend watch) keep the service busy; until then it stays up.
	bootstrap.KeepAlive(ctx)
	return nil
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bootstrap"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
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

	env, release, err := c.g.prepare(log, c.reinstall)
	if err != nil {
		var ee *exitError
		// The service's failed start is noted for `status --wait`; a `run --once` says it to
		// whoever ran it.
		if (!errors.As(err, &ee) || ee.code != 2 || !c.recordConfigFailure(log, err)) && !c.once {
			c.noteStartFailure(log, err)
		}
		return err
	}
	defer release()
	// At exit (SIGTERM, or the end of --once) the monitors are stopped and waited for: the log
	// forwarding saves how far it got, for the next haagent.
	ctx, stop := context.WithCancel(ctx)
	defer env.Drain(5 * time.Second)
	defer stop()
	r := &bootstrap.Runner{Steps: bootstrap.Steps, Once: c.once, StatePath: c.g.path(layout.StateFile), BootRunsPath: c.g.path(layout.BootRuns)}
	if !c.once {
		// READY means "the agent is up and driving the boot"; the boot itself can take half an
		// hour and is reported through STATUS= and the run record, not systemd's start job.
		r.Started = func() { bootstrap.Notify("READY=1") }
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
	// The boot's steps are done: what runs on (the watch, the guard, the keys scan) takes the
	// lock only around its writes, so `haagent backup keys` and the like work meanwhile. A write
	// still in flight holds the lock on (Env.AdoptLock counts holders): it goes when that ends.
	release()
	// From here the supervisor's loop is haagent's main loop: it feeds systemd's watchdog only
	// while every monitor iterates.
	env.WatchMonitors(ctx)
	return nil
}

// recordConfigFailure puts a run that never got past its config into the run record, so
// `haagent status` and `status --wait` tell this boot's invalid config from an earlier boot's
// "complete". It writes only haagent's own record, under the lock; when another haagent holds
// the lock, that one's record is the truth and nothing is written (it reports false: the
// failure goes to the start-failure note instead).
func (c *runCmd) recordConfigFailure(log *slog.Logger, cause error) bool {
	lk, err := lock.Acquire(c.g.path(layout.LockFile))
	if err != nil {
		return false
	}
	defer lk.Release()
	path := c.g.path(layout.StateFile)
	rec, err := state.Load(path)
	if err != nil {
		log.Error("cannot record the failed run", "path", path, "error", err.Error())
		return false
	}
	now := time.Now().UTC()
	mode := map[bool]string{true: "once", false: "service"}[c.once]
	msg := "config: " + cause.Error()
	if last := rec.Last(); last != nil && last.Status == state.Failed && last.Error == msg && last.Mode == mode && last.InstanceID == "" {
		// systemd restarts haagent every RestartSec on the same broken config: one run with a
		// count and its first and last time says it, where a run per start would push the
		// history (and what it proves about this instance) out of the record.
		last.Starts = max(last.Starts, 1) + 1
		last.End, last.PID, last.BootID = &now, os.Getpid(), bootstrap.BootID()
		log.Error("the config has been invalid at every start since the first", "starts", last.Starts, "first", last.Start.Format(time.RFC3339), "path", c.g.configPath())
	} else {
		f := findings.New(findings.ConfigInvalid, c.g.configPath(), "the haagent config is invalid: nothing was done", cause.Error())
		rec.Runs = append(rec.Runs, state.Run{
			ID:     now.Format("20060102T150405Z") + fmt.Sprintf("-%d", os.Getpid()),
			BootID: bootstrap.BootID(), Mode: mode, PID: os.Getpid(), Start: now, End: &now,
			Status: state.Failed, Error: msg, Findings: []findings.Finding{f},
		})
	}
	if err := rec.Save(path); err != nil {
		log.Error("cannot record the failed run", "path", path, "error", err.Error())
		return false
	}
	if err := state.MarkThisBoot(c.g.path(layout.BootRuns), rec.Last().ID); err != nil {
		log.Error("cannot mark the failed run as this boot's; `haagent status --wait` will not see it", "path", c.g.path(layout.BootRuns), "error", err.Error())
		return false
	}
	return true
}

// noteStartFailure leaves why this start failed before it recorded a run (the lock held, the
// record unreadable) where `status --wait` looks while this boot has no run: without it, the
// wait shows nothing at all.
func (c *runCmd) noteStartFailure(log *slog.Logger, cause error) {
	path := c.g.path(layout.StartFailure)
	note := time.Now().UTC().Format(time.RFC3339) + " " + cause.Error() + "\n"
	if _, err := atomicfile.WriteFile(path, []byte(note), atomicfile.Options{Mode: 0o600, DirMode: 0o755, UID: -1, GID: -1}); err != nil {
		log.Error("cannot note why haagent could not start; `haagent status --wait` will not show it", "path", path, "error", err.Error())
	}
}

// prepare loads the config (validated before any side effect; an absent file is not an error
// yet: the imds step may find the config in the user-data), takes the lock and loads the run
// record: what every command that changes the machine needs.
func (g *globals) prepare(log *slog.Logger, reinstall bool) (*bootstrap.Env, func(), error) {
	cfg, err := config.Load(g.configPath())
	switch {
	case errors.Is(err, config.ErrNoConfig):
		log.Info("no config file; will look for a haagent config in the instance user-data", "path", g.configPath())
		cfg = nil
	case err != nil:
		return nil, nil, &exitError{code: 2, err: err}
	}
	lk, err := lock.Acquire(g.path(layout.LockFile))
	if err != nil {
		return nil, nil, err
	}
	rec, err := state.Load(g.path(layout.StateFile))
	if err != nil {
		lk.Release()
		return nil, nil, err
	}
	imdsTimeout := config.DefaultIMDSTimeout
	if cfg != nil {
		imdsTimeout = cfg.IMDS.Timeout.D()
	}
	env := bootstrap.NewEnv(bootstrap.Inputs{Root: g.root, Log: log, FileConfig: cfg, ConfigPath: g.configPath(), IMDSTimeout: imdsTimeout, Reinstall: reinstall, LockPath: g.path(layout.LockFile)}, rec)
	return env, env.AdoptLock(lk), nil
}

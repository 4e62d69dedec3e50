// Command haagent boots a CircleCI Server 2.x Services machine inside a one-member Auto
// Scaling Group: it fetches what the machine needs from S3, checks it, installs Replicated
// once per instance and watches CircleCI come up, or says precisely why it cannot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/layout"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// version is set by the Makefile with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries an exit code; everything else that fails is exit 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

const usage = `usage: haagent [--root DIR] [--config PATH] COMMAND [flags]

commands:
  run [--once]             run the boot steps (as the service, or once and exit)
  status [--json] [--wait] show the last runs from the run record; --wait blocks until the boot completes or fails
  check [--format text|json] [--only postgres,mongo,vault] [--timeout 5s]
                           probe the databases and Vault with the settings the services read
  validate                 check the config and the files in place, offline, with no side effects
  backup keys              copy encryption keys that exist only on this machine to the bucket
  maintenance on [--for 2h] [--reason TEXT] | off
                           hold (or stop holding) Auto Scaling replacements while you work on the machine
  install|uninstall|start|stop
                           manage the systemd unit (systemd/haagent.service, verbatim)
  version                  print the version

global flags:
  --root DIR     every path haagent reads or writes lives under DIR (default /)
  --config PATH  config file (default ROOT/etc/haagent/haagent.yaml)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Main runs one haagent command and turns its error into the exit code: the only place that
// does so.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "haagent: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// globals are accepted before the command and after it.
type globals struct {
	root   string
	config string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.root, "root", g.root, "every path haagent reads or writes lives under `DIR`")
	fs.StringVar(&g.config, "config", g.config, "config file `PATH` (default ROOT/etc/haagent/haagent.yaml)")
}

func (g *globals) configPath() string {
	if g.config != "" {
		return g.config
	}
	return filepath.Join(g.root, layout.ConfigFile)
}

func (g *globals) path(p string) string { return filepath.Join(g.root, p) }

// layout is where the files live under --root: the config's layout, or the default one
// without a config.
func (g *globals) layout(cfg *config.Config) layout.Layout {
	if cfg == nil {
		return layout.New(g.root, nil)
	}
	return layout.New(g.root, cfg.Layout)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g := &globals{root: "/"}
	top := flag.NewFlagSet("haagent", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	g.register(top)
	if err := top.Parse(args); err != nil {
		return usageErr("%v\n%s", err, usage)
	}
	rest := top.Args()
	if len(rest) == 0 {
		return usageErr("no command given\n%s", usage)
	}
	cmd, cargs := rest[0], rest[1:]
	fs := flag.NewFlagSet("haagent "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	g.register(fs)
	var c command
	switch cmd {
	case "run":
		c = &runCmd{g: g}
	case "status":
		c = &statusCmd{g: g}
	case "validate":
		c = &validateCmd{g: g}
	case "check":
		c = &checkCmd{g: g}
	case "backup":
		if len(cargs) == 0 {
			return usageErr("usage: haagent backup keys")
		}
		c = &backupCmd{g: g, what: cargs[0]}
		cargs = cargs[1:]
	case "maintenance":
		if len(cargs) == 0 {
			return usageErr("usage: haagent maintenance on [--for 2h] [--reason TEXT] | off")
		}
		c = &maintenanceCmd{g: g, action: cargs[0]}
		cargs = cargs[1:]
	case "install", "uninstall", "start", "stop":
		c = &serviceCmd{g: g, action: cmd}
	case "version":
		fmt.Fprintf(stdout, "haagent %s\n", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usageErr("unknown command %q\n%s", cmd, usage)
	}
	c.flags(fs)
	if err := fs.Parse(cargs); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErr("%v", err)
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments: %v", fs.Args())
	}
	if !filepath.IsAbs(g.root) {
		abs, err := filepath.Abs(g.root)
		if err != nil {
			return usageErr("--root %s: %v", g.root, err)
		}
		g.root = abs
	}
	return c.run(ctx, stdout, stderr)
}

type command interface {
	flags(fs *flag.FlagSet)
	run(ctx context.Context, stdout, stderr io.Writer) error
}

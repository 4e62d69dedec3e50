package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/kardianos/service"

	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/systemd"
)

// serviceCmd installs, removes, starts or stops the systemd unit through kardianos/service,
// with haagent's own unit text (its default has no Type= and RestartSec=120).
type serviceCmd struct {
	g      *globals
	action string
}

func (c *serviceCmd) flags(fs *flag.FlagSet) {}

type noop struct{}

func (noop) Start(service.Service) error { return nil }
func (noop) Stop(service.Service) error  { return nil }

// serviceConfig is the kardianos description of haagent's unit.
func serviceConfig() *service.Config {
	return &service.Config{
		Name:        "haagent",
		DisplayName: "haagent",
		Description: "boot the CircleCI Services machine",
		Executable:  layout.Executable,
		Arguments:   []string{"run"},
		Option: service.KeyValue{
			// Our unit, verbatim: it holds no template actions, so kardianos writes it as is.
			"SystemdScript": systemd.Unit,
		},
	}
}

func (c *serviceCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	s, err := service.New(noop{}, serviceConfig())
	if err != nil {
		return fmt.Errorf("setting up the service manager: %w", err)
	}
	if p := service.Platform(); p != "linux-systemd" {
		return fmt.Errorf("haagent %s needs systemd (this system's service manager is %s)", c.action, p)
	}
	if err := service.Control(s, c.action); err != nil {
		return fmt.Errorf("haagent %s: %w", c.action, err)
	}
	fmt.Fprintf(stdout, "haagent: %s done\n", c.action)
	return nil
}

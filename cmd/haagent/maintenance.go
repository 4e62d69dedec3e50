package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/state"
)

// maintenanceCmd holds replacements while a person works on the machine. It takes no lock: it
// writes one small file atomically, and must work while the service runs.
type maintenanceCmd struct {
	g      *globals
	action string
	dur    time.Duration
	reason string
}

func (c *maintenanceCmd) flags(fs *flag.FlagSet) {
	fs.DurationVar(&c.dur, "for", 2*time.Hour, "with on: how long replacements are held (the window ends by itself)")
	fs.StringVar(&c.reason, "reason", "", "with on: why, for the next person reading haagent status")
}

func (c *maintenanceCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	path := c.g.path(layout.MaintenanceFile)
	switch c.action {
	case "on":
		if c.dur <= 0 || c.dur > 7*24*time.Hour {
			return usageErr("maintenance on --for %s: give a duration between 1s and 168h", c.dur)
		}
		now := time.Now().UTC()
		m := state.Maintenance{Since: now, Until: now.Add(c.dur), Reason: c.reason}
		if err := state.SaveMaintenance(path, m); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "maintenance on until %s: no replacement will be asked for; `haagent maintenance off` ends it sooner\n", m.Until.Local().Format(time.RFC3339))
		return nil
	case "off":
		if err := state.ClearMaintenance(path); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "maintenance off: the guard decides on replacements again")
		return nil
	}
	return usageErr("usage: haagent maintenance on [--for 2h] [--reason TEXT] | off")
}

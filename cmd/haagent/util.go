package main

import (
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

func watchdogInterval() (time.Duration, error) { return daemon.SdWatchdogEnabled(false) }

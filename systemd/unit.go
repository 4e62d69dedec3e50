// Package systemd holds haagent's unit file, the one source of truth for how systemd runs
// it: `haagent install` writes exactly this text.
package systemd

import _ "embed"

// Unit is systemd/haagent.service.
//
//go:embed haagent.service
var Unit string

// UnitName is the unit's file name.
const UnitName = "haagent.service"

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/systemd"
)

// systemd-analyze reports unknown keys only as warnings with exit 0: any output fails.
func TestUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		peertest.Missing(t, "systemd-analyze is not installed")
	}
	file, err := os.ReadFile("../../systemd/haagent.service")
	if err != nil {
		t.Fatal(err)
	}
	// The ExecStart binary must exist: point it at the one under test.
	unit := strings.Replace(string(file), "ExecStart=/usr/local/bin/haagent run", "ExecStart="+haagentBin+" run", 1)
	p := filepath.Join(t.TempDir(), "haagent.service")
	os.WriteFile(p, []byte(unit), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// And the check itself catches a mistake.
	bad := filepath.Join(t.TempDir(), "haagent.service")
	os.WriteFile(bad, []byte(strings.Replace(unit, "NoNewPrivileges", "NoNewPrivilegez", 1)), 0o644)
	if out, _ := exec.Command("systemd-analyze", "verify", bad).CombinedOutput(); !bytes.Contains(out, []byte("Unknown key")) {
		t.Fatalf("a misspelt key went unnoticed: %s", out)
	}
}

// install writes the unit through kardianos's template: it must come out as the file is.
func TestInstallWritesTheUnitVerbatim(t *testing.T) {
	file, _ := os.ReadFile("../../systemd/haagent.service")
	script := serviceConfig().Option["SystemdScript"].(string)
	if script != string(file) || systemd.Unit != string(file) {
		t.Fatal("the embedded unit differs from systemd/haagent.service")
	}
	tmpl, err := template.New("unit").Parse(script)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, map[string]any{"Path": "/elsewhere", "Name": "x"}); err != nil || out.String() != string(file) {
		t.Fatalf("rendering changes the unit (%v)", err)
	}
}

// Every directive exists in systemd 237 (Ubuntu 18.04, the base of CircleCI Server 2.x).
func TestUnitUsesSystemd237Directives(t *testing.T) {
	known237 := map[string]bool{
		"Description": true, "Documentation": true, "Wants": true, "After": true, "Requires": true, "StartLimitIntervalSec": true,
		"StartLimitBurst": true, "Type": true, "NotifyAccess": true, "ExecStart": true, "EnvironmentFile": true, "Restart": true,
		"RestartSec": true, "WatchdogSec": true, "KillMode": true, "TimeoutStopSec": true, "NoNewPrivileges": true,
		"ProtectKernelTunables": true, "ProtectKernelModules": true, "ProtectControlGroups": true, "ProtectHome": true,
		"LockPersonality": true, "RestrictRealtime": true, "UMask": true, "WantedBy": true,
	}
	for _, line := range strings.Split(systemd.Unit, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		key, _, _ := strings.Cut(line, "=")
		if !known237[key] {
			t.Errorf("%s is not known to be in systemd 237", key)
		}
	}
}

package bootstrap

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/replicated"
)

// Under systemd the rewrite restarts the units that read the address; a failed restart puts
// the old address back, so the step's retry rewrites and restarts again instead of finding the
// files done and leaving the units on the old address.
func TestRewriteInstalledAddressRestartsOrPutsBack(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/default"), 0o755)
	const installed = "RELEASE_CHANNEL=stable\nPRIVATE_ADDRESS=10.0.1.23\nREPLICATED_OPTS=\"\"\n"
	os.WriteFile(filepath.Join(root, replicated.DefaultReplicated), []byte(installed), 0o644)
	saved := replicated.Systemctl
	t.Cleanup(func() { replicated.Systemctl = saved })
	log := filepath.Join(t.TempDir(), "systemctl.log")
	fake := func(code string) []string {
		return []string{"sh", "-c", `echo "$@" >> ` + log + `; exit ` + code, "systemctl"}
	}

	replicated.Systemctl = fake("1")
	if _, err := rewriteInstalledAddress(context.Background(), root, true, "10.0.1.50"); err == nil || !strings.Contains(err.Error(), "hold 10.0.1.23 again") {
		t.Fatalf("a failed restart: %v", err)
	}
	if got := replicated.InstalledAddress(root); got != "10.0.1.23" {
		t.Fatalf("after a failed restart the file holds %s, want the old address back", got)
	}

	replicated.Systemctl = fake("0")
	f, err := rewriteInstalledAddress(context.Background(), root, true, "10.0.1.50")
	if err != nil || f == nil || f.Code != findings.AddressRewritten || !strings.Contains(f.Summary, "restarted") {
		t.Fatalf("rewrite: %+v %v", f, err)
	}
	if got := replicated.InstalledAddress(root); got != "10.0.1.50" {
		t.Fatalf("the file holds %s", got)
	}
	b, _ := os.ReadFile(log)
	if want := "try-restart replicated replicated-operator\n"; string(b) != want+want {
		t.Fatalf("systemctl calls:\n%s\nwant two of %q", b, want)
	}
	// Nothing left to rewrite: no restart.
	if f, err := rewriteInstalledAddress(context.Background(), root, true, "10.0.1.50"); f != nil || err != nil {
		t.Fatalf("again: %+v %v", f, err)
	}
	if b2, _ := os.ReadFile(log); string(b2) != string(b) {
		t.Fatalf("restarted with nothing rewritten:\n%s", b2)
	}
}

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/peertest"
)

// The runbook's Vault, for real: `haagent check` against a healthy Vault 0.7.3 set up as the
// runbook says (transit mounted, a periodic token with the transit policy) exits 0 with no
// finding; sealed, it exits 1 naming 0.7's own unseal command.
func TestCheckVault07(t *testing.T) {
	v := peertest.StartVault07(t, true)
	v.Mount(t, "transit", "transit")
	v.Policy(t, "circle", `path "transit/keys/*" { capabilities = ["create", "read", "update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }`)
	token := v.Token(t, map[string]any{"policies": []string{"circle"}, "period": "1h"})
	root := t.TempDir()
	host, port, _ := strings.Cut(v.Addr, ":")
	os.MkdirAll(filepath.Join(root, defaults.SharedDir()), 0o700)
	os.WriteFile(filepath.Join(root, defaults.SharedDir(), "vault"), []byte(fmt.Sprintf(
		"export VAULT__SCHEME=\"https\"\nexport VAULT__HOST=%q\nexport VAULT__PORT=%q\nexport VAULT__CLIENT_TOKEN=%q\nexport VAULT__TRANSIT_MOUNT=\"transit\"\n",
		host, port, token)), 0o600)
	os.MkdirAll(filepath.Join(root, "usr/local/share/ca-certificates"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/local/share/ca-certificates/vault.crt"), v.CAPEM, 0o644)

	r := runHaagent(t, nil, "--root", root, "check", "--only", "vault")
	if r.code != 0 || !strings.Contains(r.stdout, "(TLS verified, Vault 0.7.3)") || !strings.Contains(r.stdout, "0 error(s), 0 warning(s)") {
		t.Fatalf("healthy Vault 0.7.3: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	v.Seal(t)
	r = runHaagent(t, nil, "--root", root, "check", "--only", "vault")
	if r.code != 1 || !strings.Contains(r.stdout, "VAULT_SEALED [ERROR, blocks install]") || !strings.Contains(r.stdout, "fix: unseal Vault with the required number of unseal keys: vault unseal (") {
		t.Fatalf("sealed Vault 0.7.3: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("sealed Vault 0.7.3:\n%s", r.stdout)
	if strings.Contains(r.stdout+r.stderr, token) {
		t.Fatal("the token appears in the check's output")
	}
}

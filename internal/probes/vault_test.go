package probes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/settings"
)

const transitPolicy = `
path "transit/keys/*" { capabilities = ["create", "read", "update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
`

func vaultCheck(t *testing.T, v *peertest.Vault, scheme, token, mount string, mod func(*Options)) *Report {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, settings.SharedDir)
	os.MkdirAll(dir, 0o700)
	host, port, _ := strings.Cut(v.Addr, ":")
	os.WriteFile(filepath.Join(dir, "vault"), []byte(fmt.Sprintf(
		"export VAULT__SCHEME=%q\nexport VAULT__HOST=%q\nexport VAULT__PORT=%q\nexport VAULT__CLIENT_TOKEN=%q\nexport VAULT__TRANSIT_MOUNT=%q\n",
		scheme, host, port, token, mount)), 0o600)
	if v.CAPEM != nil {
		os.MkdirAll(filepath.Join(root, "usr/local/share/ca-certificates"), 0o755)
		os.WriteFile(filepath.Join(root, "usr/local/share/ca-certificates/vault-ca.crt"), v.CAPEM, 0o644)
	}
	o := Options{Timeout: 5 * time.Second, Only: []string{"vault"}}
	if mod != nil {
		mod(&o)
	}
	rep := Run(context.Background(), root, o)
	assertNoSecret(t, rep, token, v.RootToken)
	return rep
}

func TestVault(t *testing.T) {
	v := peertest.StartVault(t, true)
	v.Do(t, "POST", "sys/mounts/transit", map[string]any{"type": "transit"})
	v.Do(t, "PUT", "sys/policies/acl/circle-transit", map[string]any{"policy": transitPolicy})
	v.Do(t, "PUT", "sys/policies/acl/encrypt-only", map[string]any{"policy": `path "transit/encrypt/*" { capabilities = ["update"] }`})
	periodic := v.Token(t, map[string]any{"policies": []string{"circle-transit"}, "period": "1h"})

	t.Run("healthy periodic token", func(t *testing.T) {
		rep := vaultCheck(t, v, "https", periodic, "transit", nil)
		if len(rep.Findings) != 0 || len(rep.Checked) != 1 || !rep.Checked[0].OK || !strings.Contains(rep.Checked[0].Detail, "TLS verified, Vault 1.14.2") {
			t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
		}
		// The round trip used haagent's own key.
		keys := v.Do(t, "LIST", "transit/keys", nil)
		if !strings.Contains(fmt.Sprint(keys["data"]), VaultProbeKey) {
			t.Fatalf("no %s key after the round trip: %v", VaultProbeKey, keys)
		}
	})
	t.Run("root token without TTL", func(t *testing.T) {
		if rep := vaultCheck(t, v, "https", v.RootToken, "transit", nil); len(rep.Findings) != 0 {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("http against the TLS listener", func(t *testing.T) {
		rep := vaultCheck(t, v, "http", periodic, "transit", nil)
		if only(rep.Findings) != "VAULT_SCHEME_MISMATCH" || !strings.Contains(rep.Findings[0].Fix, "https") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("unknown CA", func(t *testing.T) {
		rep := vaultCheck(t, v, "https", periodic, "transit", func(o *Options) { o.RootCAs = peertest.NewCA(t, "other").Pool() })
		if only(rep.Findings) != "TLS_UNKNOWN_AUTHORITY" || !rep.Checked[0].OK {
			t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		if rep := vaultCheck(t, v, "https", "hvs.not-a-real-token", "transit", nil); only(rep.Findings) != "VAULT_TOKEN_INVALID" {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("token limited by policy", func(t *testing.T) {
		tok := v.Token(t, map[string]any{"policies": []string{"encrypt-only"}, "period": "1h"})
		rep := vaultCheck(t, v, "https", tok, "transit", nil)
		f := find(rep.Findings, "VAULT_PERMISSION_DENIED")
		if only(rep.Findings) != "VAULT_PERMISSION_DENIED" || !strings.Contains(f.Evidence, "transit/decrypt/haagent-probe: update") ||
			!strings.Contains(f.Fix, `path "transit/keys/*" { capabilities = ["create", "read", "update"] }`) {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("no transit mount", func(t *testing.T) {
		rep := vaultCheck(t, v, "https", v.RootToken, "transit-missing", nil)
		if only(rep.Findings) != "VAULT_TRANSIT_MISSING" || !strings.Contains(rep.Findings[0].Fix, "vault secrets enable -path=transit-missing transit") {
			t.Fatalf("%+v", rep.Findings)
		}
		rep = vaultCheck(t, v, "https", v.RootToken, "secret", nil) // dev mode's kv mount
		if only(rep.Findings) != "VAULT_TRANSIT_MISSING" || !strings.Contains(rep.Findings[0].Summary, "kv mount") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("expiring tokens", func(t *testing.T) {
		short := v.Token(t, map[string]any{"policies": []string{"circle-transit"}, "ttl": "10m", "renewable": false})
		rep := vaultCheck(t, v, "https", short, "transit", nil)
		if only(rep.Findings) != "VAULT_TOKEN_EXPIRING" || !strings.Contains(rep.Findings[0].Summary, "not renewable") || rep.Findings[0].Blocking {
			t.Fatalf("%+v", rep.Findings)
		}
		capped := v.Token(t, map[string]any{"policies": []string{"circle-transit"}, "ttl": "1h", "explicit_max_ttl": "2h"})
		rep = vaultCheck(t, v, "https", capped, "transit", nil)
		if only(rep.Findings) != "VAULT_TOKEN_EXPIRING" || !strings.Contains(rep.Findings[0].Summary, "explicit max TTL") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
}

func TestVaultPlainListenerAndSeal(t *testing.T) {
	v := peertest.StartVault(t, false)
	v.Do(t, "POST", "sys/mounts/transit", map[string]any{"type": "transit"})
	t.Run("https against a plain listener", func(t *testing.T) {
		rep := vaultCheck(t, v, "https", v.RootToken, "transit", nil)
		if only(rep.Findings) != "VAULT_SCHEME_MISMATCH" {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("sealed", func(t *testing.T) {
		v.Do(t, "PUT", "sys/seal", nil)
		rep := vaultCheck(t, v, "http", v.RootToken, "transit", nil)
		if only(rep.Findings) != "VAULT_SEALED" || !strings.Contains(rep.Findings[0].Fix, "unseal") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
}

func TestVaultUninitialized(t *testing.T) {
	v := peertest.StartVaultUninitialized(t)
	rep := vaultCheck(t, v, "http", "hvs.whatever", "transit", nil)
	if only(rep.Findings) != "VAULT_UNINITIALIZED" || !strings.Contains(rep.Findings[0].Fix, "vault operator init") {
		t.Fatalf("%+v", rep.Findings)
	}
}

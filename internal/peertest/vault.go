package peertest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Vault is a running Vault dev server: 1.14.2 (StartVault) or 0.7.3 (StartVault07), the
// runbook's only supported version, whose API differs (../shared/PEERS.md).
type Vault struct {
	Addr      string // host:port
	TLS       bool
	CAPEM     []byte
	RootToken string
	// Version is what the server reports ("1.14.2", "0.7.3").
	Version string
	client  *http.Client
}

// StartVault starts `vault server -dev`, with its own CA when tls is set.
func StartVault(t testing.TB, tlsOn bool) *Vault {
	t.Helper()
	bin := Bin(t, "vault")
	dir := t.TempDir()
	v := &Vault{Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), TLS: tlsOn, RootToken: "root-token-not-for-services", Version: "1.14.2"}
	args := []string{"server", "-dev", "-dev-root-token-id=" + v.RootToken, "-dev-listen-address=" + v.Addr, "-dev-no-store-token"}
	if tlsOn {
		args = append(args, "-dev-tls", "-dev-tls-cert-dir="+dir)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "VAULT_DISABLE_MLOCK=true")
	logf := filepath.Join(dir, "vault.log")
	start(t, cmd, logf)
	WaitListening(t, v.Addr, cmd, logf)
	tr := &http.Transport{}
	if tlsOn {
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			v.CAPEM, err = os.ReadFile(filepath.Join(dir, "vault-ca.pem"))
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("vault -dev-tls wrote no CA: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(v.CAPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	v.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	v.waitHealthy(t, logf)
	return v
}

// StartVault07 starts a Vault 0.7.3 `server -dev`. 0.7 has no -dev-tls: with tls set, a second
// listener from -config (merged with the dev one) serves TLS with a certificate from a CA made
// here, and Addr is that listener.
func StartVault07(t testing.TB, tlsOn bool) *Vault {
	t.Helper()
	bin := Bin(t, "vault07")
	dir := t.TempDir()
	v := &Vault{TLS: tlsOn, RootToken: "root-token-not-for-services", Version: "0.7.3"}
	devAddr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	v.Addr = devAddr
	args := []string{"server", "-dev", "-dev-root-token-id=" + v.RootToken, "-dev-listen-address=" + devAddr}
	tr := &http.Transport{}
	if tlsOn {
		ca := NewCA(t, "haagent test Vault 0.7 CA")
		cert, key := ca.Issue(t, []string{"localhost", "127.0.0.1"}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
		os.WriteFile(filepath.Join(dir, "cert.pem"), cert, 0o600)
		os.WriteFile(filepath.Join(dir, "key.pem"), key, 0o600)
		v.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		cfg := fmt.Sprintf("listener \"tcp\" {\n  address = %q\n  tls_cert_file = %q\n  tls_key_file = %q\n}\n",
			v.Addr, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
		os.WriteFile(filepath.Join(dir, "tls.hcl"), []byte(cfg), 0o600)
		args = append(args, "-config="+filepath.Join(dir, "tls.hcl"))
		v.CAPEM = ca.CertPEM
		tr.TLSClientConfig = &tls.Config{RootCAs: ca.Pool()}
	}
	cmd := exec.Command(bin, args...)
	// -dev writes the root token to $HOME/.vault-token: a HOME of its own.
	cmd.Env = append(os.Environ(), "HOME="+dir)
	logf := filepath.Join(dir, "vault.log")
	start(t, cmd, logf)
	WaitListening(t, v.Addr, cmd, logf)
	v.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	v.waitHealthy(t, logf)
	return v
}

// waitHealthy polls until sys/health answers 200.
func (v *Vault) waitHealthy(t testing.TB, logf string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := v.client.Get(v.URL() + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf)
			t.Fatalf("vault never became healthy: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Legacy reports a 0.x server: its policy endpoint and CLI differ from 1.x.
func (v *Vault) Legacy() bool { return strings.HasPrefix(v.Version, "0.") }

// Policy writes an ACL policy through the endpoint the server has: 0.x knows only
// sys/policy/NAME {"rules"}, 1.x has sys/policies/acl/NAME {"policy"}.
func (v *Vault) Policy(t testing.TB, name, rules string) {
	t.Helper()
	if v.Legacy() {
		v.Do(t, "PUT", "sys/policy/"+name, map[string]any{"rules": rules})
		return
	}
	v.Do(t, "PUT", "sys/policies/acl/"+name, map[string]any{"policy": rules})
}

// Mount mounts a secrets engine of type typ at path (POST sys/mounts/PATH, the same in 0.7
// and 1.x).
func (v *Vault) Mount(t testing.TB, path, typ string) {
	t.Helper()
	v.Do(t, "POST", "sys/mounts/"+path, map[string]any{"type": typ})
}

// Seal seals the server (PUT sys/seal with the root token).
func (v *Vault) Seal(t testing.TB) {
	t.Helper()
	v.Do(t, "PUT", "sys/seal", nil)
}

// URL is the server's base URL.
func (v *Vault) URL() string {
	if v.TLS {
		return "https://" + v.Addr
	}
	return "http://" + v.Addr
}

// Do calls the API with the root token and decodes the answer.
func (v *Vault) Do(t testing.TB, method, path string, body any) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, v.URL()+"/v1/"+path, rd)
	req.Header.Set("X-Vault-Token", v.RootToken)
	resp, err := v.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: HTTP %d %s", method, path, resp.StatusCode, raw)
	}
	out := map[string]any{}
	json.Unmarshal(raw, &out)
	return out
}

// Token creates a token with the given parameters (policies, period, ttl, renewable,
// explicit_max_ttl, no_default_policy) and returns it.
func (v *Vault) Token(t testing.TB, params map[string]any) string {
	t.Helper()
	out := v.Do(t, "POST", "auth/token/create", params)
	auth, _ := out["auth"].(map[string]any)
	tok, _ := auth["client_token"].(string)
	if tok == "" {
		t.Fatalf("no token in %v", out)
	}
	return tok
}

// StartVaultUninitialized starts a non-dev Vault 1.14.2 (in-memory storage, plain listener)
// that nobody initialised: sys/health answers 501.
func StartVaultUninitialized(t testing.TB) *Vault {
	t.Helper()
	return startUninitialized(t, "vault", "1.14.2", "storage")
}

// StartVault07Uninitialized is StartVaultUninitialized for Vault 0.7.3, whose configuration
// names the storage `backend`.
func StartVault07Uninitialized(t testing.TB) *Vault {
	t.Helper()
	return startUninitialized(t, "vault07", "0.7.3", "backend")
}

func startUninitialized(t testing.TB, name, version, storageKey string) *Vault {
	t.Helper()
	bin := Bin(t, name)
	dir := t.TempDir()
	v := &Vault{Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), Version: version, client: &http.Client{Timeout: 10 * time.Second}}
	cfg := fmt.Sprintf("%s \"inmem\" {}\nlistener \"tcp\" {\n  address = %q\n  tls_disable = 1\n}\ndisable_mlock = true\n", storageKey, v.Addr)
	os.WriteFile(filepath.Join(dir, "vault.hcl"), []byte(cfg), 0o600)
	cmd := exec.Command(bin, "server", "-config="+filepath.Join(dir, "vault.hcl"))
	cmd.Env = append(os.Environ(), "HOME="+dir)
	logf := filepath.Join(dir, "vault.log")
	start(t, cmd, logf)
	WaitListening(t, v.Addr, cmd, logf)
	return v
}

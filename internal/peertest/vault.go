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
	"testing"
	"time"
)

// Vault is a running Vault 1.14.2 dev server.
type Vault struct {
	Addr      string // host:port
	TLS       bool
	CAPEM     []byte
	RootToken string
	client    *http.Client
}

// StartVault starts `vault server -dev`, with its own CA when tls is set.
func StartVault(t testing.TB, tlsOn bool) *Vault {
	t.Helper()
	bin := Bin(t, "vault")
	dir := t.TempDir()
	v := &Vault{Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), TLS: tlsOn, RootToken: "root-token-not-for-services"}
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
	// Ready when sys/health answers 200.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := v.client.Get(v.URL() + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return v
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf)
			t.Fatalf("vault never became healthy: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// StartVaultUninitialized starts a non-dev Vault (in-memory storage, plain listener) that
// nobody initialised: sys/health answers 501.
func StartVaultUninitialized(t testing.TB) *Vault {
	t.Helper()
	bin := Bin(t, "vault")
	dir := t.TempDir()
	v := &Vault{Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), client: &http.Client{Timeout: 10 * time.Second}}
	cfg := fmt.Sprintf("storage \"inmem\" {}\nlistener \"tcp\" {\n  address = %q\n  tls_disable = 1\n}\ndisable_mlock = true\n", v.Addr)
	os.WriteFile(filepath.Join(dir, "vault.hcl"), []byte(cfg), 0o600)
	cmd := exec.Command(bin, "server", "-config="+filepath.Join(dir, "vault.hcl"))
	cmd.Env = append(os.Environ(), "HOME="+dir)
	logf := filepath.Join(dir, "vault.log")
	start(t, cmd, logf)
	WaitListening(t, v.Addr, cmd, logf)
	return v
}

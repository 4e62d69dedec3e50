package probes

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
)

// transitPolicy is what the runbook's services token holds; ci-transit/ and secret/ are there
// so the "nothing mounted" and "kv mount" cases are not hidden behind a permission error.
const transitPolicy = `
path "transit/keys/*" { capabilities = ["create", "read", "update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
path "ci-transit/*" { capabilities = ["create", "read", "update"] }
path "secret/*" { capabilities = ["create", "read", "update"] }
`

// vaultServers are the two real Vaults the probe must speak to: 1.14.2, and 0.7.3, the only
// version the runbook supports, whose API lacks what 1.x has.
var vaultServers = []struct {
	name  string
	start func(testing.TB, bool) *peertest.Vault
}{
	{"1.14.2", peertest.StartVault},
	{"0.7.3", peertest.StartVault07},
}

// vaultCLIOf is the command line the fixes must name for the server's version.
func vaultCLIOf(v *peertest.Vault) (tokenCreate, mount, policyWrite, unseal, capabilities string) {
	if v.Legacy() {
		return "vault token-create -policy=NAME -period=1h", "vault mount -path=", "vault policy-write NAME FILE", "vault unseal", "vault capabilities"
	}
	return "vault token create -policy=NAME -period=1h", "vault secrets enable -path=", "vault policy write NAME FILE", "vault operator unseal", "vault token capabilities"
}

func vaultCheck(t *testing.T, v *peertest.Vault, scheme, token, mount string, mod func(*Options)) *Report {
	t.Helper()
	rep := vaultCheckAt(t, v.Addr, v.CAPEM, scheme, token, mount, mod)
	assertNoSecret(t, rep, token, v.RootToken)
	return rep
}

// vaultCheckAt runs the Vault probe on settings naming addr, trusting caPEM.
func vaultCheckAt(t *testing.T, addr string, caPEM []byte, scheme, token, mount string, mod func(*Options)) *Report {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, defaults.SharedDir())
	os.MkdirAll(dir, 0o700)
	host, port, _ := strings.Cut(addr, ":")
	os.WriteFile(filepath.Join(dir, "vault"), []byte(fmt.Sprintf(
		"export VAULT__SCHEME=%q\nexport VAULT__HOST=%q\nexport VAULT__PORT=%q\nexport VAULT__CLIENT_TOKEN=%q\nexport VAULT__TRANSIT_MOUNT=%q\n",
		scheme, host, port, token, mount)), 0o600)
	if caPEM != nil {
		os.MkdirAll(filepath.Join(root, "usr/local/share/ca-certificates"), 0o755)
		os.WriteFile(filepath.Join(root, "usr/local/share/ca-certificates/vault-ca.crt"), caPEM, 0o644)
	}
	o := Options{Timeout: 5 * time.Second, Only: []string{"vault"}}
	if mod != nil {
		mod(&o)
	}
	rep := Run(context.Background(), layout.New(root, nil), o)
	assertNoSecret(t, rep, token)
	return rep
}

func TestVault(t *testing.T) {
	for _, srv := range vaultServers {
		t.Run(srv.name, func(t *testing.T) {
			v := srv.start(t, true)
			tokenCreate, mountCmd, policyWrite, _, capabilities := vaultCLIOf(v)
			v.Mount(t, "transit", "transit")
			v.Policy(t, "circle-transit", transitPolicy)
			v.Policy(t, "encrypt-only", `path "transit/encrypt/*" { capabilities = ["update"] }`)
			periodic := v.Token(t, map[string]any{"policies": []string{"circle-transit"}, "period": "1h"})

			t.Run("healthy periodic token", func(t *testing.T) {
				rep := vaultCheck(t, v, "https", periodic, "transit", nil)
				if len(rep.Findings) != 0 || rep.Errors() != 0 || len(rep.Checked) != 1 || !rep.Checked[0].OK ||
					rep.Checked[0].Detail != "TLS verified, Vault "+v.Version {
					t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
				}
				// The round trip used haagent's own key.
				keys := v.Do(t, "LIST", "transit/keys", nil)
				if !strings.Contains(fmt.Sprint(keys["data"]), VaultProbeKey) {
					t.Fatalf("no %s key after the round trip: %v", VaultProbeKey, keys)
				}
			})
			t.Run("root token without TTL", func(t *testing.T) {
				if rep := vaultCheck(t, v, "https", v.RootToken, "transit", nil); len(rep.Findings) != 0 || !rep.Checked[0].OK {
					t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
				}
			})
			t.Run("http against the TLS listener", func(t *testing.T) {
				rep := vaultCheck(t, v, "http", periodic, "transit", nil)
				if only(rep.Findings) != findings.VaultSchemeMismatch.String() || !strings.Contains(rep.Findings[0].Fix, "https") {
					t.Fatalf("%+v", rep.Findings)
				}
			})
			t.Run("unknown CA", func(t *testing.T) {
				rep := vaultCheck(t, v, "https", periodic, "transit", func(o *Options) { o.RootCAs = peertest.NewCA(t, "other").Pool() })
				if only(rep.Findings) != findings.TLSUnknownAuthority.String() || rep.Findings[0].Fix == "" || rep.Checked[0].OK ||
					!strings.Contains(rep.Checked[0].Detail, "token not sent") {
					t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
				}
			})
			t.Run("bad token", func(t *testing.T) {
				rep := vaultCheck(t, v, "https", "hvs.not-a-real-token", "transit", nil)
				if only(rep.Findings) != findings.VaultTokenInvalid.String() || !strings.Contains(rep.Findings[0].Fix, tokenCreate) {
					t.Fatalf("%+v", rep.Findings)
				}
			})
			t.Run("token limited by policy", func(t *testing.T) {
				tok := v.Token(t, map[string]any{"policies": []string{"encrypt-only"}, "period": "1h"})
				rep := vaultCheck(t, v, "https", tok, "transit", nil)
				f := find(rep.Findings, findings.VaultPermissionDenied)
				if only(rep.Findings) != findings.VaultPermissionDenied.String() || !strings.Contains(f.Evidence, "transit/decrypt/haagent-probe: update") ||
					!strings.Contains(f.Fix, `path "transit/keys/*" { capabilities = ["create", "read", "update"] }`) ||
					!strings.Contains(f.Fix, policyWrite) || !strings.Contains(f.Fix, tokenCreate) {
					t.Fatalf("%+v", rep.Findings)
				}
			})
			t.Run("no transit mount", func(t *testing.T) {
				// The services' token may not read sys/mounts: the round trip's own error says it.
				for _, tok := range []string{periodic, v.RootToken} {
					rep := vaultCheck(t, v, "https", tok, "ci-transit", nil)
					if only(rep.Findings) != findings.VaultTransitMissing.String() || !strings.Contains(rep.Findings[0].Fix, mountCmd+"ci-transit transit") ||
						!strings.Contains(rep.Findings[0].Summary, "nothing is mounted at ci-transit/") ||
						(tok == periodic && !strings.Contains(rep.Findings[0].Evidence, "no handler for route")) {
						t.Fatalf("%+v", rep.Findings)
					}
				}
			})
			t.Run("kv mount", func(t *testing.T) {
				// Dev mode's secret/ (kv in 1.x, generic in 0.7); the empty key creation writes nothing there.
				for _, tok := range []string{periodic, v.RootToken} {
					rep := vaultCheck(t, v, "https", tok, "secret", nil)
					if only(rep.Findings) != findings.VaultTransitMissing.String() || !strings.Contains(rep.Findings[0].Summary, "secret/ is") ||
						!strings.Contains(rep.Findings[0].Fix, "("+mountCmd+`transit transit) and set VAULT__TRANSIT_MOUNT="transit"`) {
						t.Fatalf("%+v", rep.Findings)
					}
				}
			})
			t.Run("capabilities refused", func(t *testing.T) {
				// Without the default policy sys/capabilities-self is refused: the check says it
				// could not run (a warning) and the round trip tests the rights by using them.
				v.Policy(t, "transit-and-self", transitPolicy+`
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }`)
				tok := v.Token(t, map[string]any{"policies": []string{"transit-and-self"}, "no_default_policy": true, "period": "1h"})
				rep := vaultCheck(t, v, "https", tok, "transit", nil)
				f := find(rep.Findings, findings.ProbeInconclusive)
				if only(rep.Findings) != findings.ProbeInconclusive.String() || f.Severity != findings.Warning || rep.Errors() != 0 ||
					!strings.Contains(f.Summary, "sys/capabilities-self") || !strings.Contains(f.Evidence, "HTTP 403") || !rep.Checked[0].OK ||
					!strings.Contains(f.Fix, capabilities+" TOKEN transit/encrypt/haagent-probe") {
					t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
				}
			})
			t.Run("expiring tokens", func(t *testing.T) {
				short := v.Token(t, map[string]any{"policies": []string{"circle-transit"}, "ttl": "10m", "renewable": false})
				rep := vaultCheck(t, v, "https", short, "transit", nil)
				if only(rep.Findings) != findings.VaultTokenExpiring.String() || !strings.Contains(rep.Findings[0].Summary, "not renewable") ||
					rep.Findings[0].Blocking || !strings.Contains(rep.Findings[0].Fix, tokenCreate) {
					t.Fatalf("%+v", rep.Findings)
				}
				capped := v.Token(t, map[string]any{"policies": []string{"circle-transit"}, "ttl": "1h", "explicit_max_ttl": "2h"})
				rep = vaultCheck(t, v, "https", capped, "transit", nil)
				if only(rep.Findings) != findings.VaultTokenExpiring.String() || !strings.Contains(rep.Findings[0].Summary, "explicit max TTL of 2h0m0s") {
					t.Fatalf("%+v", rep.Findings)
				}
			})
		})
	}
}

func TestVaultPlainListenerAndSeal(t *testing.T) {
	for _, srv := range vaultServers {
		t.Run(srv.name, func(t *testing.T) {
			v := srv.start(t, false)
			_, _, _, unseal, _ := vaultCLIOf(v)
			v.Mount(t, "transit", "transit")
			t.Run("https against a plain listener", func(t *testing.T) {
				rep := vaultCheck(t, v, "https", v.RootToken, "transit", nil)
				if only(rep.Findings) != findings.VaultSchemeMismatch.String() {
					t.Fatalf("%+v", rep.Findings)
				}
			})
			t.Run("healthy over http", func(t *testing.T) {
				rep := vaultCheck(t, v, "http", v.RootToken, "transit", nil)
				if len(rep.Findings) != 0 || rep.Checked[0].Detail != "Vault "+v.Version {
					t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
				}
			})
			t.Run("sealed", func(t *testing.T) {
				v.Seal(t)
				rep := vaultCheck(t, v, "http", v.RootToken, "transit", nil)
				if only(rep.Findings) != findings.VaultSealed.String() || !strings.Contains(rep.Findings[0].Fix, unseal+" (") ||
					!strings.Contains(rep.Findings[0].Evidence, "0 of the 1 unseal keys needed entered") {
					t.Fatalf("%+v", rep.Findings)
				}
			})
		})
	}
}

func TestVaultUninitialized(t *testing.T) {
	for _, srv := range []struct {
		name  string
		start func(testing.TB) *peertest.Vault
		init  string
	}{
		{"1.14.2", peertest.StartVaultUninitialized, "vault operator init"},
		{"0.7.3", peertest.StartVault07Uninitialized, "initialize Vault (vault init)"},
	} {
		t.Run(srv.name, func(t *testing.T) {
			v := srv.start(t)
			rep := vaultCheck(t, v, "http", "hvs.whatever", "transit", nil)
			if only(rep.Findings) != findings.VaultUninitialized.String() || !strings.Contains(rep.Findings[0].Fix, srv.init) {
				t.Fatalf("%+v", rep.Findings)
			}
		})
	}
}

// httpRecorder is a listener of the test's own that answers like a Vault 1.x server that takes any
// token, and records every request it receives: the token must never arrive at one that is
// not verified, nor at one the probe was redirected to.
type httpRecorder struct {
	mu   sync.Mutex
	seen []string // method, URL, headers and body of each request
	// redirect, when set, answers every request but sys/health (or every one, with
	// redirectHealth) with 307 to redirect + the request's path and query, as a standby
	// without request forwarding does; "none" sends no Location.
	redirect       string
	redirectHealth bool
}

func (rc *httpRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.seen = append(rc.seen, fmt.Sprintf("%s %s %v %s", r.Method, r.URL, r.Header, body))
	redirect, all := rc.redirect, rc.redirectHealth
	rc.mu.Unlock()
	isHealth := r.URL.Path == "/v1/sys/health"
	if redirect != "" && (!isHealth || all) {
		if redirect != "none" {
			w.Header().Set("Location", redirect+r.URL.RequestURI())
		}
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case isHealth:
		fmt.Fprint(w, `{"initialized":true,"sealed":false,"standby":true,"version":"1.14.2"}`)
	case r.URL.Path == "/v1/auth/token/lookup-self":
		fmt.Fprint(w, `{"data":{"ttl":0,"renewable":false,"policies":["root"]}}`)
	case r.URL.Path == "/v1/sys/capabilities-self":
		fmt.Fprint(w, `{"data":{"capabilities":["root"]}}`)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// got returns whether any recorded request contains s, and how many requests arrived.
func (rc *httpRecorder) got(s string) (bool, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, r := range rc.seen {
		if strings.Contains(r, s) {
			return true, len(rc.seen)
		}
	}
	return false, len(rc.seen)
}

// tlsServer starts rc over TLS on ip with a certificate from ca.
func tlsServer(t *testing.T, ca *peertest.CA, ip string, h http.Handler) *httptest.Server {
	t.Helper()
	certPEM, keyPEM := ca.Issue(t, []string{ip}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // the probe's reach() dials and hangs up
	s.Listener.Close()
	s.Listener = l
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func hostOf(s *httptest.Server) string {
	return strings.TrimPrefix(strings.TrimPrefix(s.URL, "https://"), "http://")
}

// The token goes only to a server whose certificate verified: after TLS_UNKNOWN_AUTHORITY the
// probe stops before any authenticated call (it used to reconnect without verification and
// send X-Vault-Token).
func TestVaultTokenNeverToUnverifiedServer(t *testing.T) {
	const token = "s.services-token-for-impostor"
	rc := &httpRecorder{}
	srv := tlsServer(t, peertest.NewCA(t, "impostor CA"), "127.0.0.1", rc)
	rep := vaultCheckAt(t, hostOf(srv), peertest.NewCA(t, "the CA haagent trusts").CertPEM, "https", token, "transit", nil)
	if got, _ := rc.got(token); got {
		t.Fatalf("the token reached the unverified server: %v", rc.seen)
	}
	f := find(rep.Findings, findings.TLSUnknownAuthority)
	if only(rep.Findings) != findings.TLSUnknownAuthority.String() || !strings.Contains(f.Summary, "impostor CA") ||
		!strings.HasSuffix(f.Summary, "the token was not sent to it, so the token and transit were not checked") || f.Fix == "" ||
		rep.Checked[0].OK || !strings.Contains(rep.Checked[0].Detail, "token not sent") {
		t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
	}
}

// A redirect is reported, never followed: not to another host over https, not to http, not
// for sys/health itself. Vault's standby answers 307 to the active node.
func TestVaultRedirectNotFollowed(t *testing.T) {
	const token = "s.services-token-redirected"
	ca := peertest.NewCA(t, "haagent test CA")
	// Where the redirects point: a TLS server on another loopback address with a certificate
	// the probe trusts (following would succeed), and a plain one.
	otherTLS := &httpRecorder{}
	otherHost := tlsServer(t, ca, "127.0.0.2", otherTLS)
	otherPlain := &httpRecorder{}
	plain := httptest.NewServer(otherPlain)
	t.Cleanup(plain.Close)
	cases := []struct {
		name, to   string
		all        bool
		other      *httpRecorder
		wantTarget string
		detail     string
	}{
		{"standby to another host", otherHost.URL, false, otherTLS, otherHost.URL, "a standby node, "},
		{"to http", plain.URL, false, otherPlain, plain.URL, "a standby node, "},
		// User info and query in Location are not shown (they may be credentials).
		{"sys/health itself, with credentials in Location", "https://ops:loc-secret@" + hostOf(otherHost), true, otherTLS, otherHost.URL, "TLS verified, "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := &httpRecorder{redirect: c.to, redirectHealth: c.all}
			srv := tlsServer(t, ca, "127.0.0.1", rc)
			rep := vaultCheckAt(t, hostOf(srv), ca.CertPEM, "https", token, "transit", nil)
			assertNoSecret(t, rep, "loc-secret")
			if got, n := c.other.got(token); got || n != 0 {
				t.Fatalf("the probe followed the redirect (%d requests, token sent: %v): %v", n, got, c.other.seen)
			}
			f := find(rep.Findings, findings.VaultRedirect)
			if only(rep.Findings) != findings.VaultRedirect.String() || f.Severity != findings.Warning || f.Blocking ||
				!strings.Contains(f.Summary, "to "+c.wantTarget+":") || !strings.Contains(f.Fix, "active node ("+c.wantTarget+")") ||
				rep.Checked[0].OK || !strings.HasSuffix(rep.Checked[0].Detail, c.detail+"redirected to "+c.wantTarget) {
				t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
			}
		})
	}
}

// A redirect that names no Location is reported as such, not as a redirect to the server
// itself.
func TestVaultRedirectWithoutLocation(t *testing.T) {
	ca := peertest.NewCA(t, "haagent test CA")
	srv := tlsServer(t, ca, "127.0.0.1", &httpRecorder{redirect: "none"})
	rep := vaultCheckAt(t, hostOf(srv), ca.CertPEM, "https", "s.token", "transit", nil)
	f := find(rep.Findings, findings.VaultRedirect)
	if only(rep.Findings) != findings.VaultRedirect.String() || !strings.Contains(f.Summary, "to a location it did not name") ||
		!strings.Contains(f.Fix, "at the active node or at a load balancer") || !strings.Contains(f.Evidence, "(no Location header)") {
		t.Fatalf("%+v", rep.Findings)
	}
}

// A Vault error body is capped where it is read and where it is copied into evidence.
func TestVaultHugeErrorBody(t *testing.T) {
	var mu sync.Mutex
	written := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/sys/health":
			fmt.Fprint(w, `{"initialized":true,"sealed":false,"standby":false,"version":"1.14.2"}`)
		case "/v1/auth/token/lookup-self":
			// 403 with a JSON error far larger than any Vault writes, then an endless tail.
			w.WriteHeader(http.StatusForbidden)
			chunk := []byte(strings.Repeat("A", 64<<10))
			w.Write([]byte(`{"errors":["permission denied `))
			for i := 0; i < 1024; i++ { // at most 64 MiB
				n, err := w.Write(chunk)
				mu.Lock()
				written += n
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	rep := vaultCheckAt(t, hostOf(srv), nil, "http", "s.token", "transit", nil)
	srv.Close() // waits for the handler: written is final
	f := find(rep.Findings, findings.VaultTokenInvalid)
	if only(rep.Findings) != findings.VaultTokenInvalid.String() || len(f.Evidence) > vaultEvidenceCap+40 || !strings.Contains(f.Evidence, "bytes cut") {
		t.Fatalf("evidence of %d bytes: %+v", len(f.Evidence), rep.Findings)
	}
	mu.Lock()
	defer mu.Unlock()
	// What the kernel buffers on loopback is written without being read; far less than this.
	if written > 16<<20 {
		t.Fatalf("the probe read the error body on: the server wrote %d bytes", written)
	}
}

func TestParseVaultVersion(t *testing.T) {
	for _, c := range []struct {
		in                string
		legacy, paths, ui bool
	}{
		{"0.7.3", true, false, false},
		{"0.9.6", true, false, false},
		{"0.10.0", false, true, false},
		{"1.1.2", false, true, true},
		{"1.14.2+ent", false, true, true},
		{"1.15.0-rc1", false, true, true},
		{"", false, true, true}, // unknown: the current API, with fallbacks
		{"garbage", false, true, true},
	} {
		v := parseVaultVersion(c.in)
		if v.legacyCLI() != c.legacy || v.atLeast(0, 10) != c.paths || v.atLeast(1, 0) != c.ui {
			t.Errorf("%q: legacy %v paths %v ui %v", c.in, v.legacyCLI(), v.atLeast(0, 10), v.atLeast(1, 0))
		}
	}
	if s := clip(strings.Repeat("é", 400), 301); len(s) > 340 || !strings.HasSuffix(s, "bytes cut)") || !utf8.ValidString(s) {
		t.Errorf("clip: %q", s)
	}
}

// noVersionVault answers as the 0.7.3 peer does to a root token, but without "version" in
// sys/health: every real Vault here reports its version, so the fallbacks for one that does
// not need this stand-in. It records the paths asked.
type noVersionVault struct {
	mu    sync.Mutex
	asked []string
	plain string
}

func (nv *noVersionVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	json.NewDecoder(r.Body).Decode(&body)
	nv.mu.Lock()
	defer nv.mu.Unlock()
	nv.asked = append(nv.asked, r.URL.Path)
	w.Header().Set("Content-Type", "application/json")
	switch p := r.URL.Path; {
	case p == "/v1/sys/health":
		fmt.Fprint(w, `{"initialized":true,"sealed":false,"standby":false}`)
	case p == "/v1/auth/token/lookup-self":
		fmt.Fprint(w, `{"data":{"ttl":0,"renewable":false,"policies":["root"]}}`)
	case p == "/v1/sys/capabilities-self" && body["path"] == nil:
		w.WriteHeader(http.StatusBadRequest) // 0.7.3's answer to {"paths": [...]}
		fmt.Fprint(w, `{"errors":["1 error occurred:\n\n* missing path"]}`)
	case p == "/v1/sys/capabilities-self":
		fmt.Fprint(w, `{"capabilities":["root"],"data":{"capabilities":["root"]}}`)
	case strings.HasPrefix(p, "/v1/sys/internal/ui/mounts/"):
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"errors":["1 error occurred:\n\n* unsupported path"]}`)
	case p == "/v1/sys/mounts":
		fmt.Fprint(w, `{"data":{"transit/":{"type":"transit"}}}`)
	case p == "/v1/transit/keys/"+VaultProbeKey:
		w.WriteHeader(http.StatusNoContent)
	case p == "/v1/transit/encrypt/"+VaultProbeKey:
		nv.plain, _ = body["plaintext"].(string)
		fmt.Fprint(w, `{"data":{"ciphertext":"vault:v1:c2VhbGVk"}}`)
	case p == "/v1/transit/decrypt/"+VaultProbeKey:
		fmt.Fprintf(w, `{"data":{"plaintext":%q}}`, nv.plain)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// A server that does not report its version gets the current API first and falls back to what
// it has, never an error derived from the 400 or 404 of an endpoint it lacks.
func TestVaultUnknownVersionFallsBack(t *testing.T) {
	nv := &noVersionVault{}
	srv := httptest.NewServer(nv)
	t.Cleanup(srv.Close)
	rep := vaultCheckAt(t, hostOf(srv), nil, "http", "s.token", "transit", nil)
	if len(rep.Findings) != 0 || !rep.Checked[0].OK {
		t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
	}
	nv.mu.Lock()
	defer nv.mu.Unlock()
	if n := strings.Count(strings.Join(nv.asked, " "), "/v1/sys/capabilities-self"); n != 1+len(vaultCaps) {
		t.Fatalf("capabilities asked %d times (once for all paths, then one per path): %v", n, nv.asked)
	}
}

// The probe leaves no connection open behind it: it runs at every boot and again while the
// frontend is watched, each time with a transport of its own.
func TestVaultClosesItsConnections(t *testing.T) {
	states := make(chan http.ConnState, 64)
	srv := httptest.NewUnstartedServer(&noVersionVault{})
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew || s == http.StateClosed || s == http.StateHijacked {
			states <- s
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	rep := vaultCheckAt(t, hostOf(srv), nil, "http", "s.token", "transit", nil)
	if len(rep.Findings) != 0 || !rep.Checked[0].OK {
		t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
	}
	// The server reports a connection's StateNew before it reads the first request on it, so
	// every connection the probe opened is already counted once Run has returned.
	open := 0
	count := func(s http.ConnState) {
		if s == http.StateNew {
			open++
		} else {
			open--
		}
	}
	for drained := false; !drained; {
		select {
		case s := <-states:
			count(s)
		default:
			drained = true
		}
	}
	deadline := time.After(5 * time.Second)
	for open > 0 {
		select {
		case s := <-states:
			count(s)
		case <-deadline:
			t.Fatalf("%d connection(s) still open after the probe returned", open)
		}
	}
}

package probes

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/settings"
)

// VaultProbeKey is the transit key haagent creates for its encrypt/decrypt round trip; it
// never touches the services' own keys.
const VaultProbeKey = "haagent-probe"

// vaultCaps are the capabilities the contexts-service needs under the transit mount ("a token
// with permissions to manage keys and encrypt/decrypt data").
var vaultCaps = []struct{ path, caps string }{
	{"keys/" + VaultProbeKey, "create,read,update"},
	{"encrypt/" + VaultProbeKey, "update"},
	{"decrypt/" + VaultProbeKey, "update"},
}

type vaultCall struct {
	status int
	data   map[string]any
	errs   []string
	err    error
}

func probeVault(ctx context.Context, p *prober, s *settings.Settings) *result {
	res := &result{}
	vals := map[string]settings.Setting{}
	for _, name := range []string{"VAULT__SCHEME", "VAULT__HOST", "VAULT__PORT", "VAULT__CLIENT_TOKEN", "VAULT__TRANSIT_MOUNT"} {
		v, fs := s.Require("vault", name)
		res.addAll(fs)
		vals[name] = v
	}
	if len(res.findings) > 0 {
		return res
	}
	scheme := strings.ToLower(vals["VAULT__SCHEME"].Value)
	if scheme != "http" && scheme != "https" {
		res.add(findings.New("URI_MALFORMED", vals["VAULT__SCHEME"].Where(), fmt.Sprintf("VAULT__SCHEME is %q; it must be https or http", scheme), ""))
		return res
	}
	mount := strings.Trim(vals["VAULT__TRANSIT_MOUNT"].Value, "/")
	ep := endpoint{Host: vals["VAULT__HOST"].Value, Port: vals["VAULT__PORT"].Value}
	ep.Target = scheme + "://" + net.JoinHostPort(ep.Host, ep.Port)
	if f := p.reach(ctx, ep); f != nil {
		res.add(*f)
		res.check(Checked{Service: "vault", Target: ep.Target})
		return res
	}
	v := &vaultProbe{p: p, ep: ep, scheme: scheme, token: vals["VAULT__CLIENT_TOKEN"].Value, mount: mount, res: res, verify: true}
	ok := v.run(ctx)
	detail := ""
	if scheme == "https" {
		detail = map[bool]string{true: "TLS verified", false: "TLS, certificate not verified"}[v.verify]
	}
	if v.version != "" {
		detail = strings.TrimPrefix(detail+", Vault "+v.version, ", ")
	}
	res.check(Checked{Service: "vault", Target: ep.Target, OK: ok, Detail: detail})
	return res
}

type vaultProbe struct {
	p       *prober
	ep      endpoint
	scheme  string
	token   string
	mount   string
	res     *result
	verify  bool
	version string
	client  *vault.Client
}

func (v *vaultProbe) add(code, summary, evidence string) findings.Finding {
	f := findings.New(code, v.ep.Target, summary, evidence)
	v.res.add(f)
	return f
}

func (v *vaultProbe) newClient() error {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: v.p.opts.RootCAs, InsecureSkipVerify: !v.verify, MinVersion: tls.VersionTLS12}, //nolint:gosec // only after the verified attempt failed and was reported
		Proxy:           nil,
	}
	cfg := &vault.Config{Address: v.ep.Target, HttpClient: &http.Client{Transport: tr}, MaxRetries: 0, Timeout: v.p.opts.Timeout}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return err
	}
	c.SetToken(v.token) // never VAULT_TOKEN from haagent's own environment
	c.ClearNamespace()
	v.client = c
	return nil
}

// call makes one request and returns its status and body even for error statuses.
func (v *vaultProbe) call(ctx context.Context, method, path string, body any) vaultCall {
	var resp *vault.Response
	var err error
	switch method {
	case http.MethodGet:
		p, q, _ := strings.Cut(path, "?")
		vals, _ := url.ParseQuery(q)
		resp, err = v.client.Logical().ReadRawWithDataWithContext(ctx, p, vals)
	default:
		b, jerr := json.Marshal(body)
		if jerr != nil {
			return vaultCall{err: jerr}
		}
		resp, err = v.client.Logical().WriteRawWithContext(ctx, path, b)
	}
	out := vaultCall{err: err}
	if resp != nil && resp.Response != nil {
		defer resp.Body.Close()
		out.status = resp.StatusCode
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var doc struct {
			Data   map[string]any `json:"data"`
			Errors []string       `json:"errors"`
		}
		if json.Unmarshal(raw, &doc) == nil {
			out.data, out.errs = doc.Data, doc.Errors
			if out.data == nil && method == http.MethodGet && strings.HasPrefix(path, "sys/") {
				json.Unmarshal(raw, &out.data) // sys endpoints answer at the top level
			}
		} else if len(raw) > 0 {
			out.errs = []string{strings.TrimSpace(string(raw))}
		}
		out.err = nil
	}
	return out
}

func (c vaultCall) text() string {
	if c.err != nil {
		return c.err.Error()
	}
	if len(c.errs) > 0 {
		return fmt.Sprintf("HTTP %d: %s", c.status, strings.Join(c.errs, "; "))
	}
	return fmt.Sprintf("HTTP %d", c.status)
}

// run returns whether the service is usable.
func (v *vaultProbe) run(ctx context.Context) bool {
	if err := v.newClient(); err != nil {
		v.add("PROBE_INCONCLUSIVE", "cannot build a Vault client", err.Error())
		return false
	}
	h := v.call(ctx, http.MethodGet, "sys/health?standbyok=true&perfstandbyok=true&drsecondarycode=200&performancestandbycode=200", nil)
	if h.err != nil && v.scheme == "https" {
		if f := tlsFinding(v.ep, h.err); f != nil {
			v.res.add(*f)
			v.verify = false
			if err := v.newClient(); err != nil {
				return false
			}
			h = v.call(ctx, http.MethodGet, "sys/health?standbyok=true&perfstandbyok=true", nil)
		}
	}
	if h.err != nil {
		switch {
		case strings.Contains(h.err.Error(), "server gave HTTP response to HTTPS client"):
			v.res.add(findings.New("VAULT_SCHEME_MISMATCH", v.ep.Target, fmt.Sprintf("VAULT__SCHEME is https but %s answers plain HTTP", v.ep.addr()), h.err.Error()).
				WithFix("set VAULT__SCHEME=\"http\", or enable TLS on the Vault listener (recommended)"))
		case isTimeout(h.err):
			v.add("PROTOCOL_TIMEOUT", fmt.Sprintf("%s accepts connections but did not answer sys/health", v.ep.addr()), h.err.Error())
		default:
			v.add("PROBE_INCONCLUSIVE", "sys/health failed", h.err.Error())
		}
		return false
	}
	switch h.status {
	case 200, 429, 472, 473:
		if s, ok := h.data["version"].(string); ok {
			v.version = s
		}
	case 400:
		if strings.Contains(h.text(), "HTTP request to an HTTPS server") {
			f := findings.New("VAULT_SCHEME_MISMATCH", v.ep.Target, fmt.Sprintf("VAULT__SCHEME is http but %s is a TLS listener", v.ep.addr()), h.text()).
				WithFix("set VAULT__SCHEME=\"https\" (and put Vault's CA in the bucket's ca-certificates/)")
			v.res.add(f)
			return false
		}
		v.add("PROBE_INCONCLUSIVE", "sys/health answered 400", h.text())
		return false
	case 501:
		v.add("VAULT_UNINITIALIZED", fmt.Sprintf("Vault at %s is not initialized", v.ep.addr()), h.text())
		return false
	case 503:
		v.add("VAULT_SEALED", fmt.Sprintf("Vault at %s is sealed", v.ep.addr()), h.text())
		return false
	case 404:
		// Before sys/health (the runbook's 0.7 era has it, older servers may not): seal-status.
		ss := v.call(ctx, http.MethodGet, "sys/seal-status", nil)
		if sealed, _ := ss.data["sealed"].(bool); sealed {
			v.add("VAULT_SEALED", fmt.Sprintf("Vault at %s is sealed", v.ep.addr()), ss.text())
			return false
		}
	default:
		v.add("PROBE_INCONCLUSIVE", fmt.Sprintf("sys/health answered %d", h.status), h.text())
		return false
	}
	ok := v.checkToken(ctx)
	if !ok {
		return false
	}
	return v.transit(ctx)
}

// checkToken checks the services' token without renewing or revoking it.
func (v *vaultProbe) checkToken(ctx context.Context) bool {
	t := v.call(ctx, http.MethodGet, "auth/token/lookup-self", nil)
	if t.err != nil {
		v.add("PROBE_INCONCLUSIVE", "auth/token/lookup-self failed", t.err.Error())
		return false
	}
	if t.status == 403 || t.status == 401 {
		v.add("VAULT_TOKEN_INVALID", "Vault rejects VAULT__CLIENT_TOKEN (expired, revoked or mistyped)", t.text())
		return false
	}
	if t.status != 200 {
		v.add("PROBE_INCONCLUSIVE", fmt.Sprintf("auth/token/lookup-self answered %d", t.status), t.text())
		return false
	}
	num := func(k string) time.Duration {
		if f, ok := t.data[k].(float64); ok {
			return time.Duration(f) * time.Second
		}
		return 0
	}
	ttl, period, maxTTL := num("ttl"), num("period"), num("explicit_max_ttl")
	renewable, _ := t.data["renewable"].(bool)
	switch {
	case ttl == 0:
		// No TTL (a root-like token): it does not expire.
	case maxTTL > 0:
		left := ttl
		if it, ok := t.data["issue_time"].(string); ok {
			if ts, err := time.Parse(time.RFC3339Nano, it); err == nil {
				left = time.Until(ts.Add(maxTTL)).Round(time.Second)
			}
		}
		v.add("VAULT_TOKEN_EXPIRING", fmt.Sprintf("VAULT__CLIENT_TOKEN has an explicit max TTL of %s: it ends in %s whatever the services renew", maxTTL, left),
			fmt.Sprintf("ttl=%s explicit_max_ttl=%s renewable=%v", ttl, maxTTL, renewable))
	case !renewable:
		v.add("VAULT_TOKEN_EXPIRING", fmt.Sprintf("VAULT__CLIENT_TOKEN is not renewable and expires in %s", ttl),
			fmt.Sprintf("ttl=%s renewable=false period=%s", ttl, period))
	}
	return true
}

func (v *vaultProbe) transit(ctx context.Context) bool {
	var paths []string
	for _, c := range vaultCaps {
		paths = append(paths, v.mount+"/"+c.path)
	}
	caps := v.call(ctx, http.MethodPost, "sys/capabilities-self", map[string]any{"paths": paths})
	have := map[string]map[string]bool{}
	if caps.status == 200 {
		for _, p := range paths {
			have[p] = map[string]bool{}
			if list, ok := caps.data[p].([]any); ok {
				for _, c := range list {
					s, _ := c.(string)
					have[p][s] = true
				}
			}
		}
	}
	var missing []string
	var policy []string
	for i, c := range vaultCaps {
		p := paths[i]
		if have[p]["root"] {
			continue
		}
		var lack []string
		for _, want := range strings.Split(c.caps, ",") {
			if !have[p][want] {
				lack = append(lack, want)
			}
		}
		if len(lack) > 0 {
			missing = append(missing, fmt.Sprintf("%s: %s", p, strings.Join(lack, ", ")))
		}
		glob := v.mount + "/" + strings.SplitN(c.path, "/", 2)[0] + "/*"
		policy = append(policy, fmt.Sprintf(`path %q { capabilities = [%s] }`, glob, quoteList(c.caps)))
	}
	// What kind of mount is it? sys/internal/ui/mounts answers for any path the token can
	// use, without the sys/mounts rights the services' token usually lacks.
	kind := ""
	m := v.call(ctx, http.MethodGet, "sys/internal/ui/mounts/"+v.mount, nil)
	if m.status == 200 {
		kind, _ = m.data["type"].(string)
	}
	if kind == "" {
		probe := v.call(ctx, http.MethodGet, v.mount+"/keys/"+VaultProbeKey, nil)
		if strings.Contains(probe.text(), "no handler for route") {
			f := findings.New("VAULT_TRANSIT_MISSING", v.ep.Target, fmt.Sprintf("nothing is mounted at %s/ (VAULT__TRANSIT_MOUNT)", v.mount), probe.text()).
				WithFix(fmt.Sprintf("vault secrets enable -path=%s transit (or set VAULT__TRANSIT_MOUNT to the transit mount's path)", v.mount))
			v.res.add(f)
			return false
		}
	} else if kind != "transit" {
		f := findings.New("VAULT_TRANSIT_MISSING", v.ep.Target, fmt.Sprintf("%s/ is a %s mount, not transit", v.mount, kind), "sys/internal/ui/mounts").
			WithFix("set VAULT__TRANSIT_MOUNT to the transit mount's path, or mount one: vault secrets enable -path=NAME transit")
		v.res.add(f)
		return false
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		f := findings.New("VAULT_PERMISSION_DENIED", v.ep.Target,
			"VAULT__CLIENT_TOKEN lacks capabilities the contexts-service needs on the transit mount", "missing "+strings.Join(missing, "; ")).
			WithFix("attach a policy with: " + strings.Join(policy, " ") + ", and issue a periodic token: vault token create -policy=NAME -period=1h")
		v.res.add(f)
		return false
	}
	if kind != "transit" {
		// Old servers without the ui mounts endpoint: a round trip would create an entry in
		// a mount of unknown kind, so it is skipped.
		return true
	}
	return v.roundTrip(ctx)
}

func (v *vaultProbe) roundTrip(ctx context.Context) bool {
	fail := func(what string, c vaultCall) bool {
		v.add("VAULT_PERMISSION_DENIED", fmt.Sprintf("the transit round trip failed at %s", what), c.text())
		return false
	}
	if c := v.call(ctx, http.MethodPost, v.mount+"/keys/"+VaultProbeKey, map[string]any{}); c.status >= 300 || c.err != nil {
		return fail("creating key "+VaultProbeKey, c)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("haagent transit round trip"))
	enc := v.call(ctx, http.MethodPost, v.mount+"/encrypt/"+VaultProbeKey, map[string]any{"plaintext": plain})
	ct, _ := enc.data["ciphertext"].(string)
	if enc.status != 200 || ct == "" {
		return fail("encrypt", enc)
	}
	dec := v.call(ctx, http.MethodPost, v.mount+"/decrypt/"+VaultProbeKey, map[string]any{"ciphertext": ct})
	if got, _ := dec.data["plaintext"].(string); dec.status != 200 || got != plain {
		if dec.status == 200 {
			v.add("PROBE_INCONCLUSIVE", "transit decrypt returned a different plaintext", "")
			return false
		}
		return fail("decrypt", dec)
	}
	return true
}

func quoteList(csv string) string {
	var out []string
	for _, c := range strings.Split(csv, ",") {
		out = append(out, fmt.Sprintf("%q", c))
	}
	return strings.Join(out, ", ")
}

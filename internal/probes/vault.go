package probes

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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

// What is read of an answer, and what of it goes into a finding. Vault's own error bodies are
// a line or two; a longer one is a proxy's page or a hostile server, and neither may fill the
// agent's memory or the journal (a Vault error body can be as large as 1 MiB).
const (
	vaultBodyCap      = 256 << 10 // a successful answer (sys/mounts of a busy server fits)
	vaultErrorBodyCap = 8 << 10   // an error answer
	vaultEvidenceCap  = 300       // evidence taken from an answer
)

// vaultHealthPath asks for 200 from standbys too (a standby forwards or redirects the rest),
// and for the sealed and uninitialised states by their own codes. 0.7 ignores the parameters
// it does not know (perfstandbyok, drsecondarycode, performancestandbycode).
const vaultHealthPath = "sys/health?standbyok=true&perfstandbyok=true&drsecondarycode=200&performancestandbycode=200&sealedcode=503&uninitcode=501"

// errTokenWithheld is returned instead of sending the token to a server whose certificate did
// not verify. The probe stops before any authenticated call in that case; this is the guard
// behind that order.
var errTokenWithheld = errors.New("the token is not sent to a server whose certificate did not verify")

// noLocation stands for the Location of a redirect that named none.
const noLocation = "(no Location header)"

type vaultCall struct {
	status int
	// data is the answer's data, or its top level for answers without one (sys/health).
	data map[string]any
	errs []string
	// location is a redirect's Location; redirects are never followed.
	location string
	err      error
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
		res.add(findings.New(findings.URIMalformed, vals["VAULT__SCHEME"].Where(), fmt.Sprintf("VAULT__SCHEME is %q; it must be https or http", scheme), ""))
		return res
	}
	mount := strings.Trim(vals["VAULT__TRANSIT_MOUNT"].Value, "/")
	ep := endpoint{Host: vals["VAULT__HOST"].Value, Port: vals["VAULT__PORT"].Value}
	ep.Target = scheme + "://" + net.JoinHostPort(ep.Host, ep.Port)
	defer res.stamp(len(res.findings), ep.addr())
	if f := p.reach(ctx, ep); f != nil {
		res.add(*f)
		res.check(Checked{Service: "vault", Target: ep.Target})
		return res
	}
	v := &vaultProbe{p: p, ep: ep, scheme: scheme, token: vals["VAULT__CLIENT_TOKEN"].Value, mount: mount, res: res, verify: true}
	ok := v.run(ctx)
	// Each probe has a transport of its own: its kept-alive connections would otherwise stay
	// open for as long as haagent runs (a zero IdleConnTimeout never closes them).
	v.hc.CloseIdleConnections()
	var detail []string
	if scheme == "https" {
		detail = append(detail, map[bool]string{true: "TLS verified", false: "TLS, certificate not verified, token not sent"}[v.verify])
	}
	if v.version.raw != "" {
		detail = append(detail, "Vault "+v.version.raw)
	}
	if v.standby {
		detail = append(detail, "a standby node")
	}
	if v.redirect != "" {
		detail = append(detail, "redirected to "+v.redirect)
	}
	res.check(Checked{Service: "vault", Target: ep.Target, OK: ok, Detail: strings.Join(detail, ", ")})
	return res
}

type vaultProbe struct {
	p      *prober
	ep     endpoint
	scheme string
	token  string
	mount  string
	res    *result
	// verify is false once the certificate failed verification: from then on nothing that
	// carries the token is sent.
	verify  bool
	version vaultVersion
	hc      *http.Client
	// redirect is where the server sent the probe (scheme://host), once it did.
	redirect string
	// standby: sys/health said so (a standby forwards requests to the active node, or
	// redirects them when it cannot).
	standby bool
}

func (v *vaultProbe) add(code findings.Code, summary, evidence string) findings.Finding {
	f := findings.New(code, v.ep.Target, summary, evidence)
	v.res.add(f)
	return f
}

func (v *vaultProbe) addFix(code findings.Code, summary, evidence, fix string) {
	v.res.add(findings.New(code, v.ep.Target, summary, evidence).WithFix(fix))
}

// newClient builds the HTTP client: no proxy from haagent's environment, and no redirect
// followed (net/http would follow up to 10, across hosts and from https to http, keeping
// X-Vault-Token: it strips only Authorization and Cookie).
func (v *vaultProbe) newClient() {
	if v.hc != nil {
		v.hc.CloseIdleConnections()
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: v.p.opts.RootCAs, InsecureSkipVerify: !v.verify, MinVersion: tls.VersionTLS12}, //nolint:gosec // only for unauthenticated calls after the verified attempt failed and was reported
		Proxy:           nil,
	}
	v.hc = &http.Client{
		Transport:     tr,
		Timeout:       v.p.opts.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// call makes one request and returns its status and (capped) body, for error statuses too.
// auth adds the services' token; it is refused once the certificate failed verification.
func (v *vaultProbe) call(ctx context.Context, method, path string, body any, auth bool) vaultCall {
	if auth && !v.verify {
		return vaultCall{err: errTokenWithheld}
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return vaultCall{err: fmt.Errorf("encoding the body of %s %s: %w", method, path, err)}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, v.ep.Target+"/v1/"+path, rd)
	if err != nil {
		return vaultCall{err: fmt.Errorf("building %s %s: %w", method, path, err)}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.Header.Set("X-Vault-Token", v.token) // never VAULT_TOKEN from haagent's own environment
	}
	resp, err := v.hc.Do(req)
	if err != nil {
		return vaultCall{err: err} // a *url.Error: it names the method and URL
	}
	defer resp.Body.Close()
	out := vaultCall{status: resp.StatusCode}
	switch resp.StatusCode {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		out.location = resp.Header.Get("Location")
		if out.location == "" {
			out.location = noLocation
		}
		return out
	}
	limit := int64(vaultBodyCap)
	if resp.StatusCode >= 400 {
		limit = vaultErrorBodyCap
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, limit))
	var doc struct {
		Data   map[string]any `json:"data"`
		Errors []string       `json:"errors"`
	}
	if json.Unmarshal(raw, &doc) == nil {
		out.data, out.errs = doc.Data, doc.Errors
		if out.data == nil && strings.HasPrefix(path, "sys/") {
			json.Unmarshal(raw, &out.data) // sys endpoints answer at the top level
		}
	} else if len(raw) > 0 {
		// Not JSON, or cut at the cap: a proxy's page, or something that is not Vault.
		out.errs = []string{strings.TrimSpace(string(raw))}
	}
	return out
}

// text is the call's outcome for evidence, at most vaultEvidenceCap bytes.
func (c vaultCall) text() string {
	var s string
	switch {
	case c.err != nil:
		s = c.err.Error()
	case c.location != "":
		s = fmt.Sprintf("HTTP %d to %s", c.status, redactLocation(c.location))
	case len(c.errs) > 0:
		s = fmt.Sprintf("HTTP %d: %s", c.status, strings.Join(c.errs, "; "))
	default:
		s = fmt.Sprintf("HTTP %d", c.status)
	}
	return clip(s, vaultEvidenceCap)
}

func (c vaultCall) says(text string) bool {
	for _, e := range c.errs {
		if strings.Contains(e, text) {
			return true
		}
	}
	return false
}

// clip cuts s to at most n bytes on a rune boundary, saying how much was cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes cut)", s[:cut], len(s)-cut)
}

// redactLocation keeps a Location's scheme, host and path: never its user info or query,
// which may carry credentials.
func redactLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil || u.Host == "" {
		return clip(loc, 80)
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// redirected reports a redirect instead of following it: a standby without request forwarding
// answers 307 to the active node (0.7 and 1.x alike), and Vault's own client would follow it
// once, over https only. haagent never sends the token on.
func (v *vaultProbe) redirected(path string, c vaultCall) {
	base, _ := url.Parse(v.ep.Target + "/v1/")
	to, active := "a location it did not name", "the active node"
	if u, err := url.Parse(c.location); err == nil && base != nil && c.location != noLocation {
		u = base.ResolveReference(u)
		to = u.Scheme + "://" + u.Host
		active += " (" + to + ")"
	}
	v.redirect = to
	p, _, _ := strings.Cut(path, "?")
	v.addFix(findings.VaultRedirect, fmt.Sprintf("Vault at %s answered %s with a redirect (HTTP %d) to %s: a standby node that does not forward requests, or a proxy; haagent does not follow redirects with the token, so the token and transit were not checked",
		v.ep.addr(), p, c.status, to), c.text(),
		fmt.Sprintf("point VAULT__SCHEME, VAULT__HOST and VAULT__PORT at %s or at a load balancer that sends requests to it, so the services do not depend on a redirect", active))
}

// vaultVersion is the version a server reports in sys/health. The probe speaks to what the
// server is: 0.7 (the runbook's only supported version) lacks endpoints 1.x has.
type vaultVersion struct {
	raw                 string
	major, minor, patch int
	known               bool
}

func parseVaultVersion(s string) vaultVersion {
	v := vaultVersion{raw: s}
	core, _, _ := strings.Cut(strings.TrimPrefix(s, "v"), "+") // 1.14.2+ent
	core, _, _ = strings.Cut(core, "-")                        // 0.9.0-beta1
	parts := strings.Split(core, ".")
	if len(parts) < 2 {
		return v
	}
	nums := make([]int, 3)
	for i := 0; i < len(parts) && i < 3; i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return v
		}
		nums[i] = n
	}
	v.major, v.minor, v.patch, v.known = nums[0], nums[1], nums[2], true
	return v
}

func (v vaultVersion) atLeast(major, minor int) bool {
	return !v.known || v.major > major || (v.major == major && v.minor >= minor)
}

// legacyCLI: before 0.10 the CLI is `vault token-create`, `vault mount`, `vault policy-write`,
// `vault unseal`, `vault init`. The one 1.x has came in 0.9.2-0.9.3 and both worked until 0.11
// removed the old commands, so 0.10 is where the fixes switch. An unknown version gets the
// current CLI.
func (v vaultVersion) legacyCLI() bool { return !v.atLeast(0, 10) }

// vaultCLI is the command line of the server's version, for fixes.
type vaultCLI struct {
	unseal, init, tokenCreate, policyWrite, mountTransit, capabilities string
}

func (v vaultVersion) cli(mount string) vaultCLI {
	if v.legacyCLI() {
		return vaultCLI{
			unseal: "vault unseal", init: "vault init",
			tokenCreate: "vault token-create -policy=NAME -period=1h", policyWrite: "vault policy-write NAME FILE",
			mountTransit: "vault mount -path=" + mount + " transit", capabilities: "vault capabilities",
		}
	}
	return vaultCLI{
		unseal: "vault operator unseal", init: "vault operator init",
		tokenCreate: "vault token create -policy=NAME -period=1h", policyWrite: "vault policy write NAME FILE",
		mountTransit: "vault secrets enable -path=" + mount + " transit", capabilities: "vault token capabilities",
	}
}

// run returns whether the service is usable.
func (v *vaultProbe) run(ctx context.Context) bool {
	v.newClient()
	h := v.call(ctx, http.MethodGet, vaultHealthPath, nil, false)
	if h.err != nil && v.scheme == "https" {
		if f := tlsFinding(v.ep, h.err); f != nil {
			// Whoever answers may not be Vault: the token never goes there (and nothing after
			// sys/health runs). Its unauthenticated health is still worth reporting.
			f.Summary += "; the token was not sent to it, so the token and transit were not checked"
			v.res.add(*f)
			v.verify = false
			v.newClient()
			h = v.call(ctx, http.MethodGet, vaultHealthPath, nil, false)
		}
	}
	if h.err != nil {
		switch {
		case strings.Contains(h.err.Error(), "server gave HTTP response to HTTPS client"):
			v.addFix(findings.VaultSchemeMismatch, fmt.Sprintf("VAULT__SCHEME is https but %s answers plain HTTP", v.ep.addr()), h.text(),
				"set VAULT__SCHEME=\"http\", or enable TLS on the Vault listener (recommended)")
		case isTimeout(h.err):
			v.add(findings.ProtocolTimeout, fmt.Sprintf("%s accepts connections but did not answer sys/health", v.ep.addr()), h.text())
		default:
			v.add(findings.ProbeInconclusive, fmt.Sprintf("GET sys/health on %s failed", v.ep.addr()), h.text())
		}
		return false
	}
	if h.location != "" {
		v.redirected(vaultHealthPath, h)
		return false
	}
	if s, ok := h.data["version"].(string); ok {
		v.version = parseVaultVersion(s)
	}
	cli := v.version.cli(v.mount)
	switch h.status {
	case 200, 429, 472, 473:
		v.standby, _ = h.data["standby"].(bool)
	case 400:
		if h.says("HTTP request to an HTTPS server") {
			v.addFix(findings.VaultSchemeMismatch, fmt.Sprintf("VAULT__SCHEME is http but %s is a TLS listener", v.ep.addr()), h.text(),
				"set VAULT__SCHEME=\"https\" (and put Vault's CA in the bucket's ca-certificates/)")
			return false
		}
		v.add(findings.ProbeInconclusive, "sys/health answered 400", h.text())
		return false
	case 501:
		v.addFix(findings.VaultUninitialized, fmt.Sprintf("Vault at %s is not initialized", v.ep.addr()), h.text(),
			fmt.Sprintf("initialize Vault (%s), unseal it (%s), mount transit (%s) and issue the services' token (%s)", cli.init, cli.unseal, cli.mountTransit, cli.tokenCreate))
		return false
	case 503:
		v.sealed(ctx, cli)
		return false
	case 404:
		// Before sys/health (older than the runbook's 0.7, which has it): seal-status.
		ss := v.call(ctx, http.MethodGet, "sys/seal-status", nil, false)
		if sealed, _ := ss.data["sealed"].(bool); sealed {
			v.sealed(ctx, cli)
			return false
		}
	default:
		v.add(findings.ProbeInconclusive, fmt.Sprintf("sys/health answered %d", h.status), h.text())
		return false
	}
	if !v.verify {
		return false
	}
	if !v.checkToken(ctx, cli) {
		return false
	}
	return v.transit(ctx, cli)
}

// sealed reports a sealed server with how far unsealing got, from sys/seal-status (0.7 and
// 1.x alike: t is the threshold, n the key shares, progress the keys entered so far).
func (v *vaultProbe) sealed(ctx context.Context, cli vaultCLI) {
	evidence := "sys/health: sealed"
	ss := v.call(ctx, http.MethodGet, "sys/seal-status", nil, false)
	if t, ok := ss.data["t"].(float64); ok {
		n, _ := ss.data["n"].(float64)
		progress, _ := ss.data["progress"].(float64)
		evidence = fmt.Sprintf("sys/seal-status: sealed, %d of the %d unseal keys needed entered (%d key shares)", int(progress), int(t), int(n))
	}
	v.addFix(findings.VaultSealed, fmt.Sprintf("Vault at %s is sealed", v.ep.addr()), evidence,
		fmt.Sprintf("unseal Vault with the required number of unseal keys: %s (repeat per key holder)", cli.unseal))
}

// checkToken checks the services' token without renewing or revoking it.
func (v *vaultProbe) checkToken(ctx context.Context, cli vaultCLI) bool {
	const path = "auth/token/lookup-self"
	t := v.call(ctx, http.MethodGet, path, nil, true)
	switch {
	case t.err != nil:
		v.add(findings.ProbeInconclusive, path+" failed", t.text())
		return false
	case t.location != "":
		v.redirected(path, t)
		return false
	case t.status == 403 || t.status == 401:
		v.addFix(findings.VaultTokenInvalid, "Vault rejects VAULT__CLIENT_TOKEN (expired, revoked or mistyped)", t.text(),
			fmt.Sprintf("issue a new periodic token: %s, and put it in VAULT__CLIENT_TOKEN", cli.tokenCreate))
		return false
	case t.status != 200:
		v.add(findings.ProbeInconclusive, fmt.Sprintf("%s answered %d", path, t.status), t.text())
		return false
	case t.data == nil:
		v.add(findings.ProbeInconclusive, path+" answered 200 without the token's data", t.text())
		return false
	}
	// 0.7 and 1.x both report ttl, period (periodic tokens only), explicit_max_ttl and
	// renewable in seconds and booleans; the root token has ttl 0.
	num := func(k string) time.Duration {
		if f, ok := t.data[k].(float64); ok {
			return time.Duration(f) * time.Second
		}
		return 0
	}
	ttl, period, maxTTL := num("ttl"), num("period"), num("explicit_max_ttl")
	renewable, _ := t.data["renewable"].(bool)
	fix := fmt.Sprintf("issue a renewable periodic token without an explicit max TTL: %s", cli.tokenCreate)
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
		v.addFix(findings.VaultTokenExpiring, fmt.Sprintf("VAULT__CLIENT_TOKEN has an explicit max TTL of %s: it ends in %s whatever the services renew", maxTTL, left),
			fmt.Sprintf("ttl=%s explicit_max_ttl=%s renewable=%v", ttl, maxTTL, renewable), fix)
	case !renewable:
		v.addFix(findings.VaultTokenExpiring, fmt.Sprintf("VAULT__CLIENT_TOKEN is not renewable and expires in %s", ttl),
			fmt.Sprintf("ttl=%s renewable=false period=%s", ttl, period), fix)
	}
	return true
}

// mountState is what the probe could learn of the transit mount without using it.
type mountState int

const (
	mountUnknown mountState = iota // the token may not ask, or the server cannot say
	mountAbsent
	mountFound
)

// mountKind asks what is mounted at the transit mount's path. 1.x answers
// sys/internal/ui/mounts/PATH for any path the token can use; 0.7 has no such endpoint (404
// for root, 403 for others) and only sys/mounts, which the services' token usually may not
// read. Unknown is fine: the round trip tells a missing or wrong mount by its own error.
func (v *vaultProbe) mountKind(ctx context.Context) (string, mountState, bool) {
	if v.version.atLeast(1, 0) {
		m := v.call(ctx, http.MethodGet, "sys/internal/ui/mounts/"+v.mount, nil, true)
		switch {
		case m.location != "":
			v.redirected("sys/internal/ui/mounts", m)
			return "", mountUnknown, false
		case m.status == 200:
			if kind, _ := m.data["type"].(string); kind != "" {
				return kind, mountFound, true
			}
		case m.status == 404 && m.says("unsupported path"):
			// A server without the endpoint whose version said otherwise: ask sys/mounts.
		default:
			return "", mountUnknown, true
		}
	}
	m := v.call(ctx, http.MethodGet, "sys/mounts", nil, true)
	if m.location != "" {
		v.redirected("sys/mounts", m)
		return "", mountUnknown, false
	}
	if m.status != 200 || m.data == nil { // nil: an answer cut at the cap says nothing
		return "", mountUnknown, true
	}
	entry, ok := m.data[v.mount+"/"].(map[string]any)
	if !ok {
		return "", mountAbsent, true
	}
	kind, _ := entry["type"].(string)
	return kind, mountFound, true
}

// capabilities reads the token's capabilities on paths. 0.10 and later take {"paths": [...]}
// and answer per path; 0.7 takes one {"path": ...} per request and answers "capabilities"
// (the 1.x body gets 400 "missing path" there). ok is false when they could not be read;
// goOn is false once the server redirected.
func (v *vaultProbe) capabilities(ctx context.Context, paths []string) (have map[string]map[string]bool, ok, goOn bool) {
	const path = "sys/capabilities-self"
	have = map[string]map[string]bool{}
	set := func(p string, list any) {
		have[p] = map[string]bool{}
		l, _ := list.([]any)
		for _, c := range l {
			s, _ := c.(string)
			have[p][s] = true
		}
	}
	// The check could not run (the default policy, which grants capabilities-self, may be
	// missing): say so, a warning, and let the round trip test the rights by using them.
	cannot := func(c vaultCall) (map[string]map[string]bool, bool, bool) {
		if c.location != "" {
			v.redirected(path, c)
			return nil, false, false
		}
		v.addFix(findings.ProbeInconclusive, fmt.Sprintf("could not read VAULT__CLIENT_TOKEN's capabilities on %s/ (%s); the transit round trip checks them by use", v.mount, path), c.text(),
			"attach the default policy to the token (it grants sys/capabilities-self), or check by hand: "+v.version.cli(v.mount).capabilities+" TOKEN "+v.mount+"/encrypt/"+VaultProbeKey)
		return nil, false, true
	}
	if v.version.atLeast(0, 10) {
		c := v.call(ctx, http.MethodPost, path, map[string]any{"paths": paths}, true)
		if c.status == 200 {
			for _, p := range paths {
				set(p, c.data[p])
			}
			return have, true, true
		}
		if c.status != 400 {
			return cannot(c)
		}
		// 400 from a server whose version was unknown: ask path by path, as 0.7 needs.
	}
	for _, p := range paths {
		c := v.call(ctx, http.MethodPost, path, map[string]any{"path": p}, true)
		if c.status != 200 {
			return cannot(c)
		}
		set(p, c.data["capabilities"])
	}
	return have, true, true
}

// policyFix is the policy the services' token needs and how to issue one with it.
func (v *vaultProbe) policyFix(cli vaultCLI) string {
	var policy []string
	for _, c := range vaultCaps {
		glob := v.mount + "/" + strings.SplitN(c.path, "/", 2)[0] + "/*"
		policy = append(policy, fmt.Sprintf(`path %q { capabilities = [%s] }`, glob, quoteList(c.caps)))
	}
	return fmt.Sprintf("write a policy with: %s (%s), and issue a periodic token with it: %s", strings.Join(policy, " "), cli.policyWrite, cli.tokenCreate)
}

func (v *vaultProbe) transit(ctx context.Context, cli vaultCLI) bool {
	kind, state, goOn := v.mountKind(ctx)
	if !goOn {
		return false
	}
	switch {
	case state == mountAbsent:
		v.addFix(findings.VaultTransitMissing, fmt.Sprintf("nothing is mounted at %s/ (VAULT__TRANSIT_MOUNT)", v.mount), "sys/mounts",
			fmt.Sprintf("%s (or set VAULT__TRANSIT_MOUNT to the transit mount's path)", cli.mountTransit))
		return false
	case state == mountFound && kind != "transit":
		v.addFix(findings.VaultTransitMissing, fmt.Sprintf("%s/ is a %s mount, not transit", v.mount, kind), "mount type "+kind, v.otherMountFix())
		return false
	}
	var paths []string
	for _, c := range vaultCaps {
		paths = append(paths, v.mount+"/"+c.path)
	}
	have, ok, goOn := v.capabilities(ctx, paths)
	if !goOn {
		return false
	}
	if ok {
		var missing []string
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
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			v.addFix(findings.VaultPermissionDenied, "VAULT__CLIENT_TOKEN lacks capabilities the contexts-service needs on the transit mount", "missing "+strings.Join(missing, "; "),
				v.policyFix(cli))
			return false
		}
	}
	return v.roundTrip(ctx, cli)
}

// otherMountFix is the fix when VAULT__TRANSIT_MOUNT names a mount of another kind: that path
// is taken, so transit goes to another one.
func (v *vaultProbe) otherMountFix() string {
	free := "transit"
	if v.mount == free {
		free = "circle-transit"
	}
	return fmt.Sprintf("set VAULT__TRANSIT_MOUNT to the transit mount's path, or mount transit at a free path (%s) and set VAULT__TRANSIT_MOUNT=%q",
		v.version.cli(free).mountTransit, free)
}

// roundTrip creates haagent's own key and encrypts and decrypts with it. The key's creation
// also tells what the mount is when nothing else could: nothing mounted answers 404 "no
// handler for route" (0.7 and 1.x); a kv or generic mount answers 400 "missing data fields"
// to the empty body and writes nothing.
func (v *vaultProbe) roundTrip(ctx context.Context, cli vaultCLI) bool {
	fail := func(what, path string, c vaultCall) bool {
		switch {
		case c.location != "":
			v.redirected(path, c)
		case c.status == 403:
			v.addFix(findings.VaultPermissionDenied, fmt.Sprintf("the transit round trip was refused at %s", what), c.text(), v.policyFix(cli))
		default:
			v.add(findings.ProbeInconclusive, fmt.Sprintf("the transit round trip failed at %s", what), c.text())
		}
		return false
	}
	keyPath := v.mount + "/keys/" + VaultProbeKey
	c := v.call(ctx, http.MethodPost, keyPath, map[string]any{}, true)
	switch {
	case c.err == nil && c.location == "" && c.status < 300:
	case c.status == 404 && (c.says("no handler for route") || c.says("unsupported path")):
		v.addFix(findings.VaultTransitMissing, fmt.Sprintf("nothing is mounted at %s/ (VAULT__TRANSIT_MOUNT)", v.mount), c.text(),
			fmt.Sprintf("%s (or set VAULT__TRANSIT_MOUNT to the transit mount's path)", cli.mountTransit))
		return false
	case c.status == 400 && c.says("missing data fields"):
		v.addFix(findings.VaultTransitMissing, fmt.Sprintf("%s/ is not a transit mount: it stores secrets (a kv or generic mount)", v.mount), c.text(), v.otherMountFix())
		return false
	default:
		return fail("creating key "+VaultProbeKey, keyPath, c)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("haagent transit round trip"))
	enc := v.call(ctx, http.MethodPost, v.mount+"/encrypt/"+VaultProbeKey, map[string]any{"plaintext": plain}, true)
	ct, _ := enc.data["ciphertext"].(string)
	if enc.status != 200 || ct == "" {
		return fail("encrypt", v.mount+"/encrypt/"+VaultProbeKey, enc)
	}
	dec := v.call(ctx, http.MethodPost, v.mount+"/decrypt/"+VaultProbeKey, map[string]any{"ciphertext": ct}, true)
	if got, _ := dec.data["plaintext"].(string); dec.status != 200 || got != plain {
		if dec.status == 200 {
			v.add(findings.ProbeInconclusive, "transit decrypt returned a different plaintext", "")
			return false
		}
		return fail("decrypt", v.mount+"/decrypt/"+VaultProbeKey, dec)
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

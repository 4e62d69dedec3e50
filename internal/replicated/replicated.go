// Package replicated runs the Replicated installer once per instance: downloaded over HTTPS
// (or from the bucket) and pinned by sha256, run with local_address from IMDSv2, in its own
// transient systemd unit so that a restart of haagent neither kills nor repeats it, and never
// re-run destructively on an instance where it completed.
package replicated

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// UnitName is the installer's transient unit. Its files (the script, its exit status, its
// environment, the install marker) are the layout's: layout.InstallerScript and the rest,
// under Options.Root.
const UnitName = "haagent-replicated-install"

// DefaultInstallerURL is the runbook's installer.
const DefaultInstallerURL = "https://get.replicated.com/docker"

// Commands, as argv, so they can be read in one place (and replaced in tests).
var (
	SystemdRun = []string{"systemd-run"}
	Systemctl  = []string{"systemctl"}
	Journalctl = []string{"journalctl"}
)

// Marker records a completed install on this instance.
type Marker struct {
	InstanceID      string    `json:"instance_id"`
	InstallerSHA256 string    `json:"installer_sha256"`
	ExitCode        int       `json:"exit_code"`
	Time            time.Time `json:"time"`
	// SettingsSHA256 is the settings.conf Replicated imported, to report later edits that
	// would silently do nothing.
	SettingsSHA256 string `json:"settings_sha256,omitempty"`
}

// ReadMarker returns the marker, or nil.
func ReadMarker(root string) *Marker {
	b, err := os.ReadFile(filepath.Join(root, layout.InstallMarker))
	if err != nil {
		return nil
	}
	var m Marker
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return &m
}

// Install is what this machine's install marker says, read once: the one place that decides
// whether Replicated was installed here, for which instance, with which settings.conf. Every
// step that asks (the fetch's evidence of an earlier deployment, validate-files' drift and key
// conflicts, the installer itself) asks it.
type Install struct{ m *Marker }

// ReadInstall reads the marker under root; no marker (or an unreadable one) is no install.
func ReadInstall(root string) Install { return Install{ReadMarker(root)} }

// On reports whether an install completed on this instance.
func (i Install) On(instanceID string) bool { return i.m != nil && i.m.InstanceID == instanceID }

// Evidence says why this machine was part of a deployment before (an install by any
// instance), or "" when Replicated was never installed here.
func (i Install) Evidence() string {
	if i.m == nil {
		return ""
	}
	return fmt.Sprintf("Replicated was installed on this machine (instance %s, %s)", i.m.InstanceID, layout.InstallMarker)
}

// SettingsDrift reports whether this instance's install imported a settings.conf other than
// the one of sha256 sum: Replicated does not read it again, so the change would do nothing.
func (i Install) SettingsDrift(instanceID, sum string) bool {
	return i.On(instanceID) && i.m.SettingsSHA256 != "" && sum != "" && sum != i.m.SettingsSHA256
}

// Options for one Ensure.
type Options struct {
	Root      string
	URL       string // https://..., or s3://bucket/key
	SHA256    string // pin; empty accepts any script (and logs its hash)
	ExtraArgs []string
	// Version pins Replicated through the installer URL's query (https URLs only).
	Version      string
	Timeout      time.Duration
	LocalAddress string
	// PublicAddress is the instance's public IPv4 from IMDSv2, "" when it has none. The
	// installer gets it (or no-public-address) so it never makes its own IMDSv1 request,
	// which fails on an instance that requires IMDSv2, and then prompts.
	PublicAddress string
	// DockerInstalled passes no-docker, so the script does not compare the installed Docker
	// with the one it recommends and quit (exit 0) at its "proceed anyway?" question.
	DockerInstalled bool
	// VerifyTimeout bounds the wait for Replicated to answer after the installer exited 0.
	VerifyTimeout  time.Duration
	InstanceID     string
	SettingsSHA256 string
	// Proxy is the configured HTTPS proxy. It reaches the installer through its environment
	// (the script's discoverProxy reads HTTP_PROXY), never its argv: credentials in it would
	// be readable by anyone in /proc/PID/cmdline.
	Proxy string
	// NoProxy is haagent's NO_PROXY, passed as additional-no-proxy= with a proxy: the script
	// ignores NO_PROXY in its environment and builds its own list (getNoProxyAddresses).
	NoProxy   string
	Reinstall bool
	RootCAs   *x509.CertPool
	// OpenBucket returns a client for an installer kept in S3.
	OpenBucket func(ctx context.Context, name string) (*bucket.Bucket, error)
	// Fetched, for an s3:// installer, is what the fetch's concurrent pass already read from
	// that object (the source bucket's own): it is checked exactly as a download here would
	// be (INSTALLER_DOWNLOAD_FAILED, the sha256 pin), without a request of its own.
	Fetched *Prefetched
	// Systemd runs the installer as a transient unit; false runs it as a child (tests, --root).
	Systemd bool
	Log     *slog.Logger
	// Report takes a finding that does not stop the install (an unpinned installer), at the
	// moment it applies: before the script runs.
	Report func(findings.Finding)
}

// Result says what happened.
type Result struct {
	Ran    bool
	SHA256 string
	Args   []string
	// AppState is what replicatedctl app status inspect answered after the install.
	AppState string
	// unitsPresent: the install was verified in vain, but Replicated's units are there.
	unitsPresent bool
}

// Ensure installs Replicated unless this instance already completed an install. The
// installer's exit status 0 is not taken as success: the real script exits 0 having installed
// nothing when it would have had to ask (see verify), so the marker is written only once
// Replicated's services run and replicatedctl answers.
func Ensure(ctx context.Context, o Options) (Result, error) {
	var res Result
	if in := ReadInstall(o.Root); in.On(o.InstanceID) && !o.Reinstall {
		m := in.m
		o.Log.Info("Replicated is already installed on this instance; not re-running the installer (it would stop CircleCI)",
			"installed", m.Time.Format(time.RFC3339), "installer_sha256", m.InstallerSHA256)
		return res, ensureActive(ctx, o)
	}
	if o.Systemd {
		if active, err := unitActive(ctx); err == nil && active {
			o.Log.Warn("an installer started by an earlier haagent is still running; waiting for it", "unit", UnitName)
			code, err := waitUnit(ctx, o)
			// systemd read the proxy's environment file when the unit started; the haagent
			// that wrote it was killed before its own cleanup.
			os.Remove(filepath.Join(o.Root, layout.InstallerEnv))
			res.SHA256 = readScriptSHA(o.Root)
			return res, o.complete(ctx, &res, code, err, func() string { return o.unitTail(ctx) }, res.SHA256)
		}
		if code, ok := readExit(o.Root, o.InstanceID); ok && !o.Reinstall {
			// It ended while haagent was down: take its result, do not run it again.
			o.Log.Warn("an installer started by an earlier haagent ended while haagent was down", "unit", UnitName, "exit", code)
			os.Remove(filepath.Join(o.Root, layout.InstallerEnv)) // its proxy environment file, left by the killed haagent
			err := o.complete(ctx, &res, code, nil, func() string { return o.unitTail(ctx) }, readScriptSHA(o.Root))
			// The record is dropped (and the installer rerun next time) only when the script
			// failed or installed nothing: rerunning it over an installed Replicated that is
			// slow to answer would stop that Replicated again, each attempt.
			if err != nil && !(code == 0 && res.unitsPresent) {
				os.Remove(filepath.Join(o.Root, layout.InstallerExit))
			}
			return res, err
		}
	}
	if o.SHA256 == "" {
		f := findings.New(findings.InstallerUnpinned, redactLine(o.URL, ""),
			"replicated.sha256 is empty: whatever script "+redactLine(o.URL, "")+" serves today runs as root on this machine", "")
		if o.Report != nil {
			o.Report(f)
		}
	}
	script, sum, err := download(ctx, o)
	if err != nil {
		return res, err
	}
	res.SHA256 = sum
	// The script's own argument arms say what this version accepts; an argument it does not
	// know makes it exit 1 mid-boot: refuse it before the script runs.
	known, from := ScriptArgs(script), "the downloaded script's argument list"
	if known == nil {
		known, from = DocumentedSet(), "the installer's documented arguments"
	}
	if probs := CheckExtraArgs(o.ExtraArgs, known); len(probs) > 0 {
		return res, &findings.Failure{Findings: []findings.Finding{findings.New(findings.InstallerArgUnknown, redactLine(o.URL, ""),
			"replicated.extra_args has arguments the installer would refuse; it was not run", strings.Join(probs, "; ")+" (checked against "+from+")")}}
	}
	if _, err := atomicfile.WriteFile(filepath.Join(o.Root, layout.InstallerScript), script, atomicfile.Options{Mode: 0o700, DirMode: 0o700, UID: -1, GID: -1}); err != nil {
		return res, fmt.Errorf("keeping the installer script: %w", err)
	}
	res.Args = Args(o)
	res.Ran = true
	o.Log.Info("running the Replicated installer", "url", redactLine(o.URL, ""), "sha256", sum, "args", loggedArgs(res.Args),
		"proxy", redactLine(o.Proxy, o.Proxy), "timeout", o.Timeout.String())
	var code int
	var tail func() string
	if o.Systemd {
		code, err = runUnit(ctx, o, res.Args)
		tail = func() string { return o.unitTail(ctx) }
	} else {
		var lines string
		code, lines, err = runChild(ctx, o, res.Args)
		tail = func() string { return lines }
	}
	return res, o.complete(ctx, &res, code, err, tail, sum)
}

// complete judges an ended installer: a failure or timeout is a finding; exit 0 is verified
// before the marker is written.
func (o Options) complete(ctx context.Context, res *Result, code int, err error, tail func() string, sha string) error {
	if err == nil && code == 0 {
		state, verr := verify(ctx, o)
		if verr != nil {
			var ni *errNotInstalled
			res.unitsPresent = errors.As(verr, &ni) && ni.unitsPresent
			return o.nothingInstalled(verr, tail())
		}
		res.AppState = state
		return o.mark(sha)
	}
	return o.finish(code, err, tail())
}

// mark writes the install-complete marker.
func (o Options) mark(installerSHA string) error {
	m := Marker{InstanceID: o.InstanceID, InstallerSHA256: installerSHA, ExitCode: 0, Time: time.Now().UTC(), SettingsSHA256: o.SettingsSHA256}
	b, _ := json.MarshalIndent(m, "", "  ")
	if _, err := atomicfile.WriteFile(filepath.Join(o.Root, layout.InstallMarker), append(b, '\n'), atomicfile.Options{Mode: 0o644, DirMode: 0o700, UID: -1, GID: -1}); err != nil {
		return fmt.Errorf("writing the install-complete marker: %w", err)
	}
	os.Remove(filepath.Join(o.Root, layout.InstallerExit))
	return nil
}

func readScriptSHA(root string) string {
	b, err := os.ReadFile(filepath.Join(root, layout.InstallerScript))
	if err != nil {
		return ""
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// readExit returns the exit code the installer's unit recorded for this instance.
func readExit(root, instanceID string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(root, layout.InstallerExit))
	if err != nil {
		return 0, false
	}
	var code int
	var inst string
	if n, _ := fmt.Sscanf(string(b), "%d %s", &code, &inst); n != 2 || inst != instanceID {
		return 0, false
	}
	return code, true
}

func (o Options) finish(code int, err error, tailLines string) error {
	if errors.Is(err, errTimeout) {
		return &findings.Failure{Findings: []findings.Finding{findings.New(findings.InstallerTimeout, o.URL,
			fmt.Sprintf("the Replicated installer ran past %s and was stopped", o.Timeout), tailLines)}}
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return &findings.Failure{Findings: []findings.Finding{findings.New(findings.InstallerFailed, o.URL,
			fmt.Sprintf("the Replicated installer exited with status %d", code), "last lines: "+tailLines)}}
	}
	return nil
}

// Args are the installer's arguments: the local address from IMDSv2; no-proxy without a
// proxy (with one, the script reads it from its environment or replicated.conf: see env and
// ConfHTTPProxy), else haagent's NO_PROXY as additional-no-proxy; no-docker when Docker is
// installed; the public address from IMDSv2 or no-public-address, unless the configured
// arguments give one; then the configured extra arguments.
func Args(o Options) []string {
	args := []string{"local-address=" + o.LocalAddress}
	if o.Proxy == "" {
		args = append(args, "no-proxy")
	} else if np := strings.Join(strings.Fields(strings.ReplaceAll(o.NoProxy, ",", " ")), ","); np != "" {
		args = append(args, "additional-no-proxy="+np)
	}
	if o.DockerInstalled {
		args = append(args, "no-docker")
	}
	if !SetsPublicAddress(o.ExtraArgs) {
		if o.PublicAddress != "" {
			args = append(args, "public-address="+o.PublicAddress)
		} else {
			args = append(args, "no-public-address")
		}
	}
	return append(args, o.ExtraArgs...)
}

// confProxyRE is how the script's readReplicatedConf finds a key of /etc/replicated.conf
// (grep -o "\"HttpProxy\":\s*\"[^\"]*"): what it reads is what counts, not the JSON.
var confProxyRE = regexp.MustCompile(`"HttpProxy":\s*"([^"]*)`)

// ConfHTTPProxy is the proxy the script's discoverProxy takes from replicated.conf, before
// any HTTP_PROXY variable of its environment; "" when none.
func ConfHTTPProxy(replicatedConf []byte) string {
	if m := confProxyRE.FindSubmatch(replicatedConf); m != nil {
		return string(m[1])
	}
	return ""
}

// Redact hides URL credentials in s (a proxy URL, a line that holds one).
func Redact(s string) string { return redactLine(s, s) }

// DockerInstalled reports whether a docker command is installed under root (a baked AMI).
func DockerInstalled(root string) bool {
	for _, p := range layout.DockerBinaries {
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return true
		}
	}
	return false
}

// VersionedURL pins Replicated in the installer URL's query, as get.replicated.com takes it
// (replicated_tag, replicated_ui_tag, replicated_operator_tag); other query parameters stay.
func VersionedURL(raw, version string) string {
	if version == "" || !strings.HasPrefix(raw, "https://") {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	q := u.Query()
	for _, k := range []string{"replicated_tag", "replicated_ui_tag", "replicated_operator_tag"} {
		q.Set(k, version)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Prefetched is an s3:// installer script as another read already got it: its body, or the
// error bucket.GetBytes returned.
type Prefetched struct {
	Body []byte
	Err  error
}

// MaxScript is the largest installer script taken from S3 (the real one is about 100 KB).
const MaxScript = 16 << 20

func download(ctx context.Context, o Options) ([]byte, string, error) {
	var body []byte
	var err error
	if strings.HasPrefix(o.URL, "s3://") {
		name, key, _ := strings.Cut(strings.TrimPrefix(o.URL, "s3://"), "/")
		if o.Fetched != nil {
			body, err = o.Fetched.Body, o.Fetched.Err
		} else {
			var b *bucket.Bucket
			if b, err = o.OpenBucket(ctx, name); err == nil {
				body, err = b.GetBytes(ctx, key, MaxScript)
			}
		}
	} else {
		body, err = httpGet(ctx, o)
	}
	if errors.Is(err, ErrInsecureRedirect) {
		return nil, "", &findings.Failure{Findings: []findings.Finding{findings.New(findings.InstallerRedirectRefused, redactLine(o.URL, ""),
			"the installer download was redirected away from https; the script was not fetched", redactLine(err.Error(), ""))}}
	}
	if err != nil {
		f := findings.New(findings.InstallerDownloadFailed, o.URL, "cannot download the Replicated installer from "+redactLine(o.URL, ""), redactLine(err.Error(), ""))
		// From the bucket, the bucket's own diagnosis says what to change (the IAM permission,
		// source.ca_file for a refused certificate, the object to upload).
		var be *bucket.Error
		if errors.As(err, &be) {
			f = f.WithFix(be.Fix())
		}
		return nil, "", &findings.Failure{Findings: []findings.Finding{f}}
	}
	h := sha256.Sum256(body)
	sum := hex.EncodeToString(h[:])
	if o.SHA256 != "" && !strings.EqualFold(sum, o.SHA256) {
		return nil, sum, &findings.Failure{Findings: []findings.Finding{findings.New(findings.InstallerChecksumMismatch, o.URL,
			"the downloaded installer does not match replicated.sha256; it was not run",
			fmt.Sprintf("sha256 %s, pinned %s", sum, strings.ToLower(o.SHA256)))}}
	}
	return body, sum, nil
}

// ErrInsecureRedirect is a redirect of the installer download to a URL that is not https: the
// script runs as root, so it is never fetched in the clear.
var ErrInsecureRedirect = errors.New("redirect leaves https")

func httpGet(ctx context.Context, o Options) ([]byte, error) {
	c := retryablehttp.NewClient()
	c.Logger = nil
	c.RetryMax = 4
	c.RetryWaitMin, c.RetryWaitMax = 500*time.Millisecond, 10*time.Second
	tr := c.HTTPClient.Transport.(*http.Transport)
	tr.Proxy = bucket.ProxyFunc()
	tr.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}
	c.HTTPClient.Timeout = 2 * time.Minute
	c.HTTPClient.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("following %s to %s: %w", via[len(via)-1].URL.Redacted(), req.URL.Redacted(), ErrInsecureRedirect)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	// A refused redirect will not heal: do not retry it.
	c.CheckRetry = func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		if errors.Is(err, ErrInsecureRedirect) {
			return false, err
		}
		return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
	}
	u := VersionedURL(o.URL, o.Version)
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("requesting the installer: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("downloading the installer: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("downloading the installer: HTTP %s", resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

var errTimeout = errors.New("installer timed out")

// env is the installer's minimal environment: no secrets of haagent's, and the proxy if any.
// The script takes the proxy from HTTP_PROXY first (then http_proxy, HTTPS_PROXY,
// https_proxy: discoverProxy in proxy.sh), so all four carry haagent's HTTPS proxy; haagent's
// own NO_PROXY passes through.
func env(o Options) []string {
	e := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}
	if o.Proxy != "" {
		for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"} {
			e = append(e, k+"="+o.Proxy)
		}
		for _, k := range []string{"NO_PROXY", "no_proxy"} {
			if v, ok := os.LookupEnv(k); ok {
				e = append(e, k+"="+v)
			}
		}
	}
	return e
}

// writeEnvFile keeps the installer's environment in a 0600 file that the transient unit
// reads (EnvironmentFile=): what --setenv passes is readable by anyone with systemctl show.
// Values are double-quoted with \ and " escaped, as systemd reads them.
func writeEnvFile(path string, env []string) error {
	var b strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		v = strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v)
		fmt.Fprintf(&b, "%s=\"%s\"\n", k, v)
	}
	if _, err := atomicfile.WriteFile(path, []byte(b.String()), atomicfile.Options{Mode: 0o600, DirMode: 0o700, UID: -1, GID: -1}); err != nil {
		return fmt.Errorf("writing the installer's environment file %s: %w", path, err)
	}
	return nil
}

// userinfoRE finds the userinfo of any URL in a line (the real script prints "will use the
// proxy at 'http://user:password@host'"): everything from "://" to the last '@' before
// whitespace, so an unescaped '@', '/', '#' or '?' in a password is hidden too, as
// findings.Redact reads a URI.
var userinfoRE = regexp.MustCompile(`(://)\S*@`)

// redactLine hides URL credentials in a line, and the given proxy's literally (a proxy URL's
// userinfo may also be printed without its scheme, and a password with a space defeats the
// pattern). The proxy is split the tolerant way (its user information runs to the last '@'),
// not by url.Parse, which refuses a password holding '/' or a space.
func redactLine(line, proxy string) string {
	var literal []string
	if p, ok := findings.SplitURI(proxy); ok && p.HasUserinfo {
		raw := p.User
		if p.HasPassword {
			raw += ":" + p.Password
		}
		literal = append(literal, raw)
		if u, err := url.Parse(proxy); err == nil && u.User != nil {
			literal = append(literal, u.User.String()) // escaped, as a client may print it
		}
		if p.HasPassword && len(p.Password) >= 4 {
			literal = append(literal, p.Password)
		}
	}
	for _, l := range literal {
		if l != "" {
			line = strings.ReplaceAll(line, l, "***")
		}
	}
	return userinfoRE.ReplaceAllString(line, "$1***@")
}

// credentialArgs are installer arguments whose value is a credential: the token other nodes
// join the Replicated cluster with, and Artifactory's base64 "user:password".
var credentialArgs = []string{"daemon-token", "daemon_token", "artifactory-auth"}

// loggedArgs is the installer's argv as haagent logs it: a credential argument's value is
// masked. It is on the real argv nonetheless: the script takes these only as arguments.
func loggedArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if name, v, found := strings.Cut(a, "="); found && v != "" && slices.Contains(credentialArgs, name) {
			out[i] = name + "=***"
		}
	}
	return strings.Join(out, " ")
}

// redact hides the proxy's credentials and the credential arguments' values in a line of the
// installer's output (a script may echo its arguments).
func (o Options) redact(line string) string {
	line = redactLine(line, o.Proxy)
	for _, a := range o.ExtraArgs {
		if name, v, found := strings.Cut(a, "="); found && len(v) >= 4 && slices.Contains(credentialArgs, name) {
			line = strings.ReplaceAll(line, v, "***")
		}
	}
	return line
}

// runChild runs the installer as a child: stdin closed and a new session without a
// controlling terminal, so its prompts on /dev/tty fail at once instead of waiting 20 s.
// Its output is logged line by line.
func runChild(ctx context.Context, o Options, args []string) (int, string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(o.Root, layout.InstallerScript)}, args...)...)
	cmd.Env = env(o)
	cmd.Dir = "/"
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return 0, "", fmt.Errorf("starting the installer: %w", err)
	}
	ring := &lastLines{n: 20}
	var wg sync.WaitGroup
	for _, s := range []struct {
		r     io.Reader
		level slog.Level
	}{{stdout, slog.LevelInfo}, {stderr, slog.LevelWarn}} {
		wg.Add(1)
		go func(r io.Reader, level slog.Level) {
			defer wg.Done()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := o.redact(sc.Text())
				ring.add(line)
				o.Log.Log(context.Background(), level, line, "source", "installer")
			}
		}(s.r, s.level)
	}
	done := make(chan error, 1)
	go func() { wg.Wait(); done <- cmd.Wait() }()
	timer := time.NewTimer(o.Timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), ring.String(), nil
		}
		return 0, ring.String(), err
	case <-timer.C:
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return -1, ring.String(), errTimeout
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return -1, ring.String(), ctx.Err()
	}
}

type lastLines struct {
	mu    sync.Mutex
	n     int
	lines []string
}

func (l *lastLines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
	if len(l.lines) > l.n {
		l.lines = l.lines[1:]
	}
}

func (l *lastLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, " | ")
}

// runUnit starts the installer as a transient unit and waits for it. The unit has its own
// cgroup and log: haagent's restart or watchdog kill does not stop it, and the restarted
// haagent finds it (unitActive) and waits instead of starting a second one. Its environment
// comes from the 0600 EnvironmentFile (systemctl show lists the file, not its contents), and
// its output passes through sed to hide URL credentials before it reaches the journal (the
// script prints the proxy it uses); stderr joins stdout for that.
func runUnit(ctx context.Context, o Options, args []string) (int, error) {
	argv := append([]string{}, SystemdRun...)
	argv = append(argv, "--unit="+UnitName, "--collect", "--quiet",
		"--description=Replicated installer started by haagent",
		fmt.Sprintf("--property=RuntimeMaxSec=%d", int(o.Timeout.Seconds())),
		"--property=StandardInput=null",
		"--property=EnvironmentFile="+filepath.Join(o.Root, layout.InstallerEnv))
	envFile := filepath.Join(o.Root, layout.InstallerEnv)
	if err := writeEnvFile(envFile, env(o)); err != nil {
		return 0, err
	}
	// systemd reads the file when the unit starts; it is not needed after the installer ends.
	defer os.Remove(envFile)
	// The unit records the script's exit status itself (see layout.InstallerExit).
	os.Remove(filepath.Join(o.Root, layout.InstallerExit))
	wrapper := unitWrapper(o.InstanceID, filepath.Join(o.Root, layout.InstallerExit))
	argv = append(argv, layout.Bash, "-c", wrapper, filepath.Join(o.Root, layout.InstallerScript))
	argv = append(argv, args...)
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("starting the installer unit (%s): %w: %s", strings.Join(argv[:3], " "), err, bytes.TrimSpace(out))
	}
	return waitUnit(ctx, o)
}

// unitWrapper is the transient unit's bash -c program: it runs the script ($0, with its
// arguments), hides URL credentials in its output, records "STATUS INSTANCE-ID" in exitPath
// and exits with the script's status. $PIPESTATUS is the script's status (the array's first
// element): systemd replaces every ${...} in a command line with a value from its own
// environment, empty when unset (seen on systemd 252), so the program has no braces.
func unitWrapper(instanceID, exitPath string) string {
	return fmt.Sprintf(`%s "$0" "$@" 2>&1 | sed -u -E 's#(://)[^[:space:]]*@#\1***@#g'; rc=$PIPESTATUS; printf '%%s %%s\n' "$rc" %q > %q; exit $rc`,
		layout.Bash, instanceID, exitPath)
}

// waitUnit polls the unit until it ends and returns its exit status.
func waitUnit(ctx context.Context, o Options) (int, error) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		props, err := show(ctx)
		if err != nil {
			return 0, err
		}
		switch props["ActiveState"] {
		case "inactive", "failed":
			if props["Result"] == "timeout" {
				return -1, errTimeout
			}
			if code, ok := readExit(o.Root, o.InstanceID); ok {
				return code, nil
			}
			var code int
			fmt.Sscanf(props["ExecMainStatus"], "%d", &code)
			if props["Result"] != "success" && code == 0 {
				code = -1
			}
			return code, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

func show(ctx context.Context) (map[string]string, error) {
	return showUnit(ctx, UnitName, "ActiveState", "Result", "ExecMainStatus")
}

func unitActive(ctx context.Context) (bool, error) {
	p, err := show(ctx)
	if err != nil {
		return false, err
	}
	return p["ActiveState"] == "active" || p["ActiveState"] == "activating", nil
}

// unitTail is the installer unit's last lines, credentials hidden.
func (o Options) unitTail(ctx context.Context) string {
	argv := append(append([]string{}, Journalctl...), "-u", UnitName, "-n", "20", "-o", "cat", "--no-pager")
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	return o.redact(strings.Join(strings.Split(strings.TrimSpace(string(out)), "\n"), " | "))
}

// ensureActive starts Replicated's services if a reboot left them inactive.
func ensureActive(ctx context.Context, o Options) error {
	if !o.Systemd {
		o.Log.Info("not under systemd: leaving the Replicated services alone")
		return nil
	}
	for _, svc := range o.services() {
		argv := append(append([]string{}, Systemctl...), "is-active", "--quiet", svc)
		if exec.CommandContext(ctx, argv[0], argv[1:]...).Run() == nil {
			continue
		}
		argv = append(append([]string{}, Systemctl...), "show", "-p", "LoadState", "--value", svc)
		if out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).Output(); strings.TrimSpace(string(out)) == "not-found" {
			o.Log.Warn("the install-complete marker is here but this Replicated service is not installed; not starting it (haagent run --reinstall reinstalls)", "service", svc)
			continue
		}
		o.Log.Warn("Replicated service inactive; starting it", "service", svc)
		argv = append(append([]string{}, Systemctl...), "start", svc)
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("starting %s: %w: %s", svc, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// UnderSystemd reports whether systemd is the init system (and so can run transient units).
func UnderSystemd() bool {
	fi, err := os.Stat(layout.SystemdRunDir)
	return err == nil && fi.IsDir()
}

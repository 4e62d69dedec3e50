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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
)

// Paths under --root and the transient unit's name.
const (
	MarkerPath = "/var/lib/haagent/replicated-installed.json"
	ScriptPath = "/var/lib/haagent/replicated-install.sh"
	// ExitPath is written by the installer's unit itself when the script ends ("CODE
	// INSTANCE-ID"), so a haagent that was restarted meanwhile learns the outcome without
	// running the installer again.
	ExitPath = "/var/lib/haagent/replicated-install.exit"
	UnitName = "haagent-replicated-install"
)

// DefaultInstallerURL is the runbook's installer.
const DefaultInstallerURL = "https://get.replicated.com/docker"

// Commands, as argv, so they can be read in one place (and replaced in tests).
var (
	SystemdRun = []string{"systemd-run"}
	Systemctl  = []string{"systemctl"}
	Journalctl = []string{"journalctl"}
	// Services the installer leaves running, restarted on a reboot if inactive.
	Services = []string{"replicated", "replicated-ui", "replicated-operator"}
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
	b, err := os.ReadFile(filepath.Join(root, MarkerPath))
	if err != nil {
		return nil
	}
	var m Marker
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return &m
}

// Options for one Ensure.
type Options struct {
	Root           string
	URL            string // https://..., or s3://bucket/key
	SHA256         string // pin; empty accepts any script (and logs its hash)
	ExtraArgs      []string
	Timeout        time.Duration
	LocalAddress   string
	InstanceID     string
	SettingsSHA256 string
	// Proxy is the configured HTTPS proxy; the installer gets http-proxy= instead of no_proxy=1.
	Proxy     string
	Reinstall bool
	RootCAs   *x509.CertPool
	// OpenBucket returns a client for an installer kept in S3.
	OpenBucket func(ctx context.Context, name string) (*bucket.Bucket, error)
	// Systemd runs the installer as a transient unit; false runs it as a child (tests, --root).
	Systemd bool
	Log     *slog.Logger
}

// Result says what happened.
type Result struct {
	Ran    bool
	SHA256 string
	Args   []string
}

// Ensure installs Replicated unless this instance already completed an install.
func Ensure(ctx context.Context, o Options) (Result, error) {
	var res Result
	if m := ReadMarker(o.Root); m != nil && m.InstanceID == o.InstanceID && !o.Reinstall {
		o.Log.Info("Replicated is already installed on this instance; not re-running the installer (it would stop CircleCI)",
			"installed", m.Time.Format(time.RFC3339), "installer_sha256", m.InstallerSHA256)
		return res, ensureActive(ctx, o)
	}
	if o.Systemd {
		if active, err := unitActive(ctx); err == nil && active {
			o.Log.Warn("an installer started by an earlier haagent is still running; waiting for it", "unit", UnitName)
			code, err := waitUnit(ctx, o)
			if ferr := o.finish(code, err, unitTail(ctx)); ferr != nil {
				return res, ferr
			}
			return res, o.mark(readScriptSHA(o.Root))
		}
		if code, ok := readExit(o.Root, o.InstanceID); ok && !o.Reinstall {
			// It ended while haagent was down: take its result, do not run it again.
			o.Log.Warn("an installer started by an earlier haagent ended while haagent was down", "unit", UnitName, "exit", code)
			if ferr := o.finish(code, nil, unitTail(ctx)); ferr != nil {
				os.Remove(filepath.Join(o.Root, ExitPath))
				return res, ferr
			}
			return res, o.mark(readScriptSHA(o.Root))
		}
	}
	script, sum, err := download(ctx, o)
	if err != nil {
		return res, err
	}
	res.SHA256 = sum
	if _, err := atomicfile.WriteFile(filepath.Join(o.Root, ScriptPath), script, atomicfile.Options{Mode: 0o700, DirMode: 0o700, UID: -1, GID: -1}); err != nil {
		return res, fmt.Errorf("keeping the installer script: %w", err)
	}
	res.Args = Args(o)
	res.Ran = true
	o.Log.Info("running the Replicated installer", "url", o.URL, "sha256", sum, "args", strings.Join(res.Args, " "), "timeout", o.Timeout.String())
	var code int
	var tailLines string
	if o.Systemd {
		code, err = runUnit(ctx, o, res.Args)
		if err == nil && code != 0 {
			tailLines = unitTail(ctx)
		}
	} else {
		code, tailLines, err = runChild(ctx, o, res.Args)
	}
	if ferr := o.finish(code, err, tailLines); ferr != nil {
		return res, ferr
	}
	return res, o.mark(sum)
}

// mark writes the install-complete marker.
func (o Options) mark(installerSHA string) error {
	m := Marker{InstanceID: o.InstanceID, InstallerSHA256: installerSHA, ExitCode: 0, Time: time.Now().UTC(), SettingsSHA256: o.SettingsSHA256}
	b, _ := json.MarshalIndent(m, "", "  ")
	if _, err := atomicfile.WriteFile(filepath.Join(o.Root, MarkerPath), append(b, '\n'), atomicfile.Options{Mode: 0o644, DirMode: 0o700, UID: -1, GID: -1}); err != nil {
		return fmt.Errorf("writing the install-complete marker: %w", err)
	}
	os.Remove(filepath.Join(o.Root, ExitPath))
	return nil
}

func readScriptSHA(root string) string {
	b, err := os.ReadFile(filepath.Join(root, ScriptPath))
	if err != nil {
		return ""
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// readExit returns the exit code the installer's unit recorded for this instance.
func readExit(root, instanceID string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(root, ExitPath))
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
		return &findings.Failure{Findings: []findings.Finding{findings.New("INSTALLER_TIMEOUT", o.URL,
			fmt.Sprintf("the Replicated installer ran past %s and was stopped", o.Timeout), tailLines)}}
	}
	if err != nil {
		return err
	}
	if code != 0 {
		return &findings.Failure{Findings: []findings.Finding{findings.New("INSTALLER_FAILED", o.URL,
			fmt.Sprintf("the Replicated installer exited with status %d", code), "last lines: "+tailLines)}}
	}
	return nil
}

// Args are the installer's arguments: local_address from IMDSv2, the proxy or no_proxy=1,
// then the configured extra arguments.
func Args(o Options) []string {
	args := []string{"local_address=" + o.LocalAddress}
	if o.Proxy != "" {
		args = append(args, "http-proxy="+o.Proxy)
	} else {
		args = append(args, "no_proxy=1")
	}
	return append(args, o.ExtraArgs...)
}

func download(ctx context.Context, o Options) ([]byte, string, error) {
	var body []byte
	var err error
	if strings.HasPrefix(o.URL, "s3://") {
		name, key, _ := strings.Cut(strings.TrimPrefix(o.URL, "s3://"), "/")
		var b *bucket.Bucket
		if b, err = o.OpenBucket(ctx, name); err == nil {
			body, err = b.GetBytes(ctx, key, 16<<20)
		}
	} else {
		body, err = httpGet(ctx, o)
	}
	if err != nil {
		return nil, "", &findings.Failure{Findings: []findings.Finding{findings.New("INSTALLER_DOWNLOAD_FAILED", o.URL,
			"cannot download the Replicated installer from "+o.URL, err.Error())}}
	}
	h := sha256.Sum256(body)
	sum := hex.EncodeToString(h[:])
	if o.SHA256 != "" && !strings.EqualFold(sum, o.SHA256) {
		return nil, sum, &findings.Failure{Findings: []findings.Finding{findings.New("INSTALLER_CHECKSUM_MISMATCH", o.URL,
			"the downloaded installer does not match replicated.sha256; it was not run",
			fmt.Sprintf("sha256 %s, pinned %s", sum, strings.ToLower(o.SHA256)))}}
	}
	return body, sum, nil
}

func httpGet(ctx context.Context, o Options) ([]byte, error) {
	c := retryablehttp.NewClient()
	c.Logger = nil
	c.RetryMax = 4
	c.RetryWaitMin, c.RetryWaitMax = 500*time.Millisecond, 10*time.Second
	tr := c.HTTPClient.Transport.(*http.Transport)
	tr.Proxy = bucket.ProxyFunc()
	tr.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}
	c.HTTPClient.Timeout = 2 * time.Minute
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, o.URL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

var errTimeout = errors.New("installer timed out")

// env is the installer's minimal environment: no secrets of haagent's, the proxy if any.
func env(o Options) []string {
	e := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}
	for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"} {
		if v, ok := os.LookupEnv(k); ok {
			e = append(e, k+"="+v)
		}
	}
	return e
}

// runChild runs the installer as a child: stdin closed and a new session without a
// controlling terminal, so its prompts on /dev/tty fail at once instead of waiting 20 s.
// Its output is logged line by line.
func runChild(ctx context.Context, o Options, args []string) (int, string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(o.Root, ScriptPath)}, args...)...)
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
				line := sc.Text()
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
// haagent finds it (unitActive) and waits instead of starting a second one.
func runUnit(ctx context.Context, o Options, args []string) (int, error) {
	argv := append([]string{}, SystemdRun...)
	argv = append(argv, "--unit="+UnitName, "--collect", "--quiet",
		"--description=Replicated installer started by haagent",
		fmt.Sprintf("--property=RuntimeMaxSec=%d", int(o.Timeout.Seconds())),
		"--property=StandardInput=null")
	for _, e := range env(o) {
		argv = append(argv, "--setenv="+e)
	}
	// The unit records the script's exit status itself (see ExitPath).
	os.Remove(filepath.Join(o.Root, ExitPath))
	wrapper := fmt.Sprintf(`/bin/bash "$0" "$@"; rc=$?; printf '%%s %%s\n' "$rc" %q > %q; exit $rc`, o.InstanceID, filepath.Join(o.Root, ExitPath))
	argv = append(argv, "/bin/bash", "-c", wrapper, filepath.Join(o.Root, ScriptPath))
	argv = append(argv, args...)
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("starting the installer unit (%s): %w: %s", strings.Join(argv[:3], " "), err, bytes.TrimSpace(out))
	}
	return waitUnit(ctx, o)
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
	argv := append(append([]string{}, Systemctl...), "show", "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus", UnitName)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	props := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			props[k] = v
		}
	}
	return props, nil
}

func unitActive(ctx context.Context) (bool, error) {
	p, err := show(ctx)
	if err != nil {
		return false, err
	}
	return p["ActiveState"] == "active" || p["ActiveState"] == "activating", nil
}

func unitTail(ctx context.Context) string {
	argv := append(append([]string{}, Journalctl...), "-u", UnitName, "-n", "20", "-o", "cat", "--no-pager")
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	return strings.Join(strings.Split(strings.TrimSpace(string(out)), "\n"), " | ")
}

// ensureActive starts Replicated's services if a reboot left them inactive.
func ensureActive(ctx context.Context, o Options) error {
	if !o.Systemd {
		o.Log.Info("not under systemd: leaving the Replicated services alone")
		return nil
	}
	for _, svc := range Services {
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
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

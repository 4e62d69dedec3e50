package main

import (
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/replicated"
)

// installerServer is a local HTTPS server with its own CA serving a test installer script.
type installerServer struct {
	URL      string
	caPEM    []byte
	recDir   string
	mu       sync.Mutex
	script   string
	requests int
}

// okScript records its arguments, environment, stdin and whether it got a terminal, and
// appends a line per run. RECDIR is replaced by the recording directory.
const okScript = `#!/bin/bash
printf '%s\n' "$@" > RECDIR/args
env > RECDIR/env
cat > RECDIR/stdin
if read -t 20 answer < /dev/tty; then echo tty > RECDIR/tty; else echo no-tty > RECDIR/tty; fi
echo "Installing Replicated (test installer)"
echo "a warning on stderr" >&2
echo run >> RECDIR/runs
`

func startInstaller(t *testing.T, script string) *installerServer {
	s := &installerServer{recDir: t.TempDir()}
	s.setScript(script)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests++
		body := s.script
		s.mu.Unlock()
		if r.URL.Path != "/install.sh" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return s
}

func (s *installerServer) setScript(script string) {
	s.mu.Lock()
	s.script = strings.ReplaceAll(script, "RECDIR", s.recDir)
	s.mu.Unlock()
}

func (s *installerServer) rec(name string) string {
	b, _ := os.ReadFile(filepath.Join(s.recDir, name))
	return string(b)
}

func (s *installerServer) runs() int { return strings.Count(s.rec("runs"), "run\n") }

func TestInstallerRunsOncePerInstance(t *testing.T) {
	w := newWorld(t, "i-0install00000000")
	r := w.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	in := w.installer
	if in.runs() != 1 {
		t.Fatalf("installer ran %d times", in.runs())
	}
	args := in.rec("args")
	if args != "local_address=10.0.1.23\nno_proxy=1\n" {
		t.Fatalf("installer arguments:\n%s", args)
	}
	if in.rec("tty") != "no-tty\n" || in.rec("stdin") != "" {
		t.Fatalf("the installer must run with stdin closed and no terminal: tty=%q stdin=%q", in.rec("tty"), in.rec("stdin"))
	}
	env := in.rec("env")
	if strings.Contains(env, "AWS_SECRET_ACCESS_KEY") || !strings.Contains(env, "PATH=/usr/local/sbin") {
		t.Fatalf("the installer's environment must be minimal:\n%s", env)
	}
	for _, want := range []string{"Installing Replicated (test installer)", "a warning on stderr", "step=replicated-install"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the installer's output is not in the log: %q", want)
		}
	}
	m := replicated.ReadMarker(w.root)
	if m == nil || m.InstanceID != "i-0install00000000" || m.ExitCode != 0 || len(m.InstallerSHA256) != 64 || m.SettingsSHA256 == "" {
		t.Fatalf("marker %+v", m)
	}
	if _, err := os.Stat(filepath.Join(w.root, replicated.ScriptPath)); err != nil {
		t.Fatal("the installer script is not kept for the record")
	}

	// A reboot: the installer is not run again.
	if r := w.run("run", "--once"); r.code != 0 || in.runs() != 1 || !strings.Contains(r.stderr, "already installed on this instance") {
		t.Fatalf("second run: exit %d, installer runs %d\n%s", r.code, in.runs(), r.stderr)
	}
	// An edit of settings.conf in S3 is reported, since Replicated will not read it again.
	w.s3.Put(t, bkt, "settings.conf", []byte(strings.Replace(string(w.objs["settings.conf"]), "circleci.example.com", "ci2.example.com", 1)))
	if r := w.run("run", "--once"); r.code != 0 || !strings.Contains(r.stderr, "SETTINGS_DRIFT") {
		t.Fatalf("settings drift: exit %d\n%s", r.code, r.stderr)
	}
	// --reinstall forces it.
	if r := w.run("run", "--once", "--reinstall"); r.code != 0 || in.runs() != 2 {
		t.Fatalf("--reinstall: exit %d, installer runs %d\n%s", r.code, in.runs(), r.stderr)
	}
}

func TestInstallerProxyArgument(t *testing.T) {
	w := newWorld(t, "i-0proxy0000000000")
	// Loopback is never proxied, so S3 and the installer server stay reachable.
	env := append(w.env(w.imds.URL), "HTTPS_PROXY=http://proxy.corp.example:3128")
	if r := w.runEnv(env, "run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got := w.installer.rec("args"); got != "local_address=10.0.1.23\nhttp-proxy=http://proxy.corp.example:3128\n" {
		t.Fatalf("installer arguments with a proxy:\n%s", got)
	}
	if !strings.Contains(w.installer.rec("env"), "HTTPS_PROXY=http://proxy.corp.example:3128") {
		t.Fatal("the proxy is not passed to the installer")
	}
}

func TestInstallerFailureTimeoutAndChecksum(t *testing.T) {
	t.Run("fails, then resumes", func(t *testing.T) {
		w := newWorld(t, "i-0instfail0000000")
		w.installer.setScript("#!/bin/bash\necho 'pulling images'\necho 'Error: no space left on device' >&2\nexit 3\n")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, "INSTALLER_FAILED") || !strings.Contains(r.stderr, "status 3") || !strings.Contains(r.stderr, "no space left on device") {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if replicated.ReadMarker(w.root) != nil {
			t.Fatal("a failed install left a completion marker")
		}
		// No marker: the next boot runs the installer again.
		w.installer.setScript(okScript)
		if r := w.run("run", "--once"); r.code != 0 || w.installer.runs() != 1 {
			t.Fatalf("resume: exit %d runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		w := newWorld(t, "i-0insttime0000000")
		w.installer.setScript("#!/bin/bash\necho started > RECDIR/started\nsleep 600\necho run >> RECDIR/runs\n")
		w.installCfg = fmt.Sprintf("replicated:\n  installer_url: %s/install.sh\n  timeout: 1s\n", w.installer.URL)
		w.writeConfig(w.s3.URL, "")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, "INSTALLER_TIMEOUT") || w.installer.rec("started") == "" {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
	})
	t.Run("checksum mismatch", func(t *testing.T) {
		w := newWorld(t, "i-0instsum00000000")
		w.installCfg = fmt.Sprintf("replicated:\n  installer_url: %s/install.sh\n  sha256: %s\n", w.installer.URL, strings.Repeat("ab", 32))
		w.writeConfig(w.s3.URL, "")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, "INSTALLER_CHECKSUM_MISMATCH") || w.installer.runs() != 0 {
			t.Fatalf("exit %d runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
	})
}

// A broken file in the bucket stops the boot before anything is moved into place, and the
// service picks up the fix by fetching again.
func TestValidateFilesBlocksBrokenFiles(t *testing.T) {
	w := newWorld(t, "i-0validate0000000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	good, _ := os.ReadFile(filepath.Join(w.root, "etc/replicated.conf"))
	broken := strings.Replace(string(good), "{", "", 1) // the runbook's snippet, braces lost
	w.s3.Put(t, bkt, "replicated.conf", []byte(broken))
	w.s3.Put(t, bkt, "license.rli", []byte("a new licence"))
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step validate-files: FILE_SYNTAX") || !strings.Contains(r.stderr, "/etc/replicated.conf:2:29") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	now, _ := os.ReadFile(filepath.Join(w.root, "etc/replicated.conf"))
	lic, _ := os.ReadFile(filepath.Join(w.root, "etc/license.rli"))
	if string(now) != string(good) || string(lic) == "a new licence" {
		t.Fatal("files were moved into place although validation failed")
	}
	if v := w.run("validate"); v.code != 0 {
		t.Fatalf("validate of the good files in place: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	os.WriteFile(filepath.Join(w.root, "etc/replicated.conf"), []byte(broken), 0o600)
	if v := w.run("validate"); v.code != 1 || !strings.Contains(v.stdout, "FILE_SYNTAX") {
		t.Fatalf("validate of a broken file in place: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
}

// A key CircleCI created on this machine reaches the bucket, on demand and at the end of a boot.
func TestBackupKeysCommand(t *testing.T) {
	w := newWorld(t, "i-0backup000000000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	made := filepath.Join(w.root, "data/circle/circleci-encryption-keys/99-made-here.key")
	os.WriteFile(made, []byte("fresh key"), 0o600)
	// Written a minute ago: settled (a key still being written is not uploaded).
	old := time.Now().Add(-time.Minute)
	os.Chtimes(made, old, old)
	r := w.run("backup", "keys")
	if r.code != 0 || string(w.s3.Object(bkt, "circleci-encryption-keys/99-made-here.key")) != "fresh key" {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if u := w.run("backup", "things"); u.code != 2 {
		t.Fatalf("bad usage: exit %d", u.code)
	}
}

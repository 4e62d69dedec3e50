package main

import (
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/replicated"
)

// installerServer is a local HTTPS server with its own CA serving a test installer script.
type installerServer struct {
	URL   string
	caPEM []byte
	// recDir is where the script records what it got, as the test reads it; recIn is the
	// same directory as the script sees it (inside the nspawn box it differs).
	recDir, recIn string
	// root is ROOTDIR in the stand-in (the machine's root: haagent's --root, "" in the box),
	// imdsV1 the URL its IMDSv1 request goes to, delay how long it works before installing.
	root, imdsV1, delay string
	// redirect, when set, answers the script's URL with a redirect there.
	redirect string
	mu       sync.Mutex
	script   string
	requests []string
}

// standin is the test stand-in for the Replicated installer (testdata/replicated-standin.sh
// says what it models).
func standin(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/replicated-standin.sh")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func startInstaller(t *testing.T, script string) *installerServer {
	s := &installerServer{recDir: t.TempDir(), delay: "0", imdsV1: "http://127.0.0.1:9"}
	s.recIn = s.recDir
	s.setScript(script)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.URL.RequestURI())
		body := s.renderLocked()
		redirect := s.redirect
		s.mu.Unlock()
		if r.URL.Path != "/install.sh" {
			http.NotFound(w, r)
			return
		}
		if redirect != "" {
			http.Redirect(w, r, redirect, http.StatusFound)
			return
		}
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return s
}

// standinWith is the stand-in with the test's own lines where a real install goes on to start
// the application (just before its last line).
func standinWith(t *testing.T, extra string) string {
	return strings.Replace(standin(t), "# EXTRA\n", extra+"\n", 1)
}

// renderLocked is the script as served, its placeholders filled in; s.mu is held.
func (s *installerServer) renderLocked() string {
	return strings.NewReplacer("RECDIR", s.recIn, "ROOTDIR", s.root, "IMDSV1URL", s.imdsV1, "STANDIN_DELAY", s.delay).Replace(s.script)
}

// render is the script as the server would serve it now, for a test that keeps it elsewhere
// (an s3:// installer).
func (s *installerServer) render() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.renderLocked()
}

// set changes what the server serves, under its lock (its handler reads them).
func (s *installerServer) set(f func(s *installerServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *installerServer) setScript(script string) {
	s.mu.Lock()
	s.script = script
	s.mu.Unlock()
}

func (s *installerServer) rec(name string) string {
	b, _ := os.ReadFile(filepath.Join(s.recDir, name))
	return string(b)
}

func (s *installerServer) reqs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
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
	// Docker is baked in (no-docker) and the instance has no public address: the script
	// neither compares Docker versions nor asks IMDSv1, so it never prompts.
	args := in.rec("args")
	if args != "local-address=10.0.1.23\nno-proxy\nno-docker\nno-public-address\n" {
		t.Fatalf("installer arguments:\n%s", args)
	}
	if p := in.rec("prompts"); p != "" || in.rec("imdsv1") != "" {
		t.Fatalf("the installer prompted (%q) or made its IMDSv1 request (%q)", p, in.rec("imdsv1"))
	}
	if in.rec("tty") != "no-tty\n" || in.rec("stdin") != "" {
		t.Fatalf("the installer must run with stdin closed and no terminal: tty=%q stdin=%q", in.rec("tty"), in.rec("stdin"))
	}
	env := in.rec("env")
	if strings.Contains(env, "AWS_SECRET_ACCESS_KEY") || !strings.Contains(env, "PATH=/usr/local/sbin") {
		t.Fatalf("the installer's environment must be minimal:\n%s", env)
	}
	for _, want := range []string{"Installing Replicated (test installer)", "a warning on stderr", "step=replicated-install",
		`msg="Replicated installed and answering"`, "app_state=\"stopped (transitioning)\""} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("not in the log: %q", want)
		}
	}
	m := replicated.ReadMarker(w.root)
	if m == nil || m.InstanceID != "i-0install00000000" || m.ExitCode != 0 || len(m.InstallerSHA256) != 64 || m.SettingsSHA256 == "" {
		t.Fatalf("marker %+v", m)
	}
	if _, err := os.Stat(filepath.Join(w.root, layout.InstallerScript)); err != nil {
		t.Fatal("the installer script is not kept for the record")
	}

	// A reboot: the installer is not run again.
	if r := w.run("run", "--once"); r.code != 0 || in.runs() != 1 || !strings.Contains(r.stderr, "already installed on this instance") {
		t.Fatalf("second run: exit %d, installer runs %d\n%s", r.code, in.runs(), r.stderr)
	}
	// An edit of settings.conf in S3 is reported, since Replicated will not read it again.
	w.s3.Put(t, bkt, "settings.conf", []byte(strings.Replace(string(w.objs["settings.conf"]), "circleci.example.com", "ci2.example.com", 1)))
	if r := w.run("run", "--once"); r.code != 0 || !strings.Contains(r.stderr, findings.SettingsDrift.String()) {
		t.Fatalf("settings drift: exit %d\n%s", r.code, r.stderr)
	}
	// --reinstall forces it.
	if r := w.run("run", "--once", "--reinstall"); r.code != 0 || in.runs() != 2 {
		t.Fatalf("--reinstall: exit %d, installer runs %d\n%s", r.code, in.runs(), r.stderr)
	}
}

// The public address comes from IMDSv2, so the script never makes its IMDSv1 request (which
// fails where IMDSv2 is required) nor prompts "Service IP address"; an operator's own
// public-address (an Elastic IP's DNS name) replaces it.
func TestInstallerPublicAddress(t *testing.T) {
	t.Run("from IMDSv2", func(t *testing.T) {
		const id = "i-0public000000000"
		w := newWorld(t, id)
		w.imds = peertest.StartIMDS(t, peertest.Instance{ID: id, LocalIPv4: "10.0.1.23", PublicIPv4: "203.0.113.7", Region: "us-east-1"})
		w.installer.set(func(s *installerServer) { s.imdsV1 = w.imds.URL })
		if r := w.run("run", "--once"); r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if got := w.installer.rec("args"); got != "local-address=10.0.1.23\nno-proxy\nno-docker\npublic-address=203.0.113.7\n" {
			t.Fatalf("installer arguments:\n%s", got)
		}
		if w.installer.rec("imdsv1") != "" || w.installer.rec("prompts") != "" {
			t.Fatalf("the installer asked IMDSv1 or prompted: %q", w.installer.rec("prompts"))
		}
	})
	t.Run("the operator's", func(t *testing.T) {
		w := newWorld(t, "i-0public000000001")
		w.installCfg += "  extra_args: [public-address=ci.example.com]\n"
		w.writeConfig(w.s3.URL, "")
		if r := w.run("run", "--once"); r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if got := w.installer.rec("args"); got != "local-address=10.0.1.23\nno-proxy\nno-docker\npublic-address=ci.example.com\n" {
			t.Fatalf("installer arguments:\n%s", got)
		}
	})
}

// The real script exits 0 having installed nothing when it would have had to ask: here the
// Docker it finds is not the one it recommends and haagent could not pass no-docker (no
// Docker under its root). The marker is not written; the finding carries the last lines and
// the Docker version to install; once Docker is baked in, the next run installs.
func TestInstallerExitZeroWithNothingInstalled(t *testing.T) {
	if _, err := exec.LookPath("docker"); err != nil {
		peertest.Missing(t, "no docker command on this machine for the stand-in installer to find (apt-get install docker.io)")
	}
	w := newWorld(t, "i-0nothing00000000")
	os.Remove(filepath.Join(w.root, "usr/bin/docker"))
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, findings.InstallerNothingInstalled.String()) || !strings.Contains(r.stderr, "The recommended version is 18.09.9") ||
		!strings.Contains(r.stderr, "install the Docker it recommends (18.09.9)") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if w.installer.rec("prompts") != "proceed anyway\n" || replicated.ReadMarker(w.root) != nil {
		t.Fatalf("prompts %q; marker %+v", w.installer.rec("prompts"), replicated.ReadMarker(w.root))
	}
	bakeDocker(t, w.root)
	if r := w.run("run", "--once"); r.code != 0 || w.installer.runs() != 2 || replicated.ReadMarker(w.root) == nil {
		t.Fatalf("with Docker baked in: exit %d, runs %d\n%s", r.code, w.installer.runs(), r.stderr)
	}
}

// The daemon lists the app only once it has activated the licence, over the network: a
// Replicated that answers an empty list is installed (the watch step waits for the app), so
// the marker is written and a second run does not rerun the installer.
func TestInstallerLicenceNotActiveYet(t *testing.T) {
	w := newWorld(t, "i-0nolicence000000")
	w.installer.setScript(strings.Replace(standin(t), "touch \"$ROOT/var/lib/replicated-standin/licence-active\";", "", 1))
	r := w.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, `app_state="no application yet (licence not activated yet)"`) || replicated.ReadMarker(w.root) == nil {
		t.Fatalf("exit %d, marker %+v\n%s", r.code, replicated.ReadMarker(w.root), r.stderr)
	}
	if r := w.run("run", "--once"); r.code != 0 || w.installer.runs() != 1 {
		t.Fatalf("second run: exit %d, installer runs %d\n%s", r.code, w.installer.runs(), r.stderr)
	}
}

// Configured arguments are checked before the script runs: against the downloaded script's
// own argument list (here a script that has no release-sequence), offline against the
// documented list, and never one haagent sets itself.
func TestInstallerExtraArgs(t *testing.T) {
	t.Run("accepted", func(t *testing.T) {
		w := newWorld(t, "i-0extra0000000000")
		w.installCfg += "  extra_args: [release-sequence=12]\n"
		w.writeConfig(w.s3.URL, "")
		if r := w.run("run", "--once"); r.code != 0 || !strings.HasSuffix(w.installer.rec("args"), "\nrelease-sequence=12\n") {
			t.Fatalf("exit %d, args %q\n%s", r.code, w.installer.rec("args"), r.stderr)
		}
	})
	t.Run("not in this script", func(t *testing.T) {
		w := newWorld(t, "i-0extra0000000001")
		w.installer.setScript(strings.Replace(standin(t), "        release-sequence|release_sequence)\n            RELEASE_SEQUENCE=\"$_value\"\n            ;;\n", "", 1))
		w.installCfg += "  extra_args: [release-sequence=12]\n"
		w.writeConfig(w.s3.URL, "")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, findings.InstallerArgUnknown.String()) || !strings.Contains(r.stderr, `\"release-sequence\" is not an argument the installer accepts`) ||
			!strings.Contains(r.stderr, "the downloaded script's argument list") || w.installer.runs() != 0 {
			t.Fatalf("exit %d, runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
	})
	t.Run("unknown or reserved", func(t *testing.T) {
		w := newWorld(t, "i-0extra0000000002")
		w.installCfg += "  extra_args: [relase-sequence=12, no_docker, private-address=10.9.9.9, install-docker-only, \"public-address=1.2.3.4\\nx\"]\n"
		w.writeConfig(w.s3.URL, "")
		v := w.run("validate")
		out := v.stdout + v.stderr
		for _, want := range []string{`replicated.extra_args[0]: "relase-sequence" is not an argument`, "replicated.extra_args[1]: no_docker is set by haagent",
			"replicated.extra_args[2]: private-address is set by haagent", "replicated.extra_args[3]: install-docker-only makes the installer install something other",
			"replicated.extra_args[4]: the value of public-address has whitespace or a control character"} {
			if v.code != 2 || !strings.Contains(out, want) {
				t.Errorf("validate: exit %d, want %q in\n%s", v.code, want, out)
			}
		}
		if r := w.run("run", "--once"); r.code != 2 || w.installer.runs() != 0 {
			t.Fatalf("run: exit %d, runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
	})
}

// A proxy with credentials reaches the installer through its environment (the script reads
// HTTP_PROXY), never its argv; the script's own "will use the proxy at '...'" line is logged
// with the credentials hidden.
func TestInstallerProxyArgument(t *testing.T) {
	w := newWorld(t, "i-0proxy0000000000")
	const secret = "pr0xy-s3cret"
	proxy := "http://corp-user:" + secret + "@proxy.corp.example:3128"
	// Loopback is never proxied, so S3 and the installer server stay reachable.
	env := append(w.env(w.imds.URL), "HTTPS_PROXY="+proxy)
	r := w.runEnv(env, "run", "--once")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got := w.installer.rec("args"); got != "local-address=10.0.1.23\nno-docker\nno-public-address\n" {
		t.Fatalf("installer arguments with a proxy:\n%s", got)
	}
	if w.installer.rec("proxy") != proxy || !strings.Contains(w.installer.rec("env"), "HTTP_PROXY="+proxy) {
		t.Fatalf("the installer did not get the proxy from its environment: %q", w.installer.rec("proxy"))
	}
	if strings.Contains(r.stderr, secret) || !strings.Contains(r.stderr, "will use the proxy at 'http://***@proxy.corp.example:3128'") {
		t.Fatalf("the proxy's credentials in the log, or the installer's proxy line missing:\n%s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(w.root, layout.InstallerEnv)); err == nil {
		t.Fatal("the installer's environment file outlived the run")
	}
}

// The real script takes replicated.conf's HttpProxy before its environment and ignores
// NO_PROXY (proxy.sh discoverProxy, getNoProxyAddresses): haagent reads HTTP_PROXY too, never
// passes no-proxy when replicated.conf has a proxy, refuses one that differs from its own,
// and passes its NO_PROXY as additional-no-proxy.
func TestInstallerProxySources(t *testing.T) {
	const secret = "pr0xy-s3cret"
	proxy := "http://corp-user:" + secret + "@proxy.corp.example:3128"
	withConfProxy := func(w *world, p string) {
		conf := strings.Replace(string(w.objs["replicated.conf"]), "{", "{\n  \"HttpProxy\": \""+p+"\",", 1)
		w.s3.Put(t, bkt, "replicated.conf", []byte(conf))
	}
	t.Run("HTTP_PROXY only, with NO_PROXY", func(t *testing.T) {
		w := newWorld(t, "i-0proxysrc0000000")
		r := w.runEnv(append(w.env(w.imds.URL), "HTTP_PROXY="+proxy, "NO_PROXY=.corp.internal, 10.0.0.0/8"), "run", "--once")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if got := w.installer.rec("args"); got != "local-address=10.0.1.23\nadditional-no-proxy=.corp.internal,10.0.0.0/8\nno-docker\nno-public-address\n" {
			t.Fatalf("installer arguments:\n%s", got)
		}
		if w.installer.rec("proxy") != proxy || w.installer.rec("no-proxy") != "localhost,127.0.0.1,.corp.internal,10.0.0.0/8" || strings.Contains(r.stderr, secret) {
			t.Fatalf("proxy %q, no-proxy %q\n%s", w.installer.rec("proxy"), w.installer.rec("no-proxy"), r.stderr)
		}
	})
	t.Run("replicated.conf's HttpProxy", func(t *testing.T) {
		w := newWorld(t, "i-0proxysrc0000001")
		withConfProxy(w, proxy)
		r := w.run("run", "--once")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if got := w.installer.rec("args"); got != "local-address=10.0.1.23\nno-docker\nno-public-address\n" || w.installer.rec("proxy") != proxy {
			t.Fatalf("installer arguments (no no-proxy with HttpProxy set):\n%s proxy %q", got, w.installer.rec("proxy"))
		}
		if strings.Contains(r.stderr, secret) || !strings.Contains(r.stderr, "imported from /etc/replicated.conf 'HttpProxy'") {
			t.Fatalf("credentials in the log, or the installer's proxy line missing:\n%s", r.stderr)
		}
	})
	t.Run("a different proxy in replicated.conf", func(t *testing.T) {
		w := newWorld(t, "i-0proxysrc0000002")
		withConfProxy(w, "http://other-user:"+secret+"@other.corp.example:3128")
		r := w.runEnv(append(w.env(w.imds.URL), "HTTPS_PROXY="+proxy), "run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, findings.FileInvalid.String()) || !strings.Contains(r.stderr, "sets HttpProxy http://***@other.corp.example:3128 but haagent's proxy is http://***@proxy.corp.example:3128") ||
			strings.Contains(r.stderr, secret) || w.installer.runs() != 0 {
			t.Fatalf("exit %d, runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
	})
}

// The script runs as root: a redirect to http is refused (and not retried), and an unpinned
// installer is a warning, once per run.
func TestInstallerDownloadSafety(t *testing.T) {
	t.Run("redirect to http", func(t *testing.T) {
		w := newWorld(t, "i-0redirect0000000")
		var plainHits int
		var mu sync.Mutex
		plain := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			mu.Lock()
			plainHits++
			mu.Unlock()
			fmt.Fprint(rw, "#!/bin/bash\necho run >> "+w.installer.recDir+"/runs\n")
		}))
		t.Cleanup(plain.Close)
		w.installer.set(func(s *installerServer) { s.redirect = plain.URL + "/install.sh" })
		r := w.run("run", "--once")
		mu.Lock()
		defer mu.Unlock()
		if r.code != 1 || !strings.Contains(r.stderr, findings.InstallerRedirectRefused.String()) || plainHits != 0 || w.installer.runs() != 0 || len(w.installer.reqs()) != 1 {
			t.Fatalf("exit %d, plain hits %d, runs %d, requests %v\n%s", r.code, plainHits, w.installer.runs(), w.installer.reqs(), r.stderr)
		}
	})
	t.Run("unpinned, then pinned", func(t *testing.T) {
		w := newWorld(t, "i-0unpinned00000000")
		r := w.run("run", "--once")
		if r.code != 0 || strings.Count(r.stderr, "finding=INSTALLER_UNPINNED") != 1 || !strings.Contains(r.stderr, "runs as root") {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		m := replicated.ReadMarker(w.root)
		w.installCfg += "  sha256: " + m.InstallerSHA256 + "\n"
		w.writeConfig(w.s3.URL, "")
		if r := w.run("run", "--once", "--reinstall"); r.code != 0 || strings.Contains(r.stderr, findings.InstallerUnpinned.String()) {
			t.Fatalf("pinned: exit %d\n%s", r.code, r.stderr)
		}
	})
	t.Run("version in the query", func(t *testing.T) {
		w := newWorld(t, "i-0version00000000")
		w.installCfg += "  version: 2.38.6\n"
		w.writeConfig(w.s3.URL, "")
		if r := w.run("run", "--once"); r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if got := strings.Join(w.installer.reqs(), " "); got != "/install.sh?replicated_operator_tag=2.38.6&replicated_tag=2.38.6&replicated_ui_tag=2.38.6" {
			t.Fatalf("requests: %s", got)
		}
	})
}

func TestInstallerFailureTimeoutAndChecksum(t *testing.T) {
	t.Run("fails, then resumes", func(t *testing.T) {
		w := newWorld(t, "i-0instfail0000000")
		w.installer.setScript("#!/bin/bash\necho 'pulling images'\necho 'Error: no space left on device' >&2\nexit 3\n")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, findings.InstallerFailed.String()) || !strings.Contains(r.stderr, "status 3") || !strings.Contains(r.stderr, "no space left on device") {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if replicated.ReadMarker(w.root) != nil {
			t.Fatal("a failed install left a completion marker")
		}
		// No marker: the next boot runs the installer again.
		w.installer.setScript(standin(t))
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
		if r.code != 1 || !strings.Contains(r.stderr, findings.InstallerTimeout.String()) || w.installer.rec("started") == "" {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
	})
	t.Run("checksum mismatch", func(t *testing.T) {
		w := newWorld(t, "i-0instsum00000000")
		w.installCfg = fmt.Sprintf("replicated:\n  installer_url: %s/install.sh\n  sha256: %s\n", w.installer.URL, strings.Repeat("ab", 32))
		w.writeConfig(w.s3.URL, "")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, findings.InstallerChecksumMismatch.String()) || w.installer.runs() != 0 {
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
	// Windows line endings: bash would keep a \r in every value the probes checked without it.
	w.s3.Put(t, bkt, "replicated.conf", good)
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", []byte(strings.ReplaceAll(string(w.objs["circleconfig/shared/postgresql"]), "\n", "\r\n")))
	r = w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step validate-files: CONFIG_SYNTAX") || !strings.Contains(r.stderr, "circleconfig/shared/postgresql:1") ||
		!strings.Contains(r.stderr, "dos2unix") {
		t.Fatalf("CRLF: exit %d\n%s", r.code, r.stderr)
	}
	if pg, _ := os.ReadFile(filepath.Join(w.root, "etc/circleconfig/shared/postgresql")); strings.Contains(string(pg), "\r") {
		t.Fatal("a file with Windows line endings was moved into place")
	}
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", w.objs["circleconfig/shared/postgresql"])
	if v := w.run("validate"); v.code != 0 {
		t.Fatalf("validate of the good files in place: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	os.WriteFile(filepath.Join(w.root, "etc/replicated.conf"), []byte(broken), 0o600)
	if v := w.run("validate"); v.code != 1 || !strings.Contains(v.stdout, findings.FileSyntax.String()) {
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
	if !strings.Contains(r.stdout, "encryption keys uploaded (1): 99-made-here.key") || !strings.Contains(r.stdout, "already in the bucket (3)") {
		t.Fatalf("the command does not say what it did:\n%s", r.stdout)
	}
	if u := w.run("backup", "things"); u.code != 2 {
		t.Fatalf("bad usage: exit %d", u.code)
	}
}

// `haagent backup keys` on demand never skips: with S3 unreachable on a completed instance
// (where the boot's step would warn and go on) it fails with exit 1, and never claims that
// every key is in the bucket.
func TestBackupKeysCommandFailsWhenS3IsDown(t *testing.T) {
	w := newWorld(t, "i-0backupdown00000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	made := filepath.Join(w.root, "data/circle/circleci-encryption-keys/99-made-here.key")
	os.WriteFile(made, []byte("fresh key"), 0o600)
	old := time.Now().Add(-time.Minute)
	os.Chtimes(made, old, old)
	w.s3.Stop()
	r := w.run("backup", "keys")
	if r.code != 1 || strings.Contains(r.stdout, "every local key is in the bucket") || !strings.Contains(r.stderr, findings.S3Unreachable.String()) && !strings.Contains(r.stderr, "connection refused") {
		t.Fatalf("backup keys with S3 down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}

// The service holds the lock during the boot steps only: once the boot is complete and it
// watches, `haagent backup keys` runs; while the steps run (a failing boot retrying), it is
// refused with the pid that holds the lock.
func TestBackupKeysWhileTheServiceRuns(t *testing.T) {
	w := newWorld(t, "i-0backupsvc000000")
	cmd, stderr, msgs := w.startService()
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	deadline := time.After(120 * time.Second)
	for complete := false; !complete; {
		select {
		case m := <-msgs:
			complete = m == "STATUS=boot complete"
		case <-deadline:
			t.Fatalf("no boot complete:\n%s", stderr.String())
		}
	}
	made := filepath.Join(w.root, "data/circle/circleci-encryption-keys/98-made-while-up.key")
	os.WriteFile(made, []byte("fresh key"), 0o600)
	old := time.Now().Add(-time.Minute)
	os.Chtimes(made, old, old)
	// "boot complete" is announced by the runner just before the service lets the lock go.
	var r result
	eventually(t, 30*time.Second, "the service to let the lock go after the boot", func() bool {
		r = w.run("backup", "keys")
		return !strings.Contains(r.stderr, "another haagent is running")
	}, func() string { return r.stderr })
	if r.code != 0 || string(w.s3.Object(bkt, "circleci-encryption-keys/98-made-while-up.key")) != "fresh key" {
		t.Fatalf("backup keys while the service watches: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// An installer kept in the bucket (s3://) is read with the same bucket client as the source,
// source.ca_file included: against an S3 endpoint that speaks only TLS with a certificate from
// a CA that is in source.ca_file and nowhere else (not the system pool, not the bucket's
// ca-certificates/), the script in another bucket of that endpoint downloads, matches its pin
// and runs. A copy of the client settings that drops ca_file (as the installer's once did)
// fails here with INSTALLER_DOWNLOAD_FAILED. Without ca_file the boot stops at the fetch, the
// TLS failure named with what to do.
func TestInstallerFromS3HonoursSourceCAFile(t *testing.T) {
	const id = "i-0s3cafile0000000"
	w := newWorld(t, id)
	ca := peertest.NewCA(t, "on-prem S3 CA")
	w.s3 = peertest.StartS3TLS(t, ca)
	w.s3.MakeBucket(t, bkt)
	for k, v := range w.objs {
		w.s3.Put(t, bkt, k, v)
	}
	script := []byte(w.installer.render())
	w.s3.MakeBucket(t, "circleci-installers")
	w.s3.Put(t, "circleci-installers", "replicated-2.0.sh", script)
	sum := sha256.Sum256(script)
	w.installCfg = fmt.Sprintf("replicated:\n  installer_url: s3://circleci-installers/replicated-2.0.sh\n  sha256: %x\n  timeout: 60s\n", sum)
	caFile := filepath.Join(w.root, "etc/haagent/s3-ca.pem")
	if err := os.MkdirAll(filepath.Dir(caFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("without source.ca_file", func(t *testing.T) {
		w.sourceCfg = ""
		w.writeConfig(w.s3.URL, "")
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step fetch") || !strings.Contains(r.stderr, "certificate signed by unknown authority") ||
			!strings.Contains(r.stderr, "finding=S3_TLS_UNTRUSTED") ||
			!strings.Contains(r.stderr, "name it in source.ca_file") || strings.Contains(r.stderr, "retrying S3 request") || w.installer.runs() != 0 {
			t.Fatalf("want the fetch to fail on the unknown CA with source.ca_file as the fix, the installer not run; exit %d, runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
	})
	t.Run("with source.ca_file", func(t *testing.T) {
		w.sourceCfg = "  ca_file: /etc/haagent/s3-ca.pem\n"
		w.writeConfig(w.s3.URL, "")
		r := w.run("run", "--once")
		if r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if w.installer.runs() != 1 || len(w.installer.reqs()) != 0 {
			t.Fatalf("the installer from s3:// ran %d times; the HTTPS installer server was asked %v", w.installer.runs(), w.installer.reqs())
		}
		if m := replicated.ReadMarker(w.root); m == nil || m.InstanceID != id || m.InstallerSHA256 != fmt.Sprintf("%x", sum) {
			t.Fatalf("marker %+v, want the pinned script's sha256 %x", m, sum)
		}
	})
}

package main

// The blackbox tier: the built haagent binary against real peers (versitygw, the IMDS mock)
// started by the test harness, as systemd would run it.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/cookie"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/lock"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/state"
)

var haagentBin string

// coverDir, from HAAGENT_COVERDIR (`make cover` sets it), is where the built binary's coverage
// counters go: TestMain then builds it with -cover, and every run of it gets GOCOVERDIR (the
// tests hand the binary an environment of their own, so it is added there: see binEnv). The
// in-process tests of this package cannot see what the binary runs; this is how `make cover`
// counts the black-box and boot tests.
var coverDir = os.Getenv("HAAGENT_COVERDIR")

// binEnv is env with GOCOVERDIR added when the binary was built with -cover.
func binEnv(env []string) []string {
	if coverDir == "" || slices.Contains(env, "GOCOVERDIR="+coverDir) {
		return env
	}
	return append(append([]string(nil), env...), "GOCOVERDIR="+coverDir)
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "haagent-bin")
	if err != nil {
		panic(err)
	}
	haagentBin = filepath.Join(dir, "haagent")
	build := []string{"build", "-o", haagentBin}
	if coverDir != "" {
		// The packages counted are the unit tests' -coverpkg list, so the profiles merge
		// package by package; atomic, as the unit tests' counters are.
		pkgs := os.Getenv("HAAGENT_COVERPKG")
		if pkgs == "" {
			pkgs = "github.com/haagent/haagent/..."
		}
		build = append(build, "-cover", "-covermode=atomic", "-coverpkg="+pkgs)
	}
	out, err := exec.Command("go", append(build, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building haagent: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const bkt = "circleci-ha"

type world struct {
	t            *testing.T
	probesConfig string
	installer    *installerServer
	installCfg   string
	sourceCfg    string // more settings under source:, each line indented by two spaces
	watchCfg     string
	s3           *peertest.S3
	imds         *peertest.IMDS
	root         string
	objs         map[string][]byte
}

func newWorld(t *testing.T, instanceID string) *world {
	t.Helper()
	w := &world{t: t, s3: peertest.StartS3(t), root: t.TempDir(), objs: map[string][]byte{},
		probesConfig: "probes:\n  overrides:\n    TCP_REFUSED: {severity: warning, blocking: false}\n"}
	w.s3.MakeBucket(t, bkt)
	filepath.WalkDir("../../examples/bucket", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel("../../examples/bucket", p)
			b, _ := os.ReadFile(p)
			w.objs[filepath.ToSlash(rel)] = b
			w.s3.Put(t, bkt, filepath.ToSlash(rel), b)
		}
		return nil
	})
	// The example settings name hosts that do not exist here; these tests are about the boot
	// pipeline, so PostgreSQL points at a closed local port and that finding does not block.
	// TestProbeStep* run the probe step against a real PostgreSQL.
	pgSettings := fmt.Sprintf("export POSTGRES_HOST=\"127.0.0.1\"\nexport POSTGRES_PORT=\"%d\"\nexport POSTGRES_USER=\"circle\"\nexport POSTGRES_PASSWORD=\"x\"\n", peertest.ClosedPort(t))
	w.objs["circleconfig/shared/postgresql"] = []byte(pgSettings)
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", []byte(pgSettings))
	mongoSettings := fmt.Sprintf("export MONGO_BASE_URI=\"mongodb://circle:x@127.0.0.1:%d\"\n", peertest.ClosedPort(t))
	for _, v := range []string{"MAIN", "ACTION_LOGS", "BUILD_STATE", "CONTAINERS", "REMOTE_CONTAINERS"} {
		mongoSettings += fmt.Sprintf("export CIRCLE_SECRETS_MONGODB_%s_URI=\"$MONGO_BASE_URI/circle_ghe?authSource=admin\"\n", v)
	}
	w.objs["circleconfig/shared/mongodb"] = []byte(mongoSettings)
	w.s3.Put(t, bkt, "circleconfig/shared/mongodb", []byte(mongoSettings))
	vaultSettings := fmt.Sprintf("export VAULT__SCHEME=\"https\"\nexport VAULT__HOST=\"127.0.0.1\"\nexport VAULT__PORT=\"%d\"\nexport VAULT__CLIENT_TOKEN=\"x\"\nexport VAULT__TRANSIT_MOUNT=\"transit\"\n", peertest.ClosedPort(t))
	w.objs["circleconfig/shared/vault"] = []byte(vaultSettings)
	w.s3.Put(t, bkt, "circleconfig/shared/vault", []byte(vaultSettings))
	w.imds = peertest.StartIMDS(t, peertest.Instance{ID: instanceID, LocalIPv4: "10.0.1.23", Region: "us-east-1"})
	w.installer = startInstaller(t, standin(t))
	w.installer.set(func(s *installerServer) { s.root, s.imdsV1 = w.root, w.imds.URL })
	// The AMI has Docker baked in, so haagent passes no-docker (the stand-in then only needs
	// a docker command): the real client when the machine has one.
	bakeDocker(t, w.root)
	// The installer server's CA travels in the bucket, as an operator's would: the ca-certs
	// step installs it and the download trusts it.
	w.s3.Put(t, bkt, "ca-certificates/installer-ca.crt", w.installer.caPEM)
	w.objs["ca-certificates/installer-ca.crt"] = w.installer.caPEM
	w.installCfg = fmt.Sprintf("replicated:\n  installer_url: %s/install.sh\n  timeout: 60s\n", w.installer.URL)
	// No Docker engine in these tests: TestBootToCompleteWithDocker runs the watch.
	w.watchCfg = "watch:\n  enabled: false\n"
	w.writeConfig(w.s3.URL, "")
	return w
}

// bakeDocker puts a docker command under root, as a baked AMI has it.
func bakeDocker(t *testing.T, root string) {
	t.Helper()
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	if p, err := exec.LookPath("docker"); err == nil {
		if err := os.Symlink(p, filepath.Join(root, "usr/bin/docker")); err != nil {
			t.Fatal(err)
		}
		return
	}
	os.WriteFile(filepath.Join(root, "usr/bin/docker"), []byte("#!/bin/sh\necho 'Docker version 20.10.24+dfsg1, build 297e128'\n"), 0o755)
}

func (w *world) writeConfig(endpoint, extra string) {
	os.MkdirAll(filepath.Join(w.root, "etc/haagent"), 0o755)
	cfg := fmt.Sprintf("version: 1\nsource:\n  bucket: %s\n  region: us-east-1\n  endpoint: %s\n  path_style: true\n%sfetch:\n  attempts: 2\n  timeout: 5s\n%s%s%s%s", bkt, endpoint, w.sourceCfg, w.probesConfig, w.installCfg, w.watchCfg, extra)
	if err := os.WriteFile(filepath.Join(w.root, "etc/haagent/haagent.yaml"), []byte(cfg), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) env(imdsURL string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + w.root,
		"AWS_ACCESS_KEY_ID=" + w.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + w.s3.SecretKey,
		"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imdsURL}
	return binEnv(env)
}

type result struct {
	code           int
	stdout, stderr string
}

func (w *world) run(args ...string) result {
	return w.runEnv(w.env(w.imds.URL), args...)
}

func (w *world) runEnv(env []string, args ...string) result {
	w.t.Helper()
	return runHaagent(w.t, env, append([]string{"--root", w.root}, args...)...)
}

func (w *world) record() *state.Record {
	w.t.Helper()
	rec, err := state.Load(filepath.Join(w.root, layout.StateFile))
	if err != nil {
		w.t.Fatal(err)
	}
	return rec
}

func TestRunOnceBootsTheWholeLayout(t *testing.T) {
	w := newWorld(t, "i-0aaaa1111bbbb2222")
	r := w.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"[started] imds", "[finished] fetch", "[finished] validate-files", "[finished] cookie-key",
		"[finished] ca-certs", "[finished] probe", "[finished] replicated-install", "boot complete"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for k, v := range w.objs {
		dest := map[bool]string{true: "/etc/" + k, false: ""}[!strings.Contains(k, "/")]
		switch {
		case strings.HasPrefix(k, "circleci-encryption-keys/"):
			dest = "/data/circle/" + k
		case strings.HasPrefix(k, "circleconfig/"):
			dest = "/etc/" + k
		case strings.HasPrefix(k, "ca-certificates/"):
			dest = "/var/lib/haagent/" + k
		}
		p := filepath.Join(w.root, dest)
		got, err := os.ReadFile(p)
		if k == cookie.CustomizationsObject {
			// The bucket's copy merged with exactly one line for the session cookie key.
			v = cookie.Render(v, cookie.LocalValue(got))
		}
		if err != nil || !bytes.Equal(got, v) {
			t.Errorf("%s: missing or different (%v)", dest, err)
		}
		// Modes follow who reads each file (README, Layout).
		want := os.FileMode(0o644)
		switch {
		case k == "license.rli", k == "settings.conf":
			want = 0o640
		case strings.HasPrefix(k, "circleci-encryption-keys/"):
			want = 0o600
		}
		if fi, _ := os.Stat(p); fi != nil && fi.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", dest, fi.Mode().Perm(), want)
		}
	}
	if fi, err := os.Stat(filepath.Join(w.root, "etc/circle-installation-customizations")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("the customizations file: %v %v, want 0644", fi, err)
	}
	rec := w.record()
	last := rec.Last()
	if last.Status != state.Complete || last.InstanceID != "i-0aaaa1111bbbb2222" || len(last.Files) != len(w.objs) {
		t.Fatalf("run record: status %s instance %s files %d", last.Status, last.InstanceID, len(last.Files))
	}
	for _, f := range last.Files {
		if len(f.SHA256) != 64 || f.Size <= 0 {
			t.Errorf("file record lacks size/sha256: %+v", f)
		}
	}

	// A second run converges: nothing rewritten, one more run in the record.
	r = w.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, "changed=0") {
		t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
	}
	if n := len(w.record().Runs); n != 2 {
		t.Errorf("%d runs recorded, want 2", n)
	}

	st := w.run("status", "--json")
	var js struct {
		Runs []state.Run `json:"runs"`
	}
	if st.code != 0 || json.Unmarshal([]byte(st.stdout), &js) != nil || js.Runs[len(js.Runs)-1].Status != "complete" {
		t.Fatalf("status --json: exit %d\n%s", st.code, st.stdout)
	}
	st = w.run("status", "--wait", "--timeout", "10s")
	if st.code != 0 || !strings.Contains(st.stdout, "status:   complete") {
		t.Fatalf("status --wait: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
}

// notifySink is a NOTIFY_SOCKET of the test's own: it returns the environment entry and a
// function that returns every message sent to it so far. A goroutine drains the socket all
// along (a unix datagram socket holds only a few messages, then the sender blocks: haagent's
// WATCHDOG=1 pings would fill it). The function sends a marker of its own and reads up to it:
// datagrams arrive in order, so nothing sent before is missed and nothing waits on a clock.
func notifySink(t *testing.T) (string, func() []string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	msgs := make(chan string, 1<<16)
	go func() {
		buf := make([]byte, 64*1024)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	var got []string
	return "NOTIFY_SOCKET=" + sock, func() []string {
		t.Helper()
		marker := fmt.Sprintf("TEST-MARKER-%d", len(got))
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(marker)); err != nil {
			t.Fatal(err)
		}
		guard := time.After(30 * time.Second) // a guard only: the marker is already queued
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatal("the notify socket closed")
				}
				if m == marker {
					return got
				}
				if !strings.HasPrefix(m, "WATCHDOG=") {
					got = append(got, m)
				}
			case <-guard:
				t.Fatal("the marker sent to the notify socket never arrived")
			}
		}
	}
}

// Secrets planted in every file and setting haagent reads, in the shapes that once leaked (a
// URI password with a '/' that a URL parser quoted in its error, one with a space that
// redaction missed, a settings.conf value on its own line beside a syntax error), must appear
// in none of what haagent writes: its log (the journal), STATUS=, the run record, `status`
// and `check`, as text and JSON.
func TestNoSecretInLogsRecordOrStatus(t *testing.T) {
	w := newWorld(t, "i-0secrets00000000")
	notify, notified := notifySink(t)
	// Credentials the installer takes as arguments (logged with the installer's argv), and a
	// proxy whose password holds an unescaped '/' (printed back by the installer; loopback is
	// never proxied, so nothing here goes through it).
	w.installCfg += "  extra_args: [daemon-token=DAEMONTOKEN-5ecret-12, artifactory-auth=QVJUSUZBQ1RPUlk6NWVjcmV0LTEz]\n"
	w.writeConfig(w.s3.URL, "")
	env := append(w.env(w.imds.URL), notify, "HTTPS_PROXY=http://corp:pa/ss-5ecret-14@proxy.corp.example:3128")
	secrets := map[string]string{
		"settings.conf":                  `{"hostname":{"value":"ci.example.com"},"secret_passphrase":{"value":"PASSPHRASE-5ecret-1"}}`,
		"replicated.conf":                strings.Replace(string(w.objs["replicated.conf"]), "demo-console-password", "CONSOLE-5ecret-2", 1),
		"license.rli":                    "LICENSE-5ecret-3",
		"circleci-encryption-keys/a.key": "ENCKEY-5ecret-4",
		"circleconfig/shared/postgresql": strings.Replace(string(w.objs["circleconfig/shared/postgresql"]), `"x"`, `"PGPASS-5ecret-5"`, 1),
		"circleconfig/shared/vault":      strings.Replace(string(w.objs["circleconfig/shared/vault"]), `TOKEN="x"`, `TOKEN="VAULTTOKEN-5ecret-6"`, 1),
		"circleconfig/shared/mongodb":    strings.Replace(string(w.objs["circleconfig/shared/mongodb"]), "circle:x@", "circle:MONGOPASS-5ecret-7@", 1),
		cookie.Object:                    "COOKIE5ecret8xyz",
	}
	for k, v := range secrets {
		w.s3.Put(t, bkt, k, []byte(v))
	}
	var everything strings.Builder
	collect := func(what string, r result) {
		everything.WriteString(r.stdout + r.stderr)
		t.Logf("%s: exit %d", what, r.code)
	}
	statusAndRecord := func() {
		collect("status", w.runEnv(env, "status"))
		collect("status --json", w.runEnv(env, "status", "--json"))
		rec, _ := os.ReadFile(filepath.Join(w.root, layout.StateFile))
		everything.Write(rec)
	}

	// 1. A boot that completes.
	r := w.runEnv(env, "run", "--once", "--debug")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	collect("run", r)
	statusAndRecord()
	// The key did reach the file it belongs in.
	b, _ := os.ReadFile(filepath.Join(w.root, defaults.InstallationCustomizations()))
	if cookie.LocalValue(b) != "COOKIE5ecret8xyz" {
		t.Fatal("the cookie key from the bucket is not in the customizations file")
	}

	// 2. The probe step fails on PostgreSQL URIs whose passwords hold an unescaped '/' (the URL
	// parser's error once quoted it: `invalid port ":Hunter2Prefix" after host`) and a space
	// (which redaction once missed).
	pgURIs := string(w.objs["circleconfig/shared/postgresql"]) +
		"export CIRCLE_SECRETS_POSTGRES_VMS_URI=\"postgres://circle:Hunter2Prefix/PGSLASH-5ecret-9@127.0.0.1:5432/vms\"\n" +
		"export CIRCLE_SECRETS_POSTGRES_CIRCLE_URI=\"postgres://circle:PGSPACE 5ecret-10@127.0.0.1:5432/circle\"\n" +
		// A "://" inside the password (redaction once ended the URI there).
		"export CIRCLE_SECRETS_POSTGRES_DOMAIN_URI=\"postgres://circle:ab://PGSCHEME-5ecret-15@127.0.0.1:5432/domain\"\n"
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", []byte(pgURIs))
	r = w.runEnv(env, "run", "--once", "--debug")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step probe: URI_MALFORMED") || !strings.Contains(r.stderr, "the password holds '/' (%2F) unescaped") {
		t.Errorf("want the probe step to fail on URI_MALFORMED naming the unescaped '/', exit %d\n%s", r.code, r.stderr)
	}
	collect("run with malformed URIs", r)
	statusAndRecord()
	collect("check", w.runEnv(env, "check", "--only", "postgres"))
	collect("check --format json", w.runEnv(env, "check", "--format", "json", "--only", "postgres"))
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", w.objs["circleconfig/shared/postgresql"])

	// 2b. A $ in a double-quoted Vault token: the parser once named the rest of the token
	// ("$VAULTDOLLAR5ECRET16") as a variable nothing sets.
	w.s3.Put(t, bkt, "circleconfig/shared/vault", []byte(strings.Replace(string(w.objs["circleconfig/shared/vault"]), `TOKEN="x"`, `TOKEN="s.ab$VAULTDOLLAR5ECRET16"`, 1)))
	r = w.runEnv(env, "run", "--once", "--debug")
	if r.code != 1 || !strings.Contains(r.stderr, "holds a $ the shell would expand") {
		t.Errorf("want the probe step to fail on the $ in the Vault token, exit %d\n%s", r.code, r.stderr)
	}
	collect("run with a $ in a token", r)
	statusAndRecord()
	w.s3.Put(t, bkt, "circleconfig/shared/vault", w.objs["circleconfig/shared/vault"])

	// 3. A pretty-printed settings.conf, the secret on its own line, and the syntax error on
	// that very line (an unescaped quote in the value).
	w.s3.Put(t, bkt, "settings.conf", []byte("{\n  \"hostname\": {\n    \"value\": \"ci.example.com\"\n  },\n"+
		"  \"secret_passphrase\": {\n    \"value\": \"PASS\"PHRASE-5ecret-11\"\n  }\n}\n"))
	r = w.runEnv(env, "run", "--once", "--debug")
	if r.code != 1 || !strings.Contains(r.stderr, findings.FileSyntax.String()) || !strings.Contains(r.stderr, `\"value\": \"…\">>>…`) {
		t.Errorf("want FILE_SYNTAX showing the masked line, exit %d\n%s", r.code, r.stderr)
	}
	collect("run with a broken settings.conf", r)
	statusAndRecord()

	status := notified()
	if !strings.Contains(strings.Join(status, "\n"), "STATUS=boot failed: URI_MALFORMED") {
		t.Errorf("the STATUS= of the failed probe step was not seen: %q", status)
	}
	everything.WriteString(strings.Join(status, "\n"))
	out := everything.String()
	for _, s := range []string{"PASSPHRASE-5ecret-1", "CONSOLE-5ecret-2", "LICENSE-5ecret-3", "ENCKEY-5ecret-4", "PGPASS-5ecret-5",
		"VAULTTOKEN-5ecret-6", "MONGOPASS-5ecret-7", "COOKIE5ecret8xyz", w.s3.SecretKey,
		"Hunter2Prefix", "PGSLASH", "5ecret-9", "PGSPACE", "5ecret-10", "PHRASE-5ecret-11", "5ecret-11",
		"DAEMONTOKEN-5ecret-12", "QVJUSUZBQ1RPUlk6NWVjcmV0LTEz", "ss-5ecret-14", "PGSCHEME", "5ecret-15", "VAULTDOLLAR", "5ECRET16"} {
		if strings.Contains(out, s) {
			i := strings.Index(out, s)
			t.Errorf("secret %q appears in haagent's output, record or STATUS=: ...%s...", s, out[max(i-120, 0):min(i+60, len(out))])
		}
	}
}

func TestConfigFromUserData(t *testing.T) {
	w := newWorld(t, "i-0userdata0000000")
	os.Remove(filepath.Join(w.root, "etc/haagent/haagent.yaml"))
	ud := fmt.Sprintf("#haagent-config\nversion: 1\nsource:\n  bucket: %s\n  endpoint: %s\n  path_style: true\n%s%s%s", bkt, w.s3.URL, w.probesConfig, w.installCfg, w.watchCfg)
	im := peertest.StartIMDS(t, peertest.Instance{ID: "i-0userdata0000000", LocalIPv4: "10.0.9.9", Region: "us-east-1", UserData: []byte(ud)})
	r := w.runEnv(w.env(im.URL), "run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, "origin=user-data") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	// Region came from IMDS: the config has none and AWS_REGION is unset.
	if !strings.Contains(r.stderr, "region=us-east-1") {
		t.Errorf("region not taken from IMDS:\n%s", r.stderr)
	}

	// User-data that is not for haagent (a shell script) is not taken as config.
	im2 := peertest.StartIMDS(t, peertest.Instance{ID: "i-0userdata0000000", LocalIPv4: "10.0.9.9", Region: "us-east-1", UserData: []byte("#!/bin/bash\necho hi\n")})
	r = w.runEnv(w.env(im2.URL), "run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, findings.ConfigMissing.String()) || !strings.Contains(r.stderr, "#haagent-config") {
		t.Fatalf("want CONFIG_MISSING explaining the marker, exit %d\n%s", r.code, r.stderr)
	}
}

func TestInvalidConfigExits2BeforeAnySideEffect(t *testing.T) {
	w := newWorld(t, "i-0badconfig000000")
	w.writeConfig(w.s3.URL, "bogus_field: 1\n")
	r := w.run("run", "--once")
	if r.code != 2 || !strings.Contains(r.stderr, "bogus_field: unknown field") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(w.root, "etc/settings.conf")); err == nil {
		t.Fatal("an invalid config must stop haagent before it touches the machine")
	}
	// The run is recorded all the same (haagent's own record, nothing else), so status --wait
	// reports this boot's failure instead of waiting for ever or returning an earlier boot's
	// "complete".
	last := w.record().Last()
	if last == nil || last.Status != state.Failed || len(last.Findings) != 1 || last.Findings[0].Code != findings.ConfigInvalid {
		t.Fatalf("the config failure is not in the run record: %+v", last)
	}
	if st := w.run("status", "--wait", "--timeout", "30s"); st.code != 1 || !strings.Contains(st.stdout, findings.ConfigInvalid.String()) || !strings.Contains(st.stderr, "bogus_field") {
		t.Fatalf("status --wait after an invalid config: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
	v := w.run("validate")
	if v.code != 2 || !strings.Contains(v.stderr, "bogus_field") {
		t.Fatalf("validate: exit %d\n%s", v.code, v.stderr)
	}
	w.writeConfig(w.s3.URL, "")
	if v := w.run("validate"); v.code != 0 || !strings.Contains(v.stdout, "is valid") {
		t.Fatalf("validate of a good config: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	if u := w.run("frobnicate"); u.code != 2 {
		t.Fatalf("unknown command: exit %d", u.code)
	}
}

// IMDS that refuses the token but would answer IMDSv1 GETs: haagent must not fall back.
func TestIMDSTokenRefusedNoV1Fallback(t *testing.T) {
	for _, status := range []int{http.StatusForbidden, http.StatusMethodNotAllowed} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			w := newWorld(t, "i-0real00000000000")
			v1 := 0
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPut {
					rw.WriteHeader(status)
					return
				}
				v1++
				fmt.Fprint(rw, "i-0v1only000000000")
			})}
			go srv.Serve(l)
			t.Cleanup(func() { srv.Close() })
			r := w.runEnv(w.env("http://"+l.Addr().String()), "run", "--once")
			if r.code != 1 || !strings.Contains(r.stderr, findings.IMDSTokenRefused.String()) || !strings.Contains(r.stderr, "--http-tokens required") {
				t.Fatalf("want IMDS_TOKEN_REFUSED with the fix, exit %d\n%s", r.code, r.stderr)
			}
			if v1 != 0 || strings.Contains(r.stderr, "i-0v1only") {
				t.Fatalf("haagent fell back to IMDSv1 (%d v1 requests)", v1)
			}
		})
	}
}

func TestS3DownOnRebootUsesLastGoodFilesButNeverOnFirstBoot(t *testing.T) {
	w := newWorld(t, "i-0reboot000000000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("first boot: exit %d\n%s", r.code, r.stderr)
	}
	// S3 unreachable: a port nothing listens on.
	dead := fmt.Sprintf("http://127.0.0.1:%d", peertest.ClosedPort(t))
	w.writeConfig(dead, "")
	r := w.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, findings.S3OfflineLastGood.String()) || !strings.Contains(r.stderr, findings.CookieKeyLocalOnly.String()) {
		t.Fatalf("reboot with S3 down must go on with the last good files: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(w.root, "etc/settings.conf")); err != nil {
		t.Fatal(err)
	}

	// The same on a new instance (a replacement) must fail.
	w2 := newWorld(t, "i-0firstboot0000000")
	w2.writeConfig(dead, "")
	r = w2.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, findings.S3Unreachable.String()) || strings.Contains(r.stderr, findings.S3OfflineLastGood.String()) {
		t.Fatalf("first boot with S3 down must fail: exit %d\n%s", r.code, r.stderr)
	}
	// And a different instance id on the same root (an AMI baked after a boot) is not a reboot.
	w3 := newWorld(t, "i-0other0000000000")
	w3.root = w.root
	w3.writeConfig(dead, "")
	if r := w3.run("run", "--once"); r.code != 1 {
		t.Fatalf("another instance's record must not allow the fallback: exit %d\n%s", r.code, r.stderr)
	}
}

func TestLockSerialisesRuns(t *testing.T) {
	w := newWorld(t, "i-0lock00000000000")
	l, err := lock.Acquire(filepath.Join(w.root, layout.LockFile))
	if err != nil {
		t.Fatal(err)
	}
	r := w.run("run", "--once")
	l.Release()
	if r.code != 1 || !strings.Contains(r.stderr, "another haagent is running") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(w.root, "etc/settings.conf")); err == nil {
		t.Fatal("a second haagent fetched while the lock was held")
	}
}

func TestStatusWaitReportsFailure(t *testing.T) {
	w := newWorld(t, "i-0fail00000000000")
	w.s3.Delete(t, bkt, "license.rli")
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step fetch") || !strings.Contains(r.stderr, "s3://circleci-ha/license.rli") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	st := w.run("status", "--wait", "--timeout", "10s")
	if st.code != 1 || !strings.Contains(st.stdout, findings.S3ObjectMissing.String()) || !strings.Contains(st.stdout, "fix: upload it") {
		t.Fatalf("status --wait after a failure: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
}

// status --wait waits for a run of the current boot: the "complete" of the boot before a
// reboot is not this boot's.
func TestStatusWaitIgnoresAnEarlierBoot(t *testing.T) {
	w := newWorld(t, "i-0bootid000000000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	if st := w.run("status", "--wait", "--timeout", "30s"); st.code != 0 {
		t.Fatalf("status --wait in the same boot: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
	// A reboot empties /run (a tmpfs); the record keeps the earlier boot's "complete".
	if err := os.RemoveAll(filepath.Join(w.root, "run")); err != nil {
		t.Fatal(err)
	}
	st := w.run("status", "--wait", "--timeout", "1500ms")
	if st.code != 1 || !strings.Contains(st.stderr, "no run of this boot") {
		t.Fatalf("status --wait returned an earlier boot's run: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
	if st := w.run("status"); st.code != 0 || !strings.Contains(st.stdout, "status:   complete") {
		t.Fatalf("plain status still shows the last run: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
}

// The service mode: READY=1 as soon as the main loop runs, STATUS= kept current, and a failed
// step retried rather than exiting.
func TestServiceModeNotifiesAndRetries(t *testing.T) {
	w := newWorld(t, "i-0service00000000")
	w.s3.Delete(t, bkt, "license.rli")
	cmd, stderr, msgs := w.startService()

	expect := func(prefix string) string {
		t.Helper()
		timeout := time.After(60 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %q", prefix)
				}
				if strings.HasPrefix(m, prefix) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %q notification; log:\n%s", prefix, stderr.String())
			}
		}
	}
	expect("READY=1")
	m := expect("STATUS=fetch failed (attempt 1), retrying in")
	if !strings.Contains(m, findings.S3ObjectMissing.String()) || !strings.Contains(m, "retrying in") {
		t.Fatalf("STATUS does not name the finding and the retry: %q", m)
	}
	if rec := w.record(); rec.Last().Status != state.Retrying {
		t.Fatalf("record status %s, want retrying", rec.Last().Status)
	}
	// Fix the bucket: the retry picks it up and the boot completes.
	w.s3.Put(t, bkt, "license.rli", w.objs["license.rli"])
	expect("STATUS=boot complete")
	st := w.run("status", "--wait", "--timeout", "30s")
	if st.code != 0 {
		t.Fatalf("status --wait: exit %d\n%s", st.code, st.stderr)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the service must exit cleanly on SIGTERM: %v\n%s", err, stderr.String())
	}
}

// READY=1 is what `systemctl restart haagent` waits for; a `haagent status --wait` run right
// after must see the new run, not the previous run's "complete" (it once returned at once, and
// the boot test then found Replicated's services not yet started).
func TestReadyOnlyOnceTheRunIsRecorded(t *testing.T) {
	w := newWorld(t, "i-0ready0000000000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("first boot: exit %d\n%s", r.code, r.stderr)
	}
	cmd, stderr, msgs := w.startService()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case m := <-msgs:
			if m != "READY=1" {
				continue
			}
			last := w.record().Last()
			if last.PID != cmd.Process.Pid || last.Status == state.Complete {
				t.Fatalf("at READY=1 the record's last run is pid %d, %s; want this service's run (pid %d), not yet complete\n%s",
					last.PID, last.Status, cmd.Process.Pid, stderr.String())
			}
			return
		case <-timeout:
			t.Fatalf("no READY=1 within 60 s\n%s", stderr.String())
		}
	}
}

// startService runs `haagent run` as systemd would, with NOTIFY_SOCKET pointed at a socket
// the test reads; it returns the process, its stderr and the sd_notify messages.
func (w *world) startService(extraEnv ...string) (*exec.Cmd, *syncBuffer, <-chan string) {
	t := w.t
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cmd := exec.Command(haagentBin, "--root", w.root, "run")
	cmd.Env = append(append(w.env(w.imds.URL), "NOTIFY_SOCKET="+sock), extraEnv...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return cmd, stderr, msgs
}

// Files the Replicated daemon cannot read stop the boot at validate-files, and haagent
// validate --root says so offline; the default modes pass, and a licence chmod'ed by hand is
// put right by the next run.
func TestFilesUnreadableByReplicated(t *testing.T) {
	if os.Geteuid() != 0 {
		peertest.Missing(t, "needs root: the docker group is created and files are chown'ed to it")
	}
	w := newWorld(t, "i-0unreadable00000")
	os.MkdirAll(filepath.Join(w.root, "etc"), 0o755)
	os.WriteFile(filepath.Join(w.root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if v := w.run("validate"); v.code != 0 || !strings.Contains(v.stdout, "readable by the Replicated daemon") ||
		!strings.Contains(v.stdout, "/etc/license.rli") || !strings.Contains(v.stdout, "0640 root:docker") {
		t.Fatalf("validate after a boot: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}

	// By hand, as haagent used to write it.
	lic := filepath.Join(w.root, "etc/license.rli")
	os.Chmod(lic, 0o600)
	os.Chown(lic, 0, 0)
	v := w.run("validate")
	if v.code != 1 || !strings.Contains(v.stdout, "FILE_UNREADABLE_BY_REPLICATED [error]") || !strings.Contains(v.stdout, "/etc/license.rli is 0600 uid 0 gid 0, which gives others no read permission") ||
		!strings.Contains(v.stdout, "fix: chgrp docker /etc/license.rli") {
		t.Fatalf("validate of a 0600 root:root licence: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	if r := w.run("run", "--once"); r.code != 0 || !strings.Contains(r.stderr, "mode and owner put back") {
		t.Fatalf("the next run must converge the licence: exit %d\n%s", r.code, r.stderr)
	}
	if v := w.run("validate"); v.code != 0 {
		t.Fatalf("validate after the run: exit %d\n%s", v.code, v.stdout)
	}

	// A config that makes the licence private again stops the boot before the installer.
	w.writeConfig(w.s3.URL, "files:\n  license: {mode: \"0600\"}\n")
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step validate-files: FILE_UNREADABLE_BY_REPLICATED") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	// It is a safety code: no probes.overrides can make it a warning (the install would fail).
	probes := w.probesConfig
	w.probesConfig += "    FILE_UNREADABLE_BY_REPLICATED: {severity: warning, blocking: false}\n"
	w.writeConfig(w.s3.URL, "files:\n  license: {mode: \"0600\"}\n")
	if r := w.run("run", "--once"); r.code != 2 || !strings.Contains(r.stderr, "probes.overrides.FILE_UNREADABLE_BY_REPLICATED: cannot be overridden") {
		t.Fatalf("an override of a safety code: exit %d\n%s", r.code, r.stderr)
	}
	w.probesConfig = probes
	// An unknown group in the config is named by validate, and by the boot's fetch.
	w.writeConfig(w.s3.URL, "files:\n  circleconfig: {group: circleci}\n")
	if v := w.run("validate"); v.code != 1 || !strings.Contains(v.stdout, findings.FileOwnerUnresolved.String()) || !strings.Contains(v.stdout, "files.circleconfig.group") {
		t.Fatalf("validate with an unknown group: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	if r := w.run("run", "--once"); r.code != 1 || !strings.Contains(r.stderr, "boot failed at step fetch: FILE_OWNER_UNRESOLVED") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}

	// A reboot with S3 down has no bundle to commit, and still puts the licence right.
	w.writeConfig(w.s3.URL, "")
	w.s3.Stop()
	os.Chmod(lic, 0o600)
	os.Chown(lic, 0, 0)
	r = w.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, findings.S3OfflineLastGood.String()) || !strings.Contains(r.stderr, "mode and owner put back") {
		t.Fatalf("offline reboot: exit %d\n%s", r.code, r.stderr)
	}
	if fi, _ := os.Stat(lic); fi.Mode().Perm() != 0o640 {
		t.Fatalf("offline reboot left the licence %#o", fi.Mode().Perm())
	}
}

// Before the first fetch a missing docker group is not an error: validate says the fetch
// creates it, and changes nothing.
func TestValidateBeforeTheDockerGroupExists(t *testing.T) {
	w := newWorld(t, "i-0nodocker0000000")
	os.MkdirAll(filepath.Join(w.root, "etc"), 0o755)
	os.WriteFile(filepath.Join(w.root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	v := w.run("validate")
	if v.code != 0 || !strings.Contains(v.stdout, "group docker does not exist yet") {
		t.Fatalf("exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(w.root, "etc/group")); string(b) != "root:x:0:\n" {
		t.Fatalf("validate changed the root's etc/group:\n%s", b)
	}
}

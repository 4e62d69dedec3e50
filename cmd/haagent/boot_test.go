package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/state"
	"github.com/haagent/haagent/systemd"
)

// The boot test: a debootstrapped bookworm booted by systemd-nspawn (a real systemd as PID 1),
// haagent installed the way the AMI has it, the peers on the host's loopback. It proves the
// unit, READY/STATUS, the journal fields, the installer's transient unit, and that killing
// haagent mid-install neither kills nor repeats the installer.
func TestSystemdBoot(t *testing.T) {
	root := peertest.NspawnRoot(t)
	// Under `make cover` the box's haagent (built with -cover) writes its counters into a
	// directory of the box; they are copied out once the box has shut down (every haagent in
	// it exited: a SIGKILLed one writes none), before the root is removed.
	boxCover := ""
	if coverDir != "" {
		boxCover = "/var/tmp/haagent-cover"
		if err := os.MkdirAll(filepath.Join(root, boxCover), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			files, _ := filepath.Glob(filepath.Join(root, boxCover, "cov*"))
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err == nil {
					err = os.WriteFile(filepath.Join(coverDir, filepath.Base(f)), b, 0o644)
				}
				if err != nil {
					t.Errorf("copying the box's coverage counters out: %v", err)
				}
			}
		})
	}
	// The frontend image, built on a host dockerd and loaded into the box's own.
	host := peertest.StartDocker(t)
	image := host.BusyboxImage(t)
	host.MustRun(t, "save", "-o", filepath.Join(root, "frontend-image.tar"), image)
	w := newWorld(t, "i-0nspawn000000000")
	w.root = root
	w.watchCfg = "watch:\n  stuck_after: 1h\n"
	// Real databases and Vault for the box, on the host's loopback, their CAs in the bucket.
	// FerretDB cannot show privileges: that code is made non-blocking here, as an operator
	// whose MongoDB reports none would.
	w.probesConfig = "probes:\n  overrides:\n    MONGO_PRIVILEGE_MISSING: {blocking: false}\n"
	pg := startPG(t)
	fdb := peertest.StartFerretDB(t, peertest.FerretDBOptions{ReplSet: "rs0", TLS: true})
	fdb.CreateUser(t, "admin", "circle", "mongo-pw")
	vault := peertest.StartVault(t, true)
	vault.Do(t, "POST", "sys/mounts/transit", map[string]any{"type": "transit"})
	vault.Do(t, "PUT", "sys/policies/acl/circle", map[string]any{"policy": `path "transit/*" { capabilities = ["create", "read", "update"] }`})
	// A broken setting that must surface without blocking: a token that will expire.
	token := vault.Token(t, map[string]any{"policies": []string{"circle"}, "ttl": "30m", "renewable": false})
	w.s3.Put(t, bkt, "ca-certificates/pg.crt", pg.CA.CertPEM)
	w.s3.Put(t, bkt, "ca-certificates/mongo.crt", fdb.CA.CertPEM)
	w.s3.Put(t, bkt, "ca-certificates/vault.crt", vault.CAPEM)
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", pgFile("127.0.0.1", pg.Port, pgPass))
	mongo := "export MONGO_BASE_URI=\"mongodb://circle:mongo-pw@" + fdb.TLSAddr + "\"\n"
	for v, db := range map[string]string{"MAIN": "circle_ghe", "ACTION_LOGS": "circle_ghe", "BUILD_STATE": "build_state_dev_ghe",
		"CONTAINERS": "containers_dev_ghe", "REMOTE_CONTAINERS": "remote_containers_dev_ghe"} {
		mongo += "export CIRCLE_SECRETS_MONGODB_" + v + "_URI=\"$MONGO_BASE_URI/" + db + "?ssl=true&authSource=admin&replicaSet=rs0\"\n"
	}
	w.s3.Put(t, bkt, "circleconfig/shared/mongodb", []byte(mongo))
	vhost, vport, _ := strings.Cut(vault.Addr, ":")
	w.s3.Put(t, bkt, "circleconfig/shared/vault", []byte("export VAULT__SCHEME=https\nexport VAULT__HOST="+vhost+"\nexport VAULT__PORT="+vport+
		"\nexport VAULT__CLIENT_TOKEN="+token+"\nexport VAULT__TRANSIT_MOUNT=transit\n"))
	// The stand-in installer, real-shaped: in the box it creates the replicated user in group
	// docker and installs the three units, which run as replicated:docker; the replicated
	// one reads the licence and settings.conf that replicated.conf names and fails when it
	// cannot; replicatedctl answers only while it runs. It outlasts haagent's RestartSec, so
	// the restarted haagent finds it running. Its first version lacks release-sequence,
	// which the config passes: haagent refuses to run it (INSTALLER_ARG_UNKNOWN), and the
	// retry downloads the fixed one.
	w.installer.set(func(s *installerServer) {
		s.root, s.delay = "", "15"
		s.recIn, s.recDir = "/var/tmp/haagent-standin", filepath.Join(root, "var/tmp/haagent-standin")
	})
	full := standinWith(t, `systemctl start docker
docker load -i /frontend-image.tar
docker run -d --name frontend --network none --restart always `+image+` sh -c 'echo frontend says hello; echo frontend warns >&2; sleep 3600'`)
	w.installer.setScript(strings.Replace(full, "        release-sequence|release_sequence)\n            RELEASE_SEQUENCE=\"$_value\"\n            ;;\n", "", 1))
	w.installCfg += "  extra_args: [release-sequence=1]\n"
	copyFile(t, haagentBin, filepath.Join(root, "usr/local/bin/haagent"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc/systemd/journald.conf.d"), 0o755)
	copyFile(t, "../../packer/journald-haagent.conf", filepath.Join(root, "etc/systemd/journald.conf.d/haagent.conf"), 0o644)
	os.MkdirAll(filepath.Join(root, "var/log/journal"), 0o755)
	// The box shares the host's network: its dockerd must not touch bridges or iptables.
	os.MkdirAll(filepath.Join(root, "etc/docker"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/docker/daemon.json"), []byte(`{"bridge": "none", "iptables": false, "ip6tables": false}`), 0o644)

	m := peertest.Boot(t, root)
	if boxCover != "" {
		m.Env = []string{"GOCOVERDIR=" + boxCover}
	}
	m.MustExec(t, "haagent", "install")
	unit, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/haagent.service"))
	if string(unit) != systemd.Unit {
		t.Fatalf("haagent install wrote another unit than systemd/haagent.service:\n%s", unit)
	}
	// The image check passes on the baked image, before any config arrives.
	if out, err := exec.Command("bash", "../../packer/check-image.sh", root).CombinedOutput(); err != nil {
		t.Fatalf("check-image on the installed root: %v\n%s", err, out)
	}

	// The instance is the one member of a group with a launch hook: the boot heartbeats the
	// action (the haagent restarted after the kill below too) and completes it once.
	const id = "i-0nspawn000000000"
	w.imds = peertest.StartIMDS(t, peertest.Instance{ID: id, LocalIPv4: "10.0.1.23", PublicIPv4: "203.0.113.7", Region: "us-east-1", ASGGroup: asgGroup})
	w.installer.set(func(s *installerServer) { s.imdsV1 = w.imds.URL })
	a := w.startASG(id, nil)
	a.LaunchPending(id, "haagent-launch")
	completions := func() []peertest.ASGCall { return a.Calls("CompleteLifecycleAction") }

	// What user-data and /etc/default/haagent give a real instance.
	w.writeConfig(w.s3.URL, "asg:\n  enabled: true\n  lifecycle_hook: haagent-launch\n  endpoint: "+a.URL+"\n  heartbeat_every: 1s\n")
	// A proxy with credentials (nothing here is proxied: loopback never is, and the stand-in
	// connects nowhere through it): they must not reach the installer's argv, its unit's
	// properties or any journal.
	const proxySecret = "b00t-proxy-pw"
	defaults := []string{"AWS_ACCESS_KEY_ID=" + w.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + w.s3.SecretKey,
		"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + w.imds.URL,
		"HTTPS_PROXY=http://corp:" + proxySecret + "@proxy.corp.example:3128"}
	if boxCover != "" {
		defaults = append(defaults, "GOCOVERDIR="+boxCover)
	}
	os.WriteFile(filepath.Join(root, "etc/default/haagent"), []byte(strings.Join(defaults, "\n")+"\n"), 0o600)
	m.MustExec(t, "systemctl", "start", "haagent")

	// The first script does not take an argument the config passes: refused before it runs,
	// no marker; the retry takes the fixed script.
	for deadline := time.Now().Add(90 * time.Second); ; {
		if out, _ := m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat", "HAAGENT_FINDING=INSTALLER_ARG_UNKNOWN"); strings.Contains(out, "release-sequence") {
			break
		}
		if time.Now().After(deadline) {
			out, _ := m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat")
			t.Fatalf("no INSTALLER_ARG_UNKNOWN for the script without release-sequence; haagent's journal:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if w.installer.runs() != 0 || replicated.ReadMarker(root) != nil {
		t.Fatalf("the refused script ran (%d) or a marker was written", w.installer.runs())
	}
	w.installer.setScript(full)

	// Kill haagent while the installer's transient unit runs: the restarted haagent must
	// neither kill nor repeat it.
	deadline := time.Now().Add(90 * time.Second)
	for {
		if out, _ := m.Exec("systemctl", "is-active", "haagent-replicated-install"); strings.TrimSpace(out) == "active" {
			break
		}
		if time.Now().After(deadline) {
			out, _ := m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat")
			t.Fatalf("the installer unit never ran; haagent's journal:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// While it runs: the proxy's credentials are in no process's argv and not in the unit's
	// properties (its environment comes from a 0600 file).
	procs, _ := m.Exec("sh", "-c", `for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done`)
	unitProps, _ := m.Exec("systemctl", "show", "haagent-replicated-install")
	if strings.Contains(procs, proxySecret) || strings.Contains(unitProps, proxySecret) || !strings.Contains(unitProps, "EnvironmentFiles=/var/lib/haagent/replicated-install.env") {
		t.Fatalf("the proxy's credentials are visible:\nargv:\n%s\nunit:\n%s", procs, unitProps)
	}
	m.MustExec(t, "systemctl", "kill", "--kill-whom=main", "-s", "KILL", "haagent")
	killed := time.Now()

	if out, err := m.Exec("haagent", "status", "--wait", "--timeout", "120s"); err != nil {
		j, _ := m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat")
		t.Fatalf("status --wait: %v\n%s\njournal:\n%s", err, out, j)
	}
	props := m.MustExec(t, "systemctl", "show", "haagent", "-p", "Type", "-p", "ActiveState", "-p", "StatusText", "-p", "NRestarts")
	for _, want := range []string{"Type=notify", "ActiveState=active", "StatusText=boot complete", "NRestarts=1"} {
		if !strings.Contains(props, want) {
			t.Errorf("unit properties lack %s:\n%s", want, props)
		}
	}

	// The launch action: heartbeats from the haagent that was killed and from its successor,
	// then one CompleteLifecycleAction CONTINUE.
	done := completions()
	if len(done) != 1 || done[0].Params.Get("LifecycleActionResult") != "CONTINUE" || a.Pending(id) {
		t.Fatalf("want one CompleteLifecycleAction CONTINUE and no action waiting; calls: %v", actions(a.Calls()))
	}
	var beatsBefore, beatsAfter int
	for _, c := range a.Calls("RecordLifecycleActionHeartbeat") {
		switch {
		case c.At.After(done[0].At):
			t.Fatalf("a heartbeat after the completion: %v", actions(a.Calls()))
		case c.At.Before(killed):
			beatsBefore++
		default:
			beatsAfter++
		}
	}
	if beatsBefore == 0 || beatsAfter == 0 {
		t.Fatalf("heartbeats: %d before the kill, %d after it; want both (calls: %v)", beatsBefore, beatsAfter, actions(a.Calls()))
	}

	// The installer ran once, in its own unit, and survived haagent's death; it was given
	// the public address from IMDSv2 and no-docker (Docker is in the image), so it neither
	// asked IMDSv1 nor prompted; it printed the proxy it took from its environment, with the
	// credentials hidden on the way to the journal.
	inst := installerJournal(t, m)
	if strings.Count(inst, "\ninstaller started\n") != 1 || !strings.Contains(inst, "Installing Replicated (test installer)") ||
		!strings.Contains(inst, "will use the proxy at 'http://***@proxy.corp.example:3128'") || strings.Contains(inst, proxySecret) {
		t.Fatalf("the installer's journal:\n%s", inst)
	}
	if args := w.installer.rec("args"); args != "local-address=10.0.1.23\nno-docker\npublic-address=203.0.113.7\nrelease-sequence=1\n" ||
		w.installer.rec("prompts") != "" || w.installer.rec("imdsv1") != "" {
		t.Fatalf("installer arguments:\n%s\nprompts: %q", args, w.installer.rec("prompts"))
	}
	// Replicated's units run as replicated:docker and the daemon read the licence and the
	// settings as that user; the marker came after replicatedctl answered.
	ps := m.MustExec(t, "systemctl", "show", "-p", "ActiveState", "-p", "User", "-p", "Group", "replicated", "replicated-ui", "replicated-operator")
	if strings.Count(ps, "ActiveState=active") != 3 || strings.Count(ps, "User=replicated") != 3 || strings.Count(ps, "Group=docker") != 3 {
		t.Fatalf("Replicated's units:\n%s", ps)
	}
	daemon := m.MustExec(t, "journalctl", "-u", "replicated", "--no-pager", "-o", "cat")
	for _, want := range []string{"read LicenseFileLocation /etc/license.rli as replicated:docker", "read ImportSettingsFrom /etc/settings.conf as replicated:docker"} {
		if !strings.Contains(daemon, want) {
			t.Fatalf("the daemon did not %s:\n%s", want, daemon)
		}
	}
	if j, _ := m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat"); !strings.Contains(j, "Replicated installed and answering") {
		t.Fatalf("haagent did not verify the install:\n%s", j)
	}
	since := strings.TrimSpace(m.MustExec(t, "systemctl", "show", "--timestamp=unix", "-p", "ActiveEnterTimestamp", "--value", "replicated"))
	up, err := strconv.ParseInt(strings.TrimPrefix(since, "@"), 10, 64)
	if mk := replicated.ReadMarker(root); err != nil || mk == nil || mk.Time.Unix() < up {
		t.Fatalf("the marker (%+v) must come after replicated.service became active (%s)", mk, since)
	}

	// A broken setting (the expiring Vault token) surfaces in `haagent status`.
	if st, _ := m.Exec("haagent", "status"); !strings.Contains(st, findings.VaultTokenExpiring.String()) {
		t.Errorf("haagent status does not show the finding:\n%s", st)
	}
	// A restart (as on a reboot of the instance) does not run the installer again, and starts
	// Replicated's services when they are down.
	m.MustExec(t, "systemctl", "stop", "replicated")
	m.MustExec(t, "systemctl", "restart", "haagent")
	if out, err := m.Exec("haagent", "status", "--wait", "--timeout", "120s"); err != nil {
		t.Fatalf("status --wait after the restart: %v\n%s", err, out)
	}
	if inst := installerJournal(t, m); strings.Count(inst, "\ninstaller started\n") != 1 {
		t.Fatalf("the installer ran again after a restart:\n%s", inst)
	}
	if out, _ := m.Exec("systemctl", "is-active", "replicated"); strings.TrimSpace(out) != "active" {
		j, _ := m.Exec("journalctl", "-u", "replicated", "--no-pager", "-o", "cat")
		t.Fatalf("replicated was not started again: %s\n%s", out, j)
	}

	// Journal entries carry haagent's fields, and the frontend's lines are entries of their
	// own, stderr at warning priority. Forwarding goes on after the boot completed, so the
	// journal is read until it holds everything or a deadline passes.
	var entries []map[string]string
	var steps, finds, probed int
	var waited, hello, warns bool
	for deadline := time.Now().Add(60 * time.Second); ; {
		entries = journal(t, m, "haagent")
		steps, finds, probed, waited, hello, warns = 0, 0, 0, false, false, false
		for _, e := range entries {
			if e["HAAGENT_STEP"] == "fetch" {
				steps++
			}
			if e["HAAGENT_FINDING"] == findings.VaultTokenExpiring.String() {
				finds++
			}
			if strings.HasPrefix(e["MESSAGE"], "probes passed") {
				probed++
			}
			waited = waited || strings.Contains(e["MESSAGE"], "still running; waiting for it")
			if e["CONTAINER_NAME"] == "frontend" {
				hello = hello || (e["MESSAGE"] == "frontend says hello" && e["PRIORITY"] == "6")
				warns = warns || (e["MESSAGE"] == "frontend warns" && e["PRIORITY"] == "4")
			}
		}
		if (steps > 0 && finds > 0 && probed > 0 && waited && hello && warns) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if steps == 0 || finds == 0 || probed == 0 || !waited {
		t.Fatalf("journal: %d fetch entries, %d VAULT_TOKEN_EXPIRING findings, %d probes passed, restarted haagent waited=%v", steps, finds, probed, waited)
	}
	if !hello || !warns {
		t.Fatalf("frontend lines in the journal: hello=%v warns=%v", hello, warns)
	}
	for _, secret := range []string{token, pgPass, "mongo-pw", w.s3.SecretKey, proxySecret} {
		for _, e := range entries {
			if strings.Contains(e["MESSAGE"], secret) {
				t.Fatalf("a secret appears in the journal: %q", e["MESSAGE"])
			}
		}
	}

	// The fetched tree, with its modes: the licence and settings readable through the box's
	// docker group (docker.io made it there), the customization files as CircleCI left them.
	for path, mode := range map[string]os.FileMode{"etc/settings.conf": 0o640, "etc/license.rli": 0o640, "etc/replicated.conf": 0o644,
		"etc/circleconfig/shared": 0o755 | os.ModeDir, "data/circle/circleci-encryption-keys": 0o700 | os.ModeDir, "data/circle": 0o755 | os.ModeDir} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil || fi.Mode()&(os.ModeDir|os.ModePerm) != mode {
			t.Errorf("/%s: %v %v, want %v", path, fi.Mode(), err, mode)
		}
	}
	if docker, err := atomicfile.LookupGroup(root, "docker"); err != nil {
		t.Errorf("no docker group in the box: %v", err)
	} else if fi, err := os.Stat(filepath.Join(root, "etc/license.rli")); err != nil || fi.Sys().(*syscall.Stat_t).Gid != uint32(docker) {
		t.Errorf("/etc/license.rli is not group docker (gid %d): %v", docker, err)
	}

	// A real reboot with S3 down: systemd starts haagent by its enablement, the run goes on
	// with the files in place, the installer is not run again, and dockerd brings the
	// frontend back by its restart policy, which haagent finds and forwards.
	before, err := state.Load(filepath.Join(root, layout.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	w.s3.Stop()
	rebooted := time.Now()
	m.Reboot(t)
	if out, err := m.Exec("haagent", "status", "--wait", "--timeout", "120s"); err != nil {
		j, _ := m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat", "-n", "200")
		t.Fatalf("status --wait after the reboot: %v\n%s\njournal of this boot:\n%s", err, out, j)
	}
	rec, err := state.Load(filepath.Join(root, layout.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	last := rec.Last()
	// (This nspawn shares the host's boot_id, so the run is told apart by its start.)
	if last.ID == before.Last().ID || last.Start.Before(rebooted) || last.Mode != "service" || last.Status != state.Complete {
		t.Fatalf("after the reboot the last run is %s (%s, %s, started %s); want a complete service run started after the reboot",
			last.ID, last.Mode, last.Status, last.Start)
	}
	if codes := findings.Codes(last.Findings); !strings.Contains(codes, findings.S3OfflineLastGood.String()) {
		t.Fatalf("the rebooted run with S3 down does not report S3_OFFLINE_LAST_GOOD: %v", codes)
	}
	if inst := installerJournal(t, m); strings.Count(inst, "\ninstaller started\n") != 1 {
		t.Fatalf("the installer ran again after the reboot:\n%s", inst)
	}
	if n := len(completions()); n != 1 {
		t.Fatalf("the restart or the reboot completed a lifecycle action again (%d completions): %v", n, actions(a.Calls()))
	}
	props = m.MustExec(t, "systemctl", "show", "haagent", "-p", "ActiveState", "-p", "StatusText", "-p", "NRestarts")
	for _, want := range []string{"ActiveState=active", "StatusText=boot complete", "NRestarts=0"} {
		if !strings.Contains(props, want) {
			t.Errorf("after the reboot the unit properties lack %s:\n%s", want, props)
		}
	}
	// The frontend printed its hello once per start (the install, the reboot); each is in the
	// journal exactly once: the restarted haagent did not repeat the first, and the one after
	// the reboot forwarded what the frontend printed before haagent's watch began.
	hellos := func() int {
		n := 0
		for _, e := range journal(t, m, "haagent") {
			if e["CONTAINER_NAME"] == "frontend" && e["MESSAGE"] == "frontend says hello" {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(60 * time.Second); hellos() < 2; {
		if time.Now().After(deadline) {
			j, _ := m.Exec("journalctl", "--since", "@"+strconv.FormatInt(rebooted.Unix(), 10), "-u", "haagent", "--no-pager", "-o", "cat")
			t.Fatalf("the rebooted frontend's hello is not in the journal:\n%s", j)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := hellos(); n != 2 {
		t.Fatalf("the frontend's hello is in the journal %d times, want 2 (one per start)", n)
	}
}

// installerJournal reads the installer unit's journal once journald has caught up with it
// (under load its stream can lag behind the unit's end).
func installerJournal(t *testing.T, m *peertest.Machine) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m.Exec("journalctl", "--sync")
		out := m.MustExec(t, "journalctl", "-u", "haagent-replicated-install", "--no-pager", "-o", "cat")
		if strings.Contains(out, "Installing Replicated (test installer)") || time.Now().After(deadline) {
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func journal(t *testing.T, m *peertest.Machine, unit string) []map[string]string {
	t.Helper()
	m.Exec("journalctl", "--sync")
	out := m.MustExec(t, "journalctl", "-u", unit, "-o", "json", "--no-pager")
	var entries []map[string]string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var raw map[string]any
		if json.Unmarshal(sc.Bytes(), &raw) != nil {
			continue
		}
		e := map[string]string{}
		for k, v := range raw {
			if s, ok := v.(string); ok {
				e[k] = s
			}
		}
		entries = append(entries, e)
	}
	return entries
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(to), 0o755)
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

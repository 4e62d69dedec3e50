package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

const pgPass = "pg-Pass-w0rd-9Kx"

func startPG(t *testing.T) *peertest.Postgres {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{HBA: []string{"hostssl all circle 127.0.0.0/8 scram-sha-256"}})
	stmts := []string{"CREATE ROLE circle LOGIN PASSWORD '" + pgPass + "'"}
	for _, db := range []string{"vms", "conductor_production", "contexts_service_production", "cron_service_production", "circle"} {
		stmts = append(stmts, "CREATE DATABASE "+db+" OWNER circle")
	}
	pg.Exec(t, "postgres", stmts...)
	pg.Exec(t, "conductor_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "contexts_service_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "circle", `CREATE EXTENSION "uuid-ossp"`, `CREATE EXTENSION pgcrypto`)
	return pg
}

func pgFile(host string, port int, pass string) []byte {
	return []byte(fmt.Sprintf("export POSTGRES_HOST=%q\nexport POSTGRES_PORT=\"%d\"\nexport POSTGRES_USER=\"circle\"\nexport POSTGRES_PASSWORD=%q\n", host, port, pass))
}

func checkRoot(t *testing.T, pg *peertest.Postgres, file []byte) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, defaults.SharedDir()), 0o700)
	os.WriteFile(filepath.Join(root, defaults.SharedDir(), "postgresql"), file, 0o600)
	if pg != nil {
		os.MkdirAll(filepath.Join(root, "usr/local/share/ca-certificates"), 0o755)
		os.WriteFile(filepath.Join(root, "usr/local/share/ca-certificates/db.crt"), pg.CA.CertPEM, 0o644)
	}
	return root
}

func runHaagent(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(haagentBin, args...)
	if env == nil {
		env = []string{"PATH=" + os.Getenv("PATH")}
	}
	cmd.Env = binEnv(env)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

type checkJSON struct {
	Findings []findings.Finding `json:"findings"`
	Checked  []struct {
		Service, Target string
		OK              bool
	} `json:"checked"`
	DurationMS *int64 `json:"duration_ms"`
}

func TestCheckCommand(t *testing.T) {
	pg := startPG(t)
	root := checkRoot(t, pg, pgFile("localhost", pg.Port, pgPass))
	r := runHaagent(t, nil, "--root", root, "check", "--only", "postgres")
	if r.code != 0 || !strings.Contains(r.stdout, "ok   circle@localhost:") || !strings.Contains(r.stdout, "TLS verified") {
		t.Fatalf("healthy check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	bad := checkRoot(t, pg, pgFile("localhost", pg.Port, "wrong-"+pgPass))
	r = runHaagent(t, nil, "--root", bad, "check", "--only", "postgres")
	if r.code != 1 || !strings.Contains(r.stdout, "PG_AUTH_FAILED [ERROR, blocks install]") || !strings.Contains(r.stdout, "fix: ") {
		t.Fatalf("text report: exit %d\n%s", r.code, r.stdout)
	}
	t.Logf("report for a wrong password:\n%s", r.stdout)
	j := runHaagent(t, nil, "--root", bad, "check", "--format", "json", "--only", "postgres")
	var rep checkJSON
	if err := json.Unmarshal([]byte(j.stdout), &rep); err != nil || j.code != 1 || rep.DurationMS == nil {
		t.Fatalf("json report: exit %d err %v\n%s", j.code, err, j.stdout)
	}
	if len(rep.Findings) != 1 || rep.Findings[0].Code != findings.PGAuthFailed || rep.Findings[0].Service != "postgres" || !rep.Findings[0].Blocking {
		t.Fatalf("json findings: %+v", rep.Findings)
	}
	for _, out := range []string{r.stdout, r.stderr, j.stdout, j.stderr} {
		if strings.Contains(out, pgPass) {
			t.Fatal("the password appears in the check's output")
		}
	}
	if u := runHaagent(t, nil, "--root", bad, "check", "--format", "yaml"); u.code != 2 {
		t.Fatalf("bad --format: exit %d", u.code)
	}
	if u := runHaagent(t, nil, "--root", bad, "check", "--only", "redis"); u.code != 2 {
		t.Fatalf("bad --only: exit %d", u.code)
	}
}

// A host that drops packets (an nftables drop inside a network namespace of the test's own):
// the probe reports TCP_TIMEOUT within its bound instead of hanging like a stock client.
func TestCheckBlackHole(t *testing.T) {
	for _, tool := range []string{"unshare", "nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			peertest.Missing(t, tool+" is not installed (apt-get install nftables iproute2 util-linux)")
		}
	}
	root := checkRoot(t, nil, pgFile("127.0.0.1", 5999, pgPass))
	rules := filepath.Join(t.TempDir(), "drop.nft")
	os.WriteFile(rules, []byte("table ip blackhole {\n  chain input {\n    type filter hook input priority 0;\n    tcp dport 5999 drop\n  }\n}\n"), 0o644)
	script := fmt.Sprintf("ip link set lo up && nft -f %s && exec %s --root %s check --format json --timeout 2s --only postgres", rules, haagentBin, root)
	cmd := exec.Command("unshare", "--net", "sh", "-c", script)
	cmd.Env = binEnv(os.Environ())
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var rep checkJSON
	if jerr := json.Unmarshal(o.Bytes(), &rep); jerr != nil {
		t.Fatalf("check in the namespace: %v %v\n%s%s", err, jerr, o.String(), e.String())
	}
	if len(rep.Findings) != 1 || rep.Findings[0].Code != findings.TCPTimeout || !strings.Contains(rep.Findings[0].Fix, "security group") {
		t.Fatalf("want one TCP_TIMEOUT, got %+v", rep.Findings)
	}
}

// The probe step blocks the boot on a finding that would certainly fail the install, and lets
// it through once the database is right.
func TestProbeStepBlocksOnRealPostgres(t *testing.T) {
	pg := startPG(t)
	w := newWorld(t, "i-0probe0000000000")
	w.writeConfig(w.s3.URL, "")
	os.MkdirAll(filepath.Join(w.root, "usr/local/share/ca-certificates"), 0o755)
	os.WriteFile(filepath.Join(w.root, "usr/local/share/ca-certificates/db.crt"), pg.CA.CertPEM, 0o644)
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", pgFile("localhost", pg.Port, "wrong-"+pgPass))
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step probe: PG_AUTH_FAILED") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	w.s3.Put(t, bkt, "circleconfig/shared/postgresql", pgFile("localhost", pg.Port, pgPass))
	r = w.run("run", "--once")
	if r.code != 0 || !strings.Contains(r.stderr, "probes passed") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, pgPass) {
		t.Fatal("the password appears in the log")
	}
}

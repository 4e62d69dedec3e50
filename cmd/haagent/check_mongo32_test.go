package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/peertest"
)

// `haagent check` against MongoDB 3.2 as the runbook builds it (the wire-level stand-in, see
// internal/peertest/mongostandin.go): exit 0 when circle holds readWrite on all four databases
// its URIs use, exit 1 with MONGO_PRIVILEGE_MISSING with the runbook's own three grants.
func TestCheckMongo32(t *testing.T) {
	const pw = "mongo32-Pw-q8"
	uris := func(addr string) []byte {
		var b strings.Builder
		fmt.Fprintf(&b, "export MONGO_BASE_URI=\"mongodb://circle:%s@%s\"\n", pw, addr)
		for v, db := range map[string]string{"MAIN": "circle_ghe", "ACTION_LOGS": "circle_ghe", "BUILD_STATE": "build_state_dev_ghe",
			"CONTAINERS": "containers_dev_ghe", "REMOTE_CONTAINERS": "remote_containers_dev_ghe"} {
			fmt.Fprintf(&b, "export CIRCLE_SECRETS_MONGODB_%s_URI=\"$MONGO_BASE_URI/%s?authSource=admin&replicaSet=rs0\"\n", v, db)
		}
		return []byte(b.String())
	}
	check := func(m *peertest.MongoStandIn) result {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, defaults.SharedDir()), 0o700)
		os.WriteFile(filepath.Join(root, defaults.SharedDir(), "mongodb"), uris(m.Addr), 0o600)
		r := runHaagent(t, nil, "--root", root, "check", "--only", "mongo")
		if strings.Contains(r.stdout+r.stderr, pw) {
			t.Fatal("the password appears in the check's output")
		}
		return r
	}
	healthy := peertest.StartMongoStandIn(t).Runbook32(t, pw, "circle_ghe", "build_state_dev_ghe", "containers_dev_ghe", "remote_containers_dev_ghe")
	if r := check(healthy); r.code != 0 || !strings.Contains(r.stdout, "(MongoDB 3.2, SCRAM-SHA-1 over OP_QUERY)") || !strings.Contains(r.stdout, "0 error(s), 0 warning(s)") {
		t.Fatalf("healthy 3.2: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	runbook := peertest.StartMongoStandIn(t).Runbook32(t, pw, "circle_ghe", "build_state_dev_ghe", "containers_dev_ghe")
	if r := check(runbook); r.code != 1 || !strings.Contains(r.stdout, "MONGO_PRIVILEGE_MISSING [ERROR, blocks install]") || !strings.Contains(r.stdout, `db: "remote_containers_dev_ghe"`) {
		t.Fatalf("the runbook's grants: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

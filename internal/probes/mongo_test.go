package probes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
)

const mongoPW = "mongo-Pw-7yq"

// runbookURIs are the runbook's five URIs, with base and options.
func runbookURIs(base, opts string) []string {
	var out []string
	for v, db := range map[string]string{
		"CIRCLE_SECRETS_MONGODB_MAIN_URI": "circle_ghe", "CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI": "circle_ghe",
		"CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI": "build_state_dev_ghe", "CIRCLE_SECRETS_MONGODB_CONTAINERS_URI": "containers_dev_ghe",
		"CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI": "remote_containers_dev_ghe",
	} {
		out = append(out, fmt.Sprintf("export %s=\"%s/%s%s\"", v, base, db, opts))
	}
	return out
}

func mongoCheck(t *testing.T, lines []string, mod func(*Options)) *Report {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, defaults.SharedDir())
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "mongodb"), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	o := Options{Timeout: 5 * time.Second, Only: []string{"mongo"}}
	if mod != nil {
		mod(&o)
	}
	rep := Run(context.Background(), layout.New(root, nil), o)
	assertNoSecret(t, rep, mongoPW, "wrong-"+mongoPW, "p@ss")
	return rep
}

func TestMongoFerretDB(t *testing.T) {
	f := peertest.StartFerretDB(t, peertest.FerretDBOptions{ReplSet: "rs0", TLS: true})
	f.CreateUser(t, "admin", "circle", mongoPW)
	base := "mongodb://circle:" + mongoPW + "@" + f.Addr

	t.Run("healthy, identical endpoints connected once", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs(base, "?authSource=admin&replicaSet=rs0"), nil)
		// FerretDB has no real roles and reports no privileges: the probe says it could not tell.
		if only(rep.Findings) != findings.ProbeInconclusive.String() || rep.Findings[0].Blocking || len(rep.Checked) != 1 || !rep.Checked[0].OK {
			t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs("mongodb://circle:wrong-"+mongoPW+"@"+f.Addr, "?authSource=admin&replicaSet=rs0"), nil)
		if only(rep.Findings) != findings.MongoAuthFailed.String() || !rep.Findings[0].Blocking {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("missing authSource", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs(base, ""), nil)
		f := find(rep.Findings, findings.MongoAuthFailed)
		if f == nil || !strings.Contains(f.Fix, "add authSource=admin") {
			t.Fatalf("want MONGO_AUTH_FAILED pointing at authSource=admin, got %+v", rep.Findings)
		}
	})
	t.Run("replica set name", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs(base, "?authSource=admin&replicaSet=rs1"), nil)
		f := find(rep.Findings, findings.MongoReplsetMismatch)
		if f == nil || !strings.Contains(f.Summary, `"rs1"`) || !strings.Contains(f.Summary, `"rs0"`) {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("one host without replicaSet= on a replica-set member", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs(base, "?authSource=admin"), nil)
		f := find(rep.Findings, findings.MongoNoReplicaSetInURI)
		if only(rep.Findings) != "MONGO_NO_REPLICA_SET_IN_URI,PROBE_INCONCLUSIVE" || f.Severity != findings.Warning || f.Blocking ||
			!strings.Contains(f.Summary, `replica set "rs0"`) || !strings.Contains(f.Fix, "replicaSet=rs0") || rep.Errors() != 0 {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("unescaped @ in the password", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs("mongodb://circle:p@ss@"+f.Addr, "?authSource=admin"), nil)
		if !strings.HasPrefix(only(rep.Findings), findings.URIMalformed.String()) {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("tls verified", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+strings.Replace(f.TLSAddr, "127.0.0.1", "localhost", 1), "?ssl=true&authSource=admin&replicaSet=rs0"),
			func(o *Options) { o.RootCAs = f.CA.Pool() })
		if only(rep.Findings) != findings.ProbeInconclusive.String() || !strings.Contains(rep.Checked[0].Detail, "TLS verified") {
			t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
		}
	})
	t.Run("tls unknown authority", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+f.TLSAddr, "?ssl=true&authSource=admin"),
			func(o *Options) { o.RootCAs = peertest.NewCA(t, "other").Pool() })
		if find(rep.Findings, findings.TLSUnknownAuthority) == nil || find(rep.Findings, findings.MongoAuthFailed) != nil {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("ssl=true against a plain listener", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs(base, "?ssl=true&authSource=admin"), nil)
		if only(rep.Findings) != findings.TLSRequired.String() {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("plain against the TLS listener", func(t *testing.T) {
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+f.TLSAddr, "?authSource=admin"), nil)
		if only(rep.Findings) != findings.TLSRequired.String() || !strings.Contains(rep.Findings[0].Fix, "ssl=true") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("the runbook's undefined base", func(t *testing.T) {
		lines := runbookURIs("$MONGO_BASE_URI", "?ssl=true&authSource=admin")
		rep := mongoCheck(t, lines, nil)
		if len(rep.Findings) != 5 || rep.Findings[0].Code != findings.SettingMissing || !strings.Contains(rep.Findings[0].Summary, "$MONGO_BASE_URI") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
}

// What FerretDB cannot show, from the wire-level stand-in (see peertest/mongostandin.go for
// the manual pages the documents follow).
func TestMongoStandIn(t *testing.T) {
	dns := peertest.StartDNS(t, map[string]string{})
	t.Run("no primary", func(t *testing.T) {
		a, b := peertest.StartMongoStandIn(t), peertest.StartMongoStandIn(t)
		for _, m := range []*peertest.MongoStandIn{a, b} {
			m.Set(func(s *peertest.MongoStandIn) {
				s.Hello = bson.M{"ismaster": false, "secondary": true, "setName": "rs0", "hosts": bson.A{a.Addr, b.Addr}, "maxWireVersion": int32(17)}
			})
		}
		rep := mongoCheck(t, runbookURIs("mongodb://"+a.Addr+","+b.Addr, "?replicaSet=rs0"), func(o *Options) { o.Resolver = dns })
		f := find(rep.Findings, findings.MongoNoPrimary)
		if only(rep.Findings) != findings.MongoNoPrimary.String() || !strings.Contains(f.Evidence, a.Addr+": SECONDARY") || !strings.Contains(f.Evidence, b.Addr+": SECONDARY") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("member advertising an AWS-internal name", func(t *testing.T) {
		p := peertest.StartMongoStandIn(t)
		p.Set(func(s *peertest.MongoStandIn) {
			s.Hello = bson.M{"ismaster": true, "setName": "rs0", "hosts": bson.A{"ip-10-0-1-5.ec2.internal:27017", p.Addr}, "primary": "ip-10-0-1-5.ec2.internal:27017", "maxWireVersion": int32(17)}
		})
		rep := mongoCheck(t, runbookURIs("mongodb://"+p.Addr, "?replicaSet=rs0"), func(o *Options) { o.Resolver = dns })
		f := find(rep.Findings, findings.MongoMemberUnreachable)
		if only(rep.Findings) != findings.MongoMemberUnreachable.String() || f.Target != "ip-10-0-1-5.ec2.internal:27017" || !strings.Contains(f.Fix, "rs.reconfig") || !strings.Contains(f.Summary, findings.DNSNotFound.String()) {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	privileges := func(dbs ...string) bson.A {
		var out bson.A
		for _, db := range dbs {
			out = append(out, bson.M{"resource": bson.M{"db": db, "collection": ""},
				"actions": bson.A{"find", "insert", "update", "remove", "createIndex", "listCollections"}})
		}
		return out
	}
	status := func(privs bson.A) bson.M {
		return bson.M{"authInfo": bson.M{"authenticatedUsers": bson.A{bson.M{"user": "circle", "db": "admin"}},
			"authenticatedUserRoles": bson.A{}, "authenticatedUserPrivileges": privs}}
	}
	t.Run("the runbook's grants miss remote_containers_dev_ghe", func(t *testing.T) {
		m := peertest.StartMongoStandIn(t)
		m.Set(func(s *peertest.MongoStandIn) {
			s.ConnectionStatus = status(privileges("circle_ghe", "build_state_dev_ghe", "containers_dev_ghe"))
		})
		rep := mongoCheck(t, runbookURIs("mongodb://"+m.Addr, "?authSource=admin"), nil)
		f := find(rep.Findings, findings.MongoPrivilegeMissing)
		if only(rep.Findings) != findings.MongoPrivilegeMissing.String() ||
			f.Fix != `db.getSiblingDB("admin").grantRolesToUser("circle", [{role: "readWrite", db: "remote_containers_dev_ghe"}])` ||
			!strings.Contains(f.Summary, "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("root and readWriteAnyDatabase count", func(t *testing.T) {
		for name, privs := range map[string]bson.A{
			"root":                 {bson.M{"resource": bson.M{"anyResource": true}, "actions": bson.A{"anyAction", "find", "insert", "update", "remove"}}},
			"readWriteAnyDatabase": privileges(""),
			"anyAction alone":      {bson.M{"resource": bson.M{"anyResource": true}, "actions": bson.A{"anyAction"}}},
		} {
			m := peertest.StartMongoStandIn(t)
			m.Set(func(s *peertest.MongoStandIn) { s.ConnectionStatus = status(privs) })
			rep := mongoCheck(t, runbookURIs("mongodb://"+m.Addr, "?authSource=admin"), nil)
			if len(rep.Findings) != 0 {
				t.Fatalf("%s: %+v", name, rep.Findings)
			}
		}
	})
}

// runbook32 is a MongoDB 3.2 replica-set member as the runbook builds it (see
// peertest.MongoStandIn.Runbook32); circle gets readWrite on circleDBs.
func runbook32(t *testing.T, circleDBs ...string) *peertest.MongoStandIn {
	t.Helper()
	return peertest.StartMongoStandIn(t).Runbook32(t, mongoPW, circleDBs...)
}

var (
	runbookGrants = []string{"circle_ghe", "build_state_dev_ghe", "containers_dev_ghe"}
	allGrants     = append(append([]string(nil), runbookGrants...), "remote_containers_dev_ghe")
)

// MongoDB 3.2, the runbook's version: the password and the privileges are checked over
// OP_QUERY with SCRAM-SHA-1 (the Go driver refuses the server).
func TestMongo32(t *testing.T) {
	opts := "?authSource=admin&replicaSet=rs0"
	t.Run("healthy: all four grants", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, opts), nil)
		if len(rep.Findings) != 0 || len(rep.Checked) != 1 || !rep.Checked[0].OK || !strings.Contains(rep.Checked[0].Detail, "MongoDB 3.2") {
			t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
		}
		// The 3.x conversation, its extra empty saslContinue included; isMaster only for the
		// replica set (replSetGetStatus needs clusterMonitor, which circle lacks).
		cmds := strings.Join(m.Commands(), " ")
		if !strings.Contains(cmds, "saslStart saslContinue saslContinue connectionStatus") || strings.Contains(cmds, "replSetGetStatus") {
			t.Fatalf("commands: %s", cmds)
		}
	})
	t.Run("the runbook's grants miss remote_containers_dev_ghe", func(t *testing.T) {
		m := runbook32(t, runbookGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, opts), nil)
		f := find(rep.Findings, findings.MongoPrivilegeMissing)
		if only(rep.Findings) != findings.MongoPrivilegeMissing.String() || !f.Blocking ||
			f.Fix != `db.getSiblingDB("admin").grantRolesToUser("circle", [{role: "readWrite", db: "remote_containers_dev_ghe"}])` ||
			!strings.Contains(f.Summary, "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:wrong-"+mongoPW+"@"+m.Addr, opts), nil)
		f := find(rep.Findings, findings.MongoAuthFailed)
		if only(rep.Findings) != findings.MongoAuthFailed.String() || !f.Blocking || !strings.Contains(f.Fix, "authSchemaUpgrade") || !strings.Contains(f.Fix, "MONGODB-CR") {
			t.Fatalf("%+v %v", rep.Findings, rep.Findings[0].Evidence)
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://nobody:"+mongoPW+"@"+m.Addr, opts), nil)
		if only(rep.Findings) != findings.MongoAuthFailed.String() {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("wrong authSource", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, "?replicaSet=rs0"), nil)
		f := find(rep.Findings, findings.MongoAuthFailed)
		if f == nil || !strings.Contains(f.Fix, "add authSource=admin") || !strings.Contains(f.Summary, "work with authSource=admin") {
			t.Fatalf("want MONGO_AUTH_FAILED pointing at authSource=admin, got %+v", rep.Findings)
		}
		for _, f := range rep.Findings {
			if f.Code != findings.MongoAuthFailed {
				t.Fatalf("%+v", rep.Findings)
			}
		}
	})
	t.Run("no authSource: each URI authenticates against its own database", func(t *testing.T) {
		m := peertest.StartMongoStandIn(t).Runbook32(t, "other-pw")
		var roles []peertest.MongoRole
		for _, db := range allGrants {
			roles = append(roles, peertest.MongoRole{Role: "readWrite", DB: db})
		}
		m.CreateUser(t, "circle_ghe", "circle", mongoPW, roles...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, "?replicaSet=rs0"), nil)
		var against []string
		for _, f := range rep.Findings {
			if f.Code != findings.MongoAuthFailed {
				t.Fatalf("%+v", rep.Findings)
			}
			against = append(against, f.Summary[strings.Index(f.Summary, "against database"):])
		}
		sort.Strings(against)
		if want := []string{`against database "build_state_dev_ghe"`, `against database "containers_dev_ghe"`, `against database "remote_containers_dev_ghe"`}; strings.Join(against, ";") != strings.Join(want, ";") {
			t.Fatalf("want AUTH_FAILED for %q, got %q", want, against)
		}
	})
	t.Run("one host without replicaSet=", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, "?authSource=admin"), nil)
		f := find(rep.Findings, findings.MongoNoReplicaSetInURI)
		if only(rep.Findings) != findings.MongoNoReplicaSetInURI.String() || !strings.Contains(f.Fix, "replicaSet=rs0") || !strings.Contains(f.Summary, "PRIMARY") || rep.Errors() != 0 {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("TLS verified", func(t *testing.T) {
		m := peertest.StartMongoStandInTLS(t).Runbook32(t, mongoPW, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, "?ssl=true&authSource=admin&replicaSet=rs0"),
			func(o *Options) { o.RootCAs = m.CA.Pool() })
		if len(rep.Findings) != 0 || !strings.Contains(rep.Checked[0].Detail, "TLS verified") || !strings.Contains(strings.Join(m.Commands(), " "), "connectionStatus") {
			t.Fatalf("%+v %+v", rep.Findings, rep.Checked)
		}
	})
	t.Run("no SCRAM-SHA-1 to check: MONGODB-CR, 2.6", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, opts+"&authMechanism=MONGODB-CR"), nil)
		f := find(rep.Findings, findings.MongoVersionLimited)
		if only(rep.Findings) != findings.MongoVersionLimited.String() || !strings.Contains(f.Summary, "authMechanism=MONGODB-CR") || contains(m.Commands(), "saslStart") {
			t.Fatalf("%+v %v", rep.Findings, m.Commands())
		}
		old := runbook32(t, allGrants...)
		old.Set(func(s *peertest.MongoStandIn) { s.Hello["maxWireVersion"] = int32(2) })
		rep = mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+old.Addr, opts), nil)
		f = find(rep.Findings, findings.MongoVersionLimited)
		if only(rep.Findings) != findings.MongoVersionLimited.String() || !strings.Contains(f.Summary, "MongoDB 2.6 or older") || rep.Errors() != 0 {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("the same users on a 6.0 server, through the driver", func(t *testing.T) {
		for grants, want := range map[int]string{3: findings.MongoPrivilegeMissing.String(), 4: ""} {
			m := runbook32(t, allGrants[:grants]...)
			m.Set(func(s *peertest.MongoStandIn) { s.NoHello, s.Hello["maxWireVersion"] = false, int32(17) })
			rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, opts), nil)
			// 4.4+ honours skipEmptyExchange: one saslContinue.
			if only(rep.Findings) != want || strings.Contains(rep.Checked[0].Detail, "OP_QUERY") ||
				!strings.Contains(strings.Join(m.Commands(), " "), "saslStart saslContinue connectionStatus") {
				t.Fatalf("%d grants: %+v %+v %v", grants, rep.Findings, rep.Checked, m.Commands())
			}
		}
	})
	t.Run("server error text is cut", func(t *testing.T) {
		m := runbook32(t, allGrants...)
		huge := strings.Repeat("impostor text ", 5000)
		m.Set(func(s *peertest.MongoStandIn) {
			s.Answers = map[string]bson.M{"connectionStatus": {"ok": 0.0, "code": int32(8000), "errmsg": huge}}
		})
		rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, opts), nil)
		f := find(rep.Findings, findings.ProbeInconclusive)
		if f == nil || len(f.Evidence) > 500 || !strings.Contains(f.Evidence, "impostor text") {
			t.Fatalf("%d bytes of evidence: %.600s", len(f.Evidence), f.Evidence)
		}
	})
}

// No credential to a server whose certificate failed verification (issue 14, item 7): a TLS
// listener of the test's own, with a certificate nothing here trusts, answers isMaster/hello
// and records every byte it receives after the handshake, on the modern (driver) path and the
// legacy (OP_QUERY) one, for SCRAM and for PLAIN (which would send the password in clear).
func TestMongoNoCredentialsToUnverifiedServer(t *testing.T) {
	for _, c := range []struct {
		name, opts string
		wire       int32
	}{
		{"modern path", "?ssl=true&authSource=admin&replicaSet=rs0", 17},
		{"modern path, PLAIN", "?ssl=true&authSource=\\$external&authMechanism=PLAIN&replicaSet=rs0", 17},
		{"modern path, tlsInsecure in the URI", "?ssl=true&tlsInsecure=true&authSource=admin&replicaSet=rs0", 17},
		{"3.2 legacy path", "?ssl=true&authSource=admin&replicaSet=rs0", 4},
		{"3.2 legacy path, tlsInsecure in the URI", "?ssl=true&tlsInsecure=true&authSource=admin&replicaSet=rs0", 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := peertest.StartMongoStandInTLS(t).Runbook32(t, mongoPW, allGrants...)
			m.Set(func(s *peertest.MongoStandIn) {
				s.Hello["maxWireVersion"] = c.wire
				s.NoHello = c.wire < 6
			})
			rep := mongoCheck(t, runbookURIs("mongodb://circle:"+mongoPW+"@"+m.Addr, c.opts), nil) // system trust only
			f := find(rep.Findings, findings.TLSUnknownAuthority)
			if f == nil || !strings.Contains(f.Summary, "sent no credentials") || find(rep.Findings, findings.MongoAuthFailed) != nil {
				t.Errorf("want TLS_UNKNOWN_AUTHORITY saying no credentials were sent, got %+v", rep.Findings)
			}
			got := m.Received()
			for _, bad := range []string{"saslStart", "saslContinue", "authenticate", "speculativeAuthenticate", mongoPW, "circle"} {
				if strings.Contains(string(got), bad) {
					t.Errorf("the unverified server received %q; commands: %v", bad, m.Commands())
				}
			}
			for _, cmd := range m.Commands() {
				if !strings.EqualFold(cmd, "isMaster") {
					t.Errorf("the unverified server was asked %s (only isMaster may be)", cmd)
				}
			}
			if len(m.Commands()) == 0 {
				t.Fatal("the probe never asked isMaster after the failed verification")
			}
		})
	}
}

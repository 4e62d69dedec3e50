package probes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"go.mongodb.org/mongo-driver/bson"
)

// hostsOf lists the findings as CODE@host, the host Fold matches on.
func hostsOf(fs []findings.Finding) string {
	var c []string
	for _, f := range fs {
		c = append(c, f.Code.String()+"@"+f.Host)
	}
	return strings.Join(c, ",")
}

// What the probes report carries the host each finding concerns, and findings.Fold (which the
// runner applies to each step's findings) folds only what an upstream finding for that host
// explains: against a real PostgreSQL, and Vault's probe sent to PostgreSQL's port.
func TestProbeFindingsCarryTheirHostForFold(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{HBA: []string{"hostssl all circle 127.0.0.0/8 scram-sha-256"}})
	pg.Exec(t, "postgres", "CREATE ROLE circle LOGIN PASSWORD '"+circlePW+"'")
	dns := peertest.StartDNS(t, map[string]string{})
	run := func(t *testing.T, only []string, files map[string][]string) []findings.Finding {
		t.Helper()
		root := t.TempDir()
		trustCA(t, root, pg.CA)
		dir := filepath.Join(root, defaults.SharedDir())
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for name, lines := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		o := Options{Timeout: 5 * time.Second, Resolver: dns, Postgres: PostgresOptions{Databases: []string{"postgres"}}, Only: only}
		rep := Run(context.Background(), layout.New(root, nil), o)
		assertNoSecret(t, rep, circlePW, "wrong-pw-Qx7")
		return rep.Findings
	}
	t.Run("unresolvable host", func(t *testing.T) {
		fs := run(t, []string{"postgres"}, map[string][]string{"postgresql": pgSettings("nowhere.internal.test", pg.Port, "circle", circlePW)})
		if got := hostsOf(fs); got != "DNS_NOT_FOUND@nowhere.internal.test" {
			t.Fatalf("%s: %+v", got, fs)
		}
		if got := hostsOf(findings.Fold(fs)); got != "DNS_NOT_FOUND@nowhere.internal.test" {
			t.Fatalf("after Fold: %s", got)
		}
	})
	t.Run("closed port", func(t *testing.T) {
		port := peertest.ClosedPort(t)
		fs := run(t, []string{"postgres"}, map[string][]string{"postgresql": pgSettings("127.0.0.1", port, "circle", circlePW)})
		if got, want := hostsOf(findings.Fold(fs)), fmt.Sprintf("TCP_REFUSED@127.0.0.1:%d", port); got != want {
			t.Fatalf("%s, want %s", got, want)
		}
	})
	t.Run("wrong password, Vault sent to the same port", func(t *testing.T) {
		// Two probes, one server: PostgreSQL's answer is its own, whatever Vault's probe meets
		// on that port, so nothing folds.
		addr := fmt.Sprintf("127.0.0.1:%d", pg.Port)
		fs := run(t, []string{"postgres", "vault"}, map[string][]string{
			"postgresql": pgSettings("127.0.0.1", pg.Port, "circle", "wrong-pw-Qx7"),
			"vault": {"export VAULT__SCHEME=https", "export VAULT__HOST=127.0.0.1", fmt.Sprintf("export VAULT__PORT=%d", pg.Port),
				"export VAULT__CLIENT_TOKEN=s.vaulttoken", "export VAULT__TRANSIT_MOUNT=transit"},
		})
		t.Logf("reported: %s", hostsOf(fs))
		folded := findings.Fold(fs)
		if len(folded) != len(fs) || find(folded, findings.PGAuthFailed) == nil || len(fs) < 2 {
			t.Fatalf("%s folded to %s", hostsOf(fs), hostsOf(folded))
		}
		for _, f := range fs {
			if f.Host != addr {
				t.Errorf("%s names host %q, want %s", f.Code, f.Host, addr)
			}
		}
	})
}

// A seed that does not resolve and the replica set advertising it as a member: the probe
// reports both, DNS_NOT_FOUND for the host and MONGO_MEMBER_UNREACHABLE for it as a member;
// Fold keeps the first and lists the second in it. From the wire-level stand-in: FerretDB has
// no replica set members to advertise.
func TestFoldMongoMemberIntoItsDNSFinding(t *testing.T) {
	dns := peertest.StartDNS(t, map[string]string{})
	p := peertest.StartMongoStandIn(t)
	const gone = "mongo-old.internal.test:27017"
	p.Set(func(s *peertest.MongoStandIn) {
		s.Hello = bson.M{"ismaster": true, "setName": "rs0", "hosts": bson.A{gone, p.Addr}, "primary": p.Addr, "maxWireVersion": int32(17)}
	})
	rep := mongoCheck(t, runbookURIs("mongodb://"+gone+","+p.Addr, "?replicaSet=rs0"), func(o *Options) { o.Resolver = dns })
	if got := hostsOf(rep.Findings); got != "DNS_NOT_FOUND@mongo-old.internal.test,MONGO_MEMBER_UNREACHABLE@"+gone {
		t.Fatalf("the probe reports %s: %+v", got, rep.Findings)
	}
	folded := findings.Fold(rep.Findings)
	if len(folded) != 1 || folded[0].Code != findings.DNSNotFound || len(folded[0].Suppressed) != 1 ||
		!strings.HasPrefix(folded[0].Suppressed[0], "MONGO_MEMBER_UNREACHABLE replica set rs0 advertises member "+gone) {
		t.Fatalf("folded: %+v", folded)
	}
}

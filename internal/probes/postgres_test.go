package probes

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/settings"
)

const circlePW = "circle-pw-Zq9" // planted secrets: none may appear in a report

func writeSettings(t *testing.T, root string, lines ...string) {
	t.Helper()
	dir := filepath.Join(root, settings.SharedDir)
	os.MkdirAll(dir, 0o700)
	if err := os.WriteFile(filepath.Join(dir, "postgresql"), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func trustCA(t *testing.T, root string, ca *peertest.CA) {
	t.Helper()
	dir := filepath.Join(root, "usr/local/share/ca-certificates/haagent")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "db-ca.crt"), ca.CertPEM, 0o644)
}

func pgSettings(host string, port int, user, pw string) []string {
	return []string{
		fmt.Sprintf("export POSTGRES_HOST=%q", host),
		fmt.Sprintf("export POSTGRES_PORT=\"%d\"", port),
		fmt.Sprintf("export POSTGRES_USER=%q", user),
		fmt.Sprintf("export POSTGRES_PASSWORD='%s'", pw),
	}
}

func only(fs []findings.Finding) string {
	var c []string
	for _, f := range fs {
		c = append(c, f.Code)
	}
	return strings.Join(c, ",")
}

func find(fs []findings.Finding, code string) *findings.Finding {
	for i := range fs {
		if fs[i].Code == code {
			return &fs[i]
		}
	}
	return nil
}

func assertNoSecret(t *testing.T, rep *Report, secrets ...string) {
	t.Helper()
	b, _ := json.Marshal(rep)
	for _, s := range secrets {
		if s != "" && strings.Contains(string(b), s) {
			t.Errorf("secret %q appears in the report", s)
		}
	}
}

func TestPostgres(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{HBA: []string{
		"hostssl all circle 127.0.0.0/8 scram-sha-256",
		"hostssl all circle ::1/128 scram-sha-256",
		"hostssl all noconnect 127.0.0.0/8 scram-sha-256",
	}})
	pg.Exec(t, "postgres",
		"CREATE ROLE circle LOGIN PASSWORD '"+circlePW+"'",
		"CREATE ROLE noconnect LOGIN PASSWORD 'noconnect-pw'",
		"CREATE ROLE nohba LOGIN PASSWORD 'nohba-pw'",
		"CREATE DATABASE vms OWNER circle",
		"CREATE DATABASE conductor_production OWNER circle",
		"CREATE DATABASE contexts_service_production OWNER circle",
		"CREATE DATABASE cron_service_production OWNER circle",
		"CREATE DATABASE circle OWNER circle",
		"CREATE DATABASE bare OWNER circle",
		"REVOKE CONNECT ON DATABASE vms FROM PUBLIC",
		"GRANT CONNECT ON DATABASE vms TO circle",
	)
	pg.Exec(t, "conductor_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "contexts_service_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "circle", `CREATE EXTENSION "uuid-ossp"`, `CREATE EXTENSION pgcrypto`)
	dns := peertest.StartDNS(t, map[string]string{"localhost": "127.0.0.1", "pg.internal.test": "127.0.0.3"})

	check := func(t *testing.T, lines []string, mod func(*Options)) *Report {
		t.Helper()
		root := t.TempDir()
		trustCA(t, root, pg.CA)
		writeSettings(t, root, lines...)
		o := Options{Timeout: 5 * time.Second, Resolver: dns, Postgres: DefaultPostgres(), Only: []string{"postgres"}}
		if mod != nil {
			mod(&o)
		}
		rep := Run(context.Background(), root, o)
		assertNoSecret(t, rep, circlePW, "noconnect-pw", "nohba-pw", "wrong-pw-Qx7", "p/ss@word")
		return rep
	}

	t.Run("healthy", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), nil)
		if len(rep.Findings) != 0 {
			t.Fatalf("findings on a healthy server: %+v", rep.Findings)
		}
		if len(rep.Checked) != 5 {
			t.Fatalf("checked %+v", rep.Checked)
		}
		for _, c := range rep.Checked {
			if !c.OK || c.Detail != "TLS verified" {
				t.Errorf("%+v", c)
			}
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", "wrong-pw-Qx7"), nil)
		if only(rep.Findings) != "PG_AUTH_FAILED" || !rep.Findings[0].Blocking {
			t.Fatalf("want one blocking PG_AUTH_FAILED, got %+v", rep.Findings)
		}
	})
	t.Run("no pg_hba line", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "nohba", "nohba-pw"), nil)
		f := find(rep.Findings, "PG_HBA_REJECTED")
		if only(rep.Findings) != "PG_HBA_REJECTED" || !strings.Contains(f.Summary, `user "nohba"`) || !strings.Contains(f.Summary, "TLS verified") {
			t.Fatalf("want PG_HBA_REJECTED with user and TLS state, got %+v", rep.Findings)
		}
	})
	t.Run("database missing", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), func(o *Options) {
			o.Postgres.Databases = append(o.Postgres.Databases, "domain")
		})
		f := find(rep.Findings, "PG_DATABASE_MISSING")
		if only(rep.Findings) != "PG_DATABASE_MISSING" || f.Fix != "CREATE DATABASE domain OWNER circle;" {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("connect denied", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "noconnect", "noconnect-pw"), func(o *Options) {
			o.Postgres.Databases = []string{"vms", "bare"}
		})
		f := find(rep.Findings, "PG_CONNECT_DENIED")
		if only(rep.Findings) != "PG_CONNECT_DENIED" || f.Fix != "GRANT CONNECT ON DATABASE vms TO noconnect;" {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("extension missing", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), func(o *Options) {
			o.Postgres.Databases = []string{"bare"}
			o.Postgres.Extensions = map[string][]string{"bare": {"pgcrypto", "uuid-ossp"}}
		})
		if only(rep.Findings) != "PG_EXTENSION_MISSING,PG_EXTENSION_MISSING" ||
			!strings.Contains(rep.Findings[1].Fix, `CREATE EXTENSION IF NOT EXISTS "uuid-ossp";`) {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("unknown CA", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), func(o *Options) {
			o.RootCAs = peertest.NewCA(t, "some other CA").Pool()
		})
		f := find(rep.Findings, "TLS_UNKNOWN_AUTHORITY")
		if only(rep.Findings) != "TLS_UNKNOWN_AUTHORITY" || !strings.Contains(f.Summary, "haagent test PostgreSQL CA") || f.Blocking {
			t.Fatalf("want a non-blocking TLS_UNKNOWN_AUTHORITY naming the issuer, got %+v", rep.Findings)
		}
		// The probe went on without verification and checked everything else.
		if len(rep.Checked) != 5 || !rep.Checked[0].OK || rep.Checked[0].Detail != "TLS, certificate not verified" {
			t.Fatalf("%+v", rep.Checked)
		}
	})
	t.Run("hostname mismatch", func(t *testing.T) {
		rep := check(t, pgSettings("pg.internal.test", pg.Port, "circle", circlePW), nil)
		f := find(rep.Findings, "TLS_HOSTNAME_MISMATCH")
		if f == nil || !strings.Contains(f.Summary, "localhost, 127.0.0.1, ::1") {
			t.Fatalf("want TLS_HOSTNAME_MISMATCH listing the certificate's names, got %+v", rep.Findings)
		}
	})
	t.Run("dns not found", func(t *testing.T) {
		rep := check(t, pgSettings("nowhere.internal.test", pg.Port, "circle", circlePW), nil)
		if only(rep.Findings) != "DNS_NOT_FOUND" {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("tcp refused", func(t *testing.T) {
		rep := check(t, pgSettings("127.0.0.1", peertest.ClosedPort(t), "circle", circlePW), nil)
		if only(rep.Findings) != "TCP_REFUSED" {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("protocol timeout", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var held []net.Conn
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				held = append(held, c) // accept, never answer
			}
		}()
		start := time.Now()
		rep := check(t, pgSettings("127.0.0.1", l.Addr().(*net.TCPAddr).Port, "circle", circlePW), func(o *Options) {
			o.Timeout = time.Second
		})
		if only(rep.Findings) != "PROTOCOL_TIMEOUT" {
			t.Fatalf("%+v", rep.Findings)
		}
		if rep.Duration > time.Since(start) {
			t.Fatal("duration accounting is off")
		}
	})
	t.Run("settings", func(t *testing.T) {
		lines := pgSettings("localhost", pg.Port, "circle", circlePW)[:3]
		lines = append(lines, "export CIRCLE_SECRETS_POSTGRES_VMS_URI=\"postgres://circle:p/ss@word@localhost:5432/vms\"")
		rep := check(t, lines, nil)
		if only(rep.Findings) != "SETTING_MISSING,URI_MALFORMED" {
			t.Fatalf("%+v", rep.Findings)
		}
		if !strings.Contains(find(rep.Findings, "SETTING_MISSING").Summary, "POSTGRES_PASSWORD") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("uri", func(t *testing.T) {
		lines := append(pgSettings("localhost", pg.Port, "circle", circlePW),
			fmt.Sprintf("export CIRCLE_SECRETS_POSTGRES_DOMAIN_URI=\"postgres://circle:%s@localhost:%d/domain\"", circlePW, pg.Port))
		rep := check(t, lines, nil)
		f := find(rep.Findings, "PG_DATABASE_MISSING")
		if only(rep.Findings) != "PG_DATABASE_MISSING" || !strings.Contains(f.Target, "/domain") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("server without TLS behind hostssl lines", func(t *testing.T) {
		// The server's ssl is switched off by a reload and back on after, over a superuser
		// connection opened before (new ones need TLS).
		ctx := context.Background()
		c, err := pg.Super(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		setSSL := func(on bool) {
			t.Helper()
			stmt := "ALTER SYSTEM SET ssl = off"
			if on {
				stmt = "ALTER SYSTEM RESET ssl"
			}
			if _, err := c.Exec(ctx, stmt); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
				t.Fatal(err)
			}
			// The reload is asynchronous: a new connection shows when it took effect.
			for deadline := time.Now().Add(30 * time.Second); ; {
				s, err := pg.Super(ctx, "postgres")
				if err == nil {
					s.Close(ctx)
				}
				if (err == nil) == on {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("ssl=%v not in effect after the reload: %v", on, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		setSSL(false)
		defer setSSL(true)
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), nil)
		f := find(rep.Findings, "TLS_REQUIRED")
		if only(rep.Findings) != "TLS_REQUIRED,TLS_OFF" || !f.Blocking || !strings.Contains(f.Summary, "only over TLS, but the server offers no TLS") ||
			!strings.Contains(f.Evidence, "no encryption") {
			t.Fatalf("want a blocking TLS_REQUIRED quoting the server (and the TLS_OFF warning), got %+v", rep.Findings)
		}
	})
	t.Run("read-only standby with an expired certificate", func(t *testing.T) {
		sb := pg.StartStandby(t, time.Now().Add(-24*time.Hour))
		rep := check(t, pgSettings("localhost", sb.Port, "circle", circlePW), nil)
		if only(rep.Findings) != "PG_READ_ONLY,TLS_EXPIRED" {
			t.Fatalf("%+v", rep.Findings)
		}
		if !strings.Contains(find(rep.Findings, "TLS_EXPIRED").Summary, "clock says") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
}

func TestPGVersionNum(t *testing.T) {
	for v, want := range map[string]int{"15.18 (Debian 15.18-0+deb12u1)": 150018, "9.4.26": 90400, "9.5.0": 90500, "10.1": 100001, "9.6beta1": 90600} {
		if got := pgVersionNum(v); got != want {
			t.Errorf("pgVersionNum(%q) = %d, want %d", v, got, want)
		}
	}
	if pgVersionNum("9.4.26") >= minPGVersion || pgVersionNum("9.5.3") < minPGVersion {
		t.Fatal("the 9.5 threshold is wrong")
	}
}

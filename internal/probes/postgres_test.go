package probes

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/settings"
)

const circlePW = "circle-pw-Zq9" // planted secrets: none may appear in a report

func writeSettings(t *testing.T, root string, lines ...string) {
	t.Helper()
	dir := filepath.Join(root, defaults.SharedDir())
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
		c = append(c, f.Code.String())
	}
	return strings.Join(c, ",")
}

func find(fs []findings.Finding, code findings.Code) *findings.Finding {
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
		"CREATE DATABASE domain OWNER circle",
		"CREATE DATABASE federations OWNER circle",
		"CREATE DATABASE permissions OWNER circle",
		"CREATE DATABASE bare OWNER circle",
		"REVOKE CONNECT ON DATABASE vms FROM PUBLIC",
		"GRANT CONNECT ON DATABASE vms TO circle",
	)
	pg.Exec(t, "conductor_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "contexts_service_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "circle", `CREATE EXTENSION "uuid-ossp"`, `CREATE EXTENSION pgcrypto`)
	// CircleCI's HA page: all eight databases, each with uuid-ossp.
	for _, db := range []string{"vms", "cron_service_production", "domain", "federations", "permissions"} {
		pg.Exec(t, db, `CREATE EXTENSION "uuid-ossp"`)
	}
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
		rep := Run(context.Background(), layout.New(root, nil), o)
		assertNoSecret(t, rep, circlePW, "noconnect-pw", "nohba-pw", "wrong-pw-Qx7", "p/ss@word")
		return rep
	}

	// The databases after the first are probed concurrently: a proxy in front of the server
	// passes the first connection at once and holds every later one's first bytes until all
	// of them have arrived. Probed one after another, the second would wait for ever (until
	// the probe's timeout), and the report would not be healthy.
	t.Run("databases after the first concurrently", func(t *testing.T) {
		n := len(DefaultPostgres().pgDatabases())
		port := barrierProxy(t, pg.Port, n-1)
		rep := check(t, pgSettings("localhost", port, "circle", circlePW), nil)
		if len(rep.Findings) != 0 || len(rep.Checked) != n {
			t.Fatalf("want %d healthy databases, got findings %+v, checked %+v", n, rep.Findings, rep.Checked)
		}
	})

	t.Run("healthy", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), nil)
		if len(rep.Findings) != 0 {
			t.Fatalf("findings on a healthy server: %+v", rep.Findings)
		}
		if len(rep.Checked) != 8 {
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
		if only(rep.Findings) != findings.PGAuthFailed.String() || !rep.Findings[0].Blocking {
			t.Fatalf("want one blocking PG_AUTH_FAILED, got %+v", rep.Findings)
		}
	})
	t.Run("no pg_hba line", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "nohba", "nohba-pw"), nil)
		f := find(rep.Findings, findings.PGHBARejected)
		if only(rep.Findings) != findings.PGHBARejected.String() || !strings.Contains(f.Summary, `user "nohba"`) || !strings.Contains(f.Summary, "TLS verified") {
			t.Fatalf("want PG_HBA_REJECTED with user and TLS state, got %+v", rep.Findings)
		}
	})
	t.Run("a runbook database missing blocks", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), func(o *Options) {
			o.Postgres.Databases = append(o.Postgres.Databases, "missing_db")
			o.Postgres.Extensions = map[string][]string{"missing_db": {"uuid-ossp"}}
		})
		f := find(rep.Findings, findings.PGDatabaseMissing)
		if only(rep.Findings) != findings.PGDatabaseMissing.String() || f.Severity != findings.Error || !f.Blocking ||
			f.Fix != `CREATE DATABASE missing_db OWNER circle; then, connected to missing_db as a superuser: CREATE EXTENSION IF NOT EXISTS "uuid-ossp";` {
			t.Fatalf("want a blocking PG_DATABASE_MISSING with the CREATEs to run, got %+v", rep.Findings)
		}
	})
	t.Run("only the runbook's five: the HA page's other three are warnings", func(t *testing.T) {
		// A cluster built from the runbook: its five databases with its extensions, nothing else.
		pg5 := peertest.StartPostgres(t, peertest.PostgresOptions{CA: pg.CA, HBA: []string{"hostssl all circle 127.0.0.0/8 scram-sha-256"}})
		pg5.Exec(t, "postgres", "CREATE ROLE circle LOGIN PASSWORD '"+circlePW+"'",
			"CREATE DATABASE vms OWNER circle", "CREATE DATABASE conductor_production OWNER circle",
			"CREATE DATABASE contexts_service_production OWNER circle", "CREATE DATABASE cron_service_production OWNER circle",
			"CREATE DATABASE circle OWNER circle")
		pg5.Exec(t, "conductor_production", `CREATE EXTENSION "uuid-ossp"`)
		pg5.Exec(t, "contexts_service_production", `CREATE EXTENSION "uuid-ossp"`)
		pg5.Exec(t, "circle", `CREATE EXTENSION "uuid-ossp"`, `CREATE EXTENSION pgcrypto`)
		rep := check(t, pgSettings("localhost", pg5.Port, "circle", circlePW), nil)
		if len(rep.Blocking()) != 0 || rep.Errors() != 0 {
			t.Fatalf("nothing the runbook asks for is missing, yet: %+v", rep.Findings)
		}
		missing := map[string]string{}
		for _, f := range rep.Findings {
			if f.Severity != findings.Warning || f.Blocking {
				t.Errorf("not a warning: %+v", f)
			}
			m := regexp.MustCompile(`database "([^"]+)"`).FindStringSubmatch(f.Summary)
			if m == nil {
				t.Fatalf("the summary names no database: %+v", f)
			}
			switch f.Code {
			case findings.PGDatabaseMissing:
				missing[m[1]] = f.Fix
			case findings.PGExtensionMissing:
				missing[m[1]+" uuid-ossp"] = f.Fix
			default:
				t.Errorf("unexpected %+v", f)
			}
		}
		for _, db := range []string{"domain", "federations", "permissions"} {
			want := "CREATE DATABASE " + db + " OWNER circle; then, connected to " + db + ` as a superuser: CREATE EXTENSION IF NOT EXISTS "uuid-ossp";`
			if missing[db] != want {
				t.Errorf("%s: fix %q, want %q", db, missing[db], want)
			}
		}
		for _, db := range []string{"vms", "cron_service_production"} {
			if missing[db+" uuid-ossp"] != "as a superuser, connected to "+db+`: CREATE EXTENSION IF NOT EXISTS "uuid-ossp";` {
				t.Errorf("%s: no uuid-ossp warning with its fix: %q", db, missing[db+" uuid-ossp"])
			}
		}
		if len(missing) != 5 {
			t.Errorf("want 3 databases and 2 extensions reported, got %v", missing)
		}
	})
	t.Run("connect denied", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "noconnect", "noconnect-pw"), func(o *Options) {
			o.Postgres.Databases = []string{"vms", "bare"}
		})
		f := find(rep.Findings, findings.PGConnectDenied)
		if only(rep.Findings) != findings.PGConnectDenied.String() || f.Fix != "GRANT CONNECT ON DATABASE vms TO noconnect;" {
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
	// The real server behind a certificate haagent cannot verify: it asks for SCRAM, and gets
	// no answer (see TestPostgresPasswordNeverToUnverifiedServer for why not even SCRAM).
	unverified := func(t *testing.T, rep *Report, codes, fix string) {
		t.Helper()
		f := find(rep.Findings, findings.ProbeInconclusive)
		if only(rep.Findings) != codes || f.Severity != findings.Warning || f.Blocking || find(rep.Findings, findings.PGAuthFailed) != nil ||
			!strings.Contains(f.Summary, "asks for SCRAM-SHA-256") || !strings.Contains(f.Summary, "did not send the password") ||
			!strings.Contains(f.Fix, fix) || !strings.Contains(f.Evidence, `code 10 (mechanisms ["SCRAM-SHA-256-PLUS" "SCRAM-SHA-256"]) with TLS, certificate not verified`) {
			t.Fatalf("want %s saying the server asked for SCRAM and was not answered, got %+v", codes, rep.Findings)
		}
		if len(rep.Checked) != 1 || rep.Checked[0].OK || rep.Checked[0].Detail != "TLS, certificate not verified" {
			t.Fatalf("one unverified, unchecked endpoint expected: %+v", rep.Checked)
		}
	}
	t.Run("unknown CA", func(t *testing.T) {
		rep := check(t, pgSettings("localhost", pg.Port, "circle", circlePW), func(o *Options) {
			o.RootCAs = peertest.NewCA(t, "some other CA").Pool()
		})
		f := find(rep.Findings, findings.TLSUnknownAuthority)
		if f == nil || !strings.Contains(f.Summary, "haagent test PostgreSQL CA") || f.Blocking {
			t.Fatalf("want a non-blocking TLS_UNKNOWN_AUTHORITY naming the issuer, got %+v", rep.Findings)
		}
		unverified(t, rep, "TLS_UNKNOWN_AUTHORITY,PROBE_INCONCLUSIVE", "ca-certificates/")
	})
	t.Run("hostname mismatch", func(t *testing.T) {
		rep := check(t, pgSettings("pg.internal.test", pg.Port, "circle", circlePW), nil)
		f := find(rep.Findings, findings.TLSHostnameMismatch)
		if f == nil || !strings.Contains(f.Summary, "localhost, 127.0.0.1, ::1") {
			t.Fatalf("want TLS_HOSTNAME_MISMATCH listing the certificate's names, got %+v", rep.Findings)
		}
		unverified(t, rep, "TLS_HOSTNAME_MISMATCH,PROBE_INCONCLUSIVE", "reissue the certificate with pg.internal.test")
	})
	t.Run("expired certificate", func(t *testing.T) {
		old := peertest.StartPostgres(t, peertest.PostgresOptions{CA: pg.CA, NotAfter: time.Now().Add(-24 * time.Hour),
			HBA: []string{"hostssl all circle 127.0.0.0/8 scram-sha-256"}})
		old.Exec(t, "postgres", "CREATE ROLE circle LOGIN PASSWORD '"+circlePW+"'")
		rep := check(t, pgSettings("localhost", old.Port, "circle", circlePW), nil)
		if f := find(rep.Findings, findings.TLSExpired); f == nil || !strings.Contains(f.Summary, "clock says") {
			t.Fatalf("%+v", rep.Findings)
		}
		unverified(t, rep, "TLS_EXPIRED,PROBE_INCONCLUSIVE", "renew the server's certificate")
	})
	t.Run("dns not found", func(t *testing.T) {
		rep := check(t, pgSettings("nowhere.internal.test", pg.Port, "circle", circlePW), nil)
		if only(rep.Findings) != findings.DNSNotFound.String() {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("tcp refused", func(t *testing.T) {
		rep := check(t, pgSettings("127.0.0.1", peertest.ClosedPort(t), "circle", circlePW), nil)
		if only(rep.Findings) != findings.TCPRefused.String() {
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
		if only(rep.Findings) != findings.ProtocolTimeout.String() {
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
		if !strings.Contains(find(rep.Findings, findings.SettingMissing).Summary, "POSTGRES_PASSWORD") {
			t.Fatalf("%+v", rep.Findings)
		}
	})
	t.Run("uri", func(t *testing.T) {
		lines := append(pgSettings("localhost", pg.Port, "circle", circlePW),
			fmt.Sprintf("export CIRCLE_SECRETS_POSTGRES_ELSEWHERE_URI=\"postgres://circle:%s@localhost:%d/elsewhere\"", circlePW, pg.Port))
		rep := check(t, lines, nil)
		f := find(rep.Findings, findings.PGDatabaseMissing)
		// A database a URI names is required: a service is set to use it.
		if only(rep.Findings) != findings.PGDatabaseMissing.String() || !strings.Contains(f.Target, "/elsewhere") || !f.Blocking {
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
		f := find(rep.Findings, findings.TLSRequired)
		if only(rep.Findings) != "TLS_REQUIRED,TLS_OFF" || !f.Blocking || !strings.Contains(f.Summary, "only over TLS, but the server offers no TLS") ||
			!strings.Contains(f.Evidence, "no encryption") {
			t.Fatalf("want a blocking TLS_REQUIRED quoting the server (and the TLS_OFF warning), got %+v", rep.Findings)
		}
	})
	t.Run("read-only standby", func(t *testing.T) {
		sb := pg.StartStandby(t, time.Now().Add(24*time.Hour))
		rep := check(t, pgSettings("localhost", sb.Port, "circle", circlePW), nil)
		if only(rep.Findings) != findings.PGReadOnly.String() || !rep.Findings[0].Blocking {
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

// pgStandin is a listener of the test's own that speaks PostgreSQL's startup protocol as a
// man in the middle would: it answers SSLRequest with 'N' (or completes TLS with a certificate
// from a CA nobody trusts), then asks for the password in clear text or as MD5, and records
// every byte the client sent after TLS. No real server can be made to do this on demand.
type pgStandin struct {
	port  int
	mu    sync.Mutex
	got   bytes.Buffer
	msgs  []string // the frontend messages received after the startup message
	conns sync.WaitGroup
}

func startPGStandin(t *testing.T, cert *tls.Certificate, ask pgproto3.BackendMessage) *pgStandin {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &pgStandin{port: l.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go s.serve(c, cert, ask)
		}
	}()
	return s
}

type recorder struct {
	r io.Reader
	s *pgStandin
}

func (r recorder) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.s.mu.Lock()
	r.s.got.Write(b[:n])
	r.s.mu.Unlock()
	return n, err
}

func (s *pgStandin) serve(c net.Conn, cert *tls.Certificate, ask pgproto3.BackendMessage) {
	defer s.conns.Done()
	defer c.Close()
	var conn net.Conn = c
	be := pgproto3.NewBackend(recorder{conn, s}, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return // the probe's TCP reachability check connects and closes
	}
	if _, ok := msg.(*pgproto3.SSLRequest); ok {
		if cert == nil {
			if _, err := conn.Write([]byte("N")); err != nil {
				return
			}
		} else {
			if _, err := conn.Write([]byte("S")); err != nil {
				return
			}
			tc := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{*cert}})
			if err := tc.Handshake(); err != nil {
				return // the verified attempt refuses the certificate
			}
			conn = tc
		}
		be = pgproto3.NewBackend(recorder{conn, s}, conn)
		if msg, err = be.ReceiveStartupMessage(); err != nil {
			return
		}
	}
	if _, ok := msg.(*pgproto3.StartupMessage); !ok {
		return
	}
	be.Send(ask)
	if be.Flush() != nil {
		return
	}
	// So that an answer is read as what it is (SASLInitialResponse after a SASL request).
	switch ask.(type) {
	case *pgproto3.AuthenticationSASL:
		be.SetAuthType(pgproto3.AuthTypeSASL)
	case *pgproto3.AuthenticationMD5Password:
		be.SetAuthType(pgproto3.AuthTypeMD5Password)
	case *pgproto3.AuthenticationCleartextPassword:
		be.SetAuthType(pgproto3.AuthTypeCleartextPassword)
	}
	m, err := be.Receive()
	if err != nil {
		return // the client hung up without answering: what haagent must do
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, fmt.Sprintf("%T", m))
	s.mu.Unlock()
	// Whatever it sent, end the exchange so the client does not wait for an answer.
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"})
	be.Flush()
}

// wait returns once every connection the stand-in accepted has ended: the probe closes its
// connections before Run returns, so this is bounded; the timeout only guards a broken test.
func (s *pgStandin) wait(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stand-in's connections did not end")
	}
}

// A TLS-stripping or unverified server never receives anything that proves the password: not
// the password in clear, not an MD5 hash, not a SCRAM proof (an impostor that picks the salt and
// an iteration count of 1 tests guesses against a proof offline). haagent sends the startup
// message, reads what the server asks for, hangs up, and says what to put in the bucket so the
// next boot verifies the server; the impostor's "password authentication failed" never becomes
// a PG_AUTH_FAILED.
func TestPostgresPasswordNeverToUnverifiedServer(t *testing.T) {
	const pw = "Hunter2-mitm-Pw"
	ca := peertest.NewCA(t, "a CA nobody trusts")
	certPEM, keyPEM := ca.Issue(t, []string{"127.0.0.1"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cleartext := &pgproto3.AuthenticationCleartextPassword{}
	md5 := &pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}
	scram := &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}
	for _, c := range []struct {
		name     string
		cert     *tls.Certificate
		ask      pgproto3.BackendMessage
		codes    string
		summary  string
		fix      string
		evidence string
	}{
		{"no TLS, then cleartext", nil, cleartext, "PROBE_INCONCLUSIVE,TLS_OFF", "the password in clear text", "enable TLS on the server", "code 3"},
		{"no TLS, then MD5", nil, md5, "PROBE_INCONCLUSIVE,TLS_OFF", "an MD5 password hash", "enable TLS on the server", "code 5"},
		{"no TLS, then SCRAM (a TLS stripper after a proof to crack)", nil, scram, "PROBE_INCONCLUSIVE,TLS_OFF", "SCRAM-SHA-256", "enable TLS on the server", `code 10 (mechanisms ["SCRAM-SHA-256"])`},
		{"untrusted certificate, then SCRAM", &cert, scram, "TLS_UNKNOWN_AUTHORITY,PROBE_INCONCLUSIVE", "SCRAM-SHA-256", "global-bundle.pem", "code 10"},
		{"untrusted certificate, then cleartext", &cert, cleartext, "TLS_UNKNOWN_AUTHORITY,PROBE_INCONCLUSIVE", "the password in clear text", "ca-certificates/", "code 3"},
		{"untrusted certificate, then MD5 (RDS)", &cert, md5, "TLS_UNKNOWN_AUTHORITY,PROBE_INCONCLUSIVE", "an MD5 password hash", "global-bundle.pem", "code 5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startPGStandin(t, c.cert, c.ask)
			root := t.TempDir()
			writeSettings(t, root, pgSettings("127.0.0.1", s.port, "circle", pw)...)
			rep := Run(context.Background(), layout.New(root, nil), Options{Timeout: 5 * time.Second, Postgres: DefaultPostgres(), Only: []string{"postgres"},
				RootCAs: peertest.NewCA(t, "the CA haagent trusts").Pool()})
			s.wait(t)
			s.mu.Lock()
			got, msgs := s.got.String(), s.msgs
			s.mu.Unlock()
			if strings.Contains(got, pw) || len(msgs) != 0 {
				t.Fatalf("the stand-in received the password or an answer to its request: messages %v\n%q", msgs, got)
			}
			if !strings.Contains(got, "circle") {
				t.Fatalf("the stand-in never saw a startup message; the test proves nothing: %q", got)
			}
			assertNoSecret(t, rep, pw)
			f := find(rep.Findings, findings.ProbeInconclusive)
			if only(rep.Findings) != c.codes || f.Severity != findings.Warning || f.Blocking ||
				!strings.Contains(f.Summary, c.summary) || !strings.Contains(f.Summary, "did not send the password") ||
				!strings.Contains(f.Fix, c.fix) || !strings.Contains(f.Evidence, c.evidence) {
				t.Fatalf("want %s with a warning saying what the server asked for and how to verify it, got %+v", c.codes, rep.Findings)
			}
			if len(rep.Checked) != 1 || rep.Checked[0].OK {
				t.Fatalf("%+v", rep.Checked)
			}
		})
	}
}

// A malformed URI's finding names the part that is wrong and quotes none of the password: not
// in the summary (the STATUS= headline), the evidence or the target.
func TestPGURIMalformedQuotesNoSecret(t *testing.T) {
	for _, c := range []struct{ name, uri, why string }{
		{"slash in the password", "postgres://circle:Hunter2Prefix/Suffix@db.internal:5432/circle", "the password holds '/' (%2F) unescaped"},
		{"space in the password", "postgres://circle:Hunter2 Prefix@db.internal:5432/circle", "the password holds a space (%20) unescaped"},
		{"tab and @ in the password", "postgres://circle:Hunter2\t@Prefix@db.internal:5432/circle", "a tab (%09), '@' (%40)"},
		{"digits then slash", "postgres://circle:2024/Hunter2Prefix@db.internal/circle", "the password holds '/' (%2F) unescaped"},
		{"bad escape", "postgres://circle:Hunter2%zzPrefix@db.internal/circle", "a '%' that starts no valid escape"},
		{"bad port", "postgres://circle:Hunter2Prefix@db.internal:54x2/circle", "the port after host db.internal is not a port number"},
		{"no database", "postgres://circle:Hunter2Prefix@db.internal:5432", "names no database"},
		{"wrong scheme", "mysql://circle:Hunter2Prefix@db.internal/circle", "does not start with postgres://"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, f := parsePGURI("CIRCLE_SECRETS_POSTGRES_X_URI", settings.Setting{Value: c.uri, File: "/etc/circleconfig/shared/postgresql", Line: 3})
			if f == nil {
				t.Fatal("parsed")
			}
			if f.Code != findings.URIMalformed || !strings.Contains(f.Summary, c.why) {
				t.Fatalf("want URI_MALFORMED saying %q, got %+v", c.why, f)
			}
			b, _ := json.Marshal(f)
			for _, piece := range []string{"Hunter2", "Prefix", "Suffix"} {
				if strings.Contains(string(b)+f.String(), piece) {
					t.Fatalf("%q of the password appears in the finding: %s", piece, b)
				}
			}
		})
	}
	tg, f := parsePGURI("X", settings.Setting{Value: "postgres://circle:p%2Fss%40w%20rd@[::1]:6432/vms?sslmode=require"})
	if f != nil || tg.user != "circle" || tg.pwd != "p/ss@w rd" || tg.ep.Host != "::1" || tg.ep.Port != "6432" || tg.databases[0].name != "vms" {
		t.Fatalf("%+v %+v", tg, f)
	}
}

// barrierProxy forwards to the server at port on loopback: the first connection that sends
// bytes at once, each later one only when want of them have sent their first bytes (a
// connection that closes without sending, the reachability dial, is not counted).
func barrierProxy(t *testing.T, port, want int) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	var mu sync.Mutex
	first, arrived, release := true, 0, make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				mu.Lock()
				pass := first
				first = false
				if !pass {
					if arrived++; arrived == want {
						close(release)
					}
				}
				mu.Unlock()
				if !pass {
					select {
					case <-release:
					case <-done:
						return
					}
				}
				up, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					return
				}
				defer up.Close()
				if _, err := up.Write(buf[:n]); err != nil {
					return
				}
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

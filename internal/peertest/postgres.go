package peertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PGBin is Debian's PostgreSQL 15.
const PGBin = "/usr/lib/postgresql/15/bin"

// Postgres is a running PostgreSQL 15 cluster with TLS (own CA, certificate for localhost,
// 127.0.0.1 and ::1), scram-sha-256 and hostssl-only rules.
type Postgres struct {
	Port      int
	Dir       string
	CA        *CA
	SuperPass string
	cert, key []byte
	uid, gid  int
}

// PostgresOptions shape a cluster.
type PostgresOptions struct {
	// Listen is listen_addresses (default 127.0.0.1,127.0.0.3,::1: 127.0.0.3 is outside the
	// certificate, for hostname mismatches).
	Listen string
	// HBA lines added after the superuser's own.
	HBA []string
	// NotAfter of the server certificate (default: a day from now).
	NotAfter time.Time
	CA       *CA
}

// StartPostgres initialises and starts a cluster owned by the postgres user (initdb and
// postgres refuse root).
func StartPostgres(t testing.TB, o PostgresOptions) *Postgres {
	t.Helper()
	if _, err := os.Stat(filepath.Join(PGBin, "postgres")); err != nil {
		Missing(t, "PostgreSQL 15 is not installed (apt-get install postgresql-15)")
	}
	if os.Geteuid() != 0 {
		Missing(t, "the PostgreSQL tests run as root (they start the server as the postgres user)")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		Missing(t, "no postgres user: "+err.Error())
	}
	pg := &Postgres{SuperPass: "super-secret-pw", CA: o.CA}
	pg.uid, _ = strconv.Atoi(u.Uid)
	pg.gid, _ = strconv.Atoi(u.Gid)
	if pg.CA == nil {
		pg.CA = NewCA(t, "haagent test PostgreSQL CA")
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1,127.0.0.3,::1"
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(24 * time.Hour)
	}
	notBefore := time.Now().Add(-time.Hour)
	if o.NotAfter.Before(notBefore) {
		notBefore = o.NotAfter.Add(-48 * time.Hour)
	}
	pg.cert, pg.key = pg.CA.Issue(t, []string{"localhost", "127.0.0.1", "::1"}, notBefore, o.NotAfter)

	// t.TempDir is 0700 root: the postgres user needs its own traversable directory.
	dir, err := os.MkdirTemp("", "haagent-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	pg.Dir = dir
	pg.write(t, "pw", []byte(pg.SuperPass), 0o600)
	pg.write(t, "server.crt", pg.cert, 0o600)
	pg.write(t, "server.key", pg.key, 0o600)
	data := filepath.Join(dir, "data")
	pg.run(t, filepath.Join(PGBin, "initdb"), "-D", data, "-U", "postgres", "--pwfile", filepath.Join(dir, "pw"),
		"--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
	pg.Port = FreePort(t)
	conf := fmt.Sprintf(`
port = %d
listen_addresses = '%s'
unix_socket_directories = '%s'
ssl = on
ssl_cert_file = '%s/server.crt'
ssl_key_file = '%s/server.key'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = replica
max_wal_senders = 4
`, pg.Port, o.Listen, dir, dir, dir)
	f, _ := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(conf)
	f.Close()
	hba := []string{"local all all peer",
		"hostssl all postgres 127.0.0.1/32 scram-sha-256",
		"hostssl replication postgres 127.0.0.1/32 scram-sha-256"}
	hba = append(hba, o.HBA...)
	pg.write(t, "data/pg_hba.conf", []byte(strings.Join(hba, "\n")+"\n"), 0o600)
	pg.start(t, data)
	return pg
}

func (pg *Postgres) write(t testing.TB, name string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(pg.Dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	os.Chown(p, pg.uid, pg.gid)
}

func (pg *Postgres) run(t testing.TB, argv ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--"}, argv...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+pg.SuperPass)
	os.Chown(pg.Dir, pg.uid, pg.gid)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
}

func (pg *Postgres) start(t testing.TB, data string) {
	t.Helper()
	os.Chown(pg.Dir, pg.uid, pg.gid)
	cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(PGBin, "postgres"), "-D", data)
	logf := filepath.Join(pg.Dir, "postgres.log")
	start(t, cmd, logf)
	// pg_isready-like: accept TCP and a superuser query.
	WaitListening(t, fmt.Sprintf("127.0.0.1:%d", pg.Port), cmd, logf)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pg.Super(context.Background(), "postgres")
		if err == nil {
			c.Close(context.Background())
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf)
			t.Fatalf("PostgreSQL never accepted the superuser: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Super connects as the superuser over TLS.
func (pg *Postgres) Super(ctx context.Context, db string) (*pgx.Conn, error) {
	// The harness's own connection does not verify: some test clusters carry broken
	// certificates on purpose.
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=require", pg.Port, db))
	if err != nil {
		return nil, err
	}
	cfg.Password = pg.SuperPass
	return pgx.ConnectConfig(ctx, cfg)
}

// Exec runs SQL statements as the superuser in db.
func (pg *Postgres) Exec(t testing.TB, db string, stmts ...string) {
	t.Helper()
	c, err := pg.Super(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for _, s := range stmts {
		if _, err := c.Exec(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// StartStandby clones the cluster with pg_basebackup -R and starts it read-only on its own
// port, with a certificate valid until notAfter.
func (pg *Postgres) StartStandby(t testing.TB, notAfter time.Time) *Postgres {
	t.Helper()
	sb := &Postgres{SuperPass: pg.SuperPass, CA: pg.CA, uid: pg.uid, gid: pg.gid}
	dir, err := os.MkdirTemp("", "haagent-pg-standby-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sb.Dir = dir
	os.Chown(dir, sb.uid, sb.gid)
	nb := time.Now().Add(-time.Hour)
	if notAfter.Before(nb) {
		nb = notAfter.Add(-48 * time.Hour)
	}
	sb.cert, sb.key = sb.CA.Issue(t, []string{"localhost", "127.0.0.1", "::1"}, nb, notAfter)
	sb.write(t, "server.crt", sb.cert, 0o600)
	sb.write(t, "server.key", sb.key, 0o600)
	data := filepath.Join(dir, "data")
	sb.run(t, filepath.Join(PGBin, "pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "postgres",
		"-D", data, "-R", "-X", "stream", "-c", "fast")
	sb.Port = FreePort(t)
	f, _ := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "\nport = %d\nunix_socket_directories = '%s'\nssl_cert_file = '%s/server.crt'\nssl_key_file = '%s/server.key'\n", sb.Port, dir, dir, dir)
	f.Close()
	sb.start(t, data)
	return sb
}

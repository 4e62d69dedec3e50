package peertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// FerretDB is a running FerretDB (SQLite backend, SCRAM) speaking the MongoDB wire protocol.
type FerretDB struct {
	Addr, TLSAddr string
	CA            *CA
	RootPass      string
}

// FerretDBOptions shape the server.
type FerretDBOptions struct {
	ReplSet string
	// TLS adds a TLS listener with a certificate for localhost and 127.0.0.1 from CA.
	TLS bool
	// TLSOnly leaves only the TLS listener.
	TLSOnly bool
}

// StartFerretDB starts FerretDB with an admin root user.
func StartFerretDB(t testing.TB, o FerretDBOptions) *FerretDB {
	t.Helper()
	bin := Bin(t, "ferretdb")
	dir := t.TempDir()
	f := &FerretDB{RootPass: "ferret-root-pw"}
	args := []string{"--handler=sqlite", "--sqlite-url=file:" + dir + "/", "--state-dir=" + dir, "--telemetry=disable",
		"--test-enable-new-auth", "--debug-addr=127.0.0.1:0", "--setup-database=admin", "--setup-username=root", "--setup-password=" + f.RootPass}
	if !o.TLSOnly {
		f.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		args = append(args, "--listen-addr="+f.Addr)
	} else {
		args = append(args, "--listen-addr=")
	}
	if o.ReplSet != "" {
		args = append(args, "--repl-set-name="+o.ReplSet)
	}
	if o.TLS || o.TLSOnly {
		f.CA = NewCA(t, "haagent test MongoDB CA")
		cert, key := f.CA.Issue(t, []string{"localhost", "127.0.0.1"}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
		os.WriteFile(filepath.Join(dir, "cert.pem"), cert, 0o600)
		os.WriteFile(filepath.Join(dir, "key.pem"), key, 0o600)
		f.TLSAddr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		args = append(args, "--listen-tls="+f.TLSAddr, "--listen-tls-cert-file="+filepath.Join(dir, "cert.pem"), "--listen-tls-key-file="+filepath.Join(dir, "key.pem"))
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	logf := filepath.Join(dir, "ferretdb.log")
	start(t, cmd, logf)
	if f.Addr != "" {
		WaitListening(t, f.Addr, cmd, logf)
	}
	if f.TLSAddr != "" {
		WaitListening(t, f.TLSAddr, cmd, logf)
	}
	return f
}

// CreateUser adds a user in db (no real roles in FerretDB).
func (f *FerretDB) CreateUser(t testing.TB, db, user, pass string) {
	t.Helper()
	addr := f.Addr
	o := options.Client().SetHosts([]string{addr}).SetDirect(true).
		SetAuth(options.Credential{Username: "root", Password: f.RootPass, AuthSource: "admin"})
	c, err := mongo.Connect(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(context.Background())
	if err := c.Database(db).RunCommand(context.Background(), bson.D{{Key: "createUser", Value: user}, {Key: "pwd", Value: pass}, {Key: "roles", Value: bson.A{}}}).Err(); err != nil {
		t.Fatalf("createUser %s in %s: %v", user, db, err)
	}
}

package certs

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/probes"
)

const fetched = "/var/lib/haagent/ca-certificates"

func put(t *testing.T, root, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(root, fetched, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(fetched, name)
}

func needTool(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/update-ca-certificates"); err != nil {
		peertest.Missing(t, "update-ca-certificates is not installed (apt-get install ca-certificates)")
	}
}

func TestInstallValidatesAndRefreshesOnlyOnChange(t *testing.T) {
	needTool(t)
	root := t.TempDir()
	ca := peertest.NewCA(t, "Databases Root CA")
	soon := peertest.NewCAValid(t, "Soon Expiring CA", time.Now().Add(-time.Hour), time.Now().Add(10*24*time.Hour))
	old := peertest.NewCAValid(t, "Expired CA", time.Now().Add(-72*time.Hour), time.Now().Add(-24*time.Hour))
	leaf, key := ca.Issue(t, []string{"db.internal"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	srcs := []string{
		put(t, root, "db-ca.pem", ca.CertPEM), // a .pem: installed as .crt, which update-ca-certificates needs
		put(t, root, "soon.crt", soon.CertPEM),
		put(t, root, "expired.crt", old.CertPEM),
		put(t, root, "server.crt", leaf),
		put(t, root, "server.key", key),
		put(t, root, "notes.txt", []byte("not a certificate")),
		put(t, root, "bundle.crt", append(append([]byte{}, ca.CertPEM...), soon.CertPEM...)),
	}
	res, err := Install(layout.New(root, nil), Paths(srcs...), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range res.Findings {
		got[filepath.Base(f.Target)] = f.Code.String()
	}
	want := map[string]string{"soon.crt": findings.CACertExpiring.String(), "expired.crt": findings.CACertExpired.String(), "server.crt": findings.CACertInvalid.String(),
		"server.key": findings.CACertInvalid.String(), "notes.txt": findings.CACertInvalid.String(), "bundle.crt": findings.CACertExpiring.String()}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %s, want %s (%+v)", k, got[k], v, res.Findings)
		}
	}
	for _, f := range res.Findings {
		if f.Code == findings.CACertInvalid && strings.HasSuffix(f.Target, "server.key") && !strings.Contains(f.Summary, "private key") {
			t.Errorf("a key must be refused as a key: %+v", f)
		}
		if f.Code == findings.CACertInvalid && strings.HasSuffix(f.Target, "server.crt") && !strings.Contains(f.Summary, "not a CA") {
			t.Errorf("a leaf must be refused as a leaf: %+v", f)
		}
	}
	n := func(name string, i, of int) string { return InstalledName(filepath.Join(fetched, name), i, of) }
	wantInstalled := []string{n("bundle.crt", 0, 2), n("bundle.crt", 1, 2), n("db-ca.pem", 0, 1), n("soon.crt", 0, 1)}
	sort.Strings(wantInstalled)
	if strings.Join(res.Installed, ",") != strings.Join(wantInstalled, ",") || !res.Refreshed {
		t.Fatalf("installed %v refreshed %v", res.Installed, res.Refreshed)
	}
	bundle, err := os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil || !strings.Contains(string(bundle), strings.TrimSpace(string(ca.CertPEM))) {
		t.Fatalf("update-ca-certificates did not put the CA in the bundle: %v", err)
	}

	// Unchanged: no refresh.
	res, err = Install(layout.New(root, nil), Paths(srcs...), time.Now())
	if err != nil || res.Changed || res.Refreshed {
		t.Fatalf("a second run changed something: %+v %v", res, err)
	}
	// Gone from the bucket: removed from the store.
	res, err = Install(layout.New(root, nil), Paths(srcs[:1]...), time.Now())
	removed := []string{n("bundle.crt", 0, 2), n("bundle.crt", 1, 2), n("soon.crt", 0, 1)}
	sort.Strings(removed)
	if err != nil || strings.Join(res.Removed, ",") != strings.Join(removed, ",") || !res.Refreshed {
		t.Fatalf("removal: %+v %v", res, err)
	}
	bundle, _ = os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
	if strings.Contains(string(bundle), strings.TrimSpace(string(soon.CertPEM))) {
		t.Fatal("a removed CA is still in the bundle")
	}
}

// A probe against a server signed by the CA passes only after the step installed it.
func TestProbeTrustsTheCAOnlyAfterInstall(t *testing.T) {
	needTool(t)
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{HBA: []string{"hostssl all circle 127.0.0.0/8 scram-sha-256"}})
	pg.Exec(t, "postgres", "CREATE ROLE circle LOGIN PASSWORD 'pw-circle'", "CREATE DATABASE circle OWNER circle")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, layout.New("/", nil).SharedDir()), 0o700)
	os.WriteFile(filepath.Join(root, layout.New("/", nil).SharedDir(), "postgresql"), []byte(
		"export POSTGRES_HOST=127.0.0.1\nexport POSTGRES_PORT="+itoa(pg.Port)+"\nexport POSTGRES_USER=circle\nexport POSTGRES_PASSWORD=pw-circle\n"), 0o600)
	o := probes.Options{Postgres: probes.PostgresOptions{Databases: []string{"circle"}}, Only: []string{"postgres"}}
	codes := func() string {
		var c []string
		for _, f := range probes.Run(context.Background(), layout.New(root, nil), o).Findings {
			c = append(c, f.Code.String())
		}
		return strings.Join(c, ",")
	}
	// Unverified, the probe does not authenticate: the check of the password is inconclusive.
	if got := codes(); got != "TLS_UNKNOWN_AUTHORITY,PROBE_INCONCLUSIVE" {
		t.Fatalf("before the step: %s", got)
	}
	src := put(t, root, "db-ca.crt", pg.CA.CertPEM)
	if _, err := Install(layout.New(root, nil), Paths(src), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := codes(); got != "" {
		t.Fatalf("after the step: %s", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// Two CA files with the same base name in different directories of the bucket (or the same
// name with another extension) are both installed, each under its own name: none is silently
// dropped.
func TestInstallNamesFilesAfterTheirWholePath(t *testing.T) {
	needTool(t)
	root := t.TempDir()
	pgCA, vaultCA, other := peertest.NewCA(t, "PostgreSQL CA"), peertest.NewCA(t, "Vault CA"), peertest.NewCA(t, "Other CA")
	srcs := []Source{
		{Path: put(t, root, "postgres/ca.pem", pgCA.CertPEM), Name: "ca-certificates/postgres/ca.pem"},
		{Path: put(t, root, "vault/ca.pem", vaultCA.CertPEM), Name: "ca-certificates/vault/ca.pem"},
		{Path: put(t, root, "vault/ca.crt", other.CertPEM), Name: "ca-certificates/vault/ca.crt"},
	}
	res, err := Install(layout.New(root, nil), srcs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Installed) != 3 {
		t.Fatalf("installed %v, want three distinct files", res.Installed)
	}
	for _, ca := range []*peertest.CA{pgCA, vaultCA, other} {
		found := false
		for _, name := range res.Installed {
			b, _ := os.ReadFile(filepath.Join(root, layout.CAInstallDir, name))
			found = found || strings.TrimSpace(string(b)) == strings.TrimSpace(string(ca.CertPEM))
		}
		if !found {
			t.Errorf("a CA was dropped: %v", res.Installed)
		}
	}
	if !strings.HasPrefix(res.Installed[0], "ca-certificates_") {
		t.Errorf("installed names should say where they came from: %v", res.Installed)
	}
}

// A CA file replaced in the bucket by something broken keeps the certificate it installed
// before (reported as CA_CERT_INVALID): a bad upload does not take trust away from a working CA.
func TestABrokenReplacementKeepsTheInstalledCA(t *testing.T) {
	needTool(t)
	root := t.TempDir()
	ca := peertest.NewCA(t, "Databases Root CA")
	src := []Source{{Path: put(t, root, "db/ca.pem", ca.CertPEM), Name: "ca-certificates/db/ca.pem"}}
	if _, err := Install(layout.New(root, nil), src, time.Now()); err != nil {
		t.Fatal(err)
	}
	put(t, root, "db/ca.pem", []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	res, err := Install(layout.New(root, nil), src, time.Now())
	if err != nil || len(res.Removed) != 0 || len(res.Findings) != 1 || res.Findings[0].Code != findings.CACertInvalid {
		t.Fatalf("%+v %v", res, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, layout.CAInstallDir, InstalledName("ca-certificates/db/ca.pem", 0, 1))); strings.TrimSpace(string(b)) != strings.TrimSpace(string(ca.CertPEM)) {
		t.Fatal("the working CA was removed")
	}
}

package probes

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/settings"
)

// Services with customizations of their own see their own targets: each distinct one is
// probed once, and what it finds names the services that use it.
func TestPerServiceTargetsProbedOnceEach(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{HBA: []string{
		"hostssl all circle 127.0.0.0/8 scram-sha-256",
		"hostssl all contexts 127.0.0.0/8 scram-sha-256",
	}})
	pg.Exec(t, "postgres",
		"CREATE ROLE circle LOGIN PASSWORD '"+circlePW+"'",
		"CREATE ROLE contexts LOGIN PASSWORD 'contexts-pw-Lm3'",
		"CREATE DATABASE circle OWNER circle",
	)
	root := t.TempDir()
	trustCA(t, root, pg.CA)
	writeSettings(t, root, pgSettings("localhost", pg.Port, "circle", circlePW)...)
	own := func(service, content string) {
		t.Helper()
		p := filepath.Join(root, defaults.CircleConfigDir(), service, settings.ServiceFile)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Two services on another role with a wrong password: one target, probed once.
	own("contexts-service", "export POSTGRES_USER=\"contexts\"\nexport POSTGRES_PASSWORD=\"wrong-pw-Qx7\"\n")
	own("cron-service", "export POSTGRES_USER=\"contexts\"\nexport POSTGRES_PASSWORD=\"wrong-pw-Qx7\"\nexport JVM_HEAP_SIZE=1g\n")
	// One on another server (nothing listens there).
	own("vm-service", fmt.Sprintf("export POSTGRES_PORT=\"%d\"\n", peertest.ClosedPort(t)))
	// One that adds a database of its own to the shared server: the shared server is still
	// probed once (for everyone using it), the new database for workflows-conductor.
	own("workflows-conductor", fmt.Sprintf("export CIRCLE_SECRETS_POSTGRES_WORKFLOWS_URI=\"postgres://circle:%s@localhost:%d/workflows_missing\"\n", circlePW, pg.Port))
	// One whose own file repeats the shared target: the shared probe covers it.
	own("frontend", "export POSTGRES_HOST=\"localhost\"\nexport JVM_HEAP_SIZE=2g\n")
	// Not shell: synced, never parsed.
	os.WriteFile(filepath.Join(root, defaults.CircleConfigDir(), "frontend", "resource-definitions.edn"), []byte("{:medium {:cpu 2.0}}\n"), 0o644)

	o := Options{Timeout: 5 * time.Second, Postgres: PostgresOptions{Databases: []string{"circle"}}, Only: []string{"postgres"}}
	rep := Run(context.Background(), layout.New(root, nil), o)
	assertNoSecret(t, rep, circlePW, "contexts-pw-Lm3", "wrong-pw-Qx7")

	byUser := map[string]Checked{}
	for _, c := range rep.Checked {
		byUser[c.UsedBy] = c
	}
	if len(rep.Checked) != 4 {
		t.Fatalf("want four targets probed once each (shared, contexts, vm-service, workflows), got %+v", rep.Checked)
	}
	if c, ok := byUser["workflows-conductor"]; !ok || c.OK || !strings.HasSuffix(c.Target, "/workflows_missing") {
		t.Errorf("workflows-conductor's own database: %+v", rep.Checked)
	}
	shared, ok := byUser["every service but contexts-service, cron-service, vm-service"]
	if !ok || !shared.OK || !strings.HasPrefix(shared.Target, "circle@") {
		t.Errorf("the shared target (frontend's included): %+v", rep.Checked)
	}
	if c, ok := byUser["contexts-service, cron-service"]; !ok || c.OK || !strings.HasPrefix(c.Target, "contexts@") {
		t.Errorf("the contexts target: %+v", rep.Checked)
	}
	if c, ok := byUser["vm-service"]; !ok || c.OK {
		t.Errorf("vm-service's target: %+v", rep.Checked)
	}

	if got := only(rep.Findings); got != "PG_AUTH_FAILED,PG_DATABASE_MISSING,TCP_REFUSED" {
		t.Fatalf("want one PG_AUTH_FAILED, PG_DATABASE_MISSING and TCP_REFUSED, got %s: %+v", got, rep.Findings)
	}
	if f := find(rep.Findings, findings.PGDatabaseMissing); !strings.HasSuffix(f.Summary, "(used by workflows-conductor)") {
		t.Errorf("PG_DATABASE_MISSING must name workflows-conductor: %q", f.Summary)
	}
	auth := find(rep.Findings, findings.PGAuthFailed)
	if !strings.HasSuffix(auth.Summary, "(used by contexts-service, cron-service)") || !strings.Contains(auth.Summary, `user "contexts"`) {
		t.Errorf("PG_AUTH_FAILED must name the services using the target: %q", auth.Summary)
	}
	if refused := find(rep.Findings, findings.TCPRefused); !strings.HasSuffix(refused.Summary, "(used by vm-service)") {
		t.Errorf("TCP_REFUSED must name vm-service: %q", refused.Summary)
	}

	var text strings.Builder
	rep.WriteText(&text)
	t.Log("\n" + text.String())
	if !strings.Contains(text.String(), "used by contexts-service, cron-service") {
		t.Errorf("the text report does not name the services:\n%s", text.String())
	}
}

// Without customizations of their own every service sees the shared settings: one target per
// probe, reported as before, naming nobody.
func TestSharedTargetNamesNobody(t *testing.T) {
	root := t.TempDir()
	writeSettings(t, root, pgSettings("127.0.0.1", peertest.ClosedPort(t), "circle", circlePW)...)
	p := filepath.Join(root, defaults.CircleConfigDir(), "frontend", settings.ServiceFile)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("export JVM_HEAP_SIZE=2g\n"), 0o644)
	rep := Run(context.Background(), layout.New(root, nil), Options{Timeout: 2 * time.Second, Postgres: PostgresOptions{Databases: []string{"circle"}}, Only: []string{"postgres"}})
	if len(rep.Checked) != 1 || rep.Checked[0].UsedBy != "" {
		t.Fatalf("one target, no service named: %+v", rep.Checked)
	}
	for _, f := range rep.Findings {
		if strings.Contains(f.Summary, "used by") {
			t.Errorf("a finding names services although all share the target: %q", f.Summary)
		}
	}
}

// The grouping of services into targets is only as right as Reads: every probe must read no
// variable outside the prefixes it declares there.
func TestEachProbeReadsOnlyWhatItDeclares(t *testing.T) {
	closed := peertest.ClosedPort(t)
	all := fmt.Sprintf(`MONGO_BASE_URI=mongodb://circle:pw@127.0.0.1:%[1]d
export CIRCLE_SECRETS_MONGODB_MAIN_URI="$MONGO_BASE_URI/circle_ghe?authSource=admin"
export CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI="$MONGO_BASE_URI/circle_ghe?authSource=admin"
export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI="$MONGO_BASE_URI/build_state_dev_ghe?authSource=admin"
export CIRCLE_SECRETS_MONGODB_CONTAINERS_URI="$MONGO_BASE_URI/containers_dev_ghe?authSource=admin"
export CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI="$MONGO_BASE_URI/remote_containers_dev_ghe?authSource=admin"
export CIRCLE_SECRETS_POSTGRES_MAIN_URI="postgres://circle:pw@127.0.0.1:%[1]d/circle"
export POSTGRES_HOST="127.0.0.1"
export POSTGRES_PORT="%[1]d"
export POSTGRES_USER="circle"
export POSTGRES_PASSWORD="pw"
export VAULT__SCHEME="https"
export VAULT__HOST="127.0.0.1"
export VAULT__PORT="%[1]d"
export VAULT__CLIENT_TOKEN="token"
export VAULT__TRANSIT_MOUNT="transit"
`, closed)
	for _, svc := range Services {
		t.Run(svc, func(t *testing.T) {
			s, fs := settings.Parse(defaults.InstallationCustomizations(), []byte(all))
			if len(fs) != 0 {
				t.Fatal(fs)
			}
			var mu sync.Mutex
			read := map[string]bool{}
			s.OnRead(func(name string) { mu.Lock(); read[name] = true; mu.Unlock() })
			o := Options{Timeout: 2 * time.Second, Postgres: DefaultPostgres()}
			o.RootCAs, o.Resolver = TrustPool(layout.New(t.TempDir(), nil)), net.DefaultResolver
			ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
			defer cancel()
			registry[svc](ctx, &prober{opts: o}, s)
			match := readsMatch(svc)
			mu.Lock()
			defer mu.Unlock()
			if len(read) == 0 {
				t.Fatal("the probe read nothing: the hook is not wired")
			}
			for name := range read {
				if !match(strings.TrimSuffix(name, "*")) {
					t.Errorf("the %s probe reads %s, outside its declared prefixes %v: add it to probes.Reads", svc, name, Reads[svc])
				}
			}
		})
	}
}

// Callers whose settings lead to the same target, at once, share one probe of it.
func TestOnceProbesATargetOnce(t *testing.T) {
	p := &prober{}
	var mu sync.Mutex
	calls := 0
	var wg sync.WaitGroup
	results := make([]*result, 6)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := &result{}
			p.once(context.Background(), "postgres", "db:5432\x00circle", r, func(r *result) {
				mu.Lock()
				calls++
				mu.Unlock()
				r.check(Checked{Service: "postgres", Target: "circle@db:5432", OK: true})
			})
			results[i] = r
		}(i)
	}
	wg.Wait()
	if calls != 1 {
		t.Fatalf("the target was probed %d times", calls)
	}
	for i, r := range results {
		if len(r.checked) != 1 {
			t.Errorf("caller %d got %d checked lines", i, len(r.checked))
		}
	}
	// Another key is another target.
	p.once(context.Background(), "postgres", "db:5432\x00other", &result{}, func(r *result) { calls++ })
	if calls != 2 {
		t.Fatal("a different target was not probed")
	}
}

func TestUsersUnion(t *testing.T) {
	shared := users{all: true, names: []string{"a", "b", "c"}}
	for _, c := range []struct {
		x, y users
		want string
	}{
		{shared, users{names: []string{"b"}}, "every service but a, c"},
		{users{names: []string{"b"}}, shared, "every service but a, c"},
		{shared, users{all: true, names: []string{"c", "d"}}, "every service but c"},
		{users{names: []string{"a"}}, users{names: []string{"b", "a"}}, "a, b"},
		{shared, users{names: []string{"a", "b", "c"}}, "every service"},
	} {
		if got := c.x.union(c.y).String(); got != c.want {
			t.Errorf("%v ∪ %v = %q, want %q", c.x, c.y, got, c.want)
		}
	}
}

// What a probe reports of a settings file quotes nothing of a password or token, in any field
// of the report and in the text report: a URI whose password holds "://" or a line break, a $
// or an unquoted space in a password, a ${X?message}.
func TestReportQuotesNoSecretOfSettings(t *testing.T) {
	for _, c := range []struct {
		name, file, content, secret string
		code                        findings.Code
		only                        []string
	}{
		{"mongo password with ://", "mongodb", "export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"mongodb://circle:ab://cdSECRET1@127.0.0.1:1/circle_ghe\"\n", "cdSECRET1", findings.URIMalformed, []string{"mongo"}},
		{"mongo password with a line break", "mongodb", "export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"mongodb://circle:abSECRET2\nxyz@127.0.0.1:1/circle_ghe\"\n", "abSECRET2", findings.TCPRefused, []string{"mongo"}},
		{"mongo password with a bad escape", "mongodb", "export CIRCLE_SECRETS_MONGODB_MAIN_URI='mongodb://circle:Hun%zzSECRET@127.0.0.1:1/circle_ghe'\n", "%zz", findings.URIMalformed, []string{"mongo"}},
		{"pg URI password with a line break", "postgresql", "export CIRCLE_SECRETS_POSTGRES_MAIN_URI=\"postgres://circle:abSECRET3\nxyz@127.0.0.1:1/circle\"\n", "abSECRET3", findings.URIMalformed, []string{"postgres"}},
		{"pg URI password with ://", "postgresql", "export CIRCLE_SECRETS_POSTGRES_MAIN_URI=\"postgres://circle:ab://cdSECRET4@127.0.0.1:1/circle\"\n", "cdSECRET4", findings.URIMalformed, []string{"postgres"}},
		{"pg password with $", "postgresql", "export POSTGRES_HOST=127.0.0.1\nexport POSTGRES_PORT=1\nexport POSTGRES_USER=circle\nexport POSTGRES_PASSWORD=\"pass$wordSECRET5\"\n", "wordSECRET5", findings.SettingMissing, []string{"postgres"}},
		{"pg password with an unquoted space", "postgresql", "export POSTGRES_HOST=127.0.0.1\nexport POSTGRES_PORT=1\nexport POSTGRES_USER=circle\nPOSTGRES_PASSWORD=pass wordSECRET6\n", "wordSECRET6", findings.SettingRefused, []string{"postgres"}},
		{"vault token with $", "vault", "export VAULT__SCHEME=http\nexport VAULT__HOST=127.0.0.1\nexport VAULT__PORT=1\nexport VAULT__TRANSIT_MOUNT=transit\nexport VAULT__CLIENT_TOKEN=\"s.ab$cdSECRET7\"\n", "cdSECRET7", findings.SettingMissing, []string{"vault"}},
		{"mongo base URI with $ in the password", "mongodb", "MONGO_BASE_URI=\"mongodb://circle:p$wSECRET8@127.0.0.1:1\"\nexport CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe\"\n", "wSECRET8", findings.SettingMissing, []string{"mongo"}},
		{"${X?message}", "postgresql", "export POSTGRES_PASSWORD=${NOPE?SECRET9}\n", "SECRET9", findings.SettingRefused, []string{"postgres"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, defaults.SharedDir())
			os.MkdirAll(dir, 0o700)
			if err := os.WriteFile(filepath.Join(dir, c.file), []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			rep := Run(context.Background(), layout.New(root, nil), Options{Timeout: 2 * time.Second, Postgres: DefaultPostgres(), Only: c.only})
			if find(rep.Findings, c.code) == nil {
				t.Fatalf("want %s, got %+v", c.code, rep.Findings)
			}
			assertNoSecret(t, rep, c.secret)
			var text strings.Builder
			rep.WriteText(&text)
			for _, f := range rep.Findings {
				text.WriteString(f.Fix + f.Evidence + f.Summary + f.Target)
			}
			if strings.Contains(text.String(), c.secret) {
				t.Errorf("%q in the text report:\n%s", c.secret, text.String())
			}
		})
	}
}

// defaults is the default layout's paths, by which the tests write settings files.
var defaults = layout.New("/", nil)

// The probes read the settings where the layout puts them: with the circleconfig directory
// elsewhere (under a test's root; config validation keeps it at CircleCI's path on a
// machine), the PostgreSQL the moved shared/postgresql names is the one probed, not the one
// of the default path.
func TestRunReadsTheLayoutsSettings(t *testing.T) {
	root := t.TempDir()
	entries := layout.Defaults()
	for i := range entries {
		if entries[i].Name == layout.CircleConfig {
			entries[i].Dest = "/srv/cc/circleconfig/"
		}
	}
	moved, other := peertest.ClosedPort(t), peertest.ClosedPort(t)
	writeSettings(t, root, pgSettings("127.0.0.1", other, "circle", circlePW)...)
	dir := filepath.Join(root, "srv/cc/circleconfig/shared")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "postgresql"), []byte(strings.Join(pgSettings("127.0.0.1", moved, "circle", circlePW), "\n")+"\n"), 0o600)
	rep := Run(context.Background(), layout.New(root, entries), Options{Timeout: 2 * time.Second, Postgres: PostgresOptions{Databases: []string{"circle"}}, Only: []string{"postgres"}})
	if want := fmt.Sprintf("circle@127.0.0.1:%d", moved); len(rep.Checked) != 1 || rep.Checked[0].Target != want {
		t.Fatalf("want the one target %s of the layout's shared/postgresql, got %+v", want, rep.Checked)
	}
}

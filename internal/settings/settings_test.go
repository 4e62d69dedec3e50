package settings

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// The default layout's paths, by the names the tests use.
var (
	InstallFile = layout.New("/", nil).InstallationCustomizations()
	ConfigDir   = layout.New("/", nil).CircleConfigDir()
	SharedDir   = layout.New("/", nil).SharedDir()
)

func codes(fs []findings.Finding) string {
	var c []string
	for _, f := range fs {
		c = append(c, f.Code.String()+"@"+f.Target)
	}
	return strings.Join(c, ",")
}

func TestExpandsAsBashWould(t *testing.T) {
	s, fs := Parse("shared/db", []byte(`# comment
export MONGO_BASE_URI="mongodb://circle:p%40ss@m1:27017,m2:27017"
export CIRCLE_SECRETS_MONGODB_MAIN_URI="$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin"
POSTGRES_HOST=pg.internal
export POSTGRES_PORT='5432'
export POSTGRES_USER="circle" POSTGRES_PASSWORD='it''s "quoted" $NOT_EXPANDED'
export VAULT__PORT=${PORT_UNSET:-8200}
export EMPTY=
export POSTGRES_HOST
`))
	if len(fs) != 0 {
		t.Fatalf("findings: %+v", fs)
	}
	for name, want := range map[string]string{
		"CIRCLE_SECRETS_MONGODB_MAIN_URI": "mongodb://circle:p%40ss@m1:27017,m2:27017/circle_ghe?ssl=true&authSource=admin",
		"POSTGRES_HOST":                   "pg.internal",
		"POSTGRES_PORT":                   "5432",
		"POSTGRES_PASSWORD":               `its "quoted" $NOT_EXPANDED`,
		"VAULT__PORT":                     "8200",
		"EMPTY":                           "",
	} {
		if v, ok := s.Get(name); !ok || v.Value != want {
			t.Errorf("%s = %q (set %v), want %q", name, v.Value, ok, want)
		}
	}
	if v, _ := s.Get("POSTGRES_HOST"); v.Where() != "shared/db:4" {
		t.Errorf("POSTGRES_HOST set at %s", v.Where())
	}
	if _, fs := s.Require("postgres", "EMPTY"); len(fs) != 1 || fs[0].Code != findings.SettingMissing || fs[0].Target != "shared/db:8" {
		t.Errorf("an empty required setting: %+v", fs)
	}
	if _, fs := s.Require("postgres", "NOPE"); len(fs) != 1 || fs[0].Code != findings.SettingMissing {
		t.Errorf("an unset required setting: %+v", fs)
	}
}

func TestUndefinedReferenceIsMissingNotEmpty(t *testing.T) {
	// The runbook's own file: $MONGO_BASE_URI is never defined.
	s, fs := Parse("shared/mongo", []byte("export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe?ssl=true&authSource=admin\"\n"))
	if len(fs) != 0 {
		t.Fatalf("findings at parse time: %+v", fs)
	}
	_, fs = s.Require("mongodb", "CIRCLE_SECRETS_MONGODB_MAIN_URI")
	if len(fs) != 1 || fs[0].Code != findings.SettingMissing || !strings.Contains(fs[0].Summary, "$MONGO_BASE_URI") || fs[0].Target != "shared/mongo:1:8" {
		t.Fatalf("want SETTING_MISSING naming $MONGO_BASE_URI at shared/mongo:1:8, got %+v", fs)
	}
}

func TestRefusesCode(t *testing.T) {
	for src, want := range map[string]string{
		"export A=\"$(curl http://evil)\"\n":   "SETTING_REFUSED@f:1:8",
		"A=`id`\n":                             "SETTING_REFUSED@f:1:1",
		"rm -rf /\n":                           "SETTING_REFUSED@f:1:1",
		"A=1; touch /tmp/x\n":                  "SETTING_REFUSED@f:1:6",
		"if true; then A=1; fi\n":              "SETTING_REFUSED@f:1:1",
		"A=1 > /tmp/x\n":                       "SETTING_REFUSED@f:1:1",
		"A=$((1+2))\n":                         "SETTING_REFUSED@f:1:1",
		"f() { A=1; }\n":                       "SETTING_REFUSED@f:1:1",
		"export A=\"x\nB=<(cat /etc/shadow)\n": "CONFIG_SYNTAX@f:1:10",
	} {
		_, fs := Parse("f", []byte(src))
		if got := codes(fs); got != want {
			t.Errorf("%q: got %s, want %s", src, got, want)
		}
	}
}

func TestSyntaxErrorHasPosition(t *testing.T) {
	_, fs := Parse("shared/postgres", []byte("export POSTGRES_HOST=\"pg\nexport POSTGRES_PORT=5432\n"))
	if len(fs) != 1 || fs[0].Code != findings.ConfigSyntax || !strings.HasPrefix(fs[0].Target, "shared/postgres:1:") {
		t.Fatalf("%+v", fs)
	}
}

func TestLoadOrderAndOverride(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, SharedDir), 0o700)
	os.WriteFile(filepath.Join(root, InstallFile), []byte("CIRCLE_SECRETS_SESSION_COOKIE_KEY=abcdefghijklmnop\nBASE=mongodb://h\n"), 0o600)
	os.WriteFile(filepath.Join(root, SharedDir, "10-a"), []byte("export URI=\"$BASE/db\"\nexport P=1\n"), 0o600)
	os.WriteFile(filepath.Join(root, SharedDir, "20-b"), []byte("export P=2\n"), 0o600)
	s, fs := Load(layout.New(root, nil))
	if len(fs) != 0 {
		t.Fatal(fs)
	}
	if v, _ := s.Get("URI"); v.Value != "mongodb://h/db" {
		t.Errorf("URI %q", v.Value)
	}
	if v, _ := s.Get("P"); v.Value != "2" || v.File != SharedDir+"/20-b" {
		t.Errorf("P %+v", v)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("export A=\"$B/x\"\nB=1\n"))
	f.Add([]byte("export A=$(id)\n"))
	f.Add([]byte("A=${B:-c} D='e'\"f\"\n# c\n"))
	f.Add([]byte("export A B=1\nreadonly C=2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, fs := Parse("fuzz", data)
		for _, f := range fs {
			if !f.Code.Known() || f.Target == "" {
				t.Fatalf("bad finding %+v", f)
			}
		}
		for _, n := range s.Names("") {
			if _, ok := s.Get(n); !ok {
				if _, fs := s.Require("x", n); len(fs) == 0 || fs[0].Code != findings.SettingMissing {
					t.Fatalf("Names lists %s, neither set nor reported missing", n)
				}
			}
		}
	})
}

func TestViewsLayerEachServiceOnTheShared(t *testing.T) {
	root := t.TempDir()
	write := func(p, content string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The HA page's installation customizations: MONGO_BASE_URI without export, then the URIs.
	write(InstallFile, "MONGO_BASE_URI=mongodb://circle:pw@m1:27017\nexport CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe\"\n")
	write(SharedDir+"/postgresql", "export POSTGRES_HOST=\"pg-shared\"\nexport POSTGRES_PORT=\"5432\"\n")
	write(ConfigDir+"/contexts-service/customizations", "export POSTGRES_HOST=\"pg-contexts\"\nexport ORIGIN=\"$POSTGRES_PORT-$MONGO_BASE_URI\"\n")
	write(ConfigDir+"/frontend/customizations", "export JVM_HEAP_SIZE=2g\n")
	// Not shell: synced, never parsed (either would be CONFIG_SYNTAX or SETTING_REFUSED).
	write(ConfigDir+"/picard-dispatcher/resource-definitions.edn", "{:resource-classes {:medium {:cpu 2.0 :ram 4096}}}\n")
	write(ConfigDir+"/telegraf/influxdb.conf", "[[output.influxdb]]\n  url = \"http://10.0.0.1:8086\"\n")
	v, fs := LoadViews(layout.New(root, nil))
	if len(fs) != 0 {
		t.Fatalf("findings: %s", codes(fs))
	}
	if got := v.Names(); strings.Join(got, ",") != "contexts-service,frontend" {
		t.Fatalf("services with their own view: %v", got)
	}
	if h, _ := v.Shared.Get("POSTGRES_HOST"); h.Value != "pg-shared" {
		t.Errorf("shared POSTGRES_HOST %q", h.Value)
	}
	cs := v.Services["contexts-service"]
	if h, _ := cs.Get("POSTGRES_HOST"); h.Value != "pg-contexts" || h.File != ConfigDir+"/contexts-service/customizations" {
		t.Errorf("contexts-service's own value must win: %+v", h)
	}
	if o, _ := cs.Get("ORIGIN"); o.Value != "5432-mongodb://circle:pw@m1:27017" {
		t.Errorf("a service's file sees the shared settings: ORIGIN=%q", o.Value)
	}
	if u, _ := v.Services["frontend"].Get("CIRCLE_SECRETS_MONGODB_MAIN_URI"); u.Value != "mongodb://circle:pw@m1:27017/circle_ghe" {
		t.Errorf("the installation customizations reach every service: %q", u.Value)
	}
	if _, ok := v.Shared.Get("ORIGIN"); ok {
		t.Error("a service's own file leaked into the shared settings")
	}
	pg := func(n string) bool { return strings.HasPrefix(n, "POSTGRES_") }
	if v.Services["frontend"].Key(pg) != v.Shared.Key(pg) || cs.Key(pg) == v.Shared.Key(pg) {
		t.Error("Key must tell the settings a reader sees apart, and only those")
	}
}

func TestIsShellFile(t *testing.T) {
	for rel, want := range map[string]bool{
		"shared/postgresql": true, "shared/vault": true, "contexts-service/customizations": true,
		"picard-dispatcher/resource-definitions.edn": false, "telegraf/influxdb.conf": false,
		"postgres/extra.conf": false, "shared/.hidden": false, "shared/sub/file": false, "customizations": false,
		"frontend/customizations/x": false,
	} {
		if IsShellFile(rel) != want {
			t.Errorf("IsShellFile(%q) = %v, want %v", rel, !want, want)
		}
	}
}

// A file saved with Windows line endings: bash keeps the \r in each value, which the parser
// would drop, so the probes would pass while the services got other values. It is refused.
func TestCarriageReturnRefused(t *testing.T) {
	data := []byte("export POSTGRES_HOST=\"pg.internal\"\nexport POSTGRES_PORT=5432\r\nMONGO_BASE_URI=mongodb://h1:27017\r\n")
	_, fs := Parse("/etc/circleconfig/shared/db", data)
	if len(fs) != 1 || fs[0].Code != findings.ConfigSyntax || fs[0].Target != "/etc/circleconfig/shared/db:2" || !fs[0].Blocking ||
		!strings.Contains(fs[0].Summary, "2 lines") || !strings.Contains(fs[0].Fix, "dos2unix db") {
		t.Fatalf("%+v", fs)
	}
}

// No word taken from a value reaches a finding, in any field: a password with an unquoted
// space, a $ in double quotes, a ${X?message}, a parse error quoting a word. Each finding still
// says what is wrong and how to fix it.
func TestFindingsQuoteNoValue(t *testing.T) {
	for _, c := range []struct {
		name, src, secret string
		code              findings.Code
		says              string
	}{
		{"unquoted space", "export POSTGRES_HOST=db\nPOSTGRES_PASSWORD=pass wordSECRET6\n", "wordSECRET6", findings.SettingRefused, "a command after an unquoted space in the value of POSTGRES_PASSWORD"},
		{"unquoted space after a semicolon", "export POSTGRES_PASSWORD=pass;wordSECRET6\n", "wordSECRET6", findings.SettingRefused, "contains a command;"},
		{"$ in double quotes", "export POSTGRES_PASSWORD=\"pass$wordSECRET5\"\n", "wordSECRET5", findings.SettingMissing, "holds a $ the shell would expand"},
		{"$UPPER in double quotes", "export POSTGRES_PASSWORD=\"pass$WORDSECRET5\"\n", "WORDSECRET5", findings.SettingMissing, "holds a $ the shell would expand"},
		{"$ in a URI's password", "export MONGO_BASE_URI=\"mongodb://circle:p$wSECRET8@db:27017\"\n", "wSECRET8", findings.SettingMissing, "holds a $ the shell would expand"},
		{"token with $", "export VAULT__CLIENT_TOKEN=\"s.ab$cdSECRET7\"\n", "cdSECRET7", findings.SettingMissing, "holds a $ the shell would expand"},
		{"${X?message}", "export POSTGRES_PASSWORD=${NOPE?SECRET9}\n", "SECRET9", findings.SettingRefused, "fails to expand"},
		{"${X:?message}", "export POSTGRES_PASSWORD=${NOPE:?abSECRET9}\n", "abSECRET9", findings.SettingRefused, "fails to expand"},
		{"parse error quoting a word", "export POSTGRES_PASSWORD=\"ab${x@SECRETP}\"\n", "SECRETP", findings.ConfigSyntax, "cannot parse"},
		{"unclosed here-document", "cat <<SECRETH\n", "SECRETH", findings.ConfigSyntax, "cannot parse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, fs := Parse("f", []byte(c.src))
			for _, n := range []string{"POSTGRES_PASSWORD", "MONGO_BASE_URI", "VAULT__CLIENT_TOKEN"} {
				_, rf := s.Require("x", n) // what a probe reports of a value built from a missing variable
				fs = append(fs, rf...)
			}
			var hit *findings.Finding
			for i, f := range fs {
				b, _ := json.Marshal(f)
				all := string(b) + f.String() + f.Target + f.Summary + f.Evidence + f.Fix
				if strings.Contains(all, c.secret) {
					t.Errorf("%q of the value appears in the finding: %s; fix %q", c.secret, b, f.Fix)
				}
				if f.Code == c.code && strings.Contains(f.Summary, c.says) {
					hit = &fs[i]
				}
			}
			if hit == nil || hit.Fix == "" {
				t.Fatalf("want %s saying %q, with a fix, got %+v", c.code, c.says, fs)
			}
		})
	}
	// A value that holds no secret still names the variable it is missing, and so does a known
	// one inside a secret (TestUndefinedReferenceIsMissingNotEmpty).
	s, _ := Parse("f", []byte("export POSTGRES_HOST=\"$DB_HOST\"\n"))
	if _, fs := s.Require("postgres", "POSTGRES_HOST"); len(fs) != 1 || !strings.Contains(fs[0].Summary, "uses $DB_HOST") {
		t.Fatalf("%+v", fs)
	}
}

// A variable whose value uses one nothing sets is listed by Names, so a probe that walks a
// prefix reports it instead of skipping it.
func TestNamesListsWhatCannotBeBuilt(t *testing.T) {
	s, _ := Parse("f", []byte("export CIRCLE_SECRETS_POSTGRES_VMS_URI=\"$PG_BASE/vms\"\nexport CIRCLE_SECRETS_POSTGRES_X_URI=postgres://u@h/x\n"))
	if got := strings.Join(s.Names("CIRCLE_SECRETS_POSTGRES_"), ","); got != "CIRCLE_SECRETS_POSTGRES_VMS_URI,CIRCLE_SECRETS_POSTGRES_X_URI" {
		t.Fatalf("Names = %s", got)
	}
	if _, fs := s.Require("postgres", "CIRCLE_SECRETS_POSTGRES_VMS_URI"); len(fs) != 1 || fs[0].Code != findings.SettingMissing {
		t.Fatalf("%+v", fs)
	}
}

// The settings are read where the layout puts them, not at CircleCI's default paths: a
// layout whose circleconfig directory and installation customizations lie elsewhere (under a
// test's root only: config validation keeps them at CircleCI's paths on a machine) is what
// Load and LoadViews read, and what their findings name.
func TestLoadFollowsTheLayout(t *testing.T) {
	root := t.TempDir()
	entries := layout.Defaults()
	for i := range entries {
		switch entries[i].Name {
		case layout.CircleConfig:
			entries[i].Dest = "/srv/cc/circleconfig/"
		case layout.InstallationCustomizations:
			entries[i].Dest = "/srv/cc/installation-customizations"
		}
	}
	l := layout.New(root, entries)
	write := func(p, content string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(content), 0o600)
	}
	write("/srv/cc/installation-customizations", "BASE=mongodb://h\n")
	write("/srv/cc/circleconfig/shared/postgresql", "export POSTGRES_HOST=\"pg-moved\"\nexport URI=\"$BASE/db\"\nexport P=\"$NOPE\"\n")
	write("/srv/cc/circleconfig/frontend/customizations", "export POSTGRES_HOST=\"pg-frontend\"\n")
	// The defaults hold other values: reading them would be the bug.
	write("/etc/circleconfig/shared/postgresql", "export POSTGRES_HOST=\"pg-default\"\n")
	v, fs := LoadViews(l)
	if h, _ := v.Shared.Get("POSTGRES_HOST"); h.Value != "pg-moved" || h.File != "/srv/cc/circleconfig/shared/postgresql" {
		t.Fatalf("shared POSTGRES_HOST = %+v", h)
	}
	if u, _ := v.Shared.Get("URI"); u.Value != "mongodb://h/db" {
		t.Fatalf("the installation customizations were not read at the layout's path: URI = %+v", u)
	}
	if fe := v.Services["frontend"]; fe == nil {
		t.Fatalf("the frontend's customizations were not read: %v", v.Names())
	} else if h, _ := fe.Get("POSTGRES_HOST"); h.Value != "pg-frontend" {
		t.Fatalf("frontend POSTGRES_HOST = %+v", h)
	}
	_, miss := v.Shared.Require("postgres", "POSTGRES_PASSWORD")
	if len(miss) != 1 || miss[0].Target != "/srv/cc/circleconfig/shared/" || !strings.Contains(miss[0].Fix, "/srv/cc/installation-customizations") {
		t.Fatalf("a missing setting does not name the layout's paths: %+v", miss)
	}
	if len(fs) != 0 {
		t.Fatalf("findings: %+v", fs)
	}
	if _, ref := v.Shared.Require("postgres", "P"); len(ref) != 1 || !strings.Contains(ref[0].Fix, "/srv/cc/circleconfig/shared/") {
		t.Fatalf("an unset reference's fix does not name the layout's shared directory: %+v", ref)
	}
}

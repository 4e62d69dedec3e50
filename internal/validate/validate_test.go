package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

const goodReplicated = `{
  "DaemonAuthenticationType": "password",
  "DaemonAuthenticationPassword": "console-secret-pw",
  "TlsBootstrapType": "self-signed",
  "TlsBootstrapHostname": "ci.example.com",
  "LicenseFileLocation": "/etc/license.rli",
  "ImportSettingsFrom": "/etc/settings.conf",
  "BypassPreflightChecks": true
}
`

const goodSettings = `{
  "hostname": {"value": "ci.example.com"},
  "allow_cluster": {"value": "1"},
  "storage_backend": {"value": "storage_backend_s3"},
  "s3_bucket": {"value": "artifacts"},
  "aws_region": {"value": "us-east-1"},
  "sqs_queue_url": {"value": "https://sqs.us-east-1.amazonaws.com/1/q"}
}
`

func tree(t *testing.T, replicated, settings, license string) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	for name, content := range map[string]string{"replicated.conf": replicated, "settings.conf": settings, "license.rli": license} {
		if content != "-" {
			os.WriteFile(filepath.Join(root, "etc", name), []byte(content), 0o600)
		}
	}
	return root
}

func codes(fs []findings.Finding) string {
	var c []string
	for _, f := range fs {
		c = append(c, f.Code.String()+"@"+f.Target)
	}
	return strings.Join(c, " ")
}

func TestGoodFiles(t *testing.T) {
	if fs := Check(inPlace(tree(t, goodReplicated, goodSettings, "LICENSE"))); len(fs) != 0 {
		t.Fatalf("%+v", fs)
	}
	// The repository's example bucket must validate too.
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	for _, n := range []string{"replicated.conf", "settings.conf", "license.rli"} {
		b, _ := os.ReadFile("../../examples/bucket/" + n)
		os.WriteFile(filepath.Join(root, "etc", n), b, 0o600)
	}
	if fs := Check(inPlace(root)); len(fs) != 0 {
		t.Fatalf("examples/bucket does not validate: %+v", fs)
	}
}

func TestBrokenFiles(t *testing.T) {
	cases := []struct {
		name, replicated, settings, license, want string
	}{
		{"missing brace (the runbook's snippet)", "\"DaemonAuthenticationType\": \"password\",\n\"TlsBootstrapHostname\": \"x\"\n", goodSettings, "L",
			"FILE_SYNTAX@/etc/replicated.conf:1:27"},
		{"missing closing brace", "{\n  \"TlsBootstrapHostname\": \"x\",\n  \"LogLevel\": \"debug\"\n", goodSettings, "L",
			"FILE_SYNTAX@/etc/replicated.conf:4:1"},
		{"trailing comma", goodReplicated, "{\n  \"hostname\": {\"value\": \"x\"},\n}\n", "L",
			"FILE_SYNTAX@/etc/settings.conf:3:1"},
		{"curly quotes", strings.Replace(goodReplicated, `"LogLevel"`, `"LogLevel"`, 1) + "", "{\n  “hostname”: {\"value\": \"x\"}\n}\n", "L",
			"FILE_SYNTAX@/etc/settings.conf:2:3"},
		{"wrong value shape", goodReplicated, "{\"hostname\": \"ci.example.com\"}", "L",
			"FILE_INVALID@/etc/settings.conf FILE_INVALID@/etc/settings.conf"},
		{"HA without sqs", goodReplicated, strings.Replace(goodSettings, `"sqs_queue_url"`, `"sqs_queue"`, 1), "L",
			"FILE_INVALID@/etc/settings.conf"},
		{"missing password", strings.Replace(goodReplicated, `"DaemonAuthenticationPassword": "console-secret-pw",`, "", 1), goodSettings, "L",
			"FILE_INVALID@/etc/replicated.conf"},
		{"licence elsewhere", strings.Replace(goodReplicated, "/etc/license.rli", "/opt/license.rli", 1), goodSettings, "L",
			"FILE_INVALID@/etc/replicated.conf LICENSE_MISSING@/opt/license.rli"},
		{"unknown key", strings.Replace(goodReplicated, `"LicenseFileLocation"`, `"LicenceFileLocation": "x", "LicenseFileLocation"`, 1), goodSettings, "L",
			"FILE_UNKNOWN_KEY@/etc/replicated.conf"},
		{"empty licence", goodReplicated, goodSettings, "", "LICENSE_MISSING@/etc/license.rli"},
		{"no licence", goodReplicated, goodSettings, "-", "FILE_INVALID@/etc/replicated.conf LICENSE_MISSING@/etc/license.rli"},
		{"two objects", goodReplicated + "{}", goodSettings, "L", "FILE_SYNTAX@/etc/replicated.conf:10:1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := Check(inPlace(tree(t, c.replicated, c.settings, c.license)))
			findings.Sort(fs)
			got := codes(fs)
			if got != c.want {
				t.Fatalf("got  %s\nwant %s\n%+v", got, c.want, fs)
			}
			for _, f := range fs {
				if strings.Contains(f.Summary+f.Evidence, "console-secret-pw") {
					t.Errorf("a password appears in a finding: %+v", f)
				}
			}
		})
	}
}

func TestSyntaxEvidenceShowsTheLine(t *testing.T) {
	fs := Check(inPlace(tree(t, goodReplicated, "{\n  \"hostname\": {\"value\": \"x\"},\n  “allow_cluster”: {\"value\": \"1\"}\n}\n", "L")))
	if len(fs) != 1 || !strings.Contains(fs[0].Evidence, "“allow_cluster”") || !strings.Contains(fs[0].Summary, "typographic quote") {
		t.Fatalf("%+v", fs)
	}
	// A line with a secret is not echoed.
	fs = Check(inPlace(tree(t, "{\n \"DaemonAuthenticationPassword\": \"s3cr3t\" \"x\"\n}", goodSettings, "L")))
	if len(fs) == 0 || strings.Contains(fs[0].Evidence, "s3cr3t") {
		t.Fatalf("%+v", fs)
	}
}

func FuzzCheck(f *testing.F) {
	f.Add([]byte(goodReplicated), []byte(goodSettings))
	f.Add([]byte("{"), []byte("[]"))
	f.Add([]byte("{\"a\":1}{"), []byte("{\"hostname\":{\"value\":1}}"))
	f.Fuzz(func(t *testing.T, rc, sc []byte) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.WriteFile(filepath.Join(root, "etc/replicated.conf"), rc, 0o600)
		os.WriteFile(filepath.Join(root, "etc/settings.conf"), sc, 0o600)
		for _, f := range Check(inPlace(root)) {
			if !f.Code.Known() || f.Target == "" {
				t.Fatalf("bad finding %+v", f)
			}
		}
	})
}

// A pretty-printed settings.conf puts a secret on its own "value" line; the line a syntax error
// points at is shown with every value masked, whatever the key above it is called.
func TestSyntaxEvidenceMasksValues(t *testing.T) {
	for _, c := range []struct{ name, settings, want, mustNot string }{
		{"unescaped quote in a value", "{\n  \"ghe_client_secret\": {\n    \"value\": \"Gh\"Secret-77\"\n  }\n}\n",
			`"value": "…">>>…"…`, "Secret-77"},
		{"typographic quotes around a value", "{\n  \"secret_passphrase\": {\n    \"value\": “Pass phrase 42”\n  }\n}\n",
			`"value": >>>… …`, "phrase"},
		{"missing comma", "{\n  \"hostname\": {\"value\": \"ci.example.com\"}\n  \"s3_bucket\": {\"value\": \"bkt-99\"}\n}\n",
			`>>>"s3_bucket": {"value": "…"}`, "bkt-99"},
		{"minified, one line", `{"hostname":{"value":"ci.example.com"},"secret_passphrase":{"value":"Hunter2"},"x":{"value":"y"},}`,
			`"x":{"value":"…"},>>>}`, "Hunter2"},
		{"unterminated value", "{\n  \"a\": {\n    \"value\": \"Unterminated-Secret\n  }\n}\n",
			`"value": "…>>>`, "Unterminated"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := Check(inPlace(tree(t, goodReplicated, c.settings, "L")))
			if len(fs) != 1 || fs[0].Code != findings.FileSyntax {
				t.Fatalf("%+v", fs)
			}
			f := fs[0]
			if !strings.Contains(f.Evidence, c.want) {
				t.Errorf("evidence %q lacks %q", f.Evidence, c.want)
			}
			if strings.Contains(f.Summary, "character 'S'") {
				t.Errorf("the summary quotes a character of the value: %s", f.Summary)
			}
			if strings.Contains(f.Summary+f.Evidence+f.Target, c.mustNot) {
				t.Errorf("the value appears in the finding: %+v", f)
			}
		})
	}
}

// inPlace reads the files of the default layout under root.
func inPlace(root string) Files { return InPlace(layout.New(root, nil)) }

// moved is the default layout with settings.conf and the licence moved within /etc, as a
// config's files.settings.dest and files.license.dest move them.
func moved(root string) layout.Layout {
	entries := layout.Defaults()
	for i := range entries {
		switch entries[i].Name {
		case layout.Settings:
			entries[i].Dest = "/etc/circleci/settings.conf"
		case layout.License:
			entries[i].Dest = "/etc/circleci/license.rli"
		}
	}
	return layout.New(root, entries)
}

// A layout that moves settings.conf and the licence is what Check reads and what
// replicated.conf must name; a replicated.conf that still names the old paths is refused,
// because Replicated would import files haagent neither fetches nor checks.
func TestCheckFollowsTheLayout(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/circleci"), 0o755)
	conf := strings.NewReplacer("/etc/license.rli", "/etc/circleci/license.rli", "/etc/settings.conf", "/etc/circleci/settings.conf").Replace(goodReplicated)
	os.WriteFile(filepath.Join(root, "etc/replicated.conf"), []byte(conf), 0o644)
	os.WriteFile(filepath.Join(root, "etc/circleci/settings.conf"), []byte(goodSettings), 0o640)
	os.WriteFile(filepath.Join(root, "etc/circleci/license.rli"), []byte("L"), 0o640)
	if fs := Check(InPlace(moved(root))); len(fs) != 0 {
		t.Fatalf("the moved files do not validate: %+v", fs)
	}
	// A broken settings.conf at the moved path is found there.
	os.WriteFile(filepath.Join(root, "etc/circleci/settings.conf"), []byte("{\n  \"hostname\": {\"value\": \"x\"},\n}\n"), 0o640)
	if got := codes(Check(InPlace(moved(root)))); got != "FILE_SYNTAX@/etc/circleci/settings.conf:3:1" {
		t.Fatalf("got %s", got)
	}
	os.WriteFile(filepath.Join(root, "etc/circleci/settings.conf"), []byte(goodSettings), 0o640)

	// replicated.conf naming the default paths, which exist too: each is a mismatch.
	os.WriteFile(filepath.Join(root, "etc/replicated.conf"), []byte(goodReplicated), 0o644)
	os.WriteFile(filepath.Join(root, "etc/settings.conf"), []byte(goodSettings), 0o640)
	os.WriteFile(filepath.Join(root, "etc/license.rli"), []byte("L"), 0o640)
	fs := Check(InPlace(moved(root)))
	if got := codes(fs); got != "FILE_INVALID@/etc/replicated.conf FILE_INVALID@/etc/replicated.conf" {
		t.Fatalf("got %s\n%+v", got, fs)
	}
	for _, f := range fs {
		if !strings.Contains(f.Summary, "neither fetches nor checks") || !strings.Contains(f.Fix, "/etc/circleci/") {
			t.Errorf("the finding does not say the paths disagree, or its fix does not name the layout's path: %+v", f)
		}
	}
}

package replicated

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The boot tests' stand-in installer has the real script's argument arms, in its shape: its
// list read back is the documented one. (The real template, read by hand from
// replicatedhq/replicated-installer, gives the same 81 spellings; it is not kept here.)
func TestScriptArgsReadsTheCaseArms(t *testing.T) {
	b, err := os.ReadFile("../../cmd/haagent/testdata/replicated-standin.sh")
	if err != nil {
		t.Fatal(err)
	}
	got, doc := ScriptArgs(b), DocumentedSet()
	if len(got) != len(doc) {
		t.Errorf("read %d spellings, %d documented", len(got), len(doc))
	}
	for a := range doc {
		if !got[a] {
			t.Errorf("%s documented but not read from the script", a)
		}
	}
	if got["artifactory_auth"] || !got["artifactory-auth"] || !got["no_proxy"] {
		t.Errorf("spellings: %v", got)
	}
	// Other case statements are not the argument list; a script without one gives nil.
	other := "case \"$INIT_SYSTEM\" in\n    systemd)\n        ;;\nesac\n"
	if ScriptArgs([]byte(other)) != nil || ScriptArgs([]byte("#!/bin/sh\necho hi\n")) != nil {
		t.Error("a script without the argument case must give nil (the documented list is used)")
	}
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"baked AMI with a public address", Options{LocalAddress: "10.0.1.23", PublicAddress: "203.0.113.7", DockerInstalled: true},
			"local-address=10.0.1.23 no-proxy no-docker public-address=203.0.113.7"},
		{"no public address, no Docker", Options{LocalAddress: "10.0.1.23"}, "local-address=10.0.1.23 no-proxy no-public-address"},
		{"proxy: through the environment only", Options{LocalAddress: "10.0.1.23", Proxy: "http://u:p@proxy:3128", PublicAddress: "203.0.113.7"},
			"local-address=10.0.1.23 public-address=203.0.113.7"},
		{"operator's public address", Options{LocalAddress: "10.0.1.23", PublicAddress: "203.0.113.7", ExtraArgs: []string{"public_address=ci.example.com", "release-sequence=3"}},
			"local-address=10.0.1.23 no-proxy public_address=ci.example.com release-sequence=3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(Args(tc.o), " "); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestRedactLine(t *testing.T) {
	proxy := "http://corp-user:p@ssw0rd@proxy.corp.example:3128"
	for in, want := range map[string]string{
		"The installer will use the proxy at 'http://corp-user:s3cret@proxy:3128' (imported from env var 'HTTP_PROXY')": "The installer will use the proxy at 'http://***@proxy:3128' (imported from env var 'HTTP_PROXY')",
		"curl https://a:b@c@host/x and http://plain/":                                                                   "curl https://***@host/x and http://plain/",
		"proxy " + proxy: "proxy http://***@proxy.corp.example:3128",
		"userinfo alone corp-user:p@ssw0rd and the password p@ssw0rd": "userinfo alone *** and the password ***",
	} {
		if got := redactLine(in, proxy); got != want {
			t.Errorf("redactLine(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}

// A proxy password with an unescaped '/', space, '#', '?' or '@' is hidden in the installer's
// line about it and wherever it is printed alone; another URL's with a '/' too.
func TestRedactLineAwkwardProxyPasswords(t *testing.T) {
	for _, p := range []string{
		"http://user:pa/ssSECRET@proxy:3128",
		"http://user:pa ssSECRET@proxy:3128",
		"http://user:pa%2FssSECRET@proxy:3128",
		"http://user:p@ssSECRET@proxy:3128",
		"http://user:ab#cdSECRET@proxy:3128",
		"http://user:ab?cdSECRET@proxy:3128",
	} {
		for _, line := range []string{"The installer will use the proxy at '" + p + "' (imported from env var 'HTTP_PROXY')", p} {
			if got := redactLine(line, p); strings.Contains(got, "SECRET") || !strings.Contains(got, "***@proxy:3128") {
				t.Errorf("redactLine(%q) = %q", line, got)
			}
		}
	}
	if got := redactLine("fetching https://u:a/bSECRET@mirror.example/x failed", ""); got != "fetching https://***@mirror.example/x failed" {
		t.Errorf("another URL: %q", got)
	}
}

// The installer's credential arguments are masked where haagent logs its argv and in its
// output; the argv itself keeps them (the script takes them only as arguments).
func TestCredentialArgsMasked(t *testing.T) {
	o := Options{LocalAddress: "10.0.1.23", PublicAddress: "203.0.113.7",
		ExtraArgs: []string{"daemon-token=DAEMONSECRET", "artifactory-auth=dXNlcjpTRUNSRVQ=", "daemon_token=OTHERSECRET", "release-sequence=3"}}
	args := Args(o)
	if got := loggedArgs(args); got != "local-address=10.0.1.23 no-proxy public-address=203.0.113.7 daemon-token=*** artifactory-auth=*** daemon_token=*** release-sequence=3" {
		t.Errorf("logged %q", got)
	}
	if !strings.Contains(strings.Join(args, " "), "daemon-token=DAEMONSECRET") {
		t.Errorf("the argv lost the token: %q", args)
	}
	if got := o.redact("joining with token DAEMONSECRET and auth dXNlcjpTRUNSRVQ="); got != "joining with token *** and auth ***" {
		t.Errorf("output line %q", got)
	}
}

func TestVersionedURL(t *testing.T) {
	if got := VersionedURL("https://get.replicated.com/docker", "2.38.6"); got != "https://get.replicated.com/docker?replicated_operator_tag=2.38.6&replicated_tag=2.38.6&replicated_ui_tag=2.38.6" {
		t.Errorf("got %s", got)
	}
	if got := VersionedURL("https://get.replicated.com/docker?channel=x", "2.38.6"); !strings.Contains(got, "channel=x&") {
		t.Errorf("another query parameter was lost: %s", got)
	}
	if got := VersionedURL("https://get.replicated.com/docker", ""); got != "https://get.replicated.com/docker" {
		t.Errorf("no version: %s", got)
	}
}

// The installer unit's program records and returns the script's own status and hides URL
// credentials; it holds no ${...}, which systemd would replace before bash sees it.
func TestUnitWrapper(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "install.sh")
	os.WriteFile(script, []byte("echo \"args $*\"\necho \"proxy at 'http://u:pw@proxy:3128'\" >&2\necho \"proxy at 'http://u:p/w#x@proxy:3128'\"\nexit 3\n"), 0o700)
	w := unitWrapper("i-0abc", filepath.Join(dir, "exit"))
	if strings.Contains(w, "${") {
		t.Fatalf("the wrapper holds ${...}: %s", w)
	}
	out, err := exec.Command("/bin/bash", "-c", w, script, "a", "b").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("exit: %v", err)
	}
	if string(out) != "args a b\nproxy at 'http://***@proxy:3128'\nproxy at 'http://***@proxy:3128'\n" {
		t.Fatalf("output %q", out)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "exit"))
	if string(b) != "3 i-0abc\n" {
		t.Fatalf("recorded %q", b)
	}
}

// Arguments the script takes but that make no CircleCI Services machine, and values the
// script's echo | cut parsing would break, are refused before it runs.
func TestCheckExtraArgsRefusesUnusableAndBrokenValues(t *testing.T) {
	for _, tc := range []struct{ arg, want string }{
		{"install-docker-only", "install-docker-only makes the installer install something other"},
		{"install_docker_only", "install_docker_only makes"},
		{"is-migration", "is-migration makes"},
		{"is_migration", "is_migration makes"},
		{"airgap", "airgap makes"},
		{"public-address=1.2.3.4\nx", "the value of public-address has whitespace or a control character"},
		{"tags=a b", "the value of tags has whitespace"},
		{"release-sequence=12\r", "the value of release-sequence has whitespace"},
	} {
		probs := CheckExtraArgs([]string{tc.arg}, DocumentedSet())
		if len(probs) != 1 || !strings.Contains(probs[0], tc.want) {
			t.Errorf("%q: %v", tc.arg, probs)
		}
	}
	if probs := CheckExtraArgs([]string{"disable-replicated-ui", "no-operator", "public-address=ci.example.com"}, DocumentedSet()); len(probs) != 0 {
		t.Errorf("refused: %v", probs)
	}
}

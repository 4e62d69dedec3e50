package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/haagent/haagent/internal/layout"
)

func TestMinimalConfigGetsTheDefaultLayout(t *testing.T) {
	cfg, err := Parse([]byte("version: 1\nsource:\n  bucket: my-circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"settings.conf": "/etc/settings.conf", "replicated.conf": "/etc/replicated.conf", "license.rli": "/etc/license.rli",
		"circleci-encryption-keys/": "/data/circle/circleci-encryption-keys/", "circleconfig/": "/etc/circleconfig/",
		"circle-installation-customizations": "/etc/circle-installation-customizations", "ca-certificates/": "/var/lib/haagent/ca-certificates/",
	}
	if len(cfg.Layout) != len(want) {
		t.Fatalf("layout has %d entries", len(cfg.Layout))
	}
	for _, e := range cfg.Layout {
		if want[e.Key] != e.Dest {
			t.Errorf("%s -> %s, want %s", e.Key, e.Dest, want[e.Key])
		}
	}
	if cfg.Fetch.Concurrency != DefaultConcurrency || cfg.Fetch.Attempts != DefaultAttempts || cfg.Fetch.Timeout.D() != DefaultTimeout {
		t.Errorf("fetch defaults not applied: %+v", cfg.Fetch)
	}
}

// Modes and owners follow who reads each file: the Replicated daemon (user replicated, group
// docker) reads the licence and settings.conf; the installer makes replicated.conf
// world-readable anyway; CircleCI's containers source the customization files as CircleCI's
// own userdata left them; only root reads the encryption keys.
func TestDefaultLayoutModesAndOwners(t *testing.T) {
	cfg, err := Parse([]byte("version: 1\nsource:\n  bucket: my-circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		mode, dirMode os.FileMode
		uid, gid      int
		user, group   string
	}
	wants := map[string]want{
		"settings":     {0o640, 0, -1, -1, "", "docker"},
		"license":      {0o640, 0, -1, -1, "", "docker"},
		"replicated":   {0o644, 0, -1, -1, "", ""},
		"circleconfig": {0o644, 0o755, -1, -1, "", ""},
		// The installation customizations as CircleCI's userdata left them, like circleconfig.
		"installation_customizations": {0o644, 0, -1, -1, "", ""},
		"encryption_keys":             {0o600, 0o700, -1, -1, "", ""},
		"ca_certificates":             {0o644, 0o755, -1, -1, "", ""},
	}
	for _, e := range cfg.Layout {
		got := want{e.Mode, e.DirMode, e.UID, e.GID, e.User, e.Group}
		if got != wants[e.Name] {
			t.Errorf("%s: got %+v, want %+v", e.Name, got, wants[e.Name])
		}
	}
}

func TestOwnerByName(t *testing.T) {
	cfg, err := Parse([]byte(`version: 1
source:
  bucket: abc
files:
  circleconfig: {mode: "0640", dir_mode: "0750", group: circleci, user: circle}
  license: {gid: 0}
  settings: {group: staff}
`), "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cfg.Layout {
		switch e.Name {
		case "circleconfig":
			if e.Group != "circleci" || e.User != "circle" || e.GID != -1 || e.UID != -1 || e.Mode != 0o640 || e.DirMode != 0o750 {
				t.Errorf("circleconfig: %+v", e)
			}
		case "license":
			// A numeric gid replaces the default's group name.
			if e.GID != 0 || e.Group != "" {
				t.Errorf("license: %+v", e)
			}
		case "settings":
			if e.Group != "staff" || e.GID != -1 {
				t.Errorf("settings: %+v", e)
			}
		}
	}
}
func TestOverrides(t *testing.T) {
	cfg, err := Parse([]byte(`version: 1
source:
  bucket: b-1.example
  prefix: services/prod
files:
  circleconfig:
    mode: "0640"
    gid: 1001
  license:
    dest: /etc/circleci/license.rli
fetch:
  concurrency: 4
  timeout: 30s
`), "test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source.Prefix != "services/prod/" {
		t.Errorf("prefix %q", cfg.Source.Prefix)
	}
	for _, e := range cfg.Layout {
		switch e.Name {
		case "circleconfig":
			if e.Mode != 0o640 || e.GID != 1001 || e.UID != -1 {
				t.Errorf("circleconfig override: %+v", e)
			}
		case "license":
			if e.Dest != "/etc/circleci/license.rli" {
				t.Errorf("license dest %s", e.Dest)
			}
		}
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // each must appear in the error
	}{
		{"empty", "", []string{"empty"}},
		{"not yaml", "version: [1", []string{"(document)"}},
		{"no version", "source:\n  bucket: abc\n", []string{"version: required"}},
		{"future version", "version: 2\nsource:\n  bucket: abc\n", []string{"version: unsupported version 2"}},
		{"no bucket", "version: 1\n", []string{"source.bucket: required"}},
		{"s3 url as bucket", "version: 1\nsource:\n  bucket: s3://abc\n", []string{"source.bucket", "without s3://"}},
		{"bad bucket", "version: 1\nsource:\n  bucket: Bad_Bucket\n", []string{"source.bucket", "not a valid S3 bucket name"}},
		{"unknown top field", "version: 1\nsource:\n  bucket: abc\nsorce: {}\n", []string{"sorce: unknown field", "line 4"}},
		{"unknown nested field", "version: 1\nsource:\n  bucket: abc\n  bucekt: x\n", []string{"source.bucekt: unknown field", "line 4"}},
		{"misspelled with dash", "version: 1\nsource:\n  bucket: abc\n  path-style: true\n", []string{"source.path-style", `did you mean "path_style"`}},
		{"duplicate key", "version: 1\nversion: 1\nsource:\n  bucket: abc\n", []string{"version: set twice"}},
		{"hostile prefix", "version: 1\nsource:\n  bucket: abc\n  prefix: ../other\n", []string{"source.prefix"}},
		{"absolute prefix", "version: 1\nsource:\n  bucket: abc\n  prefix: /x\n", []string{"source.prefix"}},
		{"bad endpoint", "version: 1\nsource:\n  bucket: abc\n  endpoint: localhost:9000\n", []string{"source.endpoint", "http://"}},
		{"bad region", "version: 1\nsource:\n  bucket: abc\n  region: US East\n", []string{"source.region"}},
		{"relative ca file", "version: 1\nsource:\n  bucket: abc\n  ca_file: ca.pem\n", []string{"source.ca_file", "absolute"}},
		{"unknown file entry", "version: 1\nsource:\n  bucket: abc\nfiles:\n  secrets: {mode: \"0600\"}\n", []string{"files.secrets: unknown file entry"}},
		{"bad mode", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {mode: \"0999\"}\n", []string{"mode", "octal"}},
		{"dir mode locks out", "version: 1\nsource:\n  bucket: abc\nfiles:\n  circleconfig: {dir_mode: \"0500\"}\n", []string{"files.circleconfig.dir_mode"}},
		{"group by name and id", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {group: docker, gid: 999}\n", []string{"files.license.group", "not both"}},
		{"user by name and id", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {user: circle, uid: 1000}\n", []string{"files.license.user", "not both"}},
		{"bad group name", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {group: \"doc:ker\"}\n", []string{"files.license.group", "not a group name"}},
		{"dir mode on a single file", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {dir_mode: \"0750\"}\n", []string{"files.license.dir_mode", "single file"}},
		{"relative dest", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {dest: etc/license.rli}\n", []string{"files.license.dest"}},
		// Where Replicated or CircleCI read a file at one path, the layout cannot move it.
		{"replicated.conf moved", "version: 1\nsource:\n  bucket: abc\nfiles:\n  replicated: {dest: /etc/replicated/replicated.conf}\n", []string{"files.replicated.dest", "read /etc/replicated.conf and no other path"}},
		{"circleconfig moved", "version: 1\nsource:\n  bucket: abc\nfiles:\n  circleconfig: {dest: /srv/circleconfig}\n", []string{"files.circleconfig.dest", "mounted into their containers"}},
		{"settings outside /etc", "version: 1\nsource:\n  bucket: abc\nfiles:\n  settings: {dest: /data/settings.conf}\n", []string{"files.settings.dest", "must stay under /etc/", "ImportSettingsFrom"}},
		{"licence outside /etc", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {dest: /opt/license.rli}\n", []string{"files.license.dest", "must stay under /etc/", "LicenseFileLocation"}},
		{"licence onto settings", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {dest: /etc/settings.conf}\n", []string{"files.license.dest", "overlaps files.settings"}},
		{"settings inside circleconfig", "version: 1\nsource:\n  bucket: abc\nfiles:\n  settings: {dest: /etc/circleconfig/settings.conf}\n", []string{"files.settings.dest", "overlaps files.circleconfig"}},
		{"licence over the config", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {dest: /etc/haagent/haagent.yaml}\n", []string{"files.license.dest", "overlaps /etc/haagent/haagent.yaml, which haagent keeps for itself"}},
		{"settings over the root's groups", "version: 1\nsource:\n  bucket: abc\nfiles:\n  settings: {dest: /etc/group}\n", []string{"files.settings.dest", "overlaps /etc/group"}},
		{"probe timeout above the cap", "version: 1\nsource:\n  bucket: abc\nprobes:\n  timeout: 3m\n", []string{"probes.timeout", "3m0s is more than the 2m0s haagent allows"}},
		// A moved entry never writes an S3 object over the machine's own files.
		{"settings over /etc/shadow", "version: 1\nsource:\n  bucket: abc\nfiles:\n  settings: {dest: /etc/shadow}\n", []string{"files.settings.dest", "is under /etc/shadow, a system path"}},
		{"licence into sudoers.d", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {dest: /etc/sudoers.d/circle}\n", []string{"files.license.dest", "is under /etc/sudoers, a system path"}},
		{"keys as root's ssh keys", "version: 1\nsource:\n  bucket: abc\nfiles:\n  encryption_keys: {dest: /root/.ssh}\n", []string{"files.encryption_keys.dest", "is under /root, a system path"}},
		{"CA certificates over haagent", "version: 1\nsource:\n  bucket: abc\nfiles:\n  ca_certificates: {dest: /usr/local/bin}\n", []string{"files.ca_certificates.dest", "is under /usr, a system path"}},
		{"keys as units", "version: 1\nsource:\n  bucket: abc\nfiles:\n  encryption_keys: {dest: /etc/systemd/system}\n", []string{"files.encryption_keys.dest", "is under /etc/systemd"}},
		{"keys over all of /etc", "version: 1\nsource:\n  bucket: abc\nfiles:\n  encryption_keys: {dest: /etc}\n", []string{"files.encryption_keys.dest", "a system path"}},
		{"keys into /var/lib/docker", "version: 1\nsource:\n  bucket: abc\nfiles:\n  encryption_keys: {dest: /var/lib/docker/keys}\n", []string{"files.encryption_keys.dest", "is under /var/lib/docker, a system path"}},
		{"keys holding the run record", "version: 1\nsource:\n  bucket: abc\nfiles:\n  encryption_keys: {dest: /var/lib/haagent}\n", []string{"files.encryption_keys.dest", "overlaps /var/lib/haagent/state.json"}},
		{"keys around the CA staging", "version: 1\nsource:\n  bucket: abc\nfiles:\n  encryption_keys: {dest: /var/lib/haagent}\n", []string{"files.encryption_keys.dest", "overlaps files.ca_certificates"}},
		{"hostile key", "version: 1\nsource:\n  bucket: abc\nfiles:\n  license: {key: ../../x}\n", []string{"files.license.key"}},
		{"bad duration", "version: 1\nsource:\n  bucket: abc\nfetch:\n  timeout: 5 minutes\n", []string{"duration"}},
		{"concurrency range", "version: 1\nsource:\n  bucket: abc\nfetch:\n  concurrency: 1000\n", []string{"fetch.concurrency", "1-128"}},
		{"wrong type", "version: one\nsource:\n  bucket: abc\n", []string{"version: want a whole number", "line 1"}},
		{"cookie key refused", "version: 1\nsource:\n  bucket: abc\nsession_cookie_key: abcdefghijklmnop\n", []string{"session_cookie_key: unknown field"}},
		{"replace without asg", "version: 1\nsource:\n  bucket: abc\nasg:\n  replace:\n    enabled: true\n", []string{"asg.replace.enabled: needs asg.enabled: true"}},
		{"replacement budget range", "version: 1\nsource:\n  bucket: abc\nasg:\n  enabled: true\n  replace:\n    budget: 50\n", []string{"asg.replace.budget", "1-10"}},
		{"asg endpoint", "version: 1\nsource:\n  bucket: abc\nasg:\n  enabled: true\n  endpoint: autoscaling.local\n", []string{"asg.endpoint"}},
		{"asg unknown field", "version: 1\nsource:\n  bucket: abc\nasg:\n  lifecycle-hook: x\n", []string{"asg.lifecycle-hook", `did you mean "lifecycle_hook"`}},
		{"extensions of no database", "version: 1\nsource:\n  bucket: abc\nprobes:\n  postgres:\n    optional_databases: []\n", []string{"probes.postgres.optional_extensions.domain: not a database"}},
		{"empty extension", "version: 1\nsource:\n  bucket: abc\nprobes:\n  postgres:\n    extensions: {circle: [\"\"]}\n", []string{"probes.postgres.extensions.circle: empty extension name"}},
		{"empty database", "version: 1\nsource:\n  bucket: abc\nprobes:\n  postgres:\n    optional_databases: [\"\"]\n    optional_extensions: {}\n", []string{"probes.postgres.optional_databases: empty database name"}},
		{"safety code overridden", "version: 1\nsource:\n  bucket: abc\nprobes:\n  overrides:\n    KEYS_CONFLICT: {blocking: false}\n", []string{"probes.overrides.KEYS_CONFLICT: cannot be overridden"}},
		{"several at once", "source:\n  prefix: /x\n", []string{"version: required", "source.bucket: required", "source.prefix"}},
		{"address ip with prefix", "version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: 10.0.1.50/24\n", []string{"address.private_ip", "without a prefix length"}},
		{"address ip public", "version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: 8.8.8.8\n", []string{"address.private_ip", "100.64.0.0/10"}},
		{"address ip link-local", "version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: 169.254.1.5\n", []string{"address.private_ip", "not in a range a VPC subnet uses"}},
		{"address ip v6", "version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: fd00::5\n", []string{"address.private_ip", "not an IPv4 address"}},
		{"address ip without asg", "version: 1\nsource:\n  bucket: abc\naddress:\n  private_ip: 10.0.1.50\n", []string{"address.private_ip: needs asg.enabled: true"}},
		{"address endpoint", "version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: 10.0.1.50\n  endpoint: ec2.local\n", []string{"address.endpoint", "http://"}},
		{"address unknown field", "version: 1\nsource:\n  bucket: abc\naddress:\n  privateip: 10.0.1.50\n", []string{"address.privateip", `did you mean "private_ip"`}},
		{"route53 empty", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {}\n", []string{"address.route53.zone_id: required", "address.route53.name: required"}},
		{"route53 bad zone", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: services.internal, name: services.internal}\n", []string{"address.route53.zone_id", "not a hosted zone id"}},
		{"route53 bad name", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: Z0123456789ABC, name: \"*.internal\"}\n", []string{"address.route53.name", "not a DNS name"}},
		{"route53 one label", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: Z0123456789ABC, name: services}\n", []string{"address.route53.name", "two or more labels"}},
		{"route53 ttl", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: Z0123456789ABC, name: services.internal, ttl: 86400}\n", []string{"address.route53.ttl", "1-3600"}},
		{"route53 endpoint", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: Z0123456789ABC, name: services.internal, endpoint: route53.local}\n", []string{"address.route53.endpoint", "http://"}},
		{"route53 unknown field", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone: Z0123456789ABC}\n", []string{"address.route53.zone: unknown field"}},
		{"address retry too fast", "version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: 10.0.1.50\n  retry_every: 10ms\n", []string{"address.retry_every", "at least 1s"}},
		{"route53 sync timeout", "version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: Z0123456789ABC, name: services.internal, sync_timeout: -1s}\n", []string{"address.route53.sync_timeout", "positive"}},
		{"future version with its own fields", "version: 2\nsource:\n  bucket: abc\naddress:\n  private_ip: 10.0.1.50\n", []string{"version: unsupported version 2", "line 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), "haagent.yaml")
			if strings.HasPrefix(c.name, "future version") && strings.Contains(fmt.Sprint(err), "unknown field") {
				t.Errorf("a file of another version is judged by this version's fields:\n%v", err)
			}
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("want *InvalidError, got %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "abcdefghijklmnop") {
				t.Errorf("a secret-looking value is echoed in the error")
			}
		})
	}
}

func TestLoadMissingIsNotInvalid(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, ErrNoConfig) {
		t.Fatalf("want ErrNoConfig, got %v", err)
	}
	p := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(p, []byte("version: 1\n"), 0o600)
	_, err = Load(p)
	var ie *InvalidError
	if errors.Is(err, ErrNoConfig) || !errors.As(err, &ie) {
		t.Fatalf("an invalid file must not look absent: %v", err)
	}
}

func TestIsUserDataConfig(t *testing.T) {
	for s, want := range map[string]bool{
		"#haagent-config\nversion: 1\n":     true,
		"\n  #haagent-config\r\nversion: 1": true,
		"#cloud-config\nwrite_files: []":    false,
		"#!/bin/bash\necho hi":              false,
		"version: 1\nsource: {bucket: x}":   false,
		"":                                  false,
	} {
		if got := IsUserDataConfig([]byte(s)); got != want {
			t.Errorf("IsUserDataConfig(%q) = %v", s, got)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("version: 1\nsource:\n  bucket: abc\n"))
	f.Add([]byte("version: 1\nsource:\n  bucket: abc\n  prefix: a/b\nfiles:\n  license: {mode: \"0640\", uid: 5}\nfetch: {timeout: 1s}\n"))
	f.Add([]byte("#haagent-config\nversion: 1\n"))
	f.Add([]byte("files: [1, 2]\nsource: 5\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz")
		if err == nil {
			// A config that parses must be fully usable: bucket set, layout built.
			if cfg.Source.Bucket == "" || len(cfg.Layout) != len(layout.Defaults()) {
				t.Fatalf("accepted an incomplete config: %+v", cfg)
			}
			for _, e := range cfg.Layout {
				if !strings.HasPrefix(e.Dest, "/") || strings.Contains(e.Key, "..") {
					t.Fatalf("accepted a hostile layout entry %+v", e)
				}
			}
			return
		}
		var ie *InvalidError
		if !errors.As(err, &ie) || len(ie.Problems) == 0 {
			t.Fatalf("error is not an *InvalidError with problems: %v", err)
		}
	})
}

// The shipped examples parse: the user-data form as is, the cloud-config form's embedded file.
func TestExamplesParse(t *testing.T) {
	ud, err := os.ReadFile("../../examples/userdata-haagent-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !IsUserDataConfig(ud) {
		t.Fatal("the user-data example is not recognised as a haagent config")
	}
	if _, err := Parse(ud, "user-data"); err != nil {
		t.Fatal(err)
	}
	cc, _ := os.ReadFile("../../examples/userdata-cloud-config.yaml")
	var doc struct {
		WriteFiles []struct {
			Path    string `yaml:"path"`
			Content string `yaml:"content"`
		} `yaml:"write_files"`
	}
	if err := yaml.Unmarshal(cc, &doc); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range doc.WriteFiles {
		if f.Path == DefaultPath {
			found = true
			if _, err := Parse([]byte(f.Content), f.Path); err != nil {
				t.Fatalf("the cloud-config example's haagent.yaml: %v", err)
			}
		}
	}
	if !found {
		t.Fatal("the cloud-config example does not write " + DefaultPath)
	}
}

func TestInstallationCustomizationsEntry(t *testing.T) {
	cfg, err := Parse([]byte("version: 1\nsource:\n  bucket: my-circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cfg.Layout {
		switch e.Name {
		case "installation_customizations":
			if e.Required || e.Recursive || e.Key != "circle-installation-customizations" || e.Dest != layout.New("/", nil).InstallationCustomizations() {
				t.Errorf("the installation customizations are an optional single object: %+v", e)
			}
		case "circleconfig":
			if e.Key != "circleconfig/" || e.Dest != "/etc/circleconfig/" || !e.Required {
				t.Errorf("the whole circleconfig/ prefix is synced: %+v", e)
			}
		}
	}
	_, err = Parse([]byte("version: 1\nsource:\n  bucket: my-circleci-ha\nfiles:\n  installation_customizations:\n    dest: /etc/elsewhere\n"), "test")
	var inv *InvalidError
	if !errors.As(err, &inv) || !strings.Contains(err.Error(), "files.installation_customizations.dest") {
		t.Fatalf("moving the installation customizations must be refused, got %v", err)
	}
}

// replicated.extra_args is checked against the installer's documented arguments offline: an
// unknown one would make the script exit 1 mid-boot, and the ones haagent sets itself cannot
// be overridden under any spelling. replicated.version is a version get.replicated.com takes.
func TestReplicatedArgsAndVersion(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"documented, both spellings", "extra_args: [release-sequence=12, release_patch_sequence=3, artifactory-auth=x]", ""},
		{"public address may be given", "extra_args: [public-address=ci.example.com]", ""},
		{"no public address may be given", "extra_args: [no_public_address]", ""},
		{"pinned version", "version: 2.38.6", ""},
		{"unknown", "extra_args: [release-sequence=12, relase-sequence=12]", `replicated.extra_args[1]: "relase-sequence" is not an argument the installer accepts`},
		{"artifactory-auth has one spelling", "extra_args: [artifactory_auth=x]", `"artifactory_auth" is not an argument`},
		{"no-docker", "extra_args: [no_docker]", "replicated.extra_args[0]: no_docker is set by haagent"},
		{"private address", "extra_args: [private-address=10.0.0.9]", "private-address is set by haagent"},
		{"local address", "extra_args: [local_address=10.0.0.9]", "local_address is set by haagent"},
		{"proxy", "extra_args: [http_proxy=http://p:3128]", "http_proxy is set by haagent"},
		{"no proxy", "extra_args: [no-proxy]", "no-proxy is set by haagent"},
		{"install docker only", "extra_args: [install_docker_only]", "replicated.extra_args[0]: install_docker_only makes the installer install something other"},
		{"airgap", "extra_args: [release-sequence=1, airgap]", "replicated.extra_args[1]: airgap makes"},
		{"migration", "extra_args: [is-migration]", "is-migration makes"},
		{"newline in a value", `extra_args: ["public-address=1.2.3.4\nx"]`, "the value of public-address has whitespace or a control character"},
		{"ui and operator may be left out", "extra_args: [disable-replicated-ui, no-operator]", ""},
		{"bad version", "version: v2.38", `replicated.version: "v2.38" is not a Replicated version`},
		{"version with a script in the bucket", "installer_url: s3://b/install.sh\n  sha256: " + strings.Repeat("a", 64) + "\n  version: 2.38.6", "replicated.version: a script kept in the bucket"},
		// The fetch's pass reads a script kept in the bucket long before it runs: the pin, not the
		// time of the read, says which bytes run, so there is no unpinned s3:// installer.
		{"script in the bucket unpinned", "installer_url: s3://b/install.sh", "replicated.sha256: required with an s3:// installer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte("version: 1\nsource:\n  bucket: my-circleci-ha\nreplicated:\n  "+tc.yaml+"\n"), "test")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error with %q, got %v", tc.want, err)
			}
		})
	}
}

// The PostgreSQL lists: an absent field keeps its default, an empty one means none.
func TestPostgresProbeDefaults(t *testing.T) {
	c, err := Parse([]byte("version: 1\nsource:\n  bucket: abc\n"), "haagent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pg := c.Probes.Postgres.Effective()
	if len(pg.Databases) != 5 || strings.Join(pg.OptionalDatabases, ",") != "domain,federations,permissions" ||
		len(pg.OptionalExtensions) != 5 || strings.Join(pg.Extensions["circle"], ",") != "pgcrypto,uuid-ossp" {
		t.Fatalf("%+v", pg)
	}
	c, err = Parse([]byte("version: 1\nsource:\n  bucket: abc\nprobes:\n  postgres:\n    optional_databases: []\n    optional_extensions: {}\n"), "haagent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if pg := c.Probes.Postgres.Effective(); len(pg.OptionalDatabases) != 0 || len(pg.OptionalExtensions) != 0 || len(pg.Databases) != 5 {
		t.Fatalf("empty lists must switch the optional checks off: %+v", pg)
	}
}

func TestAddressSection(t *testing.T) {
	cfg, err := Parse([]byte("version: 1\nsource:\n  bucket: abc\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Address.On() {
		t.Fatalf("no address section is off: %+v", cfg.Address)
	}
	cfg, err = Parse([]byte(`version: 1
source:
  bucket: abc
asg:
  enabled: true
address:
  private_ip: 10.0.1.50
  endpoint: http://127.0.0.1:1
  route53:
    zone_id: /hostedzone/Z0123456789ABC
    name: Services.CircleCI.Internal.
`), "test")
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Address
	if !a.On() || a.PrivateIP != "10.0.1.50" || a.RetryEvery.D() != DefaultAddressRetryEvery || a.Endpoint != "http://127.0.0.1:1" {
		t.Fatalf("address: %+v", a)
	}
	r := a.Route53
	if r.ZoneID != "Z0123456789ABC" || r.Name != "services.circleci.internal" || r.TTL != DefaultRoute53TTL || r.SyncTimeout.D() != DefaultRoute53SyncTimeout {
		t.Fatalf("route53: %+v", *r)
	}
	// A VPC may use RFC 6598's shared space (a secondary CIDR in 100.64.0.0/10), and every RFC
	// 1918 range.
	for _, ip := range []string{"100.64.1.50", "100.127.255.10", "172.31.5.5", "192.168.7.7"} {
		if _, err := Parse([]byte("version: 1\nsource:\n  bucket: abc\nasg: {enabled: true}\naddress:\n  private_ip: "+ip+"\n"), "test"); err != nil {
			t.Errorf("%s: %v", ip, err)
		}
	}
	// Route 53 alone needs no Auto Scaling group: nothing is taken from another instance.
	if _, err := Parse([]byte("version: 1\nsource:\n  bucket: abc\naddress:\n  route53: {zone_id: Z0123456789ABC, name: services.internal, ttl: 30}\n"), "test"); err != nil {
		t.Fatal(err)
	}
}

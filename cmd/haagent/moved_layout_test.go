package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A layout that moves what may move (settings.conf and the licence within /etc, as
// replicated.conf names them; the CA staging directory anywhere) is honoured end to end: the
// fetch writes there, validate-files and `haagent validate` check the files there, the CA step
// installs the moved staging's CA (the installer's download trusts it) and nothing lands at
// the default paths. A layout that moves a path CircleCI or Replicated fixes is refused before
// anything is fetched.
func TestMovedLayoutBoot(t *testing.T) {
	w := newWorld(t, "i-0movedlayout0000")
	conf := strings.NewReplacer("/etc/license.rli", "/etc/circleci/license.rli", "/etc/settings.conf", "/etc/circleci/settings.conf").Replace(string(w.objs["replicated.conf"]))
	w.s3.Put(t, bkt, "replicated.conf", []byte(conf))
	moved := "files:\n  settings: {dest: /etc/circleci/settings.conf}\n  license: {dest: /etc/circleci/license.rli}\n  ca_certificates: {dest: /srv/haagent/ca/}\n"
	w.writeConfig(w.s3.URL, moved)

	r := w.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	for _, p := range []string{"etc/circleci/settings.conf", "etc/circleci/license.rli", "srv/haagent/ca/installer-ca.crt"} {
		if _, err := os.Stat(filepath.Join(w.root, p)); err != nil {
			t.Errorf("the moved layout's /%s is not in place: %v", p, err)
		}
	}
	for _, p := range []string{"etc/settings.conf", "etc/license.rli", "var/lib/haagent/ca-certificates"} {
		if _, err := os.Stat(filepath.Join(w.root, p)); err == nil {
			t.Errorf("/%s was written although the layout moved it", p)
		}
	}
	v := w.run("validate")
	if v.code != 0 || !strings.Contains(v.stdout, "settings.conf and the licence are valid") || !strings.Contains(v.stdout, "/etc/circleci/settings.conf") {
		t.Fatalf("validate of the moved layout: exit %d\n%s%s", v.code, v.stdout, v.stderr)
	}

	// A broken settings.conf is found at the moved path.
	w.s3.Put(t, bkt, "settings.conf", []byte("{\n  \"hostname\": {\"value\": \"x\"},\n}\n"))
	if r := w.run("run", "--once"); r.code != 1 || !strings.Contains(r.stderr, "FILE_SYNTAX") || !strings.Contains(r.stderr, "target=/etc/circleci/settings.conf:3:1") {
		t.Fatalf("want the boot stopped on the moved settings.conf's syntax: exit %d\n%s", r.code, r.stderr)
	}
	w.s3.Put(t, bkt, "settings.conf", w.objs["settings.conf"])

	// replicated.conf still naming the default paths: Replicated would read files haagent
	// does not write, and the boot stops before anything is moved into place.
	w.s3.Put(t, bkt, "replicated.conf", w.objs["replicated.conf"])
	if r := w.run("run", "--once"); r.code != 1 || !strings.Contains(r.stderr, "neither fetches nor checks") {
		t.Fatalf("want the boot stopped at validate-files: exit %d\n%s", r.code, r.stderr)
	}

	// Paths CircleCI or Replicated fix are refused at config validation (exit 2).
	w.writeConfig(w.s3.URL, "files:\n  replicated: {dest: /etc/circleci/replicated.conf}\n")
	if r := w.run("run", "--once"); r.code != 2 || !strings.Contains(r.stderr, "files.replicated.dest") {
		t.Fatalf("want the config refused: exit %d\n%s", r.code, r.stderr)
	}
}

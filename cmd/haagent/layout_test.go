package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/haagent/haagent/internal/cookie"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
)

// A bucket laid out as CircleCI's HA page lays it out: the MongoDB URIs and the session cookie
// key in circle-installation-customizations, no session-cookie-key object. The boot adopts the
// key, merges the file, stages it with the bundle (a failed validation leaves the old one) and
// the probes, the boot's and `haagent check`'s, read the merged file in place.
func TestHAPageLayoutBoot(t *testing.T) {
	w := newWorld(t, "i-0hapage000000000")
	// The MongoDB settings move from shared/ to the installation customizations.
	w.s3.Delete(t, bkt, "circleconfig/shared/mongodb")
	mongoPort := peertest.ClosedPort(t)
	custom := fmt.Sprintf("# Note that connection strings below should be modified as necessary\n\n"+
		"MONGO_BASE_URI=mongodb://circle:MONGOPASS-hapage@127.0.0.1:%d\n"+
		"export CIRCLE_SECRETS_MONGODB_MAIN_URI=\"$MONGO_BASE_URI/circle_ghe?authSource=admin\"\n"+
		"export CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI=\"$MONGO_BASE_URI/circle_ghe?authSource=admin\"\n"+
		"export CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI=\"$MONGO_BASE_URI/build_state_dev_ghe?authSource=admin\"\n"+
		"export CIRCLE_SECRETS_MONGODB_CONTAINERS_URI=\"$MONGO_BASE_URI/containers_dev_ghe?authSource=admin\"\n"+
		"export CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI=\"$MONGO_BASE_URI/remote_containers_dev_ghe?authSource=admin\"\n"+
		"export CIRCLE_SECRETS_SESSION_COOKIE_KEY=\"HaPageKey0123456\"\n", mongoPort)
	w.s3.Put(t, bkt, cookie.CustomizationsObject, []byte(custom))
	// Not shell: synced as it is, never parsed.
	edn := "{:resource-classes {:medium {:cpu 2.0 :ram 4096}}}\n"
	w.s3.Put(t, bkt, "circleconfig/picard-dispatcher/resource-definitions.edn", []byte(edn))

	r := w.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got := string(w.s3.Object(bkt, cookie.Object)); got != "HaPageKey0123456" {
		t.Fatalf("the session-cookie-key object must be created with the customizations' key (holds %d bytes)", len(got))
	}
	path := filepath.Join(w.root, defaults.InstallationCustomizations())
	got, _ := os.ReadFile(path)
	if string(got) != custom {
		t.Fatalf("the file in place must be the bucket's copy, its one export line kept:\n%s", got)
	}
	if b, _ := os.ReadFile(filepath.Join(w.root, "etc/circleconfig/picard-dispatcher/resource-definitions.edn")); string(b) != edn {
		t.Fatal("a non-shell file of circleconfig/ was not synced as it is")
	}
	for _, out := range []string{r.stderr, r.stdout} {
		for _, secret := range []string{"HaPageKey0123456", "MONGOPASS-hapage"} {
			if strings.Contains(out, secret) {
				t.Fatalf("%s appears in the output", secret)
			}
		}
	}
	// The probe step read the MongoDB URIs from the merged file in place.
	mongoTarget := fmt.Sprintf("127.0.0.1:%d", mongoPort)
	if !strings.Contains(r.stderr, "service=mongo target=circle@"+mongoTarget) {
		t.Fatalf("the probe step did not probe the MongoDB the customizations name:\n%s", r.stderr)
	}
	// And so does haagent check.
	c := w.run("check", "--only", "mongo", "--format", "json")
	var js struct {
		Checked []struct{ Target string } `json:"checked"`
	}
	if json.Unmarshal([]byte(c.stdout), &js) != nil || len(js.Checked) != 1 || js.Checked[0].Target != "circle@"+mongoTarget {
		t.Fatalf("check did not read the merged file: exit %d\n%s%s", c.code, c.stdout, c.stderr)
	}
	if strings.Contains(c.stdout, "MONGOPASS-hapage") {
		t.Fatal("check prints the MongoDB password")
	}

	// Unchanged: the file is not rewritten.
	ino := func() uint64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	before := ino()
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
	}
	if ino() != before {
		t.Fatal("the unchanged customizations were rewritten")
	}

	// An edit in the bucket together with a broken replicated.conf: validation blocks, and the
	// old merged file stays.
	edited := strings.Replace(custom, "# Note", "# Edited\n# Note", 1)
	w.s3.Put(t, bkt, cookie.CustomizationsObject, []byte(edited))
	good := w.objs["replicated.conf"]
	w.s3.Put(t, bkt, "replicated.conf", []byte(strings.Replace(string(good), "{", "", 1)))
	if r := w.run("run", "--once"); r.code != 1 || !strings.Contains(r.stderr, "validate-files") {
		t.Fatalf("want the boot stopped at validate-files: exit %d\n%s", r.code, r.stderr)
	}
	if now, _ := os.ReadFile(path); string(now) != custom {
		t.Fatalf("a blocked validation replaced the customizations:\n%s", now)
	}
	// A failed fetch (a required object gone) leaves it too.
	w.s3.Put(t, bkt, "replicated.conf", good)
	w.s3.Delete(t, bkt, "license.rli")
	if r := w.run("run", "--once"); r.code != 1 || !strings.Contains(r.stderr, findings.S3ObjectMissing.String()) {
		t.Fatalf("want the fetch to fail: exit %d\n%s", r.code, r.stderr)
	}
	if now, _ := os.ReadFile(path); string(now) != custom {
		t.Fatal("a failed fetch replaced the customizations")
	}
	// Fixed: the edit arrives, merged, with the object's key.
	w.s3.Put(t, bkt, "license.rli", w.objs["license.rli"])
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if now, _ := os.ReadFile(path); string(now) != edited {
		t.Fatalf("the edited customizations are not in place:\n%s", now)
	}
}

// defaults is the default layout, by which the tests find the files a boot writes.
var defaults = layout.New("/", nil)

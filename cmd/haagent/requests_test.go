package main

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/haagent/haagent/internal/peertest"
)

// A healthy boot reads each encryption key from the bucket once: the backup-keys step knows
// from the fetch (its sha256 and the object's ETag, in the run record) that the keys it just
// installed are in sync, instead of downloading every one of them again. A reboot with nothing
// changed downloads none.
func TestBootReadsEachKeyOnce(t *testing.T) {
	w := newWorld(t, "i-0requests0000000")
	fake := peertest.StartFakeS3(t, bkt, w.objs)
	var mu sync.Mutex
	gets := map[string]int{}
	fake.SetFault(func(rw http.ResponseWriter, r *http.Request, real http.Handler) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/circleci-encryption-keys/") {
			mu.Lock()
			gets[r.URL.Path]++
			mu.Unlock()
		}
		return false
	})
	w.writeConfig(fake.URL, "")
	keys := 0
	for k := range w.objs {
		if strings.HasPrefix(k, "circleci-encryption-keys/") {
			keys++
		}
	}
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("first boot: exit %d\n%s", r.code, r.stderr)
	}
	mu.Lock()
	if len(gets) != keys {
		t.Errorf("%d of %d keys downloaded", len(gets), keys)
	}
	for p, n := range gets {
		if n != 1 {
			t.Errorf("%s downloaded %d times in one boot, want once", p, n)
		}
	}
	clear(gets)
	mu.Unlock()
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("reboot: exit %d\n%s", r.code, r.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(gets) != 0 {
		t.Errorf("a reboot with nothing changed downloaded keys again: %v", gets)
	}
}

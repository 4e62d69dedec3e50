package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/peertest"
)

// runbookWorld is the runbook-sized bundle (3 files, 200 keys, 49 circleconfig files and the
// installation customizations) with the installer kept in the same bucket, behind counting
// proxies for S3 and IMDS.
type runbookWorld struct {
	*world
	s3c, imdsc *peertest.Counter
}

const installerKey = "replicated/install.sh"

func newRunbookWorld(t *testing.T, id string) *runbookWorld {
	w := newWorld(t, id)
	for i := 3; i < 200; i++ {
		k := fmt.Sprintf("circleci-encryption-keys/%03d-service.key", i)
		w.objs[k] = []byte(fmt.Sprintf("key-%03d-%x", i, sha256.Sum256([]byte(k))))
		w.s3.Put(t, bkt, k, w.objs[k])
	}
	n := 0
	for k := range w.objs {
		if strings.HasPrefix(k, "circleconfig/") {
			n++
		}
	}
	for i := n; i < 49; i++ {
		k := fmt.Sprintf("circleconfig/service-%02d/customizations", i)
		w.objs[k] = []byte(fmt.Sprintf("export SETTING_%02d=\"value %d\"\n", i, i))
		w.s3.Put(t, bkt, k, w.objs[k])
	}
	// The installer comes from the bucket: no HTTPS server, so no CA for it either.
	w.s3.Delete(t, bkt, "ca-certificates/installer-ca.crt")
	delete(w.objs, "ca-certificates/installer-ca.crt")
	// Through the API, so every object has its ETag, as in S3.
	for k, v := range w.objs {
		w.s3.Upload(t, bkt, k, v)
	}
	rw := &runbookWorld{world: w, s3c: peertest.CountS3(t, w.s3.URL), imdsc: peertest.CountIMDS(t, w.imds.URL)}
	rw.putInstaller()
	return rw
}

// putInstaller renders the stand-in for the world's root into the bucket and pins it.
func (w *runbookWorld) putInstaller() {
	w.installer.mu.Lock()
	body := strings.NewReplacer("RECDIR", w.installer.recIn, "ROOTDIR", w.root, "IMDSV1URL", w.imds.URL, "STANDIN_DELAY", "0").Replace(w.installer.script)
	w.installer.mu.Unlock()
	w.s3.Upload(w.t, bkt, installerKey, []byte(body))
	sum := sha256.Sum256([]byte(body))
	w.installCfg = fmt.Sprintf("replicated:\n  installer_url: s3://%s/%s\n  sha256: %s\n  timeout: 60s\n", bkt, installerKey, hex.EncodeToString(sum[:]))
	w.writeConfig(w.s3c.URL, "")
}

func (w *runbookWorld) boot(what string) {
	w.t.Helper()
	w.s3c.Reset()
	w.imdsc.Reset()
	if r := w.runEnv(w.env(w.imdsc.URL), "run", "--once"); r.code != 0 {
		w.t.Fatalf("%s: exit %d\n%s", what, r.code, r.stderr)
	}
}

// tableRow is one row of README's request table: a step's requests of one kind to one group
// of objects, in each of the three boots.
type tableRow struct {
	step, kind, group string
	imds              bool
	n                 [3]int
}

// requestTable reads README's table of the requests a healthy boot makes, its rows in the
// boot's order of steps. It is the one place a needed request is added, with its reason; this
// test holds every boot to it.
func requestTable(t *testing.T) []tableRow {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- requests:begin -->")
	table, _, ok2 := strings.Cut(rest, "<!-- requests:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no request table (<!-- requests:begin --> ... <!-- requests:end -->)")
	}
	var rows []tableRow
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) < 7 || strings.HasPrefix(strings.TrimSpace(cells[0]), "---") || strings.TrimSpace(cells[0]) == "step" {
			continue
		}
		r := tableRow{step: strings.TrimSpace(cells[0]), kind: strings.ReplaceAll(strings.TrimSpace(cells[1]), "`", ""), group: strings.TrimSpace(cells[2])}
		if k, ok := strings.CutPrefix(r.kind, "IMDS "); ok {
			r.kind, r.imds = k, true
		}
		for i := range 3 {
			n, err := strconv.Atoi(strings.TrimSpace(cells[3+i]))
			if err != nil {
				t.Fatalf("README request table, row %q: %v", line, err)
			}
			r.n[i] = n
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatal("README's request table has no rows")
	}
	return rows
}

// objectGroup names the group of objects an S3 request is about, as the table's objects
// column does: a listing by its prefix, an object by its key. Anything else is its own key,
// which no row names.
func objectGroup(r peertest.Request) string {
	key := strings.TrimPrefix(r.Path, "/"+bkt+"/")
	if r.Kind == "ListObjectsV2" {
		key = r.Prefix
	}
	switch {
	case strings.HasPrefix(key, "circleci-encryption-keys/"):
		return "keys"
	case strings.HasPrefix(key, "circleconfig/"):
		return "circleconfig"
	case strings.HasPrefix(key, "ca-certificates/"):
		return "ca-certificates"
	case key == "settings.conf" || key == "replicated.conf" || key == "license.rli" || key == "circle-installation-customizations":
		return "fixed"
	case key == "session-cookie-key":
		return "cookie key"
	case key == installerKey:
		return "installer"
	}
	return key
}

// checkAgainstTable holds one counter's requests of boot i to the table's rows: per kind and
// group of objects, and in the table's order of steps. An attempt the peer answered with what
// an SDK retries (5xx, throttling) is left out: the table counts a healthy boot's requests, and
// the retry is counted in its place.
func checkAgainstTable(t *testing.T, what string, reqs []peertest.Request, rows []tableRow, i int, group func(peertest.Request) string) {
	t.Helper()
	want, got := map[string]int{}, map[string]int{}
	order := map[string]int{}   // a step's place in the boot: its first row's
	steps := map[string][]int{} // per kind and group, the step of each request, in the table's order
	var names []string
	for _, r := range rows {
		if _, ok := order[r.step]; !ok {
			order[r.step] = len(names)
			names = append(names, r.step)
		}
		if r.n[i] > 0 {
			want[r.kind+" "+r.group] += r.n[i]
			for range r.n[i] {
				steps[r.kind+" "+r.group] = append(steps[r.kind+" "+r.group], order[r.step])
			}
		}
	}
	last := 0
	for _, r := range reqs {
		if r.Retried() {
			continue
		}
		k := r.Kind + " " + group(r)
		got[k]++
		q := steps[k]
		if len(q) == 0 {
			continue // more than the table says: the counts below report it
		}
		steps[k] = q[1:]
		if q[0] < last {
			t.Errorf("%s: %s came after a request of step %s, but the table has it in step %s, before: a request moved between steps", what, k, names[last], names[q[0]])
		}
		last = max(last, q[0])
	}
	if !maps.Equal(got, want) {
		t.Errorf("%s: requests by kind and objects %v, README's table says %v", what, got, want)
	}
}

// Whole boots (haagent run --once against versitygw and the IMDS mock, the runbook-sized
// bundle, the installer in the bucket) make exactly the requests README's table lists, per
// kind and group of objects, in the order of its steps: a first boot, a reboot with nothing
// changed, and a replacement instance. The session cookie key and the installer are GETs of the
// fetch's pass, each once, and nothing reads them again later.
func TestBootRequestTable(t *testing.T) {
	rows := requestTable(t)
	var s3Rows, imdsRows []tableRow
	for _, r := range rows {
		if r.imds {
			imdsRows = append(imdsRows, r)
		} else {
			s3Rows = append(s3Rows, r)
		}
	}
	w := newRunbookWorld(t, "i-0table0000000000")
	check := func(i int, what string) {
		t.Helper()
		reqs := w.s3c.Requests()
		checkAgainstTable(t, what+", S3", reqs, s3Rows, i, objectGroup)
		checkAgainstTable(t, what+", IMDS", w.imdsc.Requests(), imdsRows, i, func(peertest.Request) string { return "-" })
		// The pass's own objects: read once, while the layout's downloads still ran (before
		// the last of them), never by a later step.
		lastLayout := -1
		for j, r := range reqs {
			if r.Kind == "GetObject" && (strings.Contains(r.Path, "/circleconfig/") || strings.Contains(r.Path, "/circleci-encryption-keys/")) {
				lastLayout = j
			}
		}
		for _, key := range []string{"session-cookie-key", installerKey} {
			for j, r := range reqs {
				if r.Path == "/"+bkt+"/"+key && (r.Kind == "GetObject" || r.Kind == "HeadObject") && lastLayout >= 0 && j > lastLayout {
					t.Errorf("%s: %s %s after the fetch's last download: a step read it again instead of taking the fetch's", what, r.Kind, key)
				}
			}
		}
	}
	w.boot("first boot")
	check(0, "first boot")
	w.boot("reboot")
	check(1, "reboot")
	// A replacement: another instance, a new machine, the same bucket.
	w.root = t.TempDir()
	bakeDocker(t, w.root)
	w.imds = peertest.StartIMDS(t, peertest.Instance{ID: "i-0table0000000001", LocalIPv4: "10.0.1.24", Region: "us-east-1"})
	w.imdsc = peertest.CountIMDS(t, w.imds.URL)
	w.installer.set(func(s *installerServer) { s.root = w.root })
	w.putInstaller()
	w.boot("replacement")
	check(2, "replacement")
	if w.installer.runs() != 2 {
		t.Fatalf("the installer from the bucket ran %d times, want once per instance", w.installer.runs())
	}
}

// Keys CircleCI made on this machine cost one put each at the boot that backs them up (the
// put's answer echoes the checksum S3 verified: no read-back), and nothing at the next: the backup records what it verified as the fetch
// records what it installed, so the reboot's fetch finds them listed unchanged instead of
// downloading each to compare.
func TestBackedUpKeysAreKnownAtTheNextBoot(t *testing.T) {
	w := newRunbookWorld(t, "i-0newkeys00000000")
	const made = 20
	old := time.Now().Add(-time.Hour)
	for i := 0; i < made; i++ {
		k := fmt.Sprintf("circleci-encryption-keys/%03d-service.key", 100+i)
		p := filepath.Join(w.root, "data/circle", k)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, w.objs[k], 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old) // settled: written an hour ago
		w.s3.Delete(t, bkt, k)
	}
	keyRequests := func() map[string]int {
		out := map[string]int{}
		for _, r := range w.s3c.Requests() {
			if strings.Contains(r.Path, "/circleci-encryption-keys/") {
				out[r.Kind]++
			}
		}
		return out
	}
	w.boot("first boot")
	if got := keyRequests(); got["PutObject"] != made || got["GetObject"] != 200-made || got["HeadObject"] != 0 {
		t.Fatalf("first boot, key requests %v: want %d PutObject and the fetch's %d GetObject (no read-back)", got, made, 200-made)
	}
	w.boot("reboot")
	if got := keyRequests(); len(got) != 0 {
		t.Fatalf("reboot, key requests %v: want none (every key was verified and recorded)", got)
	}
}

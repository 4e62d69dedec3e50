package fetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

type fakeS3 = peertest.FakeS3

func startFake(t *testing.T, objs map[string][]byte) *fakeS3 {
	return peertest.StartFakeS3(t, testBucket, objs)
}

func slowDown(w http.ResponseWriter) {
	peertest.S3Error(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
}

func bundle(t *testing.T) map[string][]byte {
	objs := examples(t)
	big := make([]byte, 1<<20)
	rand.Read(big)
	objs["license.rli"] = big
	return objs
}

func checkTree(t *testing.T, root string, objs map[string][]byte) {
	t.Helper()
	for k, want := range objs {
		got, err := os.ReadFile(filepath.Join(root, destOf(k)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: content differs or missing (%v)", destOf(k), err)
		}
	}
}

func fetchAll(t *testing.T, b *bucket.Bucket, root string) (*Bundle, error) {
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err == nil {
		if cerr := bd.Commit(); cerr != nil {
			t.Fatal(cerr)
		}
	}
	return bd, err
}

func TestFetchRetriesSlowDownBursts(t *testing.T) {
	objs := bundle(t)
	f := startFake(t, objs)
	var n atomic.Int32
	f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if strings.HasSuffix(r.URL.Path, "/license.rli") && n.Add(1) <= 3 {
			slowDown(w)
			return true
		}
		return false
	})
	root := t.TempDir()
	if _, err := fetchAll(t, open(t, f.URL, "a", "b", testBucket), root); err != nil {
		t.Fatalf("a burst of 503 SlowDown must be retried: %v", err)
	}
	checkTree(t, root, objs)
	if got := f.Count("GET", "license.rli"); got != 4 {
		t.Errorf("license.rli fetched %d times, want 3 refusals + 1 success", got)
	}
}

func TestFetchRetriesCutBodies(t *testing.T) {
	for _, reset := range []bool{true, false} {
		name := map[bool]string{true: "connection reset mid-body", false: "truncated body"}[reset]
		t.Run(name, func(t *testing.T) {
			objs := bundle(t)
			f := startFake(t, objs)
			var n atomic.Int32
			f.SetFault(func(w http.ResponseWriter, r *http.Request, real http.Handler) bool {
				if strings.HasSuffix(r.URL.Path, "/license.rli") && n.Add(1) == 1 {
					peertest.Cut(w, r, real, 300<<10, reset)
					return true
				}
				return false
			})
			root := t.TempDir()
			if _, err := fetchAll(t, open(t, f.URL, "a", "b", testBucket), root); err != nil {
				t.Fatalf("%s must be retried: %v", name, err)
			}
			checkTree(t, root, objs)
			if got := f.Count("GET", "license.rli"); got != 2 {
				t.Errorf("license.rli fetched %d times, want 2", got)
			}
		})
	}
}

func TestFetchRetriesCorruptBody(t *testing.T) {
	objs := bundle(t)
	f := startFake(t, objs)
	var n atomic.Int32
	f.SetFault(func(w http.ResponseWriter, r *http.Request, real http.Handler) bool {
		if !strings.HasSuffix(r.URL.Path, "/settings.conf") || n.Add(1) != 1 {
			return false
		}
		rec := httptest.NewRecorder()
		real.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		body[0] ^= 0xff // same length, different bytes: only the ETag's MD5 can tell
		w.Write(body)
		return true
	})
	root := t.TempDir()
	if _, err := fetchAll(t, open(t, f.URL, "a", "b", testBucket), root); err != nil {
		t.Fatalf("a corrupt body must be retried: %v", err)
	}
	checkTree(t, root, objs)
	if got := f.Count("GET", "settings.conf"); got != 2 {
		t.Errorf("settings.conf fetched %d times, want 2 (corrupt, then good)", got)
	}
}

func TestFetchSlowServerHitsDeadline(t *testing.T) {
	objs := bundle(t)
	f := startFake(t, objs)
	f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if strings.HasSuffix(r.URL.Path, "/replicated.conf") {
			<-r.Context().Done() // never answers; the client's deadline must end it
			return true
		}
		return false
	})
	root := t.TempDir()
	// The deadline is well above what a healthy answer takes on a loaded 2-core machine under
	// -race, so only the object that never answers meets it.
	b := peertest.OpenBucket(t, f.URL, "a", "b", testBucket, 2, 2*time.Second)
	_, err := fetchAll(t, b, root)
	fs := failure(t, err)
	fd := hasCode(fs, findings.S3Unreachable)
	if fd == nil || !strings.Contains(fd.Evidence, "no complete answer within 2s") || fd.Target != "s3://circleci-ha/replicated.conf" {
		t.Fatalf("want S3_UNREACHABLE for replicated.conf naming the deadline, got %+v", fs)
	}
	if got := f.Count("GET", "replicated.conf"); got != 2 {
		t.Errorf("replicated.conf tried %d times, want 2 attempts", got)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/settings.conf")); err == nil {
		t.Error("files were moved into place although the bundle failed")
	}
}

func TestFetchRefusesHostileKeys(t *testing.T) {
	objs := examples(t)
	hostile := []string{
		"circleconfig/shared/../../../../escaped",
		"circleconfig/shared/a/../../../escaped2",
		"circleconfig/shared//escaped3",
		"circleconfig/shared/./dot",
		"circleci-encryption-keys/../../escaped4",
	}
	f := startFake(t, objs)
	for _, k := range hostile {
		f.Put(t, k, []byte("pwned"))
	}
	outer := t.TempDir()
	root := filepath.Join(outer, "root")
	_, err := fetchAll(t, open(t, f.URL, "a", "b", testBucket), root)
	fs := failure(t, err)
	refused := 0
	for _, g := range fs {
		if g.Code == findings.S3KeyRefused {
			refused++
		}
	}
	if refused != len(hostile) {
		t.Fatalf("refused %d keys, want %d: %+v", refused, len(hostile), fs)
	}
	filepath.Walk(outer, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if b, _ := os.ReadFile(p); string(b) == "pwned" {
				t.Errorf("a hostile object was written to %s", p)
			}
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(root, "etc/settings.conf")); err == nil {
		t.Error("the step must fail as a whole: nothing moved into place")
	}
}

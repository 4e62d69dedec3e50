package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
)

func sum(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// The machine's only copy of a key is never replaced by the bucket's different one (the
// reboot after a KEYS_CONFLICT used to commit the bucket's copy over it): the local file is
// kept, the conflict carries both hashes, and the rest of the bundle is committed as usual.
func TestFetchNeverReplacesALocalKey(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := t.TempDir()
	key := filepath.Join(root, "data/circle/circleci-encryption-keys/01-contexts.key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	os.WriteFile(key, []byte("the key this machine's data is encrypted with"), 0o600)
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)

	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatalf("a key conflict is not the fetch's failure: %v", err)
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(key); string(got) != "the key this machine's data is encrypted with" {
		t.Fatalf("the local key was replaced by the bucket's: %q", got)
	}
	want := KeyConflict{Path: "/data/circle/circleci-encryption-keys/01-contexts.key", Object: "s3://circleci-ha/circleci-encryption-keys/01-contexts.key",
		LocalSHA256: sum("the key this machine's data is encrypted with"), BucketSHA256: sum(string(objs["circleci-encryption-keys/01-contexts.key"]))}
	if len(bd.Conflicts) != 1 || bd.Conflicts[0] != want {
		t.Fatalf("conflicts %+v, want %+v", bd.Conflicts, want)
	}
	f := hasCode(bd.Findings, findings.KeysConflict)
	if f == nil || f.Severity != findings.Error || !strings.Contains(f.Evidence, want.LocalSHA256) || !strings.Contains(f.Evidence, want.BucketSHA256) ||
		!strings.Contains(f.Fix, "aws s3 mv") || strings.Contains(f.Summary+f.Evidence+f.Fix, "encrypted with\"") {
		t.Fatalf("want a KEYS_CONFLICT error with both hashes and the resolution, got %+v", f)
	}
	// The other keys, absent locally, were added.
	if got, _ := os.ReadFile(filepath.Join(root, "data/circle/circleci-encryption-keys/00-default.key")); string(got) != string(objs["circleci-encryption-keys/00-default.key"]) {
		t.Fatal("a key missing locally was not added")
	}
}

// A brand-new replacement has no local keys: an empty key object in the bucket is refused and
// nothing is installed (CircleCI would start on an empty key).
func TestFetchRefusesAnEmptyKeyObject(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	s.Put(t, testBucket, "circleci-encryption-keys/03-truncated.key", nil)
	root := t.TempDir()
	_, err := Fetch(context.Background(), open(t, s.URL, s.AccessKey, s.SecretKey, testBucket), Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	f := hasCode(failure(t, err), findings.KeysEmpty)
	if f == nil || f.Target != "s3://circleci-ha/circleci-encryption-keys/03-truncated.key" || !f.Blocking {
		t.Fatalf("want a blocking KEYS_EMPTY for the empty object, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "data/circle/circleci-encryption-keys")); err == nil {
		t.Fatal("keys were installed although one was refused")
	}
}

// A key object whose body always arrives shorter than its Content-Length is refused after the
// retries, and nothing is installed.
func TestFetchRefusesATruncatedKeyObject(t *testing.T) {
	objs := examples(t)
	f := startFake(t, objs)
	f.SetFault(func(w http.ResponseWriter, r *http.Request, real http.Handler) bool {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/02-workflows.key") {
			peertest.Cut(w, r, real, 10, false)
			return true
		}
		return false
	})
	root := t.TempDir()
	_, err := Fetch(context.Background(), open(t, f.URL, "a", "b", testBucket), Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	fs := failure(t, err)
	if len(fs) == 0 || fs[0].Target != "s3://circleci-ha/circleci-encryption-keys/02-workflows.key" {
		t.Fatalf("want the truncated key refused, got %+v", fs)
	}
	if _, err := os.Stat(filepath.Join(root, "data/circle/circleci-encryption-keys")); err == nil {
		t.Fatal("keys were installed although one arrived truncated")
	}
}

// An empty keys prefix is a new install's warning, unless this deployment existed before and
// the machine holds no keys: then it is the blocking KEYS_MISSING, naming the evidence.
func TestFetchEmptyKeysPrefixOfAnExistingDeployment(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	for k := range objs {
		if strings.HasPrefix(k, "circleci-encryption-keys/") {
			s.Delete(t, testBucket, k)
		}
	}
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	existed := func(context.Context) (Existed, error) {
		return Existed{Why: "the bucket holds s3://circleci-ha/session-cookie-key"}, nil
	}
	_, err := Fetch(context.Background(), b, Options{Root: t.TempDir(), Layout: testLayout(t), Concurrency: 4, Existing: existed})
	f := hasCode(failure(t, err), findings.KeysMissing)
	if f == nil || !f.Blocking || !strings.Contains(f.Evidence, "session-cookie-key") || !strings.Contains(f.Fix, "aws s3 cp") {
		t.Fatalf("want a blocking KEYS_MISSING with the evidence, got %v", err)
	}
	// The same with keys on the machine: the backup will put them in the bucket.
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "data/circle/circleci-encryption-keys"), 0o700)
	os.WriteFile(filepath.Join(root, "data/circle/circleci-encryption-keys/00-default.key"), []byte("k"), 0o600)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4, Existing: existed})
	if err != nil || hasCode(bd.Findings, findings.KeysPrefixEmpty) == nil {
		t.Fatalf("with local keys an empty prefix stays a warning: %v", err)
	}
	bd.Discard()
	// Installed on this very instance: reported, but what runs is not stopped.
	bd, err = Fetch(context.Background(), b, Options{Root: t.TempDir(), Layout: testLayout(t), Concurrency: 4,
		Existing: func(context.Context) (Existed, error) { return Existed{Why: "installed here", Here: true}, nil }})
	if f := hasCode(bd.Findings, findings.KeysMissing); err != nil || f == nil || f.Blocking {
		t.Fatalf("on the instance that installed, KEYS_MISSING must not block: %v %+v", err, f)
	}
	bd.Discard()
	// A brand-new install: the warning.
	bd, err = Fetch(context.Background(), b, Options{Root: t.TempDir(), Layout: testLayout(t), Concurrency: 4,
		Existing: func(context.Context) (Existed, error) { return Existed{}, nil }})
	if err != nil || hasCode(bd.Findings, findings.KeysPrefixEmpty) == nil {
		t.Fatalf("a new install's empty prefix is a warning: %v", err)
	}
	bd.Discard()
}

// Shell customization files are parsed while staged: a syntax error in the bucket's copy is
// CONFIG_SYNTAX against its key, and the working file stays. Files that are not shell (EDN)
// are not parsed.
func TestShellSyntaxOfStagedCustomizations(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	s.Put(t, testBucket, "circleconfig/shared/vault", []byte("export VAULT__SCHEME=\"https\nexport VAULT__HOST=vault.internal\n"))
	s.Put(t, testBucket, "circleconfig/frontend/customizations", []byte("export A=1\nif then fi\n"))
	s.Put(t, testBucket, "circleconfig/picard-dispatcher/resource-definitions.edn", []byte("; resource classes\n{:medium {:cpu 2}}\n"))
	cfg := testLayout(t)
	for i := range cfg {
		if cfg[i].Name == "circleconfig" { // the whole circleconfig/ prefix
			cfg[i].Key, cfg[i].Dest = "circleconfig/", "/etc/circleconfig/"
		}
	}
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: cfg, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Discard()
	got := map[string]findings.Finding{}
	for _, f := range ShellSyntax(bd, b.URI) {
		got[f.Target] = f
	}
	v, ok := got["s3://circleci-ha/circleconfig/shared/vault"]
	if !ok || v.Code != findings.ConfigSyntax || !v.Blocking || !strings.Contains(v.Summary, "1:") || !strings.Contains(v.Fix, "aws s3 cp") {
		t.Fatalf("want CONFIG_SYNTAX for shared/vault, got %+v", got)
	}
	if _, ok := got["s3://circleci-ha/circleconfig/frontend/customizations"]; !ok {
		t.Fatalf("want CONFIG_SYNTAX for frontend/customizations, got %+v", got)
	}
	if len(got) != 2 {
		t.Fatalf("only the two broken shell files are findings (not the EDN file): %+v", got)
	}
	if l := layout.New("/", nil); !IsShellFile(l, "/etc/circle-installation-customizations") || IsShellFile(l, "/etc/circleconfig/picard-dispatcher/resource-definitions.edn") {
		t.Fatal("IsShellFile")
	}
}

// A key that appears between the fetch and the commit (CircleCI creating its keys on an
// installed machine) is not replaced by the commit: kept, and a conflict when it differs.
func TestCommitNeverReplacesAKeyThatAppearedMeanwhile(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(root, "data/circle/circleci-encryption-keys/02-workflows.key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	os.WriteFile(key, []byte("made by CircleCI meanwhile"), 0o600)
	same := filepath.Join(root, "data/circle/circleci-encryption-keys/00-default.key")
	os.WriteFile(same, objs["circleci-encryption-keys/00-default.key"], 0o600)
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(key); string(got) != "made by CircleCI meanwhile" {
		t.Fatalf("the commit replaced a key: %q", got)
	}
	if len(bd.Conflicts) != 1 || bd.Conflicts[0].Path != "/data/circle/circleci-encryption-keys/02-workflows.key" ||
		bd.Conflicts[0].LocalSHA256 != sum("made by CircleCI meanwhile") || hasCode(bd.Findings, findings.KeysConflict) == nil {
		t.Fatalf("want one conflict for 02-workflows.key, got %+v", bd.Conflicts)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "data/circle/circleci-encryption-keys/01-contexts.key")); string(got) != string(objs["circleci-encryption-keys/01-contexts.key"]) {
		t.Fatal("a key with no local copy was not moved in")
	}
	if _, err := os.Stat(filepath.Join(root, "data/circle", stageDirName)); !os.IsNotExist(err) {
		t.Fatalf("staging left behind: %v", err)
	}
}

func TestConflictsURIIsOutsideTheKeysPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"s3://b/circleci-encryption-keys/00.key":       "s3://b/circleci-encryption-keys-conflicts/00.key",
		"s3://b/p/circleci-encryption-keys/sub/00.key": "s3://b/p/circleci-encryption-keys-conflicts/sub/00.key",
		"s3://b/p/keys/00.key":                         "s3://b/p/keys-conflicts/00.key",
	} {
		if got := conflictsURI(in); got != want {
			t.Errorf("conflictsURI(%q) = %q, want %q", in, got, want)
		}
	}
}

// What makes the machine "hold keys" is what the backup would upload (IsKeyFile): an empty
// file, a dangling link or a placeholder in the keys directory must not turn an existing
// deployment's blocking KEYS_MISSING into a new install's warning. A real key whose name
// merely contains ".haagent-" does count.
func TestEmptyKeysPrefixIsNotFooledByStrayEntries(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	for k := range objs {
		if strings.HasPrefix(k, "circleci-encryption-keys/") {
			s.Delete(t, testBucket, k)
		}
	}
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	existed := func(context.Context) (Existed, error) {
		return Existed{Why: "the bucket holds s3://circleci-ha/session-cookie-key"}, nil
	}
	for _, tc := range []struct {
		name    string
		mk      func(dir string) error
		blocked bool
	}{
		{"empty file", func(d string) error { return os.WriteFile(filepath.Join(d, "00-default.key"), nil, 0o600) }, true},
		{"dangling symlink", func(d string) error { return os.Symlink("/nonexistent/key", filepath.Join(d, "00-default.key")) }, true},
		{"placeholder", func(d string) error { return os.WriteFile(filepath.Join(d, ".keep"), nil, 0o644) }, true},
		{"haagent temp file", func(d string) error {
			return os.WriteFile(filepath.Join(d, ".00-default.key.haagent-123456"), []byte("half"), 0o600)
		}, true},
		{"a key named *.haagent-*", func(d string) error {
			return os.WriteFile(filepath.Join(d, "contexts.haagent-v2.key"), []byte("a real key"), 0o600)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			d := filepath.Join(root, "data/circle/circleci-encryption-keys")
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := tc.mk(d); err != nil {
				t.Fatal(err)
			}
			bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4, Existing: existed})
			if !tc.blocked {
				if err != nil || hasCode(bd.Findings, findings.KeysPrefixEmpty) == nil {
					t.Fatalf("a machine holding a key: want the warning, got %v", err)
				}
				bd.Discard()
				return
			}
			if err == nil {
				bd.Discard()
				t.Fatalf("no blocking KEYS_MISSING: findings %s", findings.Codes(bd.Findings))
			}
			if f := hasCode(failure(t, err), findings.KeysMissing); f == nil || !f.Blocking {
				t.Fatalf("want a blocking KEYS_MISSING, got %v", err)
			}
		})
	}
}

// A key cut short on a response without Content-Length (a proxy's chunked or close-delimited
// body) whose ETag is no MD5 (SSE-KMS, multipart) has only the listing's size to vouch for it:
// the body must have that size, or the key is refused and nothing is installed.
func TestFetchRefusesATruncatedKeyWithoutContentLength(t *testing.T) {
	objs := examples(t)
	f := startFake(t, objs)
	f.SetFault(func(w http.ResponseWriter, r *http.Request, real http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/02-workflows.key") {
			return false
		}
		rec := httptest.NewRecorder()
		real.ServeHTTP(rec, r)
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", rec.Code, http.StatusText(rec.Code))
		for k, vs := range rec.Header() {
			if k == "Content-Length" || k == "Etag" {
				continue
			}
			for _, v := range vs {
				fmt.Fprintf(buf, "%s: %s\r\n", k, v)
			}
		}
		// A close-delimited body: its end is the connection's, so half of it looks whole.
		fmt.Fprintf(buf, "ETag: \"0123456789abcdef0123456789abcdef-2\"\r\nx-amz-server-side-encryption: aws:kms\r\nConnection: close\r\n\r\n")
		body := rec.Body.Bytes()
		buf.Write(body[:len(body)/2])
		buf.Flush()
		return true
	})
	root := t.TempDir()
	_, err := Fetch(context.Background(), open(t, f.URL, "a", "b", testBucket), Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	fs := failure(t, err)
	if len(fs) == 0 || fs[0].Target != "s3://circleci-ha/circleci-encryption-keys/02-workflows.key" || !strings.Contains(fs[0].Evidence, "ListObjectsV2") {
		t.Fatalf("want the truncated key refused against the listed size, got %+v", fs)
	}
	if _, err := os.Stat(filepath.Join(root, "data/circle/circleci-encryption-keys/02-workflows.key")); err == nil {
		t.Fatal("half a key was installed")
	}
}

// A symlink where a key goes (dangling: its volume not mounted) is KEYS_PATH_NOT_FILE, left
// alone, and no Commit error: the bundle's other files are committed, the bucket's key is not
// written through or over the link. The same for a link that appears between fetch and commit.
func TestASymlinkAtAKeyPathIsAFindingNotACommitError(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	s.Put(t, testBucket, "settings.conf", []byte(`{"hostname":"new"}`))
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	const keyPath = "data/circle/circleci-encryption-keys/01-contexts.key"
	check := func(t *testing.T, root string, bd *Bundle, fs []findings.Finding) {
		t.Helper()
		if err := bd.Commit(); err != nil {
			t.Fatalf("Commit failed on a symlink at a key path (every retry would): %v", err)
		}
		if f := hasCode(append(fs, bd.CommitFindings...), findings.KeysPathNotFile); f == nil || f.Blocking || f.Target != "/"+keyPath || !strings.Contains(f.Summary, "/nonexistent/01-contexts.key") {
			t.Fatalf("want a non-blocking KEYS_PATH_NOT_FILE naming the link's target, got %s %s", findings.Codes(fs), findings.Codes(bd.CommitFindings))
		}
		if got, _ := os.Readlink(filepath.Join(root, keyPath)); got != "/nonexistent/01-contexts.key" {
			t.Fatalf("the link was changed: %q", got)
		}
		if got, _ := os.ReadFile(filepath.Join(root, "etc/settings.conf")); string(got) != `{"hostname":"new"}` {
			t.Fatalf("the rest of the bundle was not committed: settings.conf %q", got)
		}
		if got, _ := os.ReadFile(filepath.Join(root, "data/circle/circleci-encryption-keys/00-default.key")); string(got) != string(objs["circleci-encryption-keys/00-default.key"]) {
			t.Fatal("the other keys were not installed")
		}
	}
	t.Run("before the fetch", func(t *testing.T) {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, keyPath)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/nonexistent/01-contexts.key", filepath.Join(root, keyPath)); err != nil {
			t.Fatal(err)
		}
		bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
		if err != nil {
			t.Fatalf("fetch: %v", err)
		}
		check(t, root, bd, bd.Findings)
	})
	t.Run("between fetch and commit", func(t *testing.T) {
		root := t.TempDir()
		bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
		if err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, keyPath)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/nonexistent/01-contexts.key", filepath.Join(root, keyPath)); err != nil {
			t.Fatal(err)
		}
		check(t, root, bd, nil)
	})
}

// The keys' directory is synced once, after every new key is in it, not once per key: on a
// replacement's first boot one sync per key was 200 directory fsyncs in validate-files.
func TestCommitSyncsTheKeysDirectoryOnce(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	keysDir := filepath.Join(root, "data/circle/circleci-encryption-keys")
	var keys []string
	for k := range objs {
		if name, ok := strings.CutPrefix(k, "circleci-encryption-keys/"); ok {
			keys = append(keys, name)
		}
	}
	if len(keys) < 2 {
		t.Fatalf("the seed has %d keys; the test needs several", len(keys))
	}
	syncs := 0
	old := syncDir
	t.Cleanup(func() { syncDir = old })
	syncDir = func(dir string) error {
		if dir == keysDir {
			syncs++
			for _, k := range keys {
				if _, err := os.Stat(filepath.Join(dir, k)); err != nil {
					t.Errorf("the keys directory was synced before %s was in it", k)
				}
			}
		}
		return old(dir)
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	if syncs != 1 {
		t.Fatalf("the keys directory was synced %d times for %d new keys; want once", syncs, len(keys))
	}
}

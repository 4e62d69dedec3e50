package cookie

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

const bkt = "circleci-ha"

func fileValue(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, File))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), Variable+"="); n != 1 {
		t.Fatalf("%d lines for %s, want exactly 1:\n%s", n, Variable, b)
	}
	fi, _ := os.Stat(filepath.Join(root, File))
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %#o, want 0644 (as CircleCI's own userdata left it)", fi.Mode().Perm())
	}
	return LocalValue(b)
}

func codes(err error) []string {
	var f *findings.Failure
	if !errors.As(err, &f) {
		return nil
	}
	var out []string
	for _, x := range f.Findings {
		out = append(out, x.Code)
	}
	return out
}

func TestCookieKeyGeneratedOnceAndStableAcrossReplacement(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)

	root := t.TempDir()
	res, err := Ensure(context.Background(), b, root)
	if err != nil {
		t.Fatal(err)
	}
	v := fileValue(t, root)
	if res.Source != "generated" || !Valid(v) {
		t.Fatalf("source %q value valid=%v", res.Source, Valid(v))
	}
	if got := string(s.Object(bkt, Object)); got != v {
		t.Fatalf("the bucket holds a different key than the file")
	}

	// A replacement instance: a wiped root gets the same key back from S3.
	root2 := t.TempDir()
	res, err = Ensure(context.Background(), b, root2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "s3" || fileValue(t, root2) != v {
		t.Fatalf("replacement got source %q and a different key", res.Source)
	}
	// A reboot: nothing changes.
	res, err = Ensure(context.Background(), b, root2)
	if err != nil || res.Changed {
		t.Fatalf("a re-run rewrote the file (changed=%v, err=%v)", res.Changed, err)
	}
}

func TestCookieKeyFileKeepsOtherLinesAndCollapsesDuplicates(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, Object, []byte("AAAABBBBCCCCDDDD\n"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	// What the runbook's echo left after three boots, around a real setting.
	old := "export OTHER_SETTING=\"keep me\"\n" +
		"‘CIRCLE_SECRETS_SESSION_COOKIE_KEY=<random_16_char_string>’\n" +
		"CIRCLE_SECRETS_SESSION_COOKIE_KEY=oldoldoldoldold1\n" +
		"export CIRCLE_SECRETS_SESSION_COOKIE_KEY=\"oldoldoldoldold2\"\n"
	os.WriteFile(filepath.Join(root, File), []byte(old), 0o644)
	if _, err := Ensure(context.Background(), b, root); err != nil {
		t.Fatal(err)
	}
	if v := fileValue(t, root); v != "AAAABBBBCCCCDDDD" {
		t.Fatalf("the bucket's key must win, got a different one")
	}
	got, _ := os.ReadFile(filepath.Join(root, File))
	if !strings.HasPrefix(string(got), "export OTHER_SETTING=\"keep me\"\n") || strings.Contains(string(got), "‘") {
		t.Fatalf("other lines must be kept and broken ones replaced:\n%s", got)
	}
}

func TestCookieKeyExistingLocalKeyIsUploaded(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, File), []byte("CIRCLE_SECRETS_SESSION_COOKIE_KEY=LocalKey12345678\n"), 0o600)
	res, err := Ensure(context.Background(), b, root)
	if err != nil {
		t.Fatal(err)
	}
	if res.Source != "local" || string(s.Object(bkt, Object)) != "LocalKey12345678" {
		t.Fatalf("an existing install's key must be kept and saved to the bucket (source %q)", res.Source)
	}
	// The file's content did not change, and its 0600 (an older haagent's) is still put
	// back to 0644.
	if res.Changed {
		t.Fatal("the file was rewritten although its content is the same")
	}
	fileValue(t, root)
}

func TestCookieKeyConcurrentFirstBootsAgree(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	const n = 6
	values := make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
			root := t.TempDir()
			if _, err := Ensure(context.Background(), b, root); err != nil {
				t.Error(err)
				return
			}
			b2, _ := os.ReadFile(filepath.Join(root, File))
			values[i] = LocalValue(b2)
		}(i)
	}
	wg.Wait()
	want := string(s.Object(bkt, Object))
	for i, v := range values {
		if v != want {
			t.Errorf("instance %d ended with a different key than the bucket's", i)
		}
	}
}

func TestCookieKeyNotGeneratedWhenS3DidNotSayMissing(t *testing.T) {
	t.Run("403", func(t *testing.T) {
		s := peertest.StartS3(t)
		s.MakeBucket(t, bkt)
		s.CreateUser(t, "norights", "norights-secret")
		b := peertest.OpenBucket(t, s.URL, "norights", "norights-secret", bkt, 3, 5*time.Second)
		root := t.TempDir()
		_, err := Ensure(context.Background(), b, root)
		if c := codes(err); len(c) != 1 || c[0] != "COOKIE_KEY_UNAVAILABLE" {
			t.Fatalf("want COOKIE_KEY_UNAVAILABLE, got %v", err)
		}
		if s.Object(bkt, Object) != nil {
			t.Fatal("a key was created although S3 answered 403")
		}
		if _, err := os.Stat(filepath.Join(root, File)); err == nil {
			t.Fatal("a key was written although S3 answered 403")
		}
		// With a key on the machine, it is kept, with a warning.
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.WriteFile(filepath.Join(root, File), []byte("CIRCLE_SECRETS_SESSION_COOKIE_KEY=LocalKey12345678\n"), 0o600)
		res, err := Ensure(context.Background(), b, root)
		if err != nil || res.Source != "local" || len(res.Findings) != 1 || res.Findings[0].Code != "COOKIE_KEY_LOCAL_ONLY" {
			t.Fatalf("want the local key kept with COOKIE_KEY_LOCAL_ONLY, got %+v %v", res, err)
		}
	})
	t.Run("5xx", func(t *testing.T) {
		f := peertest.StartFakeS3(t, bkt, nil)
		f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			peertest.S3Error(w, 500, "InternalError", "We encountered an internal error.")
			return true
		})
		b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 3, 5*time.Second)
		_, err := Ensure(context.Background(), b, t.TempDir())
		if c := codes(err); len(c) != 1 || c[0] != "COOKIE_KEY_UNAVAILABLE" {
			t.Fatalf("want COOKIE_KEY_UNAVAILABLE, got %v", err)
		}
		if f.Count("PUT", Object) != 0 {
			t.Fatal("a key was written although S3 answered 500")
		}
		if f.Count("GET", Object) != 3 {
			t.Fatalf("a 500 must be retried: %d GETs", f.Count("GET", Object))
		}
	})
}

func TestCookieKeyPutDeniedKeepsGeneratedKeyWithWarning(t *testing.T) {
	f := peertest.StartFakeS3(t, bkt, nil)
	f.DenyPuts()
	b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 3, 5*time.Second)
	root := t.TempDir()
	res, err := Ensure(context.Background(), b, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != "COOKIE_KEY_NOT_SAVED" || !strings.Contains(res.Findings[0].Fix, "s3:PutObject") {
		t.Fatalf("want COOKIE_KEY_NOT_SAVED naming s3:PutObject, got %+v", res.Findings)
	}
	if !Valid(fileValue(t, root)) {
		t.Fatal("no usable key on the machine")
	}
}

func TestCookieKeyInvalidInBucketIsRefused(t *testing.T) {
	f := peertest.StartFakeS3(t, bkt, map[string][]byte{Object: []byte("too-short")})
	b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 3, 5*time.Second)
	root := t.TempDir()
	_, err := Ensure(context.Background(), b, root)
	if c := codes(err); len(c) != 1 || c[0] != "COOKIE_KEY_INVALID" {
		t.Fatalf("want COOKIE_KEY_INVALID, got %v", err)
	}
	if strings.Contains(err.Error(), "too-short") {
		t.Fatal("the key's content appears in the error")
	}
	if f.Count("PUT", Object) != 0 {
		t.Fatal("an invalid key in the bucket must never be overwritten")
	}
}

func TestRenderAndLocalValue(t *testing.T) {
	for _, v := range []string{"abcdefghijklmnop", `ab'cd"ef$gh\ij k`[:16], "0123456789ABCDEF"} {
		if !Valid(v) {
			continue
		}
		out := Render([]byte("A=1\n"), v)
		if got := LocalValue(out); got != v {
			t.Errorf("round trip of %q gave %q (file %q)", v, got, out)
		}
	}
}

// An unchanged file behind a symlink is neither followed for its mode nor a failure.
func TestCookieKeyFileSymlinkIsNotFollowed(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, Object, []byte("LocalKey12345678"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	target := filepath.Join(t.TempDir(), "private")
	os.WriteFile(target, []byte(Variable+"=LocalKey12345678\n"), 0o600)
	os.Symlink(target, filepath.Join(root, File))
	res, err := Ensure(context.Background(), b, root)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Fatalf("the link was followed: its target is %#o", fi.Mode().Perm())
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != "FILE_SYMLINK_NOT_FOLLOWED" || !strings.Contains(res.Findings[0].Summary, target) {
		t.Fatalf("want FILE_SYMLINK_NOT_FOLLOWED naming the target, got %+v", res.Findings)
	}
}

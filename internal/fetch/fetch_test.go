package fetch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

func failure(t *testing.T, err error) []findings.Finding {
	t.Helper()
	var f *findings.Failure
	if !errors.As(err, &f) {
		t.Fatalf("want a *findings.Failure, got %v", err)
	}
	return f.Findings
}

func hasCode(fs []findings.Finding, code findings.Code) *findings.Finding {
	for i := range fs {
		if fs[i].Code == code {
			return &fs[i]
		}
	}
	return nil
}

func TestFetchWholeLayout(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)

	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	// Staged, not yet in place: nothing reaches a final path before the whole bundle arrived.
	for k := range objs {
		if _, err := os.Stat(filepath.Join(root, destOf(k))); err == nil {
			t.Fatalf("%s is at its final path before Commit", destOf(k))
		}
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	for k, want := range objs {
		p := filepath.Join(root, destOf(k))
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if string(got) != string(want) {
			t.Errorf("%s: content differs", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "/etc", stageDirName)); !os.IsNotExist(err) {
		t.Errorf("staging directory left behind: %v", err)
	}
	if len(bd.Files) != len(objs) {
		t.Errorf("fetched %d files, bucket has %d", len(bd.Files), len(objs))
	}
}

func TestFetchUnchangedFilesAreNotRewritten(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	known := map[string]Known{}
	inodes := map[string]uint64{}
	for _, f := range bd.Files {
		known[f.Dest] = Known{Key: f.Key, ETag: f.ETag, Size: f.Size, SHA256: f.SHA256}
		fi, _ := os.Stat(filepath.Join(root, f.Dest))
		inodes[f.Dest] = fi.Sys().(*syscall.Stat_t).Ino
	}
	s.Put(t, testBucket, "circleconfig/shared/vault", []byte("export VAULT__SCHEME=\"http\"\n"))

	for _, withKnown := range []bool{true, false} {
		k := known
		if !withKnown {
			k = nil // no record: content hashes still keep unchanged files in place
		}
		bd2, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4, Known: k})
		if err != nil {
			t.Fatal(err)
		}
		if err := bd2.Commit(); err != nil {
			t.Fatal(err)
		}
		for _, f := range bd2.Files {
			fi, _ := os.Stat(filepath.Join(root, f.Dest))
			ino := fi.Sys().(*syscall.Stat_t).Ino
			if f.Dest == "/etc/circleconfig/shared/vault" {
				continue
			}
			if f.Changed || ino != inodes[f.Dest] {
				t.Errorf("known=%v: %s was rewritten although unchanged", withKnown, f.Dest)
			}
		}
		got, _ := os.ReadFile(filepath.Join(root, "/etc/circleconfig/shared/vault"))
		if !strings.Contains(string(got), "http") {
			t.Errorf("changed object not brought down: %q", got)
		}
		inodes["/etc/circleconfig/shared/vault"] = 0
	}
}

func TestFetchMissingRequiredObjectKeepsPreviousFile(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	s.Delete(t, testBucket, "settings.conf")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/settings.conf"), []byte("previous good settings"), 0o600)
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)

	_, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	fs := failure(t, err)
	f := hasCode(fs, findings.S3ObjectMissing)
	if f == nil || f.Target != "s3://circleci-ha/settings.conf" || !strings.Contains(f.Fix, "aws s3 cp") {
		t.Fatalf("want S3_OBJECT_MISSING for s3://circleci-ha/settings.conf with an upload fix, got %+v", fs)
	}
	got, _ := os.ReadFile(filepath.Join(root, "etc/settings.conf"))
	if string(got) != "previous good settings" {
		t.Fatalf("a failed fetch touched the previous file: %q", got)
	}
	// Nor was anything else moved into place.
	if _, err := os.Stat(filepath.Join(root, "etc/replicated.conf")); err == nil {
		t.Fatal("replicated.conf was moved into place although the bundle failed")
	}
}

func TestFetchEmptyPrefixes(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	for k := range objs {
		if strings.HasPrefix(k, "circleci-encryption-keys/") {
			s.Delete(t, testBucket, k)
		}
	}
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatalf("an empty keys prefix (new install) must not fail the fetch: %v", err)
	}
	if f := hasCode(bd.Findings, findings.KeysPrefixEmpty); f == nil || f.Severity != findings.Warning {
		t.Fatalf("want a KEYS_PREFIX_EMPTY warning, got %+v", bd.Findings)
	}
	bd.Discard()

	for k := range objs {
		if strings.HasPrefix(k, "circleconfig/") {
			s.Delete(t, testBucket, k)
		}
	}
	_, err = Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if f := hasCode(failure(t, err), findings.S3PrefixEmpty); f == nil || f.Target != "s3://circleci-ha/circleconfig/" {
		t.Fatalf("want S3_PREFIX_EMPTY for circleconfig/, got %v", err)
	}
}

func TestFetchLocalOnlyFilesAreKeptAndReported(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	root := t.TempDir()
	extra := filepath.Join(root, "data/circle/circleci-encryption-keys/99-local-only.key")
	os.MkdirAll(filepath.Dir(extra), 0o700)
	os.WriteFile(extra, []byte("a key CircleCI made here"), 0o600)
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	f := hasCode(bd.Findings, findings.LocalOnlyFiles)
	if f == nil || !strings.Contains(f.Evidence, "99-local-only.key") {
		t.Fatalf("want LOCAL_ONLY_FILES naming the key, got %+v", bd.Findings)
	}
	if _, err := os.Stat(extra); err != nil {
		t.Fatalf("a local-only key was deleted: %v", err)
	}
}

func TestFetchClassifiesS3Refusals(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	s.CreateUser(t, "norights", "norights-secret")
	cases := []struct {
		name, access, secret, bucket string
		code                         findings.Code
		fix                          string
	}{
		{"access denied", "norights", "norights-secret", testBucket, findings.S3AccessDenied, "s3:"},
		{"no such bucket", s.AccessKey, s.SecretKey, "no-such-bucket", findings.S3BucketMissing, "source.bucket"},
		{"wrong secret", s.AccessKey, "not-the-secret", testBucket, findings.S3CredentialsInvalid, "AWS_SECRET_ACCESS_KEY"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			b := open(t, s.URL, c.access, c.secret, c.bucket)
			_, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
			fs := failure(t, err)
			f := hasCode(fs, c.code)
			if f == nil {
				t.Fatalf("want %s, got %+v", c.code, fs)
			}
			if !strings.Contains(f.Fix, c.fix) && !strings.Contains(f.Fix, strings.ToUpper(c.fix)) {
				t.Errorf("fix %q does not mention %q", f.Fix, c.fix)
			}
			for _, g := range fs {
				if g.Code == findings.S3FetchFailed || g.Code == findings.S3Unreachable {
					t.Errorf("a refusal was misread as %s: %+v", g.Code, g)
				}
			}
			if strings.Contains(err.Error(), c.secret) && c.secret != "" {
				t.Errorf("the secret key appears in the error")
			}
		})
	}
}

func TestSafeRel(t *testing.T) {
	for _, rel := range []string{"a", "a/b", "00-default.key", "dir/x.y"} {
		if err := SafeRel(rel); err != nil {
			t.Errorf("SafeRel(%q) = %v, want ok", rel, err)
		}
	}
	for _, rel := range []string{"../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "..", "a\x00b", "a/"} {
		if err := SafeRel(rel); err == nil {
			t.Errorf("SafeRel(%q) accepted a hostile key", rel)
		}
	}
}

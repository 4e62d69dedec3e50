package backup

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
	"golang.org/x/sys/unix"
)

func codeOf(fs []findings.Finding, target string) string {
	for _, f := range fs {
		if strings.HasSuffix(f.Target, target) {
			return f.Code.String()
		}
	}
	return ""
}

// An empty key and one still being written never reach the bucket: If-None-Match would make
// that copy the permanent backup. The clock is the test's: the key settles when the clock
// says 10 s went by with its size and mtime unchanged, and only then is it uploaded.
func TestKeysBackupRefusesEmptyAndUnsettledKeys(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := keysRoot(t, map[string]string{"00-empty.key": "", "01-being-written.key": "first half of the "})
	mtime := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(root, local, "00-empty.key"), mtime, mtime)
	written, _ := os.Stat(filepath.Join(root, local, "01-being-written.key"))
	clock := written.ModTime().Add(3 * time.Second)
	o := Options{Root: root, LocalDir: local, Prefix: prefix, Now: func() time.Time { return clock }}

	res, err := Keys(context.Background(), b, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Uploaded) != 0 || strings.Join(res.NotBackedUp, ",") != "00-empty.key,01-being-written.key" {
		t.Fatalf("%+v", res)
	}
	if codeOf(res.Findings, "00-empty.key") != findings.KeysEmpty.String() || codeOf(res.Findings, "01-being-written.key") != findings.KeysNotBackedUp.String() {
		t.Fatalf("want KEYS_EMPTY and KEYS_NOT_BACKED_UP, got %+v", res.Findings)
	}
	if s.Object(bkt, prefix+"00-empty.key") != nil || s.Object(bkt, prefix+"01-being-written.key") != nil {
		t.Fatal("an empty or unsettled key reached the bucket")
	}

	// CircleCI finishes the file; 10 s later by the clock it is uploaded whole.
	full := filepath.Join(root, local, "01-being-written.key")
	os.WriteFile(full, []byte("first half of the key and the second half"), 0o600)
	fi, _ := os.Stat(full)
	clock = fi.ModTime().Add(DefaultSettle)
	res, err = Keys(context.Background(), b, o)
	if err != nil || strings.Join(res.Uploaded, ",") != "01-being-written.key" {
		t.Fatalf("%+v %v", res, err)
	}
	if got := string(s.Object(bkt, prefix+"01-being-written.key")); got != "first half of the key and the second half" {
		t.Fatalf("the bucket holds %q", got)
	}
	if codeOf(res.Findings, "00-empty.key") != findings.KeysEmpty.String() {
		t.Fatal("the empty key must stay reported while it is empty")
	}
}

// A keys directory that is a symlink (to a data volume) is followed: its keys are backed up,
// not taken for an empty directory. A link inside it is not a key haagent can vouch for: it
// counts as not backed up, so the guard never requests a replacement on its account.
func TestKeysBackupFollowsASymlinkedDirectory(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	volume := filepath.Join(root, "mnt/data/keys")
	os.MkdirAll(volume, 0o700)
	os.WriteFile(filepath.Join(volume, "00-default.key"), []byte("the real key"), 0o600)
	os.WriteFile(filepath.Join(root, "elsewhere.key"), []byte("a key outside"), 0o600)
	os.Symlink(filepath.Join(root, "elsewhere.key"), filepath.Join(volume, "01-linked.key"))
	os.MkdirAll(filepath.Join(root, filepath.Dir(local)), 0o755)
	if err := os.Symlink(volume, filepath.Join(root, local)); err != nil {
		t.Fatal(err)
	}

	res, err := Keys(context.Background(), b, opts(root))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Uploaded, ",") != "00-default.key" || string(s.Object(bkt, prefix+"00-default.key")) != "the real key" {
		t.Fatalf("the key behind the symlinked directory was not backed up: %+v", res)
	}
	if strings.Join(res.NotBackedUp, ",") != "01-linked.key" || codeOf(res.Findings, "01-linked.key") != findings.KeysNotBackedUp.String() {
		t.Fatalf("a symlink inside must count as not backed up: %+v", res)
	}
	if s.Object(bkt, prefix+"01-linked.key") != nil {
		t.Fatal("a symlinked entry was uploaded")
	}
}

// No silent gap: a keys directory that is a dangling symlink (its volume not mounted) is
// KEYS_NOT_BACKED_UP, not "nothing to back up"; a key whose name merely contains ".haagent-"
// is backed up like any other (only haagent's exact temp names are skipped).
func TestKeysBackupHasNoSilentGaps(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "data/circle"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/mnt/keys-volume-not-mounted", filepath.Join(root, local)); err != nil {
		t.Fatal(err)
	}
	res, err := Keys(context.Background(), b, opts(root))
	if err != nil || len(res.NotBackedUp) != 1 || len(res.Findings) != 1 || res.Findings[0].Code != findings.KeysNotBackedUp ||
		!strings.Contains(res.Findings[0].Summary, "/mnt/keys-volume-not-mounted") {
		t.Fatalf("a dangling keys link: want KEYS_NOT_BACKED_UP naming the target, got err=%v %+v", err, res)
	}

	root = keysRoot(t, map[string]string{"contexts.haagent-v2.key": "real key bytes", ".00-default.key.haagent-42": "temp"})
	res, err = Keys(context.Background(), b, opts(root))
	if err != nil || len(res.Uploaded) != 1 || res.Uploaded[0] != "contexts.haagent-v2.key" || len(res.NotBackedUp) != 0 {
		t.Fatalf("want only contexts.haagent-v2.key uploaded (the temp file skipped), got err=%v %+v", err, res)
	}
	if got := s.Object(bkt, prefix+"contexts.haagent-v2.key"); string(got) != "real key bytes" {
		t.Fatalf("the bucket holds %q", got)
	}
}

// A writer that pauses longer than the settle time (a copy from a slow source) still holds the
// key open for writing: its first half is not uploaded (If-None-Match would make it the
// permanent backup). The kernel's read lease tells; once the writer closes, the key goes up.
// The mtime is dated an hour back, so the settle time alone would let it through.
func TestKeysBackupWaitsForAWriterThatPaused(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := keysRoot(t, nil)
	p := filepath.Join(root, local, "01-new.key")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if probe, err := os.Open(p); err == nil {
		_, lerr := unix.FcntlInt(probe.Fd(), unix.F_SETLEASE, unix.F_RDLCK)
		probe.Close()
		if lerr != nil {
			// The backup then falls back to the settle time alone (see openForWriting).
			t.Skipf("this filesystem (%s) gives no file leases: %v", root, lerr)
		}
	}
	w, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("first half of the key ")); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	res, err := Keys(context.Background(), b, opts(root))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Uploaded) != 0 || s.Object(bkt, prefix+"01-new.key") != nil {
		t.Fatal("a key still open for writing became the permanent backup")
	}
	if len(res.NotBackedUp) != 1 || codeOf(res.Findings, "01-new.key") != findings.KeysNotBackedUp.String() || !strings.Contains(res.Findings[0].Evidence, "open for writing") {
		t.Fatalf("want KEYS_NOT_BACKED_UP saying a writer holds it, got %+v", res)
	}
	if _, err := w.Write([]byte("second half")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	if res, err = Keys(context.Background(), b, opts(root)); err != nil || len(res.Uploaded) != 1 {
		t.Fatalf("the closed key was not uploaded: %v %+v", err, res)
	}
	if got := s.Object(bkt, prefix+"01-new.key"); string(got) != "first half of the key second half" {
		t.Fatalf("the bucket holds %q", got)
	}
	// The lease is released at once: a writer opening the key now does not wait for haagent.
	f, err := os.OpenFile(p, os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatalf("a writer's open after the backup: %v (a lease left held?)", err)
	}
	f.Close()
}

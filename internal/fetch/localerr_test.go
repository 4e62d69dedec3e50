package fetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// loggedBucket is a client for versitygw whose retries are logged to log, so a test can tell
// whether a failure was retried.
func loggedBucket(t *testing.T, s *peertest.S3, log *lockedBuffer) *bucket.Bucket {
	t.Helper()
	b, err := bucket.New(context.Background(), bucket.Options{
		Name: testBucket, Region: "us-east-1", Endpoint: s.URL, PathStyle: true, Attempts: 4, Timeout: 10 * time.Second,
		Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		Log:         slog.New(slog.NewTextHandler(log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	b.SetBackoff(func(int) time.Duration { return time.Millisecond })
	return b
}

// A full disk is this machine's problem: its own code with a disk fix, one attempt, and never
// S3_UNREACHABLE (which a reboot would turn into S3_OFFLINE_LAST_GOOD, dropping the bundle).
// A real tmpfs too small for the licence gives a real ENOSPC.
func TestFetchDiskFullIsLocalNotS3Unreachable(t *testing.T) {
	if os.Geteuid() != 0 {
		peertest.Missing(t, "mounting a tmpfs needs root")
	}
	s := peertest.StartS3(t)
	seed(t, s)
	big := make([]byte, 2<<20)
	rand.Read(big)
	s.Put(t, testBucket, "license.rli", big)
	root := filepath.Join(t.TempDir(), "root")
	os.MkdirAll(root, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", root).CombinedOutput(); err != nil {
		peertest.Missing(t, fmt.Sprintf("cannot mount a tmpfs: %v %s", err, out))
	}
	t.Cleanup(func() { exec.Command("umount", root).Run() })
	var log lockedBuffer
	b := loggedBucket(t, s, &log)

	_, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	fs := failure(t, err)
	// The licence fills the disk, but with four workers another file's write may be the one
	// that meets ENOSPC first (and the licence's then ends with the fetch): any file will do,
	// as long as it is reported as the local disk it is.
	var f *findings.Finding
	for i := range fs {
		g := &fs[i]
		if g.Code == findings.LocalWriteFailed && strings.Contains(g.Fix, "free space") && strings.Contains(g.Evidence, "no space left on device") {
			f = g
		}
	}
	if f == nil {
		t.Fatalf("want LOCAL_WRITE_FAILED with a disk fix, got %+v", fs)
	}
	for _, g := range fs {
		if g.Code == findings.S3Unreachable || g.Code == findings.S3FetchFailed {
			t.Errorf("a full disk was reported as %s: %+v", g.Code, g)
		}
	}
	if strings.Contains(log.String(), "retrying S3 request") {
		t.Errorf("a local write error was retried:\n%s", log.String())
	}
	if _, err := os.Stat(filepath.Join(root, "etc/settings.conf")); err == nil {
		t.Error("files were moved into place although the bundle failed")
	}
}

// A name the local filesystem cannot hold (the object's 250-byte name plus the temp file's
// suffix passes 255) is ENAMETOOLONG: the same local code, a rename fix, no retry.
func TestFetchNameTooLongIsLocal(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	long := "circleci-encryption-keys/" + strings.Repeat("k", 250)
	s.Put(t, testBucket, long, []byte("a key with a very long name"))
	var log lockedBuffer
	b := loggedBucket(t, s, &log)

	_, err := Fetch(context.Background(), b, Options{Root: t.TempDir(), Layout: testLayout(t), Concurrency: 4})
	fs := failure(t, err)
	f := hasCode(fs, findings.LocalWriteFailed)
	// The fix is chosen by the errno (ENAMETOOLONG); the evidence, capped, may not reach it.
	if f == nil || !strings.Contains(f.Fix, "rename the object") {
		t.Fatalf("want LOCAL_WRITE_FAILED with a rename fix, got %+v", fs)
	}
	if hasCode(fs, findings.S3Unreachable) != nil || strings.Contains(log.String(), "retrying S3 request") {
		t.Errorf("ENAMETOOLONG was taken for S3 being unreachable or retried: %+v\n%s", fs, log.String())
	}
}

// A keys directory that is a symlink to another filesystem (a data volume) is written through:
// the keys are staged beside the link's target, so the commit's rename does not cross
// filesystems (EXDEV), and nothing is reported as local-only.
func TestFetchThroughASymlinkedKeysDirectoryOnAnotherFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		peertest.Missing(t, "mounting a tmpfs needs root")
	}
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := t.TempDir()
	vol := filepath.Join(t.TempDir(), "volume")
	os.MkdirAll(vol, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", vol).CombinedOutput(); err != nil {
		peertest.Missing(t, fmt.Sprintf("cannot mount a tmpfs: %v %s", err, out))
	}
	t.Cleanup(func() { exec.Command("umount", vol).Run() })
	os.MkdirAll(filepath.Join(vol, "keys"), 0o700)
	os.MkdirAll(filepath.Join(root, "data/circle"), 0o755)
	if err := os.Symlink(filepath.Join(vol, "keys"), filepath.Join(root, "data/circle/circleci-encryption-keys")); err != nil {
		t.Fatal(err)
	}
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := bd.Commit(); err != nil {
		t.Fatalf("committing through the symlinked keys directory: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(vol, "keys/00-default.key"))
	if string(got) != string(objs["circleci-encryption-keys/00-default.key"]) {
		t.Fatal("the key did not land behind the link")
	}
	if hasCode(bd.Findings, findings.LocalOnlyFiles) != nil {
		t.Fatalf("nothing is local-only: %+v", bd.Findings)
	}
}

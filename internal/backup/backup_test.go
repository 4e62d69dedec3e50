package backup

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

const (
	bkt    = "circleci-ha"
	prefix = "circleci-encryption-keys/"
	local  = "/data/circle/circleci-encryption-keys"
)

func keysRoot(t *testing.T, keys map[string]string) string {
	root := t.TempDir()
	dir := filepath.Join(root, local)
	os.MkdirAll(dir, 0o700)
	for k, v := range keys {
		os.WriteFile(filepath.Join(dir, k), []byte(v), 0o600)
	}
	return root
}

// opts looks at the keys a minute from now: every file the test wrote has settled.
func opts(root string) Options {
	return Options{Root: root, LocalDir: local, Prefix: prefix, Now: func() time.Time { return time.Now().Add(time.Minute) }}
}

func TestKeysBackup(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, prefix+"00-old.key", []byte("key made on an earlier instance"))
	s.Put(t, bkt, prefix+"02-clash.key", []byte("the bucket's version"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	root := keysRoot(t, map[string]string{
		"00-old.key":   "key made on an earlier instance",
		"01-new.key":   "key CircleCI just made",
		"02-clash.key": "this machine's version",
	})
	res, err := Keys(context.Background(), b, opts(root))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Uploaded, ",") != "01-new.key" || strings.Join(res.InSync, ",") != "00-old.key" || strings.Join(res.Conflicts, ",") != "02-clash.key" {
		t.Fatalf("%+v", res)
	}
	if string(s.Object(bkt, prefix+"01-new.key")) != "key CircleCI just made" {
		t.Fatal("the new key is not in the bucket")
	}
	if string(s.Object(bkt, prefix+"02-clash.key")) != "the bucket's version" {
		t.Fatal("a conflicting key was overwritten in the bucket")
	}
	if b, _ := os.ReadFile(filepath.Join(root, local, "02-clash.key")); string(b) != "this machine's version" {
		t.Fatal("a conflicting key was overwritten on the machine")
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != findings.KeysConflict || strings.Contains(res.Findings[0].Evidence+res.Findings[0].Summary, "version") {
		t.Fatalf("want one KEYS_CONFLICT without contents, got %+v", res.Findings)
	}
	// Idempotent: a second run uploads nothing.
	res, err = Keys(context.Background(), b, opts(root))
	if err != nil || len(res.Uploaded) != 0 || strings.Join(res.InSync, ",") != "00-old.key,01-new.key" {
		t.Fatalf("second run: %+v %v", res, err)
	}
	// Nothing is deleted on either side: a key only in S3 stays there.
	s.Put(t, bkt, prefix+"03-s3-only.key", []byte("x"))
	if _, err := Keys(context.Background(), b, opts(root)); err != nil || s.Object(bkt, prefix+"03-s3-only.key") == nil {
		t.Fatal("a key only in the bucket was touched")
	}
	if _, err := os.Stat(filepath.Join(root, local, "03-s3-only.key")); err == nil {
		t.Fatal("the backup must not download keys")
	}
}

func TestKeysBackupDeniedNamesThePermission(t *testing.T) {
	f := peertest.StartFakeS3(t, bkt, nil)
	f.DenyPuts()
	b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 2, 5*time.Second)
	b.SetEncryption(bucket.Encryption{SSE: "AES256"})
	res, err := Keys(context.Background(), b, opts(keysRoot(t, map[string]string{"k.key": "secret-key-bytes"})))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 1 || res.Findings[0].Code != findings.KeysNotBackedUp || !strings.Contains(res.Findings[0].Fix, "s3:PutObject on arn:aws:s3:::circleci-ha/circleci-encryption-keys/*") {
		t.Fatalf("%+v", res.Findings)
	}
	if strings.Contains(res.Findings[0].Evidence, "secret-key-bytes") {
		t.Fatal("key contents in a finding")
	}
}

// What the fetch verified (sha256 of the object at an ETag) answers "in sync" only while the
// object is unchanged: a bucket copy replaced since (another ETag) is compared again, and a
// conflict is still a conflict.
func TestKeysKnownFromTheFetchOnlyWhileTheObjectIsUnchanged(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	s.Put(t, bkt, prefix+"00-a.key", []byte("key a"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	objs, err := b.List(context.Background(), prefix)
	if err != nil || len(objs) != 1 {
		t.Fatalf("%v %v", objs, err)
	}
	root := keysRoot(t, map[string]string{"00-a.key": "key a"})
	o := opts(root)
	o.Known = map[string]fetch.Known{prefix + "00-a.key": {Key: prefix + "00-a.key", ETag: objs[0].ETag, SHA256: sha([]byte("key a"))}}
	if res, err := Keys(context.Background(), b, o); err != nil || strings.Join(res.InSync, ",") != "00-a.key" {
		t.Fatalf("%+v %v", res, err)
	}
	// Someone replaces the bucket's copy: the recorded ETag no longer matches.
	s.Put(t, bkt, prefix+"00-a.key", []byte("another key a"))
	res, err := Keys(context.Background(), b, o)
	if err != nil || strings.Join(res.Conflicts, ",") != "00-a.key" {
		t.Fatalf("a replaced bucket copy taken as in sync: %+v %v", res, err)
	}
}

package backup

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// runbookKeys puts n keys in the bucket through the API (with their ETag and the SHA-256
// haagent's puts store) and the same keys on the machine, and returns what a fetch that
// installed them would have recorded.
func runbookKeys(t *testing.T, s *peertest.S3, root string, n int) map[string]fetch.Known {
	known := map[string]fetch.Known{}
	for i := 0; i < n; i++ {
		rel := fmt.Sprintf("%03d-service.key", i)
		data := []byte(fmt.Sprintf("key %03d of the runbook's two hundred", i))
		s.Upload(t, bkt, prefix+rel, data)
		os.WriteFile(filepath.Join(root, local, rel), data, 0o600)
		sum := md5.Sum(data)
		known[prefix+rel] = fetch.Known{Key: prefix + rel, ETag: hex.EncodeToString(sum[:]), Size: int64(len(data)), SHA256: sha(data)}
	}
	return known
}

// 200 keys the run fetched and N new ones CircleCI just made: exactly N puts (their answers
// echo the checksum S3 verified, so nothing is read back) besides the one listing, nothing for the keys already known, counted at versitygw. Then one
// known key edited on the machine: one HeadObject, and still KEYS_CONFLICT.
func TestOnlyNewKeysCostRequests(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	c := peertest.CountS3(t, s.URL)
	root := keysRoot(t, nil)
	known := runbookKeys(t, s, root, 200)
	const n = 7
	for i := 0; i < n; i++ {
		os.WriteFile(filepath.Join(root, local, fmt.Sprintf("new-%d.key", i)), []byte(fmt.Sprintf("new key %d", i)), 0o600)
	}
	b := peertest.OpenBucket(t, c.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	o := opts(root)
	o.Known, o.Concurrency = known, 16
	c.Reset()
	// The uploads run concurrently: the first four puts are held until all four are in
	// flight together, which one-at-a-time uploads never are.
	c.Together("PutObject", 4)
	res, err := Keys(context.Background(), b, o)
	if c.Apart() {
		t.Error("the uploads did not run concurrently: 4 puts were never in flight together")
	}
	if err != nil || len(res.Uploaded) != n || len(res.InSync) != 200 || len(res.Findings) != 0 {
		t.Fatalf("uploaded %d, in sync %d, findings %v, err %v", len(res.Uploaded), len(res.InSync), res.Findings, err)
	}
	// Every key is now known to be in the bucket as it is here, with the object's ETag: what
	// the run records, so the next boot's fetch downloads none of them to compare.
	if len(res.Verified) != 200+n {
		t.Errorf("%d keys verified, want %d", len(res.Verified), 200+n)
	}
	for _, v := range res.Verified {
		if v.ETag == "" || v.SHA256 == "" || v.Size == 0 {
			t.Errorf("verified key without ETag, sha256 or size: %+v", v)
		}
	}
	counted(t, c, n)

	// A key the fetch recorded that someone changed on this machine since: compared (one
	// HeadObject), still a conflict, the bucket's copy left as it is.
	for _, v := range res.Verified {
		o.Known[v.Key] = v
	}
	os.WriteFile(filepath.Join(root, local, "117-service.key"), []byte("edited on this machine"), 0o600)
	c.Reset()
	res, err = Keys(context.Background(), b, o)
	if err != nil || len(res.Conflicts) != 1 || res.Conflicts[0] != "117-service.key" || len(res.Findings) != 1 || res.Findings[0].Code != findings.KeysConflict {
		t.Fatalf("conflicts %v, findings %v, err %v", res.Conflicts, res.Findings, err)
	}
	if got := string(s.Object(bkt, prefix+"117-service.key")); got != "key 117 of the runbook's two hundred" {
		t.Fatalf("the bucket's copy of a conflicting key was replaced: %q", got)
	}
	if got := c.Counts(); len(got) != 2 || got["ListObjectsV2"] != 1 || got["HeadObject"] != 1 {
		t.Fatalf("requests %v, want the listing and one HeadObject", got)
	}
}

// counted checks that the backup's requests were one listing and n puts, one per new key,
// and nothing else: the puts' answers prove the uploads, so none is read back.
func counted(t *testing.T, c *peertest.Counter, n int) {
	t.Helper()
	got := c.Counts()
	if len(got) != 2 || got["ListObjectsV2"] != 1 || got["PutObject"] != n {
		t.Fatalf("requests %v, want 1 ListObjectsV2, %d PutObject and nothing else", got, n)
	}
	for p, k := range c.PerPath("PutObject") {
		if k != 1 {
			t.Errorf("%s put %d times", p, k)
		}
	}
}

// Keys whose state the run does not know (no fetch record) are compared by HeadObject: the
// SHA-256 S3 stores says equal or not, so nothing is downloaded, and a key that differs is
// still a conflict with both hashes, never replaced. An object with neither a checksum nor an
// MD5 ETag (put straight into versitygw's directory) is the one downloaded.
func TestUnknownKeysAreComparedByHead(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	c := peertest.CountS3(t, s.URL)
	root := keysRoot(t, nil)
	runbookKeys(t, s, root, 200)
	os.WriteFile(filepath.Join(root, local, "042-service.key"), []byte("this machine's own"), 0o600)
	s.Put(t, bkt, prefix+"plain.key", []byte("put without a checksum"))
	os.WriteFile(filepath.Join(root, local, "plain.key"), []byte("put without a checksum"), 0o600)
	b := peertest.OpenBucket(t, c.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	o := opts(root)
	o.Concurrency = 16
	c.Reset()
	c.Together("HeadObject", 8)
	res, err := Keys(context.Background(), b, o)
	if c.Apart() {
		t.Error("the comparisons did not run concurrently: 8 heads were never in flight together")
	}
	if err != nil || len(res.InSync) != 200 || len(res.Conflicts) != 1 || res.Conflicts[0] != "042-service.key" {
		t.Fatalf("in sync %d, conflicts %v, err %v", len(res.InSync), res.Conflicts, err)
	}
	want := sha([]byte("key 042 of the runbook's two hundred"))
	if d := res.Details[0]; d.BucketSHA256 != want || d.LocalSHA256 != sha([]byte("this machine's own")) || res.Findings[0].Code != findings.KeysConflict {
		t.Fatalf("conflict %+v, findings %v", d, res.Findings)
	}
	if got := string(s.Object(bkt, prefix+"042-service.key")); got != "key 042 of the runbook's two hundred" {
		t.Fatalf("the bucket's copy was replaced: %q", got)
	}
	got := c.Counts()
	if len(got) != 3 || got["ListObjectsV2"] != 1 || got["HeadObject"] != 201 || got["GetObject"] != 1 || c.PerPath("GetObject")["/"+bkt+"/"+prefix+"plain.key"] != 1 {
		t.Fatalf("requests %v, want 1 ListObjectsV2, 201 HeadObject and one GetObject (of plain.key)", got)
	}
}

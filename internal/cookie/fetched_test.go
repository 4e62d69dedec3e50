package cookie

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// What the fetch's pass read is judged as Merge's own read would be, without a request of its
// own: a key there is used (no GET); S3's 404 creates the key with one conditional put and no
// read-back (the put succeeds only where no object was); an answer that is no 404 invents
// nothing (COOKIE_KEY_UNAVAILABLE without a key on the machine, the machine's key with one).
func TestMergeTakesTheFetchedObject(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, bkt)
	c := peertest.CountS3(t, s.URL)
	b := peertest.OpenBucket(t, c.URL, s.AccessKey, s.SecretKey, bkt, 3, 5*time.Second)
	const there = "FetchedKey012345"

	res, err := Merge(context.Background(), b, Input{Remote: &fetch.Read{Data: []byte(there + "\n")}})
	if err != nil || res.Source != "s3" || LocalValue(res.Content) != there || len(c.Requests()) != 0 {
		t.Fatalf("a fetched key: source %q err %v, requests %v", res.Source, err, c.Requests())
	}

	// The answers the fetch's GET gets, real ones: S3's 404, and no answer at all.
	_, gone := b.GetBytes(context.Background(), Object, MaxObject)
	if !errors.Is(gone, bucket.ErrNotFound) {
		t.Fatalf("a missing key read: %v", gone)
	}
	down := peertest.OpenBucket(t, fmt.Sprintf("http://127.0.0.1:%d", peertest.ClosedPort(t)), s.AccessKey, s.SecretKey, bkt, 1, time.Second)
	_, denied := down.GetBytes(context.Background(), Object, MaxObject)
	c.Reset()
	res, err = Merge(context.Background(), b, Input{Remote: &fetch.Read{Err: gone}})
	got := c.Counts()
	if err != nil || res.Source != "generated" || string(s.Object(bkt, Object)) != LocalValue(res.Content) || len(got) != 1 || got["PutObject"] != 1 {
		t.Fatalf("no key in the bucket: source %q err %v, requests %v (want one PutObject and nothing else)", res.Source, err, got)
	}

	c.Reset()
	if _, err := Merge(context.Background(), b, Input{Remote: &fetch.Read{Err: denied}}); !has(codes(err), "COOKIE_KEY_UNAVAILABLE") || len(c.Requests()) != 0 {
		t.Fatalf("S3 cannot say, nothing on the machine: %v, requests %v", err, c.Requests())
	}
	res, err = Merge(context.Background(), b, Input{InPlace: []byte("export " + Variable + "=\"MachineKey012345\"\n"), Remote: &fetch.Read{Err: denied}})
	if err != nil || res.Source != "local" || LocalValue(res.Content) != "MachineKey012345" || len(res.Findings) != 1 || res.Findings[0].Code != findings.CookieKeyLocalOnly {
		t.Fatalf("S3 cannot say, a key on the machine: source %q findings %v err %v", res.Source, res.Findings, err)
	}
}

func has(cs []string, c string) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

package fetch

import (
	"context"
	"errors"
	"testing"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/peertest"
)

// The extra objects (the cookie key, an installer in the bucket) are GETs of the fetch's own
// pass, in flight with the layout's downloads: a present one hands over its bytes, a missing
// one S3's 404, each once (a retried step reads for itself).
func TestObjectsAreReadInTheFetchPass(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	s.Put(t, testBucket, "session-cookie-key", []byte("0123456789abcdef"))
	c := peertest.CountS3(t, s.URL)
	b := open(t, c.URL, s.AccessKey, s.SecretKey, testBucket)
	// The two objects' GETs are held until a layout GET is in flight beside them: one pass,
	// not a step after the fetch.
	c.Together("GetObject", 3)
	bd, err := Fetch(context.Background(), b, Options{Root: t.TempDir(), Layout: testLayout(t), Concurrency: 4,
		Objects: []Object{{Key: "session-cookie-key", Max: 1024}, {Key: "replicated/install.sh", Max: 1 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Apart() {
		t.Error("the objects were not read beside the layout's downloads")
	}
	if r, ok := bd.Take("session-cookie-key"); !ok || r.Err != nil || string(r.Data) != "0123456789abcdef" {
		t.Fatalf("session-cookie-key: %q %v %v", r.Data, r.Err, ok)
	}
	if r, ok := bd.Take("replicated/install.sh"); !ok || !errors.Is(r.Err, bucket.ErrNotFound) {
		t.Fatalf("a missing object: %v %v, want ErrNotFound", r.Err, ok)
	}
	if _, ok := bd.Take("session-cookie-key"); ok {
		t.Fatal("an object was handed over twice")
	}
	if n := c.PerPath("GetObject")["/"+testBucket+"/session-cookie-key"]; n != 1 {
		t.Fatalf("session-cookie-key read %d times, want once", n)
	}
	bd.Discard()
}

package cookie

import (
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/peertest"
)

// A bucket policy that requires SSE-KMS denies a put without it. The cookie key upload carries
// the bucket's encryption (backup.sse / kms_key_id), so it is saved, not COOKIE_KEY_NOT_SAVED
// (which would log every user out at the next replacement).
func TestCookieKeyUploadCarriesTheConfiguredEncryption(t *testing.T) {
	f := peertest.StartFakeS3(t, bkt, nil)
	puts := f.RequireSSE("aws:kms", "alias/circleci")
	b := peertest.OpenBucket(t, f.URL, "a", "b", bkt, 2, 5*time.Second)
	b.SetEncryption(bucket.Encryption{SSE: "aws:kms", KMSKeyID: "alias/circleci"})

	res, err := ensure(b, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 0 || res.Source != "generated" {
		t.Fatalf("the key was not saved: source %s, findings %+v", res.Source, res.Findings)
	}
	h := puts()[Object]
	if h == nil || h.Get("X-Amz-Server-Side-Encryption") != "aws:kms" || h.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id") != "alias/circleci" {
		t.Fatalf("the cookie key put carried %v", h)
	}
	if !Valid(string(f.Object(Object))) {
		t.Fatal("no valid key in the bucket")
	}
}

package asg

import (
	"context"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/peertest"
)

// The replacement ledger is written with the configured SSE too: under a bucket policy that
// requires it, a ledger put without it is denied and no replacement could ever be recorded.
func TestBudgetLedgerCarriesTheConfiguredEncryption(t *testing.T) {
	f := peertest.StartFakeS3(t, "circleci-ha", nil)
	puts := f.RequireSSE("AES256", "")
	b := peertest.OpenBucket(t, f.URL, "a", "b", "circleci-ha", 2, 5*time.Second)
	b.SetEncryption(bucket.Encryption{SSE: "AES256"})
	bud := &Budget{Bucket: b, Max: 2, Window: time.Hour}
	if err := bud.Take(context.Background(), Replacement{InstanceID: "i-1", At: time.Now(), Reason: "test"}); err != nil {
		t.Fatalf("the ledger put was refused: %v", err)
	}
	if h := puts()[LedgerKey]; h == nil || h.Get("X-Amz-Server-Side-Encryption") != "AES256" {
		t.Fatalf("the ledger put carried %v", h)
	}
	if f.Object(LedgerKey) == nil {
		t.Fatal("no ledger in the bucket")
	}
}

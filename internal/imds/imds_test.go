package imds

import (
	"context"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/peertest"
)

// The Auto Scaling group comes from the instance's tags when the instance exposes them; an
// absent tag (tags not exposed) is "", not an error, so the caller asks Auto Scaling instead.
func TestTag(t *testing.T) {
	for _, group := range []string{"circleci-services", ""} {
		m := peertest.StartIMDS(t, peertest.Instance{ID: "i-1", LocalIPv4: "10.0.0.1", Region: "us-east-1", ASGGroup: group})
		t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", m.URL)
		v, err := New(5*time.Second).Tag(context.Background(), "aws:autoscaling:groupName")
		if err != nil || v != group {
			t.Fatalf("tag with group %q: %q, %v", group, v, err)
		}
	}
}

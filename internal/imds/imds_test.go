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

// The primary interface is meta-data/mac's, with its id, subnet and addresses under
// network/interfaces/macs/MAC/.
func TestPrimaryInterface(t *testing.T) {
	m := peertest.StartIMDS(t, peertest.Instance{ID: "i-1", LocalIPv4: "10.0.1.20", Region: "us-east-1",
		MAC: "0e:00:00:00:00:01", InterfaceID: "eni-01", SubnetID: "subnet-0a", SubnetCIDR: "10.0.1.0/24", VPCID: "vpc-01", LocalIPv4s: "10.0.1.20"})
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", m.URL)
	ni, err := New(5 * time.Second).PrimaryInterface(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ni.MAC != "0e:00:00:00:00:01" || ni.ID != "eni-01" || ni.SubnetID != "subnet-0a" || ni.VPCID != "vpc-01" ||
		ni.Subnet.String() != "10.0.1.0/24" || len(ni.LocalIPv4s) != 1 || ni.LocalIPv4s[0] != "10.0.1.20" {
		t.Fatalf("primary interface: %+v", ni)
	}
}

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

// The identity is one request: the instance identity document names the instance, its
// private IPv4 address and its region (counted at the mock, behind a proxy of the test's).
func TestIdentityIsOneDocument(t *testing.T) {
	m := peertest.StartIMDS(t, peertest.Instance{ID: "i-0doc", LocalIPv4: "10.0.0.7", Region: "eu-west-1"})
	c := peertest.CountIMDS(t, m.URL)
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", c.URL)
	info, err := New(5 * time.Second).Identity(context.Background())
	if err != nil || info != (Info{InstanceID: "i-0doc", LocalIPv4: "10.0.0.7", Region: "eu-west-1"}) {
		t.Fatalf("identity %+v, %v", info, err)
	}
	if got := c.Counts(); len(got) != 2 || got["PUT /latest/api/token"] != 1 || got["GET /latest/dynamic/instance-identity/document"] != 1 {
		t.Fatalf("requests %v, want the token and the document", got)
	}
}

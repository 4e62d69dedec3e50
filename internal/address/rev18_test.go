package address

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/haagent/haagent/internal/peertest"
)

// rev18: an instance that is running but in no Auto Scaling group (a Services machine
// launched by hand, another service whose secondary IP a typo in address.private_ip names, an
// instance detached from the group) still answers on the address, yet the claim takes it. The
// stand-in's "terminated" case in TestClaimReassignsFromAHolderOutOfService is this same world:
// in real EC2 a terminated instance's primary ENI is deleted, so an ENI still attached to an
// instance the group does not list is, in the common case, a running instance's.
func TestRev18ClaimTakesFromARunningInstanceInNoGroup(t *testing.T) {
	w := newWorld(t)
	w.oldHolder() // oldInstance: running, in no group (nothing asks EC2 whether it runs)
	got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if err != nil || len(fs) != 0 {
		t.Fatalf("claim: %v %s", err, codes(fs))
	}
	if got.Moved && w.ec2.Holder(stableIP) == newENI {
		t.Errorf("BUG: took %s from %s, an instance in no group whose state nobody read (EC2 calls: %d, no DescribeInstances)",
			stableIP, oldInstance, len(w.ec2.Calls()))
	}
}

// rev18: the holder is the group's fresh replacement, still Pending:Wait in the launch hook
// (its haagent is running the installer on the address). This instance is the old one,
// InService but UNHEALTHY (the guard marked it; with an instance maintenance policy of
// MinHealthyPercentage=100 the group keeps it running until the replacement is InService). If
// haagent restarts here (Restart=on-failure, a reboot), the address step runs again and takes
// the address back from the replacement: nothing protects a Pending holder, and the claimer
// never looks at its own state.
func TestRev18OldUnhealthyInstanceTakesBackFromPendingReplacement(t *testing.T) {
	w := newWorld(t)
	w.oldHolder() // here oldInstance plays the replacement that holds the address
	w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 1, Instances: []string{newInstance, oldInstance}})
	w.asg.SetLifecycleState(oldInstance, "Pending:Wait")
	w.asg.SetUnhealthy(newInstance, true) // this instance: marked for replacement
	got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if err != nil {
		t.Logf("claim: %v %s", err, codes(fs))
	}
	if got.Moved && w.ec2.Holder(stableIP) == newENI {
		t.Errorf("BUG: the unhealthy instance took %s back from the Pending:Wait replacement %s", stableIP, oldInstance)
	}
}

// rev18: the stand-ins never compare the credential scope's region with the one AWS expects
// (sigv4.go ignores it). With address.route53.endpoint set, the SDK signs Route 53 for the
// client's region; real Route 53 in the aws partition wants the us-east-1 scope.
func TestRev18Route53SignedRegionWithEndpoint(t *testing.T) {
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		w.WriteHeader(500)
	}))
	defer srv.Close()
	c, err := New(context.Background(), Options{InstanceID: newInstance, Region: "eu-west-1", Route53Endpoint: srv.URL,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, "")})
	if err != nil {
		t.Fatal(err)
	}
	c.after = ready
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, _ = c.Publish(ctx, Record{ZoneID: "Z1", Name: "services.circleci.internal", TTL: 60, IP: netip.MustParseAddr("10.0.1.50")}, time.Minute)
	t.Logf("authorization: %s", auth)
	if !strings.Contains(auth, "/us-east-1/route53/") {
		t.Errorf("NOTE: with route53.endpoint set, Route 53 is signed for %q, not us-east-1", auth)
	}
}

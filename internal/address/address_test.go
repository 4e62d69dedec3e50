package address

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	smithy "github.com/aws/smithy-go"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/peertest"
)

const (
	access, secret = "AKIDADDRESSTEST", "address-test-secret"
	group          = "circleci-services"
	newInstance    = "i-0new0000000000001"
	oldInstance    = "i-0old0000000000001"
	newENI         = "eni-0new000000000001"
	oldENI         = "eni-0old000000000001"
	newMAC         = "0e:00:00:00:00:01"
	stableIP       = "10.0.1.50"
)

// world is one region as the tests see it: the IMDS mock serving this (new) instance, the EC2
// and Auto Scaling stand-ins, and Route 53.
type world struct {
	ec2 *peertest.EC2
	asg *peertest.ASG
	r53 *peertest.Route53
	md  *imds.Client
	c   *Client
	as  *asg.Client
}

func newWorld(t *testing.T) *world {
	t.Helper()
	im := peertest.StartIMDS(t, peertest.Instance{ID: newInstance, LocalIPv4: "10.0.1.20", Region: "us-east-1",
		MAC: newMAC, InterfaceID: newENI, SubnetID: "subnet-0a", SubnetCIDR: "10.0.1.0/24", VPCID: "vpc-01", LocalIPv4s: "10.0.1.20"})
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", im.URL)
	w := &world{ec2: peertest.StartEC2(t, access, secret), asg: peertest.StartASG(t, access, secret), r53: peertest.StartRoute53(t, access, secret),
		md: imds.New(5 * time.Second)}
	w.ec2.AddSubnet(peertest.EC2Subnet{ID: "subnet-0a", VPCID: "vpc-01", CIDR: "10.0.1.0/24", AZ: "us-east-1a"})
	w.ec2.AddSubnet(peertest.EC2Subnet{ID: "subnet-0b", VPCID: "vpc-01", CIDR: "10.0.2.0/24", AZ: "us-east-1b"})
	w.ec2.AddENI(peertest.ENI{ID: newENI, MAC: newMAC, SubnetID: "subnet-0a", VPCID: "vpc-01", Instance: newInstance, IPs: []string{"10.0.1.20"}})
	w.asg.AddGroup(peertest.ASGGroup{Name: group, HealthCheckType: "EC2", Min: 1, Max: 1, Desired: 1, Instances: []string{newInstance}})
	w.c = w.client(t, secret)
	var err error
	w.as, err = asg.New(context.Background(), asg.Options{InstanceID: newInstance, Region: "us-east-1", Endpoint: w.asg.URL,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, "")})
	if err != nil {
		t.Fatal(err)
	}
	w.as.Group = group // what asg.Resolve finds
	return w
}

// client is an address client of this world signing with the given secret; it never waits
// between attempts.
func (w *world) client(t *testing.T, sec string) *Client {
	t.Helper()
	c, err := New(context.Background(), Options{InstanceID: newInstance, Region: "us-east-1", EC2Endpoint: w.ec2.URL, Route53Endpoint: w.r53.URL,
		Credentials: credentials.NewStaticCredentialsProvider(access, sec, "")})
	if err != nil {
		t.Fatal(err)
	}
	c.after = ready
	return c
}

// ready is an after that fires at once: the tests count requests, never time.
func ready(time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

// oldHolder is the previous Services machine: its primary interface holds the stable address
// as a secondary one.
func (w *world) oldHolder() {
	w.ec2.AddENI(peertest.ENI{ID: oldENI, MAC: "0e:00:00:00:00:99", SubnetID: "subnet-0a", VPCID: "vpc-01", Instance: oldInstance, IPs: []string{"10.0.1.30", stableIP}})
}

func (w *world) req(ip string) ClaimRequest {
	return ClaimRequest{IP: netip.MustParseAddr(ip), Group: group, Metadata: w.md, Holders: w.as}
}

func codes(fs []findings.Finding) string { return findings.Codes(fs) }

// asgReads counts the DescribeAutoScalingInstances calls that asked about instance.
func asgReads(w *world, instance string) int {
	n := 0
	for _, c := range w.asg.Calls("DescribeAutoScalingInstances") {
		if c.Params.Get("InstanceIds.member.1") == instance {
			n++
		}
	}
	return n
}

func TestClaimAssignsAFreeAddressOnce(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	got, fs, err := w.c.Claim(ctx, w.req(stableIP))
	if err != nil || len(fs) != 0 {
		t.Fatalf("claim: %v %s", err, codes(fs))
	}
	if !got.Moved || got.InterfaceID != newENI || got.MAC != newMAC || got.Prefix().String() != "10.0.1.50/24" || got.FromInterface != "" {
		t.Fatalf("assigned: %+v", got)
	}
	if h := w.ec2.Holder(stableIP); h != newENI {
		t.Fatalf("EC2 says %q holds %s", h, stableIP)
	}
	calls := w.ec2.Calls("AssignPrivateIpAddresses")
	if len(calls) != 1 {
		t.Fatalf("%d AssignPrivateIpAddresses calls", len(calls))
	}
	p := calls[0].Params
	if p.Get("NetworkInterfaceId") != newENI || p.Get("PrivateIpAddress.1") != stableIP || p.Get("AllowReassignment") != "true" {
		t.Fatalf("assign params: %v", p)
	}
	// Who holds it is asked within this VPC only: another VPC may reuse the range.
	d := w.ec2.Calls("DescribeNetworkInterfaces")[0].Params
	if d.Get("Filter.1.Name") != "addresses.private-ip-address" || d.Get("Filter.1.Value.1") != stableIP || d.Get("Filter.2.Name") != "vpc-id" || d.Get("Filter.2.Value.1") != "vpc-01" {
		t.Fatalf("holder query: %v", d)
	}

	// A rerun (a reboot, a retried step) finds it on this interface and assigns nothing.
	before := len(w.ec2.Calls())
	got, fs, err = w.c.Claim(ctx, w.req(stableIP))
	if err != nil || len(fs) != 0 || got.Moved || got.InterfaceID != newENI {
		t.Fatalf("rerun: %+v %v %s", got, err, codes(fs))
	}
	if n := len(w.ec2.Calls("AssignPrivateIpAddresses")); n != 1 {
		t.Fatalf("the rerun assigned again: %d AssignPrivateIpAddresses calls", n)
	}
	if n := len(w.ec2.Calls()) - before; n != 1 {
		t.Fatalf("the rerun made %d EC2 calls, want the one DescribeNetworkInterfaces", n)
	}
}

// The old instance is out of service (shutting down and forgotten by the group, terminating,
// unhealthy, or out of service in another group): the address is moved, which needs
// AllowReassignment.
func TestClaimReassignsFromAHolderOutOfService(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(w *world)
	}{
		{"shutting down, in no group", func(w *world) { w.ec2.SetInstanceState(oldInstance, "shutting-down") }},
		{"terminating", func(w *world) {
			w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 1, Desired: 1, Instances: []string{newInstance, oldInstance}})
			w.asg.SetLifecycleState(oldInstance, "Terminating:Wait")
		}},
		{"unhealthy", func(w *world) {
			w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 1, Desired: 1, Instances: []string{newInstance, oldInstance}})
			w.asg.SetUnhealthy(oldInstance, true)
		}},
		{"another group, out of service", func(w *world) {
			w.asg.AddGroup(peertest.ASGGroup{Name: "other", Min: 1, Max: 1, Desired: 1, Instances: []string{oldInstance}})
			w.asg.SetLifecycleState(oldInstance, "Standby")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t)
			w.oldHolder()
			c.setup(w)
			got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
			if err != nil || len(fs) != 0 {
				t.Fatalf("claim: %v %s", err, codes(fs))
			}
			if !got.Moved || got.FromInterface != oldENI || got.FromInstance != oldInstance {
				t.Fatalf("assigned: %+v", got)
			}
			if h := w.ec2.Holder(stableIP); h != newENI {
				t.Fatalf("EC2 says %q holds %s", h, stableIP)
			}
			if n := asgReads(w, oldInstance); n != 1 {
				t.Fatalf("the holder's state was read %d times", n)
			}
		})
	}
}

// The stand-in moves an address only with AllowReassignment, as EC2 does: the test above
// proves the flag is sent, not that the stand-in is lenient.
func TestEC2StandInMovesOnlyWithAllowReassignment(t *testing.T) {
	w := newWorld(t)
	w.oldHolder()
	_, err := w.c.ec2.AssignPrivateIpAddresses(context.Background(), &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(newENI), PrivateIpAddresses: []string{stableIP}})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "PrivateIpAddressInUse" {
		t.Fatalf("want PrivateIpAddressInUse, got %v", err)
	}
	if h := w.ec2.Holder(stableIP); h != oldENI {
		t.Fatalf("moved without AllowReassignment: %s", h)
	}
}

// A live holder of the group keeps the address: ADDRESS_HELD, nothing assigned, the claim
// waits; once the group lets it go (terminated), the address moves.
func TestClaimWaitsWhileALiveHolderHasIt(t *testing.T) {
	w := newWorld(t)
	w.oldHolder()
	w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 2, Instances: []string{oldInstance, newInstance}})

	_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" || !fs[0].Blocking {
		t.Fatalf("claim: %v %s", err, codes(fs))
	}
	if !strings.Contains(fs[0].Summary, oldInstance) || !strings.Contains(fs[0].Fix, "terminate-instance-in-auto-scaling-group --instance-id "+oldInstance) {
		t.Fatalf("finding: %+v", fs[0])
	}
	if n := len(w.ec2.Calls("AssignPrivateIpAddresses")); n != 0 {
		t.Fatalf("took the address from a live instance: %d assign calls", n)
	}

	held := 0
	got, fs, err := w.c.WaitClaim(context.Background(), w.req(stableIP), time.Hour, func(fs []findings.Finding) {
		held++
		if codes(fs) != "ADDRESS_HELD" || len(w.ec2.Calls("AssignPrivateIpAddresses")) != 0 {
			t.Errorf("attempt %d: %s, %d assign calls", held, codes(fs), len(w.ec2.Calls("AssignPrivateIpAddresses")))
		}
		if held == 2 {
			// The group let it go and EC2 terminated it, deleting its primary interface: the
			// next attempt may take the address.
			w.asg.Terminate(oldInstance)
			w.ec2.SetInstanceState(oldInstance, "terminated")
		}
	})
	if err != nil || len(fs) != 0 || !got.Moved {
		t.Fatalf("wait: %+v %v %s", got, err, codes(fs))
	}
	if held != 2 || w.ec2.Holder(stableIP) != newENI || len(w.ec2.Calls("AssignPrivateIpAddresses")) != 1 {
		t.Fatalf("held %d times; holder %s; %d assigns", held, w.ec2.Holder(stableIP), len(w.ec2.Calls("AssignPrivateIpAddresses")))
	}

	// A cancelled wait says so, with the finding it was waiting on.
	w2 := newWorld(t)
	w2.oldHolder()
	w2.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 2, Instances: []string{oldInstance, newInstance}})
	ctx, cancel := context.WithCancel(context.Background())
	w2.c.after = func(time.Duration) <-chan time.Time { cancel(); return nil }
	_, fs, err = w2.c.WaitClaim(ctx, w2.req(stableIP), time.Hour, nil)
	if !errors.Is(err, context.Canceled) || codes(fs) != "ADDRESS_HELD" {
		t.Fatalf("cancelled wait: %v %s", err, codes(fs))
	}
}

// A live member of another group keeps the address too: the config names another service's
// address. One of this instance's own other interfaces gives it up.
func TestClaimLeavesAnotherGroupsLiveInstance(t *testing.T) {
	w := newWorld(t)
	w.oldHolder()
	w.asg.AddGroup(peertest.ASGGroup{Name: "nomad-clients", Min: 1, Max: 5, Desired: 1, Instances: []string{oldInstance}})
	_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" || !strings.Contains(fs[0].Summary, "nomad-clients") || !strings.Contains(fs[0].Fix, "choose an address") {
		t.Fatalf("claim: %v %+v", err, fs)
	}
	if len(w.ec2.Calls("AssignPrivateIpAddresses")) != 0 {
		t.Fatal("took a live instance's address")
	}

	w = newWorld(t)
	w.ec2.AddENI(peertest.ENI{ID: "eni-0new000000000002", SubnetID: "subnet-0a", VPCID: "vpc-01", Instance: newInstance, DeviceIndex: 1, IPs: []string{"10.0.1.21", stableIP}})
	got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if err != nil || len(fs) != 0 || !got.Moved || w.ec2.Holder(stableIP) != newENI {
		t.Fatalf("from this instance's second interface: %+v %v %s", got, err, codes(fs))
	}
}

// An address that is another interface's primary one is never moved (EC2 refuses, and it is
// freed only with that interface).
func TestClaimLeavesAPrimaryAddress(t *testing.T) {
	w := newWorld(t)
	w.ec2.AddENI(peertest.ENI{ID: oldENI, SubnetID: "subnet-0a", VPCID: "vpc-01", Instance: oldInstance, IPs: []string{stableIP}})
	_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" || !strings.Contains(fs[0].Summary, "primary") {
		t.Fatalf("claim: %v %+v", err, fs)
	}
	if len(w.ec2.Calls("AssignPrivateIpAddresses")) != 0 {
		t.Fatal("tried to move a primary address")
	}
}

func TestClaimSubnetMismatch(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	_, fs, err := w.c.Claim(ctx, w.req("10.0.2.50"))
	if !errors.Is(err, ErrNotInSubnet) || codes(fs) != "ADDRESS_NOT_IN_SUBNET" {
		t.Fatalf("claim: %v %s", err, codes(fs))
	}
	f := fs[0]
	want := "aws autoscaling update-auto-scaling-group --auto-scaling-group-name " + group + " --vpc-zone-identifier subnet-0b"
	if !strings.Contains(f.Fix, want) || !strings.Contains(f.Evidence, "subnet=subnet-0b cidr=10.0.2.0/24 zone=us-east-1b") {
		t.Fatalf("the finding does not name the subnet to confine the group to:\n%+v", f)
	}
	if len(w.ec2.Calls("DescribeNetworkInterfaces", "AssignPrivateIpAddresses")) != 0 {
		t.Fatal("went on after the subnet check")
	}
	// In no subnet of the VPC at all, and AWS's reserved addresses of this subnet.
	for ip, want := range map[string]string{"10.0.9.50": "no subnet of vpc-01 holds 10.0.9.50", "10.0.1.1": "reserves", "10.0.1.255": "reserves", "10.0.1.0": "reserves"} {
		_, fs, err := w.c.Claim(ctx, w.req(ip))
		if !errors.Is(err, ErrNotInSubnet) || codes(fs) != "ADDRESS_NOT_IN_SUBNET" || !strings.Contains(fs[0].Fix+fs[0].Summary, want) {
			t.Errorf("%s: %v %+v", ip, err, fs)
		}
	}
	if _, fs, err := w.c.Claim(ctx, w.req("10.0.1.4")); err != nil {
		t.Errorf("10.0.1.4 is the subnet's first usable address: %v %s", err, codes(fs))
	}
	// DescribeSubnets refused: the same finding, its fix only vaguer.
	w.ec2.Deny("DescribeSubnets")
	_, fs, err = w.c.Claim(ctx, w.req("10.0.2.50"))
	if !errors.Is(err, ErrNotInSubnet) || codes(fs) != "ADDRESS_NOT_IN_SUBNET" || !strings.Contains(fs[0].Fix, "--vpc-zone-identifier SUBNET") {
		t.Fatalf("DescribeSubnets denied: %v %+v", err, fs)
	}
}

func TestClaimDenied(t *testing.T) {
	for _, c := range []struct {
		deny   func(w *world)
		action string
	}{
		{func(w *world) { w.ec2.Deny("AssignPrivateIpAddresses") }, "ec2:AssignPrivateIpAddresses"},
		{func(w *world) { w.ec2.Deny("DescribeNetworkInterfaces") }, "ec2:DescribeNetworkInterfaces"},
		{func(w *world) { w.oldHolder(); w.asg.Deny("DescribeAutoScalingInstances") }, "autoscaling:DescribeAutoScalingInstances"},
	} {
		t.Run(c.action, func(t *testing.T) {
			w := newWorld(t)
			c.deny(w)
			_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
			if !errors.Is(err, ErrDenied) || codes(fs) != "ADDRESS_API_DENIED" || !fs[0].Blocking {
				t.Fatalf("claim: %v %s", err, codes(fs))
			}
			sid := statementFor(c.action)
			if !strings.Contains(fs[0].Fix, c.action) || !strings.Contains(fs[0].Fix, sid) || !policyGrants(t, sid, c.action) {
				t.Fatalf("the fix %q does not name a statement of examples/iam-policy.json granting %s", fs[0].Fix, c.action)
			}
			if w.ec2.Holder(stableIP) == newENI {
				t.Fatal("assigned anyway")
			}
		})
	}
}

// The stand-ins check signatures: a client with the wrong secret is refused with each
// service's own code, and changes nothing.
func TestStandInsRefuseABadSignature(t *testing.T) {
	w := newWorld(t)
	bad := w.client(t, "not-the-secret")
	_, fs, err := bad.Claim(context.Background(), w.req(stableIP))
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "AuthFailure" || codes(fs) != "ADDRESS_API_FAILED" || !strings.Contains(fs[0].Fix, "refused the credentials") {
		t.Fatalf("EC2: want AuthFailure, got %v", err)
	}
	w.r53.AddZone("Z0123456789ABC", "circleci.internal")
	_, fs, err = bad.Publish(context.Background(), Record{ZoneID: "Z0123456789ABC", Name: "services.circleci.internal", TTL: 60, IP: netip.MustParseAddr(stableIP)}, time.Minute)
	if !errors.As(err, &ae) || ae.ErrorCode() != "SignatureDoesNotMatch" || codes(fs) != "ADDRESS_API_FAILED" || !strings.Contains(fs[0].Fix, "refused the credentials") {
		t.Fatalf("Route 53: want SignatureDoesNotMatch, got %v %s", err, codes(fs))
	}
	if len(w.ec2.Calls()) != 0 || len(w.r53.Calls()) != 0 || w.ec2.Holder(stableIP) != "" {
		t.Fatalf("a badly signed request was served: %d EC2, %d Route 53 calls", len(w.ec2.Calls()), len(w.r53.Calls()))
	}
}

func TestPublishUpsertsAndWaitsForInsync(t *testing.T) {
	w := newWorld(t)
	w.r53.AddZone("Z0123456789ABC", "circleci.internal")
	w.r53.SetPendingReads(2)
	rec := Record{ZoneID: "/hostedzone/Z0123456789ABC", Name: "services.circleci.internal", TTL: 30, IP: netip.MustParseAddr(stableIP)}
	got, fs, err := w.c.Publish(context.Background(), rec, time.Minute)
	if err != nil || len(fs) != 0 || !got.InSync || got.ChangeID == "" || strings.HasPrefix(got.ChangeID, "/") {
		t.Fatalf("publish: %+v %v %s", got, err, codes(fs))
	}
	r, ok := w.r53.Record("Z0123456789ABC", "services.circleci.internal")
	if !ok || r.TTL != 30 || len(r.Values) != 1 || r.Values[0] != stableIP {
		t.Fatalf("record: %+v %v", r, ok)
	}
	calls := w.r53.Calls()
	if len(calls) != 4 || calls[0].Action != "ChangeResourceRecordSets" || calls[0].Path != "/2013-04-01/hostedzone/Z0123456789ABC/rrset" && calls[0].Path != "/2013-04-01/hostedzone/Z0123456789ABC/rrset/" {
		t.Fatalf("calls: %+v", calls)
	}
	if !strings.Contains(calls[0].Body, "<Action>UPSERT</Action>") || calls[3].Path != "/2013-04-01/change/"+got.ChangeID {
		t.Fatalf("calls: %+v", calls)
	}
	// Rerun: UPSERT again (idempotent), the same record.
	if _, fs, err := w.c.Publish(context.Background(), rec, time.Minute); err != nil || len(fs) != 0 {
		t.Fatalf("rerun: %v %s", err, codes(fs))
	}
	if r2, _ := w.r53.Record("Z0123456789ABC", "services.circleci.internal"); r2.Values[0] != stableIP {
		t.Fatalf("rerun changed the record: %+v", r2)
	}
}

// Never INSYNC within sync_timeout: a warning, not an error, after the reads the bound allowed.
func TestPublishNotInsyncInTime(t *testing.T) {
	w := newWorld(t)
	w.r53.AddZone("Z0123456789ABC", "circleci.internal")
	w.r53.SetPendingReads(-1)
	n := 0
	w.c.after = func(time.Duration) <-chan time.Time {
		if n++; n <= 3 {
			return ready(0)
		}
		return nil // then only the sync timeout ends the wait
	}
	got, fs, err := w.c.Publish(context.Background(), Record{ZoneID: "Z0123456789ABC", Name: "services.circleci.internal", TTL: 60, IP: netip.MustParseAddr(stableIP)}, 50*time.Millisecond)
	if err != nil || codes(fs) != "ADDRESS_DNS_NOT_INSYNC" || fs[0].Blocking || got.InSync {
		t.Fatalf("publish: %+v %v %+v", got, err, fs)
	}
	if !strings.Contains(fs[0].Fix, "aws route53 get-change --id "+got.ChangeID) || !strings.Contains(fs[0].Evidence, "reads=3") {
		t.Fatalf("finding: %+v", fs[0])
	}
	if reads := len(w.r53.Calls("GetChange")); reads != 3 {
		t.Fatalf("%d GetChange calls, want 3", reads)
	}
}

func TestPublishFailures(t *testing.T) {
	ip := netip.MustParseAddr(stableIP)
	for _, c := range []struct {
		name, code, fix string
		setup           func(w *world)
		rec             Record
	}{
		{"denied", "ADDRESS_API_DENIED", "HaagentAddressRoute53Record", func(w *world) { w.r53.Deny("ChangeResourceRecordSets") },
			Record{ZoneID: "Z0123456789ABC", Name: "services.circleci.internal", TTL: 60, IP: ip}},
		{"get-change denied", "ADDRESS_API_DENIED", "HaagentAddressRoute53Change", func(w *world) { w.r53.Deny("GetChange") },
			Record{ZoneID: "Z0123456789ABC", Name: "services.circleci.internal", TTL: 60, IP: ip}},
		{"missing zone", "ADDRESS_ZONE_MISSING", "list-hosted-zones-by-name", func(w *world) {},
			Record{ZoneID: "Z9999999999999", Name: "services.circleci.internal", TTL: 60, IP: ip}},
		{"name outside the zone", "ADDRESS_API_FAILED", "must be a name inside the zone", func(w *world) {},
			Record{ZoneID: "Z0123456789ABC", Name: "services.example.com", TTL: 60, IP: ip}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t)
			w.r53.AddZone("Z0123456789ABC", "circleci.internal")
			c.setup(w)
			_, fs, err := w.c.Publish(context.Background(), c.rec, time.Minute)
			if err == nil || codes(fs) != c.code || !strings.Contains(fs[0].Fix, c.fix) {
				t.Fatalf("publish: %v %+v", err, fs)
			}
			if c.code == "ADDRESS_API_DENIED" && !errors.Is(err, ErrDenied) {
				t.Fatalf("not ErrDenied: %v", err)
			}
		})
	}
}

// Ensure with both modes: the address moves first, and the record points at it, not at the
// instance's own address.
func TestEnsureBothModes(t *testing.T) {
	w := newWorld(t)
	w.oldHolder()
	w.ec2.SetInstanceState(oldInstance, "shutting-down") // in no group and going: taken
	w.r53.AddZone("Z0123456789ABC", "circleci.internal")
	cfg := testAddressConfig()
	res, fs, err := w.c.Ensure(context.Background(), cfg, EnsureInput{Group: group, Holders: w.as, Metadata: w.md, LocalIPv4: netip.MustParseAddr("10.0.1.20")})
	if err != nil || len(fs) != 0 || res.Assigned == nil || !res.Assigned.Moved || res.Published == nil || !res.Published.InSync || res.RecordIP.String() != stableIP {
		t.Fatalf("ensure: %+v %v %s", res, err, codes(fs))
	}
	if r, _ := w.r53.Record("Z0123456789ABC", "services.circleci.internal"); r.Values[0] != stableIP {
		t.Fatalf("record: %+v", r)
	}
	// Route 53 alone: the instance's own address.
	cfg.PrivateIP = ""
	res, _, err = w.c.Ensure(context.Background(), cfg, EnsureInput{Metadata: w.md, LocalIPv4: netip.MustParseAddr("10.0.1.20")})
	if err != nil || res.Assigned != nil || res.RecordIP.String() != "10.0.1.20" {
		t.Fatalf("route53 alone: %+v %v", res, err)
	}
}

// policyGrants reports whether examples/iam-policy.json has statement sid allowing action.
func policyGrants(t *testing.T, sid, action string) bool {
	t.Helper()
	for _, s := range policy(t) {
		if s.Sid == sid && s.Effect == "Allow" && contains(s.actions(), action) {
			return true
		}
	}
	return false
}

type statement struct {
	Sid, Effect string
	Action      any
	Resource    any
	Condition   map[string]map[string]any
}

func (s statement) actions() []string {
	switch a := s.Action.(type) {
	case string:
		return []string{a}
	case []any:
		var out []string
		for _, x := range a {
			out = append(out, x.(string))
		}
		return out
	}
	return nil
}

func policy(t *testing.T) []statement {
	t.Helper()
	data, err := os.ReadFile("../../examples/iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Statement []statement }
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Statement
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Every action each mode calls is granted, and the record statement is held to the record's
// name, type and UPSERT, the conditions Route 53 supports.
func TestIAMPolicyGrantsEachMode(t *testing.T) {
	for mode, actions := range Actions {
		for _, a := range actions {
			if !policyGrants(t, statementFor(a), a) {
				t.Errorf("%s: examples/iam-policy.json has no statement %s granting %s", mode, statementFor(a), a)
			}
		}
	}
	for _, s := range policy(t) {
		if s.Sid != "HaagentAddressRoute53Record" {
			continue
		}
		c := s.Condition["ForAllValues:StringEquals"]
		for _, k := range []string{"route53:ChangeResourceRecordSetsNormalizedRecordNames", "route53:ChangeResourceRecordSetsRecordTypes", "route53:ChangeResourceRecordSetsActions"} {
			if c[k] == nil {
				t.Errorf("the record statement is not conditioned on %s", k)
			}
		}
		if r, _ := s.Resource.(string); !strings.HasPrefix(r, "arn:aws:route53:::hostedzone/") {
			t.Errorf("the record statement is not limited to one zone: %v", s.Resource)
		}
		return
	}
	t.Error("no HaagentAddressRoute53Record statement")
}

package address

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// A holder in no Auto Scaling group keeps the address while EC2 says it runs (a machine
// launched by hand, another service, an instance detached from the group); once it is
// shutting down, terminated (its primary interface deleted, as EC2 does) or unknown, the
// address is had.
func TestClaimAsksEC2AboutAHolderInNoGroup(t *testing.T) {
	for _, state := range []string{"pending", "running", "stopping", "stopped"} {
		t.Run(state, func(t *testing.T) {
			w := newWorld(t)
			w.oldHolder()
			w.ec2.SetInstanceState(oldInstance, state)
			_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
			if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" {
				t.Fatalf("claim: %v %s", err, codes(fs))
			}
			want := "aws ec2 unassign-private-ip-addresses --network-interface-id " + oldENI + " --private-ip-addresses " + stableIP
			if !strings.Contains(fs[0].Fix, want) || !strings.Contains(fs[0].Fix, "terminate-instances --instance-ids "+oldInstance) || !strings.Contains(fs[0].Evidence, "state="+state) {
				t.Fatalf("finding: %+v", fs[0])
			}
			if w.ec2.Holder(stableIP) != oldENI || len(w.ec2.Calls("AssignPrivateIpAddresses")) != 0 {
				t.Fatal("took the address from an instance EC2 says is " + state)
			}
			if d := w.ec2.Calls("DescribeInstances"); len(d) != 1 || d[0].Params.Get("InstanceId.1") != oldInstance {
				t.Fatalf("DescribeInstances: %+v", d)
			}
		})
	}
	t.Run("terminated", func(t *testing.T) {
		w := newWorld(t)
		w.oldHolder()
		w.ec2.SetInstanceState(oldInstance, "terminated") // its primary interface goes with it
		got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
		if err != nil || len(fs) != 0 || !got.Moved || got.FromInterface != "" || w.ec2.Holder(stableIP) != newENI {
			t.Fatalf("claim: %+v %v %s", got, err, codes(fs))
		}
	})
	t.Run("unknown to EC2", func(t *testing.T) {
		w := newWorld(t)
		// A secondary interface left attached in the stand-in to an instance EC2 no longer
		// lists: DescribeInstances answers InvalidInstanceID.NotFound.
		w.ec2.AddENI(peertest.ENI{ID: oldENI, SubnetID: "subnet-0a", VPCID: "vpc-01", Instance: "i-0gone00000000001", DeviceIndex: 1, IPs: []string{"10.0.1.31", stableIP}})
		w.ec2.ForgetInstance("i-0gone00000000001")
		got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
		if err != nil || len(fs) != 0 || !got.Moved || w.ec2.Holder(stableIP) != newENI {
			t.Fatalf("claim: %+v %v %s", got, err, codes(fs))
		}
	})
	t.Run("DescribeInstances denied", func(t *testing.T) {
		w := newWorld(t)
		w.oldHolder()
		w.ec2.Deny("DescribeInstances")
		_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
		if !errors.Is(err, ErrDenied) || codes(fs) != "ADDRESS_API_DENIED" || !strings.Contains(fs[0].Fix, "HaagentAddressDescribe") || !policyGrants(t, "HaagentAddressDescribe", "ec2:DescribeInstances") {
			t.Fatalf("claim: %v %+v", err, fs)
		}
		if w.ec2.Holder(stableIP) != oldENI {
			t.Fatal("took it anyway")
		}
	})
}

// The old instance, Unhealthy (marked for replacement) or leaving the group, never takes the
// address back from its Pending replacement when haagent restarts there; it waits.
func TestClaimNotWhileThisInstanceLeavesService(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(w *world)
	}{
		{"unhealthy", func(w *world) { w.asg.SetUnhealthy(newInstance, true) }},
		{"terminating", func(w *world) { w.asg.SetLifecycleState(newInstance, "Terminating:Wait") }},
		{"standby", func(w *world) { w.asg.SetLifecycleState(newInstance, "Standby") }},
		{"detaching", func(w *world) { w.asg.SetLifecycleState(newInstance, "Detaching") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t)
			w.oldHolder() // oldInstance plays the replacement holding the address
			w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 1, Instances: []string{newInstance, oldInstance}})
			w.asg.SetLifecycleState(oldInstance, "Pending:Wait")
			c.setup(w)
			_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
			if !errors.Is(err, ErrLeaving) || codes(fs) != "ADDRESS_SELF_LEAVING" || !strings.Contains(fs[0].Fix, "set-instance-health --instance-id "+newInstance) {
				t.Fatalf("claim: %v %+v", err, fs)
			}
			if w.ec2.Holder(stableIP) != oldENI || len(w.ec2.Calls("AssignPrivateIpAddresses")) != 0 {
				t.Fatal("the instance leaving service took the address back from its replacement")
			}
		})
	}
	// WaitClaim waits while it leaves service (an operator may put it back).
	w := newWorld(t)
	w.asg.SetUnhealthy(newInstance, true)
	waits := 0
	got, fs, err := w.c.WaitClaim(context.Background(), w.req(stableIP), time.Hour, func(fs []findings.Finding) {
		if waits++; codes(fs) != "ADDRESS_SELF_LEAVING" {
			t.Errorf("wait %d: %s", waits, codes(fs))
		}
		w.asg.SetUnhealthy(newInstance, false)
	})
	if err != nil || len(fs) != 0 || !got.Moved || waits != 1 {
		t.Fatalf("wait: %+v %v %s after %d waits", got, err, codes(fs), waits)
	}
}

// A Pending holder of the group keeps the address unless this instance was launched after it:
// the later launch wins, from either side, so two Pending instances never take it in turn.
func TestClaimPendingHolderKeepsItUnlessThisIsTheLaterLaunch(t *testing.T) {
	early, late := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name       string
		mine, hers time.Time
		take       bool
	}{
		{"this is the later launch", late, early, true},
		{"the holder is the later launch", early, late, false},
		{"launched together", early, early, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t)
			w.oldHolder()
			w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 2, Instances: []string{newInstance, oldInstance}})
			w.asg.SetLifecycleState(oldInstance, "Pending:Wait")
			w.asg.SetLifecycleState(newInstance, "Pending:Wait")
			w.ec2.AddInstance(peertest.EC2Instance{ID: newInstance, State: "running", LaunchTime: c.mine})
			w.ec2.AddInstance(peertest.EC2Instance{ID: oldInstance, State: "running", LaunchTime: c.hers})
			got, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
			if c.take {
				if err != nil || !got.Moved || w.ec2.Holder(stableIP) != newENI {
					t.Fatalf("claim: %+v %v %s", got, err, codes(fs))
				}
				return
			}
			if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" || !strings.Contains(fs[0].Fix, "--desired-capacity 1") || w.ec2.Holder(stableIP) != oldENI {
				t.Fatalf("claim: %v %+v; holder %s", err, fs, w.ec2.Holder(stableIP))
			}
		})
	}
}

// An interface AWS manages for a service (a NAT gateway's secondary IP, an endpoint) is never
// taken from, attached to an instance or not.
func TestClaimLeavesARequesterManagedInterface(t *testing.T) {
	w := newWorld(t)
	w.ec2.AddENI(peertest.ENI{ID: "eni-0nat000000000001", SubnetID: "subnet-0a", VPCID: "vpc-01", RequesterManaged: true, IPs: []string{"10.0.1.9", stableIP}})
	_, fs, err := w.c.Claim(context.Background(), w.req(stableIP))
	if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" || !strings.Contains(fs[0].Fix, "AWS-managed") {
		t.Fatalf("claim: %v %+v", err, fs)
	}
	if len(w.ec2.Calls("AssignPrivateIpAddresses")) != 0 {
		t.Fatal("took a requester-managed interface's address")
	}
}

// Without the group the holder is not taken from, and the finding says what to do.
func TestClaimWithoutTheGroupHasAFix(t *testing.T) {
	w := newWorld(t)
	w.oldHolder()
	r := w.req(stableIP)
	r.Holders, r.Group = nil, ""
	_, fs, err := w.c.Claim(context.Background(), r)
	if !errors.Is(err, ErrHeld) || codes(fs) != "ADDRESS_HELD" || !strings.Contains(fs[0].Fix, "unassign-private-ip-addresses --network-interface-id "+oldENI) {
		t.Fatalf("claim: %v %+v", err, fs)
	}
}

// A group whose maintenance policy launches first is told, with the command that makes it
// terminate first, before the claim waits; the held finding no longer says "nothing to do".
func TestEnsureWarnsOfALaunchFirstGroup(t *testing.T) {
	w := newWorld(t)
	w.oldHolder()
	w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 1, Desired: 1, Instances: []string{newInstance, oldInstance}, MinHealthy: 100, MaxHealthy: 200})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var held []findings.Finding
	w.c.after = func(time.Duration) <-chan time.Time { cancel(); return nil }
	_, fs, err := w.c.Ensure(ctx, testAddressConfig(), EnsureInput{Group: group, Holders: w.as, Policy: w.as, Metadata: w.md, LocalIPv4: netip.MustParseAddr("10.0.1.20"),
		OnHeld: func(fs []findings.Finding) { held = fs }})
	if !errors.Is(err, context.Canceled) || !strings.Contains(codes(fs), "ADDRESS_LAUNCH_FIRST") || codes(held) != codes(fs) {
		t.Fatalf("ensure: %v %s; while held: %s", err, codes(fs), codes(held))
	}
	for _, f := range fs {
		if f.Code == findings.AddressLaunchFirst && !strings.Contains(f.Fix, "--instance-maintenance-policy MinHealthyPercentage=0,MaxHealthyPercentage=100") {
			t.Errorf("fix: %q", f.Fix)
		}
		if f.Code == findings.AddressHeld && strings.Contains(f.Fix+findings.AddressHeld.Entry().Fix, "nothing to do") {
			t.Errorf("ADDRESS_HELD still says nothing to do: %q", f.Fix)
		}
	}
	// Terminate-first (or no policy): no finding.
	w2 := newWorld(t)
	w2.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 1, Desired: 1, Instances: []string{newInstance}, MinHealthy: 0, MaxHealthy: 100})
	w2.r53.AddZone("Z0123456789ABC", "circleci.internal")
	_, fs, err = w2.c.Ensure(context.Background(), testAddressConfig(), EnsureInput{Group: group, Holders: w2.as, Policy: w2.as, Metadata: w2.md, LocalIPv4: netip.MustParseAddr("10.0.1.20")})
	if err != nil || len(fs) != 0 {
		t.Fatalf("terminate-first: %v %s", err, codes(fs))
	}
}

// Route 53 is a global service: its signing region is us-east-1 whatever address.region and
// endpoint, and the stand-ins refuse a scope for another region (EC2 the configured one).
func TestRoute53SignsForUSEast1WithAnEndpoint(t *testing.T) {
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
	_, _, _ = c.Publish(ctx, Record{ZoneID: "Z1", Name: "services.circleci.internal", TTL: 60, IP: netip.MustParseAddr(stableIP)}, time.Minute)
	if !strings.Contains(auth, "/us-east-1/route53/") {
		t.Errorf("with route53.endpoint set, Route 53 is signed as %q, not for us-east-1", auth)
	}

	// The stand-ins check the scope: EC2 in eu-west-1 refuses a us-east-1 signature, and
	// Route 53 accepts a client of eu-west-1.
	w := newWorld(t)
	w.ec2.Region = "eu-west-1"
	w.r53.AddZone("Z0123456789ABC", "circleci.internal")
	if _, fs, err := w.c.Claim(context.Background(), w.req(stableIP)); codes(fs) != "ADDRESS_API_FAILED" || !strings.Contains(err.Error(), "AuthFailure") {
		t.Fatalf("EC2 in eu-west-1 served a us-east-1 signature: %v %s", err, codes(fs))
	}
	eu, err := New(context.Background(), Options{InstanceID: newInstance, Region: "eu-west-1", EC2Endpoint: w.ec2.URL, Route53Endpoint: w.r53.URL,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, "")})
	if err != nil {
		t.Fatal(err)
	}
	eu.after = ready
	if _, fs, err := eu.Publish(context.Background(), Record{ZoneID: "Z0123456789ABC", Name: "services.circleci.internal", TTL: 60, IP: netip.MustParseAddr(stableIP)}, time.Minute); err != nil || len(fs) != 0 {
		t.Fatalf("Route 53 from eu-west-1: %v %s", err, codes(fs))
	}
}

// After the boot, EC2 must still list the address on this instance's interface: a holder that
// took it (an operator, the other instance) is noticed, which no check from inside the machine
// can see.
func TestStillHereReadsTheInterfaceFromEC2(t *testing.T) {
	w := newWorld(t)
	ip := netip.MustParseAddr(stableIP)
	if _, _, err := w.c.Claim(context.Background(), w.req(stableIP)); err != nil {
		t.Fatal(err)
	}
	if fs, err := w.c.StillHere(context.Background(), w.md, ip); err != nil || len(fs) != 0 {
		t.Fatalf("here: %v %s", err, codes(fs))
	}
	// Someone moves it to the old instance's interface.
	w.oldHolder()
	w.ec2.Move(stableIP, oldENI)
	fs, err := w.c.StillHere(context.Background(), w.md, ip)
	if err != nil || codes(fs) != "ADDRESS_NOT_HERE" || !strings.Contains(fs[0].Summary, "no longer lists") || !strings.Contains(fs[0].Fix, "Values="+stableIP) {
		t.Fatalf("moved away: %v %+v", err, fs)
	}
	if d := w.ec2.Calls("DescribeNetworkInterfaces"); d[len(d)-1].Params.Get("NetworkInterfaceId.1") != newENI {
		t.Fatalf("did not read this instance's interface: %v", d[len(d)-1].Params)
	}
}

// route53 alone: the name is not moved while it points at an instance of the group that is
// InService and Healthy; once that one leaves service, it is. The record is read with
// ListResourceRecordSets from the name and type, one item.
func TestPublishWaitsWhileTheNamePointsAtALiveInstance(t *testing.T) {
	w := newWorld(t)
	w.r53.AddZone("Z0123456789ABC", "circleci.internal")
	w.r53.SetRecord("Z0123456789ABC", "services.circleci.internal", 60, "10.0.1.30") // the old instance's own address
	w.oldHolder()
	w.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 1, Instances: []string{newInstance, oldInstance}})
	cfg := testAddressConfig()
	cfg.PrivateIP = ""
	held := 0
	res, fs, err := w.c.Ensure(context.Background(), cfg, EnsureInput{Group: group, Holders: w.as, Metadata: w.md, LocalIPv4: netip.MustParseAddr("10.0.1.20"),
		OnHeld: func(fs []findings.Finding) {
			held++
			if codes(fs) != "ADDRESS_HELD" || !strings.Contains(fs[0].Summary, oldInstance) || len(w.r53.Calls("ChangeResourceRecordSets")) != 0 {
				t.Errorf("held %d: %+v; %d changes", held, fs, len(w.r53.Calls("ChangeResourceRecordSets")))
			}
			w.asg.SetUnhealthy(oldInstance, true) // the guard marked it: the next attempt moves the name
		}})
	if err != nil || len(fs) != 0 || held != 1 || res.Published == nil {
		t.Fatalf("ensure: %+v %v %s after %d waits", res, err, codes(fs), held)
	}
	if r, _ := w.r53.Record("Z0123456789ABC", "services.circleci.internal"); r.Values[0] != "10.0.1.20" {
		t.Fatalf("record: %+v", r)
	}
	l := w.r53.Calls("ListResourceRecordSets")
	if len(l) != 2 || !strings.Contains(l[0].Query, "name=services.circleci.internal.") || !strings.Contains(l[0].Query, "type=A") || !strings.Contains(l[0].Query, "maxitems=1") {
		t.Fatalf("ListResourceRecordSets: %+v", l)
	}
	// A record of another name listed first (Route 53 lists from the name on) is not this one.
	w2 := newWorld(t)
	w2.r53.AddZone("Z0123456789ABC", "circleci.internal")
	w2.r53.SetRecord("Z0123456789ABC", "services2.circleci.internal", 60, "10.0.1.30")
	w2.oldHolder()
	w2.asg.AddGroup(peertest.ASGGroup{Name: group, Min: 1, Max: 2, Desired: 1, Instances: []string{newInstance, oldInstance}})
	if _, fs, err := w2.c.Ensure(context.Background(), cfg, EnsureInput{Group: group, Holders: w2.as, Metadata: w2.md, LocalIPv4: netip.MustParseAddr("10.0.1.20")}); err != nil || len(fs) != 0 {
		t.Fatalf("another name: %v %s", err, codes(fs))
	}
}

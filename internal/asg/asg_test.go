package asg

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

const instance = "i-0123456789abcdef0"

func newClient(t *testing.T, a *peertest.ASG, hook string) *Client {
	t.Helper()
	c, err := New(context.Background(), Options{InstanceID: instance, Region: "us-east-1", Endpoint: a.URL, Hook: hook,
		Credentials: credentials.NewStaticCredentialsProvider(a.AccessKey, a.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func healthyGroup() peertest.ASGGroup {
	return peertest.ASGGroup{Name: "circleci-services", HealthCheckType: "EC2", Min: 1, Max: 1, Desired: 1, Instances: []string{instance},
		Hooks: []peertest.ASGHook{{Name: "haagent-launch", Transition: "autoscaling:EC2_INSTANCE_LAUNCHING", DefaultResult: "CONTINUE", HeartbeatTimeout: 900}}}
}

func TestResolveGroup(t *testing.T) {
	ctx := context.Background()
	a := peertest.StartASG(t, "AKIDASGTEST", "asg-secret-key")
	a.AddGroup(healthyGroup())

	// The tag wins, and saves the API call.
	c := newClient(t, a, "")
	g, err := c.Resolve(ctx, "", func(context.Context) (string, error) { return "from-tag", nil })
	if err != nil || g != "from-tag" || len(a.Calls()) != 0 {
		t.Fatalf("tag: %q %v, calls %v", g, err, a.Calls())
	}
	// No tag (metadata tags disabled): DescribeAutoScalingInstances with this instance's id.
	g, err = c.Resolve(ctx, "", func(context.Context) (string, error) { return "", nil })
	if err != nil || g != "circleci-services" {
		t.Fatalf("describe: %q %v", g, err)
	}
	calls := a.Calls()
	if len(calls) != 1 || calls[0].Action != "DescribeAutoScalingInstances" || calls[0].Params.Get("InstanceIds.member.1") != instance {
		t.Fatalf("calls: %+v", calls)
	}
	// In no group: "", no error.
	other, _ := New(ctx, Options{InstanceID: "i-0ffffffffffffffff", Region: "us-east-1", Endpoint: a.URL,
		Credentials: credentials.NewStaticCredentialsProvider(a.AccessKey, a.SecretKey, "")})
	if g, err := other.Resolve(ctx, "", nil); err != nil || g != "" {
		t.Fatalf("not a member: %q %v", g, err)
	}
	// A refusal names the permission.
	a.Deny("DescribeAutoScalingInstances")
	_, err = c.Resolve(ctx, "", nil)
	var ae *APIError
	if !errors.As(err, &ae) || !ae.Denied() || !strings.Contains(ae.Finding("x").Fix, "autoscaling:DescribeAutoScalingInstances") {
		t.Fatalf("denied: %v", err)
	}
}

func TestCheckGroupReportsUnsafeSettings(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		edit  func(g *peertest.ASGGroup)
		hook  string
		codes string
		hb    time.Duration
	}{
		{"safe", func(*peertest.ASGGroup) {}, "haagent-launch", "", 900 * time.Second},
		{"elb", func(g *peertest.ASGGroup) { g.HealthCheckType = "ELB" }, "haagent-launch", findings.ASGHealthCheckNotEC2.String(), 900 * time.Second},
		{"abandon", func(g *peertest.ASGGroup) { g.Hooks[0].DefaultResult = "ABANDON" }, "haagent-launch", findings.ASGHookAbandon.String(), 900 * time.Second},
		{"two", func(g *peertest.ASGGroup) { g.Max = 2 }, "haagent-launch", findings.ASGGroupSize.String(), 900 * time.Second},
		{"missing hook", func(*peertest.ASGGroup) {}, "other-hook", findings.ASGHookMissing.String(), 0},
		{"terminating hook", func(g *peertest.ASGGroup) { g.Hooks[0].Transition = "autoscaling:EC2_INSTANCE_TERMINATING" }, "haagent-launch", findings.ASGHookNotLaunch.String(), 0},
		{"no hook configured", func(g *peertest.ASGGroup) { g.Hooks[0].DefaultResult = "ABANDON" }, "", "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := peertest.StartASG(t, "AKIDASGTEST", "asg-secret-key")
			g := healthyGroup()
			tc.edit(&g)
			a.AddGroup(g)
			c := newClient(t, a, tc.hook)
			c.Group = g.Name
			chk, err := c.CheckGroup(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := findings.Codes(chk.Findings); got != tc.codes && !(tc.codes == "" && len(chk.Findings) == 0) {
				t.Fatalf("codes %q, want %q: %+v", got, tc.codes, chk.Findings)
			}
			if chk.HeartbeatTimeout != tc.hb {
				t.Fatalf("heartbeat timeout %s, want %s", chk.HeartbeatTimeout, tc.hb)
			}
			lookups := a.Calls("DescribeLifecycleHooks")
			if tc.hook == "" && len(lookups) != 0 {
				t.Fatal("no hook configured: its settings must not be read")
			}
			if tc.hook != "" && (len(lookups) != 1 || lookups[0].Params.Get("AutoScalingGroupName") != g.Name || lookups[0].Params.Get("LifecycleHookNames.member.1") != tc.hook) {
				t.Fatalf("DescribeLifecycleHooks: %+v", lookups)
			}
		})
	}
}

func TestHeartbeatAndCompleteParameters(t *testing.T) {
	ctx := context.Background()
	a := peertest.StartASG(t, "AKIDASGTEST", "asg-secret-key")
	a.AddGroup(healthyGroup())
	c := newClient(t, a, "haagent-launch")
	c.Group = "circleci-services"

	// Nothing waits: both say so with ErrNoLifecycleAction, not an API failure.
	if err := c.Heartbeat(ctx); !errors.Is(err, ErrNoLifecycleAction) {
		t.Fatalf("heartbeat without an action: %v", err)
	}
	a.LaunchPending(instance, "haagent-launch")
	if err := c.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Pending(instance) {
		t.Fatal("the action still waits after CompleteLifecycleAction")
	}
	if err := c.Complete(ctx); !errors.Is(err, ErrNoLifecycleAction) {
		t.Fatalf("second complete: %v", err)
	}
	hb := a.Calls("RecordLifecycleActionHeartbeat")[1].Params
	cp := a.Calls("CompleteLifecycleAction")[0].Params
	want := map[string]string{"AutoScalingGroupName": "circleci-services", "LifecycleHookName": "haagent-launch", "InstanceId": instance}
	for k, v := range want {
		if hb.Get(k) != v || cp.Get(k) != v {
			t.Fatalf("%s: heartbeat %q, complete %q, want %q", k, hb.Get(k), cp.Get(k), v)
		}
	}
	if cp.Get("LifecycleActionResult") != "CONTINUE" {
		t.Fatalf("result %q: haagent only ever continues", cp.Get("LifecycleActionResult"))
	}
	if err := c.SetUnhealthy(ctx); err != nil {
		t.Fatal(err)
	}
	sh := a.Calls("SetInstanceHealth")[0].Params
	if sh.Get("InstanceId") != instance || sh.Get("HealthStatus") != "Unhealthy" || sh.Get("ShouldRespectGracePeriod") != "false" {
		t.Fatalf("SetInstanceHealth: %v", sh)
	}
}

// One heartbeat per tick; when the action disappears (its timeout passed) the loop reports it
// once and stops.
func TestHeartbeatsFollowTheTicks(t *testing.T) {
	a := peertest.StartASG(t, "AKIDASGTEST", "asg-secret-key")
	a.AddGroup(healthyGroup())
	a.LaunchPending(instance, "haagent-launch")
	c := newClient(t, a, "haagent-launch")
	c.Group = "circleci-services"
	tick := make(chan time.Time)
	expired := make(chan error, 2)
	done := make(chan struct{})
	go func() {
		expired <- c.Heartbeats(context.Background(), time.Hour, tick, nil)
		close(done)
	}()
	for i := 1; i <= 3; i++ {
		tick <- time.Now()
		a.Wait(t, 10*time.Second, "heartbeat", func(calls []peertest.ASGCall) bool { return len(calls) == i })
	}
	a.EndAction(instance)
	tick <- time.Now()
	<-done
	if err := <-expired; !errors.Is(err, ErrNoLifecycleAction) {
		t.Fatalf("Heartbeats returned %v once the action was gone, want ErrNoLifecycleAction", err)
	}
	if n := len(a.Calls("RecordLifecycleActionHeartbeat")); n != 4 {
		t.Fatalf("%d heartbeats for 4 ticks", n)
	}
}

func TestHeartbeatEvery(t *testing.T) {
	for _, tc := range []struct{ conf, hook, want time.Duration }{
		{0, 900 * time.Second, 300 * time.Second},
		{0, 3600 * time.Second, 20 * time.Minute},
		{0, 30 * time.Second, 10 * time.Second},
		{0, 0, 5 * time.Minute},
		{time.Minute, 900 * time.Second, time.Minute},
	} {
		if got := HeartbeatEvery(tc.conf, tc.hook); got != tc.want {
			t.Errorf("HeartbeatEvery(%s, %s) = %s, want %s", tc.conf, tc.hook, got, tc.want)
		}
	}
}

// The endpoint checks signatures: wrong credentials are refused, so the tests above prove the
// SDK's requests are signed with the configured ones.
func TestEndpointChecksSignatures(t *testing.T) {
	a := peertest.StartASG(t, "AKIDASGTEST", "asg-secret-key")
	a.AddGroup(healthyGroup())
	c, _ := New(context.Background(), Options{InstanceID: instance, Region: "us-east-1", Endpoint: a.URL,
		Credentials: credentials.NewStaticCredentialsProvider(a.AccessKey, "wrong", "")})
	_, err := c.Resolve(context.Background(), "", nil)
	if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("wrong secret: %v", err)
	}
}

// The example policy grants every action haagent calls: a missing one would surface only on a
// real instance, as ASG_API_FAILED.
func TestExamplePolicyGrantsEveryAction(t *testing.T) {
	data, err := os.ReadFile("../../examples/iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Statement []struct {
			Action any
		}
	}
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	granted := map[string]bool{}
	for _, s := range p.Statement {
		switch a := s.Action.(type) {
		case string:
			granted[a] = true
		case []any:
			for _, x := range a {
				granted[x.(string)] = true
			}
		}
	}
	for _, a := range Actions {
		if !granted["autoscaling:"+a] {
			t.Errorf("examples/iam-policy.json does not grant autoscaling:%s", a)
		}
	}
	if !strings.Contains(string(data), "/"+LedgerKey) {
		t.Errorf("examples/iam-policy.json does not let haagent write the replacement ledger %s", LedgerKey)
	}
}

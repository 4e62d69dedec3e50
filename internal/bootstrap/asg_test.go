package bootstrap

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/peertest"
)

const lateID = "i-0a5a0000000000f9"

// lateLookupBoot is a boot whose group lookup is throttled until the test says otherwise,
// against the Auto Scaling stand-in (the group's tag is not in the metadata, so the lookup is
// DescribeAutoScalingInstances), with a launch action waiting.
func lateLookupBoot(t *testing.T) (*Env, *peertest.ASG, context.Context) {
	t.Helper()
	md := peertest.StartIMDS(t, peertest.Instance{ID: lateID, LocalIPv4: "10.0.1.9", Region: "us-east-1"})
	a := peertest.StartASG(t, "AKIDLATELOOKUP", "late-lookup-secret")
	a.AddGroup(peertest.ASGGroup{Name: "circleci-services", HealthCheckType: "EC2", Min: 1, Max: 1, Desired: 1, Instances: []string{lateID},
		Hooks: []peertest.ASGHook{{Name: "haagent-launch", Transition: "autoscaling:EC2_INSTANCE_LAUNCHING", DefaultResult: "CONTINUE", HeartbeatTimeout: 900}}})
	a.LaunchPending(lateID, "haagent-launch")
	a.Throttle("DescribeAutoScalingInstances", -1)
	t.Setenv("AWS_ACCESS_KEY_ID", a.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", a.SecretKey)
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", md.URL)
	cfg, err := config.Parse([]byte(fmt.Sprintf("version: 1\nsource:\n  bucket: abc\nasg:\n  enabled: true\n  lifecycle_hook: haagent-launch\n  endpoint: %s\n  heartbeat_every: 200ms\n", a.URL)), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	env := quietEnv(Inputs{}, nil)
	env.runCtx = ctx
	env.Config, env.IMDS = cfg, imds.New(5*time.Second)
	env.Instance = imds.Info{InstanceID: lateID, Region: "us-east-1"}
	t.Cleanup(func() { cancel(); env.Drain(10 * time.Second) })
	return env, a, ctx
}

func countCalls(a *peertest.ASG, action string) int { return len(a.Calls(action)) }

// The boot reached lifecycle-complete before the group answered: the asg-lookup monitor
// completes the action, once, when the lookup succeeds; the step did nothing meanwhile.
func TestALateLookupCompletesTheActionTheBootLeftToIt(t *testing.T) {
	env, a, ctx := lateLookupBoot(t)
	if fs, err := attempt(t, ctx, env, "asg"); err != nil || len(fs) != 0 {
		t.Fatalf("asg step: findings %v, error %v (a failed lookup is the monitor's to report)", fs, err)
	}
	if _, err := attempt(t, ctx, env, "lifecycle-complete"); err != nil {
		t.Fatal(err)
	}
	if n := countCalls(a, "CompleteLifecycleAction"); n != 0 {
		t.Fatalf("%d completions before the group was known", n)
	}
	a.Throttle("DescribeAutoScalingInstances", 0)
	a.Wait(t, 30*time.Second, "the completion", func(c []peertest.ASGCall) bool {
		return strings.Contains(fmt.Sprint(c), "CompleteLifecycleAction")
	})
	<-env.monitors().Done(monitorASGLookup)
	if m, l, cli := env.autoScaling().Snapshot(); m != asg.Member || l != asg.LifecycleCompleted || cli == nil || cli.Group != "circleci-services" {
		t.Fatalf("state after the late lookup: %v %v %v", m, l, cli)
	}
	if n := countCalls(a, "CompleteLifecycleAction"); n != 1 || a.Pending(lateID) {
		t.Fatalf("%d completions, pending %v", n, a.Pending(lateID))
	}
	for _, st := range env.monitors().Statuses() {
		if st.Name == monitorASGLookup && (st.State != "done" || len(st.Findings) != 0) {
			t.Fatalf("asg-lookup after its success: %+v", st)
		}
	}
}

// The group answered while the boot still ran: the monitor starts the heartbeats, and the
// lifecycle-complete step completes the action itself, once, with no heartbeat after it.
func TestALookupThatSucceedsDuringTheBootLeavesTheCompletionToTheStep(t *testing.T) {
	env, a, ctx := lateLookupBoot(t)
	if _, err := attempt(t, ctx, env, "asg"); err != nil {
		t.Fatal(err)
	}
	a.Throttle("DescribeAutoScalingInstances", 0)
	a.Wait(t, 30*time.Second, "heartbeats after the lookup", func(c []peertest.ASGCall) bool {
		return strings.Count(fmt.Sprint(c), "RecordLifecycleActionHeartbeat") >= 2
	})
	<-env.monitors().Done(monitorASGLookup)
	if _, err := attempt(t, ctx, env, "lifecycle-complete"); err != nil {
		t.Fatal(err)
	}
	calls := a.Calls()
	if n := countCalls(a, "CompleteLifecycleAction"); n != 1 || calls[len(calls)-1].Action != "CompleteLifecycleAction" {
		t.Fatalf("%d completions; the last call is %s", n, calls[len(calls)-1].Action)
	}
	if l := env.autoScaling().Lifecycle(); l != asg.LifecycleCompleted {
		t.Fatalf("lifecycle %v", l)
	}
}

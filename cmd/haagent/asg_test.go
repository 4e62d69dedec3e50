package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

const asgGroup = "circleci-services"

func (w *world) startASG(id string, edit func(*peertest.ASGGroup)) *peertest.ASG {
	a := peertest.StartASG(w.t, w.s3.AccessKey, w.s3.SecretKey)
	g := peertest.ASGGroup{Name: asgGroup, HealthCheckType: "EC2", Min: 1, Max: 1, Desired: 1, Instances: []string{id},
		Hooks: []peertest.ASGHook{{Name: "haagent-launch", Transition: "autoscaling:EC2_INSTANCE_LAUNCHING", DefaultResult: "CONTINUE", HeartbeatTimeout: 900}}}
	if edit != nil {
		edit(&g)
	}
	a.AddGroup(g)
	return a
}

func actions(calls []peertest.ASGCall) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.Action)
	}
	return out
}

// A first boot in a group with a launch hook: haagent finds the group from the instance's tag,
// checks it, heartbeats while the (slow) installer runs, completes with CONTINUE once the boot
// is done and sends nothing after that. A reboot finds no action waiting and completes nothing.
func TestLifecycleHookKeptAliveThenCompleted(t *testing.T) {
	const id = "i-0a5a000000000001"
	w := newWorld(t, id)
	w.imds = peertest.StartIMDS(t, peertest.Instance{ID: id, LocalIPv4: "10.0.1.23", Region: "us-east-1", ASGGroup: asgGroup})
	a := w.startASG(id, nil)
	a.LaunchPending(id, "haagent-launch")
	// The installer holds the boot until the test has seen the heartbeats.
	w.installer.setScript(standinWith(t, "while [ ! -e RECDIR/go ]; do sleep 0.05; done"))
	const every = 500 * time.Millisecond
	w.writeConfig(w.s3.URL, fmt.Sprintf("asg:\n  enabled: true\n  lifecycle_hook: haagent-launch\n  endpoint: %s\n  heartbeat_every: %s\n", a.URL, every))

	cmd := exec.Command(haagentBin, "--root", w.root, "run", "--once")
	cmd.Env = w.env(w.imds.URL)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	a.Wait(t, 60*time.Second, "4 heartbeats", func(c []peertest.ASGCall) bool {
		return strings.Count(strings.Join(actions(c), " "), "RecordLifecycleActionHeartbeat") >= 4
	})
	if a.Calls("CompleteLifecycleAction") != nil {
		t.Fatal("completed while the installer still ran")
	}
	os.WriteFile(filepath.Join(w.installer.recDir, "go"), nil, 0o644)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("run --once: %v\n%s", err, stderr.String())
	}

	calls := a.Calls()
	got := actions(calls)
	if got[0] != "DescribeAutoScalingGroups" || got[1] != "DescribeLifecycleHooks" || got[len(got)-1] != "CompleteLifecycleAction" {
		t.Fatalf("calls: %v", got)
	}
	if strings.Contains(strings.Join(got, " "), "DescribeAutoScalingInstances") {
		t.Fatal("the group came from the instance tag; DescribeAutoScalingInstances is not needed")
	}
	var beats []time.Time
	for _, c := range calls[2 : len(calls)-1] {
		if c.Action != "RecordLifecycleActionHeartbeat" || c.Params.Get("InstanceId") != id || c.Params.Get("AutoScalingGroupName") != asgGroup || c.Params.Get("LifecycleHookName") != "haagent-launch" {
			t.Fatalf("between the checks and the completion: %s %v", c.Action, c.Params)
		}
		beats = append(beats, c.At)
	}
	// The first heartbeat goes at once, the rest at the configured cadence: the n-th ticked
	// one comes (n-1) intervals after the first ticked one. Measured from the first, so one
	// slow request shifts one reading by its delay instead of shortening the next gap; half an
	// interval of slack still fails a loop that beats twice as fast.
	for i := 2; i < len(beats); i++ {
		if span, want := beats[i].Sub(beats[1]), time.Duration(i-1)*every-every/2; span < want {
			t.Fatalf("heartbeat %d came %s after the first ticked one, want at least %s; cadence is %s", i, span, want, every)
		}
	}
	done := calls[len(calls)-1].Params
	if done.Get("LifecycleActionResult") != "CONTINUE" || done.Get("InstanceId") != id || done.Get("LifecycleHookName") != "haagent-launch" {
		t.Fatalf("CompleteLifecycleAction: %v", done)
	}
	if a.Pending(id) {
		t.Fatal("the action still waits")
	}

	// A reboot: nothing waits, nothing is completed, and the log says why.
	n := len(calls)
	r := w.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("reboot: %d\n%s", r.code, r.stderr)
	}
	if after := actions(a.Calls()[n:]); strings.Contains(strings.Join(after, " "), "CompleteLifecycleAction") {
		t.Fatalf("reboot completed an action: %v", after)
	}
	if !strings.Contains(r.stderr, "no launch lifecycle action waits for this instance") {
		t.Fatalf("reboot log:\n%s", r.stderr)
	}
}

// Unsafe group settings and refused calls are findings; the boot goes on regardless.
func TestASGMisconfigurationIsReportedAndTheBootGoesOn(t *testing.T) {
	const id = "i-0a5a000000000002"
	w := newWorld(t, id) // no tag in the metadata: the group comes from DescribeAutoScalingInstances
	a := w.startASG(id, func(g *peertest.ASGGroup) {
		g.HealthCheckType = "ELB"
		g.Hooks[0].DefaultResult = "ABANDON"
	})
	a.LaunchPending(id, "haagent-launch")
	a.Deny("CompleteLifecycleAction")
	w.writeConfig(w.s3.URL, fmt.Sprintf("asg:\n  enabled: true\n  lifecycle_hook: haagent-launch\n  endpoint: %s\n", a.URL))
	r := w.run("run", "--once")
	if r.code != 0 {
		t.Fatalf("run: %d\n%s", r.code, r.stderr)
	}
	if c := a.Calls("DescribeAutoScalingInstances"); len(c) != 1 || c[0].Params.Get("InstanceIds.member.1") != id {
		t.Fatalf("DescribeAutoScalingInstances: %v", c)
	}
	st := w.run("status", "--json")
	var out struct {
		Runs []struct {
			Findings []findings.Finding `json:"findings"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &out); err != nil || len(out.Runs) == 0 {
		t.Fatalf("%v\n%s", err, st.stdout)
	}
	byCode := map[string]findings.Finding{}
	for _, f := range out.Runs[len(out.Runs)-1].Findings {
		byCode[f.Code.String()] = f
	}
	for _, code := range []string{findings.ASGHealthCheckNotEC2.String(), findings.ASGHookAbandon.String(), findings.ASGAPIFailed.String()} {
		if _, ok := byCode[code]; !ok {
			t.Fatalf("missing %s in status:\n%s", code, st.stdout)
		}
	}
	if f := byCode[findings.ASGAPIFailed.String()]; !strings.Contains(f.Fix, "autoscaling:CompleteLifecycleAction") {
		t.Fatalf("the fix must name the permission: %+v", f)
	}
}

// eventually polls cond until it holds: for conditions only visible in a child's output.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool, show func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s:\n%s", what, timeout, show())
		}
		<-tick.C
	}
}

// The guard against a real dockerd: after the frontend was up, it goes down. While a probe
// fails, and while the budget in the bucket is spent, haagent stays and says why; once both
// clear it marks the instance unhealthy, once, and records the replacement in the bucket.
func TestGuardReplacesOnlyWhenANewInstanceWouldFareBetter(t *testing.T) {
	const id = "i-0a5a000000000003"
	d := peertest.StartDocker(t)
	image := d.BusyboxImage(t)
	w := newWorld(t, id)
	a := w.startASG(id, nil)
	w.watchCfg = "watch:\n  stuck_after: 1h\n"
	w.installer.setScript(standinWith(t, fmt.Sprintf("DOCKER_HOST=%s docker run -d --name frontend --network none %s sh -c 'echo frontend up; sleep 3600' >/dev/null", d.Host, image)))
	w.writeConfig(w.s3.URL, fmt.Sprintf("asg:\n  enabled: true\n  endpoint: %s\n  replace:\n    enabled: true\n    failing_for: 1s\n    recheck_every: 1s\n    budget: 1\n    window: 1h\n", a.URL))
	// Another instance was replaced ten minutes ago: the budget of one an hour is spent.
	ledger := fmt.Sprintf(`{"version":1,"replacements":[{"instance_id":"i-0previous","at":%q,"reason":"test"}]}`, time.Now().Add(-10*time.Minute).UTC().Format(time.RFC3339))
	w.s3.Put(t, bkt, "haagent/replacements.json", []byte(ledger))

	cmd, stderr, msgs := w.startService("DOCKER_HOST=" + d.Host)
	deadline := time.After(120 * time.Second)
	for complete := false; !complete; {
		select {
		case m := <-msgs:
			complete = m == "STATUS=boot complete"
		case <-deadline:
			t.Fatalf("no boot complete:\n%s", stderr.String())
		}
	}
	go func() {
		for range msgs {
		}
	}()
	// Replicated's view once the app has started (the stand-in's replicatedctl says "starting").
	appStatus := func(state, desired string) {
		script := fmt.Sprintf("#!/bin/bash\necho '[{\"AppID\":\"standin\",\"State\":\"%s\",\"DesiredState\":\"%s\",\"IsTransitioning\":false}]'\n", state, desired)
		if err := os.WriteFile(filepath.Join(w.root, "usr/local/bin/replicatedctl"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	appStatus("started", "started")

	// A setting breaks while the frontend goes down: a new instance would read the same setting.
	pgFile := filepath.Join(w.root, "etc/circleconfig/shared/postgresql")
	good, _ := os.ReadFile(pgFile)
	os.WriteFile(pgFile, []byte("export POSTGRES_HOST=\"unterminated\n"), 0o600)
	d.MustRun(t, "kill", "frontend")
	eventually(t, 60*time.Second, "a decision to stay because a probe fails", func() bool {
		return strings.Contains(stderr.String(), "replacement withheld: probes fail or cannot tell (CONFIG_SYNTAX")
	}, stderr.String)
	if n := len(a.Calls("SetInstanceHealth")); n != 0 {
		t.Fatalf("SetInstanceHealth sent while a probe fails")
	}

	// The setting is fixed; the budget is still spent.
	os.WriteFile(pgFile, good, 0o600)
	eventually(t, 60*time.Second, "a decision to stay because the budget is spent", func() bool {
		return strings.Contains(stderr.String(), "replacement withheld: the replacement budget is spent: 1 of 1 within 1h0m0s (i-0previous")
	}, stderr.String)
	if n := len(a.Calls("SetInstanceHealth")); n != 0 {
		t.Fatalf("SetInstanceHealth sent while the budget is spent")
	}

	// An operator stopped the app through Replicated (replicatedctl app stop): its intent holds
	// replacements too.
	appStatus("stopped", "stopped")
	w.s3.Delete(t, bkt, "haagent/replacements.json")
	eventually(t, 60*time.Second, "a decision to stay because Replicated means the app stopped", func() bool {
		return strings.Contains(stderr.String(), "replacement withheld: Replicated's desired state for the app is")
	}, stderr.String)
	if n := len(a.Calls("SetInstanceHealth")); n != 0 {
		t.Fatalf("SetInstanceHealth sent while Replicated means the app stopped")
	}
	appStatus("started", "started")
	w.s3.Put(t, bkt, "haagent/replacements.json", []byte(ledger))

	// An operator holds replacements while working on the machine; the old entry goes (as it
	// would after the hour), and still nothing happens until the window is switched off.
	if r := w.run("maintenance", "on", "--for", "1h", "--reason", "swapping the data volume"); r.code != 0 || !strings.Contains(r.stdout, "maintenance on until") {
		t.Fatalf("maintenance on: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	w.s3.Delete(t, bkt, "haagent/replacements.json")
	eventually(t, 60*time.Second, "a decision to stay because of the maintenance window", func() bool {
		return strings.Contains(stderr.String(), "replacement withheld: maintenance until")
	}, stderr.String)
	if st := w.run("status"); !strings.Contains(st.stdout, "maintenance: on until") || !strings.Contains(st.stdout, "swapping the data volume") {
		t.Fatalf("status does not show the maintenance window:\n%s", st.stdout)
	}
	if n := len(a.Calls("SetInstanceHealth")); n != 0 {
		t.Fatalf("SetInstanceHealth sent during a maintenance window")
	}
	// Now a replacement helps and is allowed.
	if r := w.run("maintenance", "off"); r.code != 0 {
		t.Fatalf("maintenance off: exit %d\n%s", r.code, r.stderr)
	}
	a.Wait(t, 60*time.Second, "SetInstanceHealth", func(c []peertest.ASGCall) bool {
		return strings.Contains(strings.Join(actions(c), " "), "SetInstanceHealth")
	})
	eventually(t, 30*time.Second, "the decision in the log", func() bool { return strings.Contains(stderr.String(), "replacement requested") }, stderr.String)
	sets := a.Calls("SetInstanceHealth")
	if len(sets) != 1 || sets[0].Params.Get("InstanceId") != id || sets[0].Params.Get("HealthStatus") != "Unhealthy" || sets[0].Params.Get("ShouldRespectGracePeriod") != "false" {
		t.Fatalf("SetInstanceHealth: %+v", sets)
	}
	if led := string(w.s3.Object(bkt, "haagent/replacements.json")); !strings.Contains(led, id) {
		t.Fatalf("the replacement is not in the ledger: %s", led)
	}
	// The decision is logged, then saved in the run record.
	var st result
	eventually(t, 30*time.Second, "the decision in the run record", func() bool {
		st = w.run("status", "--json")
		return strings.Contains(st.stdout, findings.ASGReplacementRequested.String())
	}, func() string { return st.stdout })
	if strings.Contains(st.stdout, findings.ASGReplacementWithheld.String()) {
		t.Fatalf("the run record holds the latest decision only:\n%s", st.stdout)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if n := len(a.Calls("SetInstanceHealth")); n != 1 {
		t.Fatalf("%d SetInstanceHealth calls; a request is final", n)
	}
}

// Fault 9: the group lookup fails at boot (DescribeAutoScalingInstances throttled past the
// SDK's own retries) and goes on failing until after the boot completed. Self-healing is not
// lost for the instance's life: the asg-lookup monitor retries in the background and, once the
// group answers, does what the boot would have done: checks the group, completes the launch
// lifecycle action that still waits, and starts the replacement guard.
func TestAThrottledGroupLookupIsRetriedInTheBackground(t *testing.T) {
	const id = "i-0a5a000000000009"
	d := peertest.StartDocker(t)
	image := d.BusyboxImage(t)
	w := newWorld(t, id) // no tag in the metadata: the group comes from DescribeAutoScalingInstances
	a := w.startASG(id, nil)
	a.LaunchPending(id, "haagent-launch")
	a.Throttle("DescribeAutoScalingInstances", -1)
	w.watchCfg = "watch:\n  stuck_after: 1h\n"
	w.installer.setScript(standinWith(t, fmt.Sprintf("DOCKER_HOST=%s docker run -d --name frontend --network none %s sh -c 'echo frontend up; sleep 3600' >/dev/null", d.Host, image)))
	// heartbeat_every bounds the lookup's backoff: the waiting action must hear from the
	// instance before its heartbeat timeout.
	w.writeConfig(w.s3.URL, fmt.Sprintf("asg:\n  enabled: true\n  lifecycle_hook: haagent-launch\n  endpoint: %s\n  heartbeat_every: 300ms\n  replace:\n    enabled: true\n", a.URL))

	cmd, stderr, msgs := w.startService("DOCKER_HOST=" + d.Host)
	deadline := time.After(120 * time.Second)
	for complete := false; !complete; {
		select {
		case m := <-msgs:
			complete = m == "STATUS=boot complete"
		case <-deadline:
			t.Fatalf("no boot complete:\n%s", stderr.String())
		}
	}
	go func() {
		for range msgs {
		}
	}()
	if n := len(a.Calls("CompleteLifecycleAction")); n != 0 {
		t.Fatalf("%d completions while the group was not known", n)
	}
	// The boot is complete without the group; the lookup has been retried meanwhile.
	a.Wait(t, 60*time.Second, "a retried lookup", func(c []peertest.ASGCall) bool {
		return strings.Count(strings.Join(actions(c), " "), "DescribeAutoScalingInstances") > 3
	})
	a.Throttle("DescribeAutoScalingInstances", 0)
	a.Wait(t, 60*time.Second, "CompleteLifecycleAction", func(c []peertest.ASGCall) bool {
		return strings.Contains(strings.Join(actions(c), " "), "CompleteLifecycleAction")
	})
	if a.Pending(id) {
		t.Fatal("the launch lifecycle action still waits")
	}
	if done := a.Calls("CompleteLifecycleAction")[0].Params; done.Get("LifecycleActionResult") != "CONTINUE" || done.Get("InstanceId") != id {
		t.Fatalf("CompleteLifecycleAction: %v", done)
	}
	type monitor struct {
		Name     string             `json:"name"`
		State    string             `json:"state"`
		Findings []findings.Finding `json:"findings"`
	}
	var mons map[string]monitor
	var st result
	eventually(t, 30*time.Second, "the monitors in the run record", func() bool {
		st = w.run("status", "--json")
		var out struct {
			Runs []struct {
				Monitors []monitor `json:"monitors"`
			} `json:"runs"`
		}
		if json.Unmarshal([]byte(st.stdout), &out) != nil || len(out.Runs) == 0 {
			return false
		}
		mons = map[string]monitor{}
		for _, m := range out.Runs[len(out.Runs)-1].Monitors {
			mons[m.Name] = m
		}
		return mons["asg-lookup"].State == "done" && mons["guard"].State == "running"
	}, func() string { return st.stdout + stderr.String() })
	for _, f := range mons["asg-lookup"].Findings {
		if f.Code == findings.ASGAPIFailed {
			t.Fatalf("the lookup's failure is still reported once it succeeded: %+v", f)
		}
	}
	if !strings.Contains(stderr.String(), "the Auto Scaling group is known now") {
		t.Fatalf("the journal does not say the lookup succeeded:\n%s", stderr.String())
	}
	// The guard, which waited for the group, now watches the frontend.
	d.MustRun(t, "kill", "frontend")
	eventually(t, 60*time.Second, "the guard seeing the frontend down", func() bool {
		return strings.Contains(stderr.String(), "the frontend is down")
	}, stderr.String)
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}

// Package asg is haagent's side of the single-member Auto Scaling group: it finds the group,
// checks the settings a safe replacement relies on, keeps the launch lifecycle action alive
// while the boot runs and completes it, and asks for a replacement only when the guard in
// guard.go allows it.
package asg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	smithy "github.com/aws/smithy-go"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
)

// Actions are the Auto Scaling actions haagent calls: the instance role needs each
// (examples/iam-policy.json).
var Actions = []string{
	"DescribeAutoScalingInstances", "DescribeAutoScalingGroups", "DescribeLifecycleHooks",
	"RecordLifecycleActionHeartbeat", "CompleteLifecycleAction", "SetInstanceHealth",
}

// GroupTag is the tag EC2 Auto Scaling puts on its instances.
const GroupTag = "aws:autoscaling:groupName"

// Options configure a Client.
type Options struct {
	InstanceID string
	Region     string
	Endpoint   string
	Hook       string
	Log        *slog.Logger
	// Credentials replaces the SDK's default chain (tests); nil keeps the chain.
	Credentials aws.CredentialsProvider
}

// Client speaks to EC2 Auto Scaling about this one instance.
type Client struct {
	cli      *autoscaling.Client
	instance string
	hook     string
	log      *slog.Logger
	// Group is set by Resolve.
	Group string
}

// New builds the client. It does no network I/O.
func New(ctx context.Context, o Options) (*Client, error) {
	hc := awshttp.NewBuildableClient().WithTimeout(30 * time.Second).WithTransportOptions(func(tr *http.Transport) {
		tr.Proxy = bucket.ProxyFunc()
	})
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithHTTPClient(hc)}
	if o.Region != "" {
		opts = append(opts, awsconfig.WithRegion(o.Region))
	}
	if o.Credentials != nil {
		opts = append(opts, awsconfig.WithCredentialsProvider(o.Credentials))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading the AWS SDK configuration for Auto Scaling: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("no AWS region for Auto Scaling: set asg.region or AWS_REGION (IMDS gave none)")
	}
	cli := autoscaling.NewFromConfig(cfg, func(ao *autoscaling.Options) {
		if o.Endpoint != "" {
			ao.BaseEndpoint = aws.String(o.Endpoint)
		}
	})
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Client{cli: cli, instance: o.InstanceID, hook: o.Hook, log: o.Log}, nil
}

// Hook is the lifecycle hook name haagent completes ("" for none).
func (c *Client) Hook() string { return c.hook }

// APIError is a failed Auto Scaling call: which action, and why, with the IAM action to grant
// when it was refused.
type APIError struct {
	Action string
	Err    error
}

func (e *APIError) Error() string {
	return fmt.Sprintf("Auto Scaling %s: %v", e.Action, e.Err)
}

func (e *APIError) Unwrap() error { return e.Err }

// Denied reports whether AWS refused the call for want of permission.
func (e *APIError) Denied() bool {
	var ae smithy.APIError
	if errors.As(e.Err, &ae) {
		switch ae.ErrorCode() {
		case "AccessDenied", "AccessDeniedException", "UnauthorizedOperation":
			return true
		}
	}
	return false
}

// Finding turns the failure into ASG_API_FAILED with the permission or route to fix.
func (e *APIError) Finding(target string) findings.Finding {
	f := findings.New(findings.ASGAPIFailed, target, "the Auto Scaling call "+e.Action+" failed", e.Error())
	if e.Denied() {
		f = f.WithFix("grant the instance role autoscaling:" + e.Action + " (examples/iam-policy.json); the boot goes on without it")
	}
	return f
}

// ErrNoLifecycleAction means the instance has no launch lifecycle action waiting: a reboot of
// an instance already in service, or an action whose timeout already passed.
var ErrNoLifecycleAction = errors.New("no active lifecycle action for this instance")

func (c *Client) wrap(action string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "ValidationError" && strings.Contains(ae.ErrorMessage(), "No active Lifecycle Action") {
		return fmt.Errorf("%s: %w", action, ErrNoLifecycleAction)
	}
	return &APIError{Action: action, Err: err}
}

// Resolve finds the instance's group: given (config), from the instance's tag (read by
// tag, may be nil), or from DescribeAutoScalingInstances. An instance in no group resolves to
// "" without error.
func (c *Client) Resolve(ctx context.Context, given string, tag func(context.Context) (string, error)) (string, error) {
	if given != "" {
		c.Group = given
		return given, nil
	}
	if tag != nil {
		if g, err := tag(ctx); err == nil && g != "" {
			c.Group = g
			return g, nil
		} else if err != nil {
			c.log.Debug("reading the group from the instance tags failed; asking Auto Scaling", "error", err.Error())
		}
	}
	out, err := c.cli.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{c.instance}})
	if err != nil {
		return "", c.wrap("DescribeAutoScalingInstances", err)
	}
	for _, i := range out.AutoScalingInstances {
		if aws.ToString(i.InstanceId) == c.instance {
			c.Group = aws.ToString(i.AutoScalingGroupName)
		}
	}
	return c.Group, nil
}

// Check is what the group's settings mean for haagent.
type Check struct {
	Findings []findings.Finding
	// HeartbeatTimeout is the hook's; zero without a hook.
	HeartbeatTimeout time.Duration
}

// CheckGroup reads the group and its hook and reports the settings that make replacement
// unsafe: a health check other than EC2, a hook that abandons, a group of more than one.
func (c *Client) CheckGroup(ctx context.Context) (Check, error) {
	var res Check
	out, err := c.cli.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{c.Group}})
	if err != nil {
		return res, c.wrap("DescribeAutoScalingGroups", err)
	}
	if len(out.AutoScalingGroups) == 0 {
		return res, &APIError{Action: "DescribeAutoScalingGroups", Err: fmt.Errorf("group %q not found", c.Group)}
	}
	g := out.AutoScalingGroups[0]
	if t := aws.ToString(g.HealthCheckType); t != "EC2" {
		res.Findings = append(res.Findings, findings.New(findings.ASGHealthCheckNotEC2, c.Group,
			fmt.Sprintf("group %s uses health check type %s, not EC2", c.Group, t),
			fmt.Sprintf("HealthCheckType=%s HealthCheckGracePeriod=%ds", t, aws.ToInt32(g.HealthCheckGracePeriod))))
	}
	if mn, mx, d := aws.ToInt32(g.MinSize), aws.ToInt32(g.MaxSize), aws.ToInt32(g.DesiredCapacity); mx > 1 || d > 1 {
		res.Findings = append(res.Findings, findings.New(findings.ASGGroupSize, c.Group,
			fmt.Sprintf("group %s may hold more than one Services machine", c.Group),
			fmt.Sprintf("MinSize=%d MaxSize=%d DesiredCapacity=%d", mn, mx, d)))
	}
	if c.hook == "" {
		return res, nil
	}
	hooks, err := c.cli.DescribeLifecycleHooks(ctx, &autoscaling.DescribeLifecycleHooksInput{
		AutoScalingGroupName: aws.String(c.Group), LifecycleHookNames: []string{c.hook}})
	if err != nil {
		return res, c.wrap("DescribeLifecycleHooks", err)
	}
	target := c.Group + "/" + c.hook
	if len(hooks.LifecycleHooks) == 0 {
		res.Findings = append(res.Findings, findings.New(findings.ASGHookMissing, target,
			fmt.Sprintf("group %s has no lifecycle hook named %s", c.Group, c.hook), ""))
		return res, nil
	}
	h := hooks.LifecycleHooks[0]
	if tr := aws.ToString(h.LifecycleTransition); tr != "autoscaling:EC2_INSTANCE_LAUNCHING" {
		res.Findings = append(res.Findings, findings.New(findings.ASGHookNotLaunch, target,
			fmt.Sprintf("lifecycle hook %s is for %s, not for launching", c.hook, tr), ""))
		return res, nil
	}
	if dr := aws.ToString(h.DefaultResult); dr != "CONTINUE" {
		res.Findings = append(res.Findings, findings.New(findings.ASGHookAbandon, target,
			fmt.Sprintf("lifecycle hook %s defaults to %s: a boot that outlasts it terminates the instance", c.hook, dr),
			fmt.Sprintf("DefaultResult=%s HeartbeatTimeout=%ds GlobalTimeout=%ds", dr, aws.ToInt32(h.HeartbeatTimeout), aws.ToInt32(h.GlobalTimeout))))
	}
	res.HeartbeatTimeout = time.Duration(aws.ToInt32(h.HeartbeatTimeout)) * time.Second
	return res, nil
}

// HeartbeatEvery is the cadence for a hook: a third of its timeout, so two heartbeats can be
// lost before the action expires; configured wins.
func HeartbeatEvery(configured, hookTimeout time.Duration) time.Duration {
	if configured > 0 {
		return configured
	}
	if hookTimeout <= 0 {
		return 5 * time.Minute
	}
	return max(hookTimeout/3, 10*time.Second)
}

// Heartbeat extends the launch lifecycle action.
func (c *Client) Heartbeat(ctx context.Context) error {
	_, err := c.cli.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String(c.Group), LifecycleHookName: aws.String(c.hook), InstanceId: aws.String(c.instance)})
	if err != nil {
		return c.wrap("RecordLifecycleActionHeartbeat", err)
	}
	return nil
}

// Complete ends the launch lifecycle action with CONTINUE: the instance goes in service.
// haagent never sends ABANDON: the next instance would boot from the same bucket into the same
// databases and fail the same way.
func (c *Client) Complete(ctx context.Context) error {
	_, err := c.cli.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String(c.Group), LifecycleHookName: aws.String(c.hook),
		InstanceId: aws.String(c.instance), LifecycleActionResult: aws.String("CONTINUE")})
	if err != nil {
		return c.wrap("CompleteLifecycleAction", err)
	}
	return nil
}

// SetUnhealthy asks the group to replace this instance. It does not respect the group's
// health-check grace period: during it AWS answers success and ignores the call, and the guard
// has waited asg.replace.failing_for already. The caller reads the health back (Health).
func (c *Client) SetUnhealthy(ctx context.Context) error {
	_, err := c.cli.SetInstanceHealth(ctx, &autoscaling.SetInstanceHealthInput{
		InstanceId: aws.String(c.instance), HealthStatus: aws.String("Unhealthy"), ShouldRespectGracePeriod: aws.Bool(false)})
	if err != nil {
		return c.wrap("SetInstanceHealth", err)
	}
	return nil
}

// Health reads the instance's health status as the group sees it ("HEALTHY", "UNHEALTHY").
func (c *Client) Health(ctx context.Context) (string, error) {
	out, err := c.cli.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{c.instance}})
	if err != nil {
		return "", c.wrap("DescribeAutoScalingInstances", err)
	}
	for _, i := range out.AutoScalingInstances {
		if aws.ToString(i.InstanceId) == c.instance {
			return strings.ToUpper(aws.ToString(i.HealthStatus)), nil
		}
	}
	return "", fmt.Errorf("DescribeAutoScalingInstances does not list %s", c.instance)
}

// MaintenancePolicy is the group's instance maintenance policy (Set false: none, and then
// replacements terminate first for a group of one).
type MaintenancePolicy struct {
	Set                                        bool
	MinHealthyPercentage, MaxHealthyPercentage int32
}

// LaunchFirst: a replacement is launched and must be in service before the old instance is
// terminated (MinHealthyPercentage 100 keeps the one member in service throughout).
func (p MaintenancePolicy) LaunchFirst() bool { return p.Set && p.MinHealthyPercentage >= 100 }

// MaintenancePolicy reads the group's instance maintenance policy.
func (c *Client) MaintenancePolicy(ctx context.Context) (MaintenancePolicy, error) {
	var p MaintenancePolicy
	out, err := c.cli.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{c.Group}})
	if err != nil {
		return p, c.wrap("DescribeAutoScalingGroups", err)
	}
	if len(out.AutoScalingGroups) == 0 {
		return p, &APIError{Action: "DescribeAutoScalingGroups", Err: fmt.Errorf("group %q not found", c.Group)}
	}
	if m := out.AutoScalingGroups[0].InstanceMaintenancePolicy; m != nil && m.MinHealthyPercentage != nil && aws.ToInt32(m.MinHealthyPercentage) >= 0 {
		p = MaintenancePolicy{Set: true, MinHealthyPercentage: aws.ToInt32(m.MinHealthyPercentage), MaxHealthyPercentage: aws.ToInt32(m.MaxHealthyPercentage)}
	}
	return p, nil
}

// InstanceState is how the group sees one instance.
type InstanceState struct {
	Group string
	// LifecycleState is InService, Pending:Wait, Terminating, Standby, ...
	LifecycleState string
	// HealthStatus is upper case here: HEALTHY or UNHEALTHY.
	HealthStatus string
}

// Live reports whether the instance is in service and healthy in group: the one state in
// which haagent takes nothing from it (internal/address).
func (s InstanceState) Live(group string) bool {
	return s.Group == group && s.LifecycleState == "InService" && strings.EqualFold(s.HealthStatus, "HEALTHY")
}

// Instance reads another instance's state in its group; found is false when no group lists it
// (Auto Scaling forgets an instance once it is terminated).
func (c *Client) Instance(ctx context.Context, id string) (st InstanceState, found bool, err error) {
	out, err := c.cli.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return st, false, c.wrap("DescribeAutoScalingInstances", err)
	}
	for _, i := range out.AutoScalingInstances {
		if aws.ToString(i.InstanceId) == id {
			return InstanceState{Group: aws.ToString(i.AutoScalingGroupName), LifecycleState: aws.ToString(i.LifecycleState),
				HealthStatus: strings.ToUpper(aws.ToString(i.HealthStatus))}, true, nil
		}
	}
	return st, false, nil
}

// Heartbeats records a heartbeat at every tick (nil: every `every`) until ctx ends (nil) or
// the action is gone (an error wrapping ErrNoLifecycleAction). alive (nil: none) is called
// each time its loop goes round, and at least every AliveEvery between two heartbeats: a
// heartbeat every five minutes is an idle loop, not a dead one.
func (c *Client) Heartbeats(ctx context.Context, every time.Duration, tick <-chan time.Time, alive func()) error {
	if tick == nil {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	if alive == nil {
		alive = func() {}
	}
	wake := time.NewTicker(min(every, AliveEvery))
	defer wake.Stop()
	for {
		alive()
		select {
		case <-ctx.Done():
			return nil
		case <-wake.C:
			continue
		case <-tick:
		}
		err := c.Heartbeat(ctx)
		switch {
		case err == nil:
			c.log.Debug("lifecycle heartbeat recorded", "group", c.Group, "hook", c.hook)
		case errors.Is(err, ErrNoLifecycleAction):
			if ctx.Err() != nil {
				return nil
			}
			return err
		case ctx.Err() == nil:
			// A lost heartbeat is not fatal: the hook allows for two; say so and go on.
			c.log.Warn("lifecycle heartbeat failed; trying again at the next one", "group", c.Group, "hook", c.hook, "error", err.Error())
		}
	}
}

// AliveEvery is how often a waiting loop of this package says it is alive.
const AliveEvery = 30 * time.Second

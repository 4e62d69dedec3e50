package peertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// No EC2 Auto Scaling server runs here (PEERS.md), so this is one: an HTTP endpoint on
// loopback that decodes the AWS Query protocol the SDK sends (form-encoded Action, Version and
// member lists), checks the SigV4 signature against its own credentials, keeps the state of
// one region's groups, hooks and lifecycle actions, and answers in the service's XML, errors
// included (AccessDenied on demand, and Throttling "Rate exceeded" as the service answers when
// the account's request rate is spent). Tests assert on the decoded calls.

// ASG is the Auto Scaling endpoint.
type ASG struct {
	URL                  string
	AccessKey, SecretKey string

	mu     sync.Mutex
	calls  []ASGCall
	groups map[string]*ASGGroup
	// pending is the instances whose launch lifecycle action waits (instance -> hook).
	pending map[string]string
	deny    map[string]bool
	// states overrides an instance's LifecycleState (Terminating, Standby, ...).
	states map[string]string
	// throttle counts the calls of an action still to be refused with Throttling (-1: all).
	throttle map[string]int
	changed  chan struct{}
}

// ASGGroup is one group's state.
type ASGGroup struct {
	Name                       string
	HealthCheckType            string
	Min, Max, Desired          int
	Instances                  []string
	Hooks                      []ASGHook
	HealthCheckGracePeriodSecs int
	// InGracePeriod models instances still inside the group's health-check grace period:
	// SetInstanceHealth with ShouldRespectGracePeriod=true answers success and changes nothing
	// (the API reference: "Set this to False, to have the call not respect the grace period").
	InGracePeriod bool
	// IgnoresHealth makes every SetInstanceHealth answer success and change nothing: what a
	// caller sees when AWS has not acted (yet), for a test of the read-back.
	IgnoresHealth bool
	// MinHealthy and MaxHealthy are the InstanceMaintenancePolicy's percentages; the group has
	// no policy while both are 0.
	MinHealthy, MaxHealthy int
	unhealthy              map[string]bool
}

// ASGHook is one lifecycle hook.
type ASGHook struct {
	Name, Transition, DefaultResult string
	HeartbeatTimeout                int
}

// ASGCall is one decoded request.
type ASGCall struct {
	Action string
	Params url.Values
	At     time.Time
}

// StartASG serves an empty region on a free loopback port, accepting requests signed with
// the given credentials.
func StartASG(t testing.TB, access, secret string) *ASG {
	t.Helper()
	a := &ASG{AccessKey: access, SecretKey: secret, groups: map[string]*ASGGroup{},
		pending: map[string]string{}, deny: map[string]bool{}, states: map[string]string{}, throttle: map[string]int{}, changed: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(srv.Close)
	a.URL = srv.URL
	return a
}

// AddGroup creates a group; LaunchPending makes an instance's launch action wait on hook.
func (a *ASG) AddGroup(g ASGGroup) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g.unhealthy = map[string]bool{}
	a.groups[g.Name] = &g
}

// SetIgnoresHealth switches IgnoresHealth of a group.
func (a *ASG) SetIgnoresHealth(group string, on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.groups[group].IgnoresHealth = on
}

// LaunchPending makes instance's launch lifecycle action wait for hook.
func (a *ASG) LaunchPending(instance, hook string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending[instance] = hook
}

// EndAction drops an instance's lifecycle action, as a timeout would.
func (a *ASG) EndAction(instance string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pending, instance)
}

// SetLifecycleState makes DescribeAutoScalingInstances report state (Terminating, Standby,
// Terminating:Wait, ...) for instance; "" goes back to InService or Pending:Wait.
func (a *ASG) SetLifecycleState(instance, state string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.states[instance] = state
}

// SetUnhealthy marks an instance of a group UNHEALTHY (or healthy again).
func (a *ASG) SetUnhealthy(instance string, unhealthy bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range a.groups {
		if contains(g.Instances, instance) {
			g.unhealthy[instance] = unhealthy
		}
	}
}

// Terminate removes an instance from its group: once terminated, Auto Scaling no longer lists
// it (DescribeAutoScalingInstances answers without it).
func (a *ASG) Terminate(instance string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range a.groups {
		for i, id := range g.Instances {
			if id == instance {
				g.Instances = append(g.Instances[:i:i], g.Instances[i+1:]...)
				break
			}
		}
	}
	delete(a.pending, instance)
	delete(a.states, instance)
}

// Deny answers AccessDenied to an action.
func (a *ASG) Deny(action string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deny[action] = true
}

// Throttle answers the next n calls of an action (n < 0: every call until Throttle is called
// again; 0 ends it) as the service does when the account's request rate is exceeded: HTTP 400
// with code Throttling, "Rate exceeded", which the SDK's standard retryer retries (3 attempts
// in all) before returning it.
func (a *ASG) Throttle(action string, n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.throttle[action] = n
}

// Calls returns the decoded requests so far, optionally only those of some actions.
func (a *ASG) Calls(actions ...string) []ASGCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []ASGCall
	for _, c := range a.calls {
		if len(actions) == 0 || contains(actions, c.Action) {
			out = append(out, c)
		}
	}
	return out
}

// Wait blocks until cond holds for the calls, or fails the test after timeout. cond runs with
// the endpoint locked: it must not call the endpoint's methods.
func (a *ASG) Wait(t testing.TB, timeout time.Duration, what string, cond func(calls []ASGCall) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		a.mu.Lock()
		ok := cond(a.calls)
		ch := a.changed
		a.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("Auto Scaling endpoint: %s did not happen within %s; calls: %s", what, timeout, a.summary())
		}
	}
}

func (a *ASG) summary() string {
	var s []string
	for _, c := range a.Calls() {
		s = append(s, c.Action)
	}
	return strings.Join(s, ", ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (a *ASG) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		asgError(w, 400, "InvalidRequest", "the Query protocol is a form-encoded POST")
		return
	}
	if err := a.verify(r, body); err != nil {
		asgError(w, 403, "SignatureDoesNotMatch", err.Error())
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || form.Get("Version") != "2011-01-01" {
		asgError(w, 400, "InvalidRequest", "bad form or Version (want 2011-01-01)")
		return
	}
	action := form.Get("Action")
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, ASGCall{Action: action, Params: form, At: time.Now()})
	close(a.changed)
	a.changed = make(chan struct{})
	if n := a.throttle[action]; n != 0 {
		if n > 0 {
			a.throttle[action] = n - 1
		}
		asgError(w, 400, "Throttling", "Rate exceeded")
		return
	}
	if a.deny[action] {
		asgError(w, 403, "AccessDenied", fmt.Sprintf("User: arn:aws:sts::123456789012:assumed-role/circleci-services/i-x is not authorized to perform: autoscaling:%s", action))
		return
	}
	switch action {
	case "DescribeAutoScalingInstances":
		var b strings.Builder
		for _, id := range members(form, "InstanceIds") {
			for _, g := range a.groups {
				if contains(g.Instances, id) {
					// AutoScalingInstanceDetails.HealthStatus is upper case here (HEALTHY|UNHEALTHY),
					// unlike the group's Instance.HealthStatus (Healthy|Unhealthy).
					state := map[bool]string{true: "Pending:Wait", false: "InService"}[a.pending[id] != ""]
					if st := a.states[id]; st != "" {
						state = st
					}
					fmt.Fprintf(&b, "<member><InstanceId>%s</InstanceId><AutoScalingGroupName>%s</AutoScalingGroupName><LifecycleState>%s</LifecycleState><HealthStatus>%s</HealthStatus><AvailabilityZone>us-east-1a</AvailabilityZone><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>",
						esc(id), esc(g.Name), esc(state), map[bool]string{true: "UNHEALTHY", false: "HEALTHY"}[g.unhealthy[id]])
				}
			}
		}
		asgOK(w, action, "<AutoScalingInstances>"+b.String()+"</AutoScalingInstances>")
	case "DescribeAutoScalingGroups":
		var b strings.Builder
		for _, name := range members(form, "AutoScalingGroupNames") {
			if g := a.groups[name]; g != nil {
				var inst strings.Builder
				for _, id := range g.Instances {
					fmt.Fprintf(&inst, "<member><InstanceId>%s</InstanceId><LifecycleState>InService</LifecycleState><HealthStatus>Healthy</HealthStatus></member>", esc(id))
				}
				policy := ""
				if g.MinHealthy != 0 || g.MaxHealthy != 0 {
					policy = fmt.Sprintf("<InstanceMaintenancePolicy><MinHealthyPercentage>%d</MinHealthyPercentage><MaxHealthyPercentage>%d</MaxHealthyPercentage></InstanceMaintenancePolicy>", g.MinHealthy, g.MaxHealthy)
				}
				fmt.Fprintf(&b, "<member><AutoScalingGroupName>%s</AutoScalingGroupName><MinSize>%d</MinSize><MaxSize>%d</MaxSize><DesiredCapacity>%d</DesiredCapacity><HealthCheckType>%s</HealthCheckType><HealthCheckGracePeriod>%d</HealthCheckGracePeriod><Instances>%s</Instances>%s</member>",
					esc(g.Name), g.Min, g.Max, g.Desired, esc(g.HealthCheckType), g.HealthCheckGracePeriodSecs, inst.String(), policy)
			}
		}
		asgOK(w, action, "<AutoScalingGroups>"+b.String()+"</AutoScalingGroups>")
	case "DescribeLifecycleHooks":
		g := a.groups[form.Get("AutoScalingGroupName")]
		if g == nil {
			asgError(w, 400, "ValidationError", "Group "+form.Get("AutoScalingGroupName")+" not found")
			return
		}
		want := members(form, "LifecycleHookNames")
		var b strings.Builder
		for _, h := range g.Hooks {
			if len(want) == 0 || contains(want, h.Name) {
				fmt.Fprintf(&b, "<member><AutoScalingGroupName>%s</AutoScalingGroupName><LifecycleHookName>%s</LifecycleHookName><LifecycleTransition>%s</LifecycleTransition><DefaultResult>%s</DefaultResult><HeartbeatTimeout>%d</HeartbeatTimeout><GlobalTimeout>%d</GlobalTimeout></member>",
					esc(g.Name), esc(h.Name), esc(h.Transition), esc(h.DefaultResult), h.HeartbeatTimeout, min(100*h.HeartbeatTimeout, 172800))
			}
		}
		asgOK(w, action, "<LifecycleHooks>"+b.String()+"</LifecycleHooks>")
	case "RecordLifecycleActionHeartbeat", "CompleteLifecycleAction":
		id, hook := form.Get("InstanceId"), form.Get("LifecycleHookName")
		g := a.groups[form.Get("AutoScalingGroupName")]
		if g == nil || !contains(g.Instances, id) || a.pending[id] == "" || a.pending[id] != hook {
			asgError(w, 400, "ValidationError", "No active Lifecycle Action found with instance ID "+id)
			return
		}
		if action == "CompleteLifecycleAction" {
			if res := form.Get("LifecycleActionResult"); res != "CONTINUE" && res != "ABANDON" {
				asgError(w, 400, "ValidationError", "LifecycleActionResult must be CONTINUE or ABANDON")
				return
			}
			delete(a.pending, id)
		}
		asgOK(w, action, "")
	case "SetInstanceHealth":
		id := form.Get("InstanceId")
		if s := form.Get("HealthStatus"); s != "Healthy" && s != "Unhealthy" {
			asgError(w, 400, "ValidationError", "HealthStatus must be Healthy or Unhealthy")
			return
		}
		for _, g := range a.groups {
			if contains(g.Instances, id) {
				if g.IgnoresHealth || g.InGracePeriod && form.Get("ShouldRespectGracePeriod") == "true" {
					asgOK(w, action, "")
					return
				}
				g.unhealthy[id] = form.Get("HealthStatus") == "Unhealthy"
				asgOK(w, action, "")
				return
			}
		}
		asgError(w, 400, "ValidationError", "Instance Id not found - No managed instance found for instance ID "+id)
	default:
		asgError(w, 400, "InvalidAction", "unknown action "+action)
	}
}

// members decodes a Query protocol list: Name.member.1, Name.member.2, ...
func members(form url.Values, name string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[fmt.Sprintf("%s.member.%d", name, i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

var credRE = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/autoscaling/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$`)

// verify recomputes the request's SigV4 signature with the endpoint's secret.
func (a *ASG) verify(r *http.Request, body []byte) error {
	m := credRE.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		return fmt.Errorf("no SigV4 authorization for service autoscaling: %q", r.Header.Get("Authorization"))
	}
	if m[1] != a.AccessKey {
		return fmt.Errorf("unknown access key %s", m[1])
	}
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return fmt.Errorf("bad X-Amz-Date: %v", err)
	}
	req, _ := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	for _, h := range strings.Split(m[4], ";") {
		if h != "host" {
			req.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	sum := sha256.Sum256(body)
	err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: a.AccessKey, SecretAccessKey: a.SecretKey},
		req, hex.EncodeToString(sum[:]), "autoscaling", m[3], at)
	if err != nil {
		return err
	}
	if req.Header.Get("Authorization") != r.Header.Get("Authorization") {
		return fmt.Errorf("signature mismatch")
	}
	return nil
}

func esc(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

const asgNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"

func asgOK(w http.ResponseWriter, action, result string) {
	id := reqID()
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", id)
	fmt.Fprintf(w, `<%sResponse xmlns="%s"><%sResult>%s</%sResult><ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></%sResponse>`,
		action, asgNS, action, result, action, id, action)
}

func asgError(w http.ResponseWriter, status int, code, msg string) {
	id := reqID()
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", id)
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>`,
		asgNS, code, esc(msg), id)
}

var reqN struct {
	sync.Mutex
	n int
}

func reqID() string {
	reqN.Lock()
	defer reqN.Unlock()
	reqN.n++
	return fmt.Sprintf("00000000-0000-0000-0000-%012d", reqN.n)
}

// Unhealthy lists the instances marked unhealthy, sorted.
func (a *ASG) Unhealthy() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, g := range a.groups {
		for id, u := range g.unhealthy {
			if u {
				out = append(out, id)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Pending reports whether instance's lifecycle action still waits.
func (a *ASG) Pending(instance string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pending[instance] != ""
}

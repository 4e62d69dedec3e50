// Package address is the AWS side of the stable address the builders know (issue 18): it moves
// a secondary private IP to this instance's primary network interface, never from an instance
// of the group that is still in service, and points a Route 53 A record at the instance. What
// happens inside the machine (ip addr, checking that the address answers, the installer's
// local-address) belongs to the boot step that calls it.
//
// CircleCI's builders (Nomad clients) are configured with the Services machine's address
// literally; without a stable one every build queues after a replacement until someone
// reconfigures every builder.
package address

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	smithy "github.com/aws/smithy-go"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/backoff"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/imds"
)

// Actions are the API actions each mode calls; the instance role needs them
// (examples/iam-policy.json). DescribeSubnets is only called to name the subnet to confine the
// group to when the address is outside this instance's.
var Actions = map[string][]string{
	"private_ip": {"ec2:DescribeNetworkInterfaces", "ec2:AssignPrivateIpAddresses", "ec2:DescribeSubnets", "ec2:DescribeInstances", "autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups"},
	"route53":    {"route53:ChangeResourceRecordSets", "route53:GetChange", "route53:ListResourceRecordSets", "ec2:DescribeNetworkInterfaces", "autoscaling:DescribeAutoScalingInstances"},
}

// Sentinels the caller branches on; each comes with its finding.
var (
	// ErrHeld: a live instance of the group holds the address. Wait and try again (WaitClaim
	// does); never take it.
	ErrHeld = errors.New("the address is held by an instance that is still in service")
	// ErrLeaving: this instance is leaving service in its group (Unhealthy, Terminating,
	// Standby, Detaching): it takes nothing. Wait (WaitClaim does): the group replaces it, or
	// an operator puts it back in service.
	ErrLeaving = errors.New("this instance is leaving service in its group")
	// ErrNotInSubnet: the address cannot be had on this instance at all; retrying does not help
	// until the group or the config changes.
	ErrNotInSubnet = errors.New("the address is not in this instance's subnet")
	// ErrDenied: the instance role lacks a permission.
	ErrDenied = errors.New("the instance role may not make this call")
)

// Metadata is what is read from IMDS: *imds.Client.
type Metadata interface {
	PrimaryInterface(ctx context.Context) (imds.Interface, error)
}

// Group says how Auto Scaling sees another instance: *asg.Client.
type Group interface {
	Instance(ctx context.Context, id string) (asg.InstanceState, bool, error)
}

// Options configure a Client.
type Options struct {
	// InstanceID is this instance's id (IMDS instance-id).
	InstanceID string
	// Region is the EC2 API's region (address.region, else the instance's).
	Region string
	// EC2Endpoint and Route53Endpoint replace AWS's endpoints (a VPC endpoint, tests).
	EC2Endpoint, Route53Endpoint string
	Log                          *slog.Logger
	// Credentials replaces the SDK's default chain (tests); nil keeps the chain.
	Credentials aws.CredentialsProvider
}

// Client makes the EC2 and Route 53 calls for this one instance.
type Client struct {
	ec2      *ec2.Client
	r53      *route53.Client
	instance string
	log      *slog.Logger
	// poll paces the read-back after an assignment and the GetChange polling.
	poll backoff.Policy
	// readBacks bounds the read-back of an assignment (EC2 is eventually consistent).
	readBacks int
	// after is time.After; tests replace it to drive WaitClaim without waiting.
	after func(time.Duration) <-chan time.Time
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
		return nil, fmt.Errorf("loading the AWS SDK configuration for EC2 and Route 53: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("no AWS region for EC2: set address.region or AWS_REGION (IMDS gave none)")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Client{
		ec2: ec2.NewFromConfig(cfg, func(eo *ec2.Options) {
			if o.EC2Endpoint != "" {
				eo.BaseEndpoint = aws.String(o.EC2Endpoint)
			}
		}),
		// Route 53 is a global service whose signing region is us-east-1 (in the aws
		// partition). The SDK's endpoint resolver says so for AWS's own endpoint, but with
		// BaseEndpoint set it signs for the client's region, which Route 53 refuses: pin it.
		r53: route53.NewFromConfig(cfg, func(ro *route53.Options) {
			ro.Region = route53Region
			if o.Route53Endpoint != "" {
				ro.BaseEndpoint = aws.String(o.Route53Endpoint)
			}
		}),
		instance:  o.InstanceID,
		log:       o.Log,
		poll:      backoff.Policy{Base: time.Second, Max: 10 * time.Second},
		readBacks: 6,
		after:     time.After,
	}, nil
}

// route53Region is Route 53's signing region in the aws partition.
const route53Region = "us-east-1"

// APIError is a failed EC2, Route 53 or Auto Scaling call: the action (service:Action, as IAM
// names it) and why.
type APIError struct {
	Action string
	Err    error
}

func (e *APIError) Error() string { return fmt.Sprintf("%s: %v", e.Action, e.Err) }

func (e *APIError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrDenied) true for a refused call.
func (e *APIError) Is(target error) bool { return target == ErrDenied && e.denied() }

func (e *APIError) denied() bool {
	var ae smithy.APIError
	if errors.As(e.Err, &ae) {
		switch ae.ErrorCode() {
		case "UnauthorizedOperation", "AccessDenied", "AccessDeniedException":
			return true
		}
	}
	var ase *asg.APIError
	return errors.As(e.Err, &ase) && ase.Denied()
}

// finding turns a failed call into ADDRESS_API_DENIED, with the statement to add, or
// ADDRESS_API_FAILED.
func (e *APIError) finding(target, doing string) findings.Finding {
	if e.denied() {
		return findings.New(findings.AddressAPIDenied, target, "the instance role may not call "+e.Action+" ("+doing+")", e.Error()).
			WithFix(fmt.Sprintf("add %s to the instance role: the statement %s of examples/iam-policy.json; haagent retries the step", e.Action, statementFor(e.Action)))
	}
	f := findings.New(findings.AddressAPIFailed, target, e.Action+" failed ("+doing+")", e.Error())
	var ae smithy.APIError
	if errors.As(e.Err, &ae) {
		switch ae.ErrorCode() {
		case "AuthFailure", "SignatureDoesNotMatch", "InvalidClientTokenId", "UnrecognizedClientException":
			f = f.WithFix("AWS refused the credentials themselves (" + ae.ErrorCode() + "): check the instance profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in /etc/default/haagent, and the clock (timedatectl: a signature more than 5 minutes off is refused)")
		}
	}
	return f
}

// statementFor names the Sid of examples/iam-policy.json that grants action.
func statementFor(action string) string {
	switch action {
	case "route53:ChangeResourceRecordSets":
		return "HaagentAddressRoute53Record"
	case "route53:GetChange":
		return "HaagentAddressRoute53Change"
	case "route53:ListResourceRecordSets":
		return "HaagentAddressRoute53Read"
	case "ec2:AssignPrivateIpAddresses":
		return "HaagentAddressAssignPrivateIp"
	case "autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups":
		return "HaagentDescribeItsGroup"
	}
	return "HaagentAddressDescribe"
}

// apiErr wraps a failed call; a refusal also matches ErrDenied.
func apiErr(action string, err error) *APIError {
	return &APIError{Action: action, Err: err}
}

// validIP is what every entry point checks first.
func validIP(ip netip.Addr) error {
	if !ip.IsValid() || !ip.Is4() {
		return fmt.Errorf("%v is not an IPv4 address", ip)
	}
	return nil
}

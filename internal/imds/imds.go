// Package imds reads the instance's identity and user-data over IMDSv2 only. The replaced
// userdata's IMDSv1 curl returned nothing on AMIs that require tokens; haagent never falls back.
package imds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/haagent/haagent/internal/findings"
)

// Info is what haagent needs to know about the instance.
type Info struct {
	InstanceID string `json:"instance_id"`
	LocalIPv4  string `json:"local_ipv4"`
	Region     string `json:"region"`
}

// Client talks to the metadata service.
type Client struct {
	c        *imds.Client
	endpoint string
}

// New returns a client; the endpoint comes from AWS_EC2_METADATA_SERVICE_ENDPOINT when set.
func New(timeout time.Duration) *Client {
	hc := awshttp.NewBuildableClient().
		WithTimeout(timeout).
		WithTransportOptions(func(tr *http.Transport) {
			// The link-local metadata address is never reached through a proxy.
			tr.Proxy = nil
		})
	c := imds.New(imds.Options{
		HTTPClient:     hc,
		EnableFallback: aws.FalseTernary,
		Retryer:        retry.AddWithMaxAttempts(retry.NewStandard(), 4),
	})
	ep := os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT")
	if ep == "" {
		ep = "http://169.254.169.254"
	}
	return &Client{c: c, endpoint: ep}
}

// Identity reads the instance id, its private IPv4 address and its region from the instance
// identity document: one request where instance-id, local-ipv4 and placement/region would be
// three, each a round trip before anything else can start. The document's privateIp is the
// primary network interface's private IPv4 address, what local-ipv4 gives; only on an
// IPv6-only instance is it an IPv6 address, and then local-ipv4 is asked, as before.
func (c *Client) Identity(ctx context.Context) (Info, error) {
	doc, err := c.c.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		return Info{}, c.wrap("instance-identity/document", err)
	}
	info := Info{InstanceID: doc.InstanceID, LocalIPv4: doc.PrivateIP, Region: doc.Region}
	if info.InstanceID == "" || info.Region == "" {
		return info, c.wrap("instance-identity/document", errors.New("the document names no instanceId or region"))
	}
	if ip := net.ParseIP(info.LocalIPv4); ip == nil || ip.To4() == nil {
		if info.LocalIPv4, err = c.get(ctx, "local-ipv4"); err != nil {
			return info, err
		}
	}
	return info, nil
}

// PublicIPv4 returns the instance's public IPv4 address, or "" when it has none (IMDS answers
// 404 for public-ipv4 then).
func (c *Client) PublicIPv4(ctx context.Context) (string, error) {
	out, err := c.c.GetMetadata(ctx, &imds.GetMetadataInput{Path: "public-ipv4"})
	if err != nil {
		if statusOf(err) == http.StatusNotFound {
			return "", nil
		}
		return "", c.wrap("public-ipv4", err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 4096))
	if err != nil {
		return "", c.wrap("public-ipv4", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// UserData returns the instance's user-data, or nil when it has none.
func (c *Client) UserData(ctx context.Context) ([]byte, error) {
	out, err := c.c.GetUserData(ctx, &imds.GetUserDataInput{})
	if err != nil {
		if statusOf(err) == http.StatusNotFound {
			return nil, nil
		}
		return nil, c.wrap("user-data", err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 64<<10))
	if err != nil {
		return nil, c.wrap("user-data", err)
	}
	return b, nil
}

// Interface is the instance's primary network interface (device 0) as IMDS describes it.
type Interface struct {
	MAC, ID, SubnetID, VPCID string
	// Subnet is the interface's subnet, e.g. 10.0.1.0/24.
	Subnet netip.Prefix
	// LocalIPv4s are the private IPv4 addresses the interface holds, primary first.
	LocalIPv4s []string
}

// PrimaryInterface reads the primary interface: meta-data/mac is device 0's MAC address (the
// IMDS documentation: "in cases where multiple network interfaces are present, this refers to
// the eth0 device"), and network/interfaces/macs/MAC/ holds the rest.
func (c *Client) PrimaryInterface(ctx context.Context) (Interface, error) {
	var ni Interface
	var err error
	if ni.MAC, err = c.get(ctx, "mac"); err != nil {
		return ni, err
	}
	base := "network/interfaces/macs/" + ni.MAC + "/"
	if ni.ID, err = c.get(ctx, base+"interface-id"); err != nil {
		return ni, err
	}
	if ni.SubnetID, err = c.get(ctx, base+"subnet-id"); err != nil {
		return ni, err
	}
	if ni.VPCID, err = c.get(ctx, base+"vpc-id"); err != nil {
		return ni, err
	}
	cidr, err := c.get(ctx, base+"subnet-ipv4-cidr-block")
	if err != nil {
		return ni, err
	}
	if ni.Subnet, err = netip.ParsePrefix(cidr); err != nil || !ni.Subnet.Addr().Is4() {
		return ni, c.wrap(base+"subnet-ipv4-cidr-block", fmt.Errorf("%q is not an IPv4 prefix", cidr))
	}
	ips, err := c.get(ctx, base+"local-ipv4s")
	if err != nil {
		return ni, err
	}
	ni.LocalIPv4s = strings.Fields(ips)
	return ni, nil
}

// Tag reads one of the instance's tags. It returns "" without error when the tag is absent or
// the instance does not expose its tags in the metadata (InstanceMetadataTags disabled): both
// answer 404.
func (c *Client) Tag(ctx context.Context, name string) (string, error) {
	v, err := c.get(ctx, "tags/instance/"+name)
	if err != nil && statusOf(err) == http.StatusNotFound {
		return "", nil
	}
	return v, err
}

func (c *Client) get(ctx context.Context, path string) (string, error) {
	out, err := c.c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", c.wrap(path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 4096))
	if err != nil {
		return "", c.wrap(path, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", c.wrap(path, errors.New("empty answer"))
	}
	return v, nil
}

// Error is a failed metadata read, classified.
type Error struct {
	Endpoint, Path string
	Code           findings.Code
	Err            error
}

func (e *Error) Error() string {
	var why string
	switch e.Code {
	case findings.IMDSTokenRefused:
		why = "the IMDSv2 token request was refused (haagent does not fall back to IMDSv1)"
	case findings.IMDSHopLimit:
		why = "the IMDSv2 token request got no answer in time (a hop limit of 1 drops it behind a container or proxy hop)"
	default:
		why = "the instance metadata service did not answer"
	}
	return fmt.Sprintf("reading %s from IMDS at %s: %s: %v", e.Path, e.Endpoint, why, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func (c *Client) wrap(path string, err error) error {
	code := findings.IMDSUnreachable
	msg := err.Error()
	switch s := statusOf(err); {
	case strings.Contains(msg, "getToken") && (s == 401 || s == 403 || s == 404 || s == 405):
		code = findings.IMDSTokenRefused
	case strings.Contains(msg, "getToken") && isTimeout(err):
		code = findings.IMDSHopLimit
	case s == 401:
		code = findings.IMDSTokenRefused
	}
	return &Error{Endpoint: c.endpoint, Path: path, Code: code, Err: err}
}

var statusRE = regexp.MustCompile(`StatusCode: (\d{3})`)

func statusOf(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		return re.Response.StatusCode
	}
	// The SDK's token provider flattens the token request's error into text.
	if m := statusRE.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

func isTimeout(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		// A dial timeout means nothing listens; only a connected request that got no
		// response points at the hop limit.
		var oe *net.OpError
		return !(errors.As(err, &oe) && oe.Op == "dial")
	}
	return errors.Is(err, context.DeadlineExceeded)
}

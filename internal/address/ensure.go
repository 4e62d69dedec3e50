package address

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
)

// FromConfig builds the client for the config's address section. region is the instance's
// (IMDS); address.region wins over it.
func FromConfig(ctx context.Context, a config.Address, instanceID, region string, log *slog.Logger, creds aws.CredentialsProvider) (*Client, error) {
	if a.Region != "" {
		region = a.Region
	}
	o := Options{InstanceID: instanceID, Region: region, EC2Endpoint: a.Endpoint, Log: log, Credentials: creds}
	if a.Route53 != nil {
		o.Route53Endpoint = a.Route53.Endpoint
	}
	return New(ctx, o)
}

// EnsureInput is what Ensure needs besides the config.
type EnsureInput struct {
	// Group is this instance's Auto Scaling group; Holders reads other instances' state in it.
	Group   string
	Holders Group
	// Metadata reads the primary interface (IMDS).
	Metadata Metadata
	// LocalIPv4 is the instance's own private address (IMDS local-ipv4): the record's value
	// when there is no private_ip.
	LocalIPv4 netip.Addr
	// OnHeld gets ADDRESS_HELD each time the claim finds the address held and waits.
	OnHeld func([]findings.Finding)
}

// Result is what the address section produced.
type Result struct {
	// Assigned is set when address.private_ip is: the address is on this instance's primary
	// interface (in EC2; adding it in the OS is the caller's).
	Assigned *Assigned
	// Published is set when address.route53 is.
	Published *Published
	// RecordIP is the address the record points at.
	RecordIP netip.Addr
}

// Ensure does what the section asks, the private IP first (the record then points at it),
// waiting every address.retry_every while a live instance of the group holds the address.
func (c *Client) Ensure(ctx context.Context, a config.Address, in EnsureInput) (Result, []findings.Finding, error) {
	var res Result
	var stable netip.Addr
	if a.PrivateIP != "" {
		ip, err := netip.ParseAddr(a.PrivateIP)
		if err != nil {
			return res, nil, fmt.Errorf("address.private_ip %q: %w", a.PrivateIP, err)
		}
		got, fs, err := c.WaitClaim(ctx, ClaimRequest{IP: ip, Group: in.Group, Metadata: in.Metadata, Holders: in.Holders}, a.RetryEvery.D(), in.OnHeld)
		if err != nil {
			return res, fs, err
		}
		res.Assigned, stable = &got, ip
	}
	if a.Route53 == nil {
		return res, nil, nil
	}
	res.RecordIP = RecordIP(stable, in.LocalIPv4)
	r := a.Route53
	pub, fs, err := c.Publish(ctx, Record{ZoneID: r.ZoneID, Name: r.Name, TTL: r.TTL, IP: res.RecordIP}, r.SyncTimeout.D())
	res.Published = &pub
	return res, fs, err
}

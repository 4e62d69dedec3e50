package address

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/haagent/haagent/internal/asg"
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
	// Policy reads the group's instance maintenance policy (*asg.Client); nil skips the
	// launch-first check.
	Policy Policy
}

// Policy reads the group's instance maintenance policy: *asg.Client.
type Policy interface {
	MaintenancePolicy(ctx context.Context) (asg.MaintenancePolicy, error)
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
	var early []findings.Finding
	if a.PrivateIP != "" {
		ip, err := netip.ParseAddr(a.PrivateIP)
		if err != nil {
			return res, nil, fmt.Errorf("address.private_ip %q: %w", a.PrivateIP, err)
		}
		lf := c.launchFirst(ctx, in)
		onHeld := in.OnHeld
		if onHeld != nil && lf != nil {
			// Said with each wait: it is why the wait will not end by itself.
			onHeld = func(fs []findings.Finding) { in.OnHeld(append(fs, lf...)) }
		}
		got, fs, err := c.WaitClaim(ctx, ClaimRequest{IP: ip, Group: in.Group, Metadata: in.Metadata, Holders: in.Holders}, a.RetryEvery.D(), onHeld)
		if err != nil {
			return res, append(fs, lf...), err
		}
		early = lf
		res.Assigned, stable = &got, ip
	}
	if a.Route53 == nil {
		return res, early, nil
	}
	res.RecordIP = RecordIP(stable, in.LocalIPv4)
	r := a.Route53
	rec := Record{ZoneID: r.ZoneID, Name: r.Name, TTL: r.TTL, IP: res.RecordIP}
	if !stable.IsValid() {
		// The name alone: it moves only from an instance that no longer serves, as private_ip
		// does (with private_ip the claim has decided that already).
		if fs, err := c.waitName(ctx, NameRequest{Record: rec, Group: in.Group, Metadata: in.Metadata, Holders: in.Holders}, a.RetryEvery.D(), in.OnHeld); err != nil {
			return res, fs, err
		}
	}
	pub, fs, err := c.Publish(ctx, rec, r.SyncTimeout.D())
	res.Published = &pub
	return res, append(early, fs...), err
}

// launchFirst: with private_ip, a group that launches the replacement before terminating the
// old instance deadlocks (the new one waits in Pending:Wait for the address the live old one
// keeps), so say so before waiting. Best effort: a failed read is only logged (the asg step
// reports DescribeAutoScalingGroups' own failures).
func (c *Client) launchFirst(ctx context.Context, in EnsureInput) []findings.Finding {
	if in.Policy == nil || in.Group == "" {
		return nil
	}
	p, err := in.Policy.MaintenancePolicy(ctx)
	if err != nil {
		c.log.Warn("could not read the group's instance maintenance policy; the launch-first check is skipped", "group", in.Group, "error", err.Error())
		return nil
	}
	if !p.LaunchFirst() {
		return nil
	}
	return []findings.Finding{findings.New(findings.AddressLaunchFirst, in.Group,
		fmt.Sprintf("group %s launches a replacement before terminating the old instance (MinHealthyPercentage %d): with address.private_ip the replacement waits for the address until its lifecycle hook times out", in.Group, p.MinHealthyPercentage),
		fmt.Sprintf("InstanceMaintenancePolicy MinHealthyPercentage=%d MaxHealthyPercentage=%d", p.MinHealthyPercentage, p.MaxHealthyPercentage)).
		WithFix(fmt.Sprintf("aws autoscaling update-auto-scaling-group --auto-scaling-group-name %s --instance-maintenance-policy MinHealthyPercentage=0,MaxHealthyPercentage=100, and start instance refreshes with --preferences MinHealthyPercentage=0,MaxHealthyPercentage=100", in.Group))}
}

// waitName waits every retry while NameHeld says the record stays where it points.
func (c *Client) waitName(ctx context.Context, r NameRequest, retry time.Duration, onHeld func([]findings.Finding)) ([]findings.Finding, error) {
	for {
		fs, err := c.NameHeld(ctx, r)
		if !errors.Is(err, ErrHeld) && !errors.Is(err, ErrLeaving) {
			return fs, err
		}
		if onHeld != nil {
			onHeld(fs)
		}
		select {
		case <-ctx.Done():
			return fs, fmt.Errorf("waiting to point %s here: %w", r.Record.Name, ctx.Err())
		case <-c.after(retry):
		}
	}
}

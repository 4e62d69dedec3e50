package address

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/route53"
	"github.com/aws/aws-sdk-go-v2/service/route53/types"

	"github.com/haagent/haagent/internal/findings"
)

// Record is the A record the builders resolve.
type Record struct {
	ZoneID, Name string
	TTL          int
	// IP is the value: the stable private_ip when one is configured, else the instance's own
	// private address (IMDS local-ipv4).
	IP netip.Addr
}

// RecordIP is the address the record points at: the stable private IP when both modes are
// configured (builders reach the same address by name and by number), else the instance's own.
func RecordIP(stable, local netip.Addr) netip.Addr {
	if stable.IsValid() {
		return stable
	}
	return local
}

// Published is what Publish did.
type Published struct {
	// ChangeID is Route 53's change (C...), for aws route53 get-change --id.
	ChangeID string
	// InSync is true once Route 53 reported the change INSYNC (every authoritative server has
	// it).
	InSync bool
}

// Publish UPSERTs the A record and waits, within syncTimeout, until Route 53 reports the change
// INSYNC. UPSERT is idempotent, so a rerun sends it again rather than read the record first
// (which would need route53:ListResourceRecordSets too). Not INSYNC in time is the warning
// ADDRESS_DNS_NOT_INSYNC, not an error: the record is accepted and propagates by itself.
func (c *Client) Publish(ctx context.Context, r Record, syncTimeout time.Duration) (Published, []findings.Finding, error) {
	var out Published
	if err := validIP(r.IP); err != nil {
		return out, nil, err
	}
	zone := strings.TrimPrefix(r.ZoneID, "/hostedzone/")
	name := strings.TrimSuffix(r.Name, ".") + "."
	target := name + " in " + zone
	res, err := c.r53.ChangeResourceRecordSets(ctx, &route53.ChangeResourceRecordSetsInput{
		HostedZoneId: aws.String(zone),
		ChangeBatch: &types.ChangeBatch{
			Comment: aws.String("haagent: the CircleCI Services machine " + c.instance),
			Changes: []types.Change{{
				Action: types.ChangeActionUpsert,
				ResourceRecordSet: &types.ResourceRecordSet{
					Name:            aws.String(name),
					Type:            types.RRTypeA,
					TTL:             aws.Int64(int64(r.TTL)),
					ResourceRecords: []types.ResourceRecord{{Value: aws.String(r.IP.String())}},
				},
			}},
		},
	})
	if err != nil {
		e := apiErr("route53:ChangeResourceRecordSets", err)
		var nz *types.NoSuchHostedZone
		var bad *types.InvalidChangeBatch
		switch {
		case errors.As(err, &nz):
			return out, []findings.Finding{findings.New(findings.AddressZoneMissing, target, "Route 53 has no hosted zone "+zone+" for this account", e.Error())}, fmt.Errorf("upserting %s: %w", target, e)
		case errors.As(err, &bad):
			return out, []findings.Finding{e.finding(target, "upserting "+name).
				WithFix("Route 53 refused the change (its reason is in the evidence): address.route53.name must be a name inside the zone address.route53.zone_id (aws route53 get-hosted-zone --id " + zone + " shows the zone's name), and no other record type (a CNAME) may stand at that name (aws route53 list-resource-record-sets --hosted-zone-id " + zone + " --query \"ResourceRecordSets[?Name=='" + name + "']\")")}, fmt.Errorf("upserting %s: %w", target, e)
		}
		return out, []findings.Finding{e.finding(target, "upserting "+name+" A "+r.IP.String())}, fmt.Errorf("upserting %s: %w", target, e)
	}
	out.ChangeID = strings.TrimPrefix(aws.ToString(res.ChangeInfo.Id), "/change/")
	c.log.Info("Route 53 record upserted", "name", name, "zone", zone, "ip", r.IP.String(), "ttl", r.TTL, "change", out.ChangeID)
	if res.ChangeInfo.Status == types.ChangeStatusInsync {
		out.InSync = true
		return out, nil, nil
	}

	wctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	status := res.ChangeInfo.Status
	for attempt := 1; ; attempt++ {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return out, nil, fmt.Errorf("waiting for Route 53 change %s: %w", out.ChangeID, ctx.Err())
			}
			return out, []findings.Finding{findings.New(findings.AddressDNSNotInSync, target,
				fmt.Sprintf("Route 53 did not report change %s INSYNC within %s: builders may still resolve the old address", out.ChangeID, syncTimeout),
				fmt.Sprintf("change=%s status=%s reads=%d", out.ChangeID, status, attempt-1)).
				WithFix(fmt.Sprintf("aws route53 get-change --id %s shows when it is INSYNC; nothing to undo: the record is accepted and propagates by itself", out.ChangeID))}, nil
		case <-c.after(c.poll.Delay(attempt)):
		}
		got, err := c.r53.GetChange(wctx, &route53.GetChangeInput{Id: aws.String(out.ChangeID)})
		if err != nil {
			if wctx.Err() != nil && ctx.Err() == nil {
				continue // the sync timeout cut this read: report it as such above
			}
			e := apiErr("route53:GetChange", err)
			return out, []findings.Finding{e.finding(target, "waiting for change "+out.ChangeID)}, fmt.Errorf("waiting for Route 53 change %s: %w", out.ChangeID, e)
		}
		status = got.ChangeInfo.Status
		if status == types.ChangeStatusInsync {
			out.InSync = true
			c.log.Info("Route 53 change INSYNC", "name", name, "change", out.ChangeID, "reads", attempt)
			return out, nil, nil
		}
	}
}

// current reads the A record at name (ListResourceRecordSets from name and type A, one item):
// its values, none when there is no such record. Route 53 lists from the given name on, so the
// one set it returns may be the next name's.
func (c *Client) current(ctx context.Context, zone, name string) ([]netip.Addr, error) {
	out, err := c.r53.ListResourceRecordSets(ctx, &route53.ListResourceRecordSetsInput{
		HostedZoneId: aws.String(zone), StartRecordName: aws.String(name), StartRecordType: types.RRTypeA, MaxItems: aws.Int32(1)})
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, rs := range out.ResourceRecordSets {
		if !strings.EqualFold(strings.TrimSuffix(aws.ToString(rs.Name), "."), strings.TrimSuffix(name, ".")) || rs.Type != types.RRTypeA {
			continue
		}
		for _, v := range rs.ResourceRecords {
			if ip, err := netip.ParseAddr(aws.ToString(v.Value)); err == nil {
				ips = append(ips, ip)
			}
		}
	}
	return ips, nil
}

// NameRequest is what NameHeld needs.
type NameRequest struct {
	Record   Record
	Group    string
	Metadata Metadata
	Holders  Group
}

// NameHeld decides whether the record may be pointed at this instance now (route53 mode
// alone): not while this instance leaves service in its group (ErrLeaving), nor while the
// record points at an instance that is InService and Healthy in the group (ErrHeld: a
// launch-first replacement would take the builders off the working machine for the whole
// install, and the old one's restart would point the name back). A record pointing at an
// address no interface of the VPC holds, or at an instance out of service, is taken.
func (c *Client) NameHeld(ctx context.Context, r NameRequest) ([]findings.Finding, error) {
	zone := strings.TrimPrefix(r.Record.ZoneID, "/hostedzone/")
	name := strings.TrimSuffix(r.Record.Name, ".") + "."
	target := name + " in " + zone
	if r.Holders == nil {
		return nil, nil
	}
	if f, err := c.selfInService(ctx, ClaimRequest{IP: r.Record.IP, Group: r.Group, Holders: r.Holders}); err != nil {
		return []findings.Finding{f}, err
	}
	ips, err := c.current(ctx, zone, name)
	if err != nil {
		e := apiErr("route53:ListResourceRecordSets", err)
		return []findings.Finding{e.finding(target, "reading where "+name+" points now")}, fmt.Errorf("reading %s: %w", target, e)
	}
	var vpc string
	for _, ip := range ips {
		if ip == r.Record.IP {
			continue
		}
		if vpc == "" {
			ni, err := r.Metadata.PrimaryInterface(ctx)
			if err != nil {
				return nil, fmt.Errorf("reading this instance's primary network interface from IMDS: %w", err)
			}
			vpc = ni.VPCID
		}
		held, err := c.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []ec2types.Filter{
			{Name: aws.String("addresses.private-ip-address"), Values: []string{ip.String()}},
			{Name: aws.String("vpc-id"), Values: []string{vpc}},
		}})
		if err != nil {
			e := apiErr("ec2:DescribeNetworkInterfaces", err)
			return []findings.Finding{e.finding(target, "reading who holds "+ip.String()+", where "+name+" points")}, fmt.Errorf("reading who holds %s: %w", ip, e)
		}
		for _, h := range held.NetworkInterfaces {
			if h.Attachment == nil || aws.ToString(h.Attachment.InstanceId) == "" || aws.ToString(h.Attachment.InstanceId) == c.instance {
				continue
			}
			inst := aws.ToString(h.Attachment.InstanceId)
			st, found, err := r.Holders.Instance(ctx, inst)
			if err != nil {
				e := apiErr("autoscaling:DescribeAutoScalingInstances", err)
				return []findings.Finding{e.finding(target, "reading whether "+inst+", where "+name+" points, is still in service")}, e
			}
			if found && st.Live(r.Group) {
				return []findings.Finding{findings.New(findings.AddressHeld, target,
						fmt.Sprintf("%s points at %s, the address of %s, which is InService and Healthy in group %s: haagent waits and does not move the name", name, ip, inst, r.Group),
						fmt.Sprintf("record=%s values=%s holder=%s instance=%s lifecycle=%s health=%s", name, ip, aws.ToString(h.NetworkInterfaceId), inst, st.LifecycleState, st.HealthStatus)).
						WithFix(fmt.Sprintf("the builders use %[1]s while it is in service; haagent moves the name once it leaves. Replace it terminate-first (instance maintenance policy MinHealthyPercentage=0,MaxHealthyPercentage=100), or terminate it: aws autoscaling terminate-instance-in-auto-scaling-group --instance-id %[1]s --no-should-decrement-desired-capacity", inst))},
					fmt.Errorf("pointing %s here: %w", name, ErrHeld)
			}
		}
	}
	return nil, nil
}

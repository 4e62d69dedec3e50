package address

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
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

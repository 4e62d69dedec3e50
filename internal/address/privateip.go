package address

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/haagent/haagent/internal/findings"
)

// ClaimRequest is what a claim needs.
type ClaimRequest struct {
	IP netip.Addr
	// Group is this instance's Auto Scaling group: a holder in it that is InService and Healthy
	// keeps the address.
	Group    string
	Metadata Metadata
	Holders  Group
}

// Assigned is the address as it now is on this instance: what the OS side needs to add it
// (ip addr add IP/PREFIX dev <the interface with MAC>).
type Assigned struct {
	IP netip.Addr
	// Subnet is the interface's subnet: IP/Subnet.Bits() is the address to add in the OS.
	Subnet      netip.Prefix
	InterfaceID string
	MAC         string
	// Moved is true when this claim assigned the address; false when the interface held it
	// already (a reboot, a retried step).
	Moved bool
	// FromInterface and FromInstance held the address before ("" when it was free).
	FromInterface, FromInstance string
}

// Prefix is the address with the subnet's prefix length (10.0.1.50/24).
func (a Assigned) Prefix() netip.Prefix { return netip.PrefixFrom(a.IP, a.Subnet.Bits()) }

// Claim makes one attempt to hold r.IP on this instance's primary interface. It reads who holds
// the address first: this interface (nothing to do), a live (InService, Healthy) instance of the
// group or of another group, or an interface whose primary address it is (ADDRESS_HELD and
// ErrHeld: the caller waits), or anyone else or no one (the address is assigned with
// AllowReassignment and read back).
func (c *Client) Claim(ctx context.Context, r ClaimRequest) (Assigned, []findings.Finding, error) {
	var out Assigned
	if err := validIP(r.IP); err != nil {
		return out, nil, err
	}
	ip := r.IP.String()
	ni, err := r.Metadata.PrimaryInterface(ctx)
	if err != nil {
		return out, nil, fmt.Errorf("reading this instance's primary network interface from IMDS: %w", err)
	}
	out = Assigned{IP: r.IP, Subnet: ni.Subnet.Masked(), InterfaceID: ni.ID, MAC: ni.MAC}
	target := ip + " on " + ni.ID

	if f, bad := c.subnetCheck(ctx, r, ni.Subnet, ni.SubnetID, ni.VPCID); bad {
		return out, []findings.Finding{f}, fmt.Errorf("claiming %s on %s: %w", ip, ni.ID, ErrNotInSubnet)
	}

	// Who holds it now, within this VPC (another VPC may reuse the same range).
	held, err := c.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{
		{Name: aws.String("addresses.private-ip-address"), Values: []string{ip}},
		{Name: aws.String("vpc-id"), Values: []string{ni.VPCID}},
	}})
	if err != nil {
		e := apiErr("ec2:DescribeNetworkInterfaces", err)
		return out, []findings.Finding{e.finding(target, "reading who holds "+ip)}, fmt.Errorf("reading who holds %s: %w", ip, e)
	}
	for _, h := range held.NetworkInterfaces {
		id := aws.ToString(h.NetworkInterfaceId)
		if id == ni.ID {
			c.log.Debug("the address is already on this instance's interface", "ip", ip, "interface", id)
			return out, nil, nil
		}
		out.FromInterface = id
		if h.Attachment != nil {
			out.FromInstance = aws.ToString(h.Attachment.InstanceId)
		}
		f, held, err := c.heldBy(ctx, r, h, out.FromInstance)
		switch {
		case err != nil:
			return out, []findings.Finding{f}, fmt.Errorf("reading whether %s, which holds %s, still serves: %w", out.FromInstance, ip, err)
		case held:
			return out, []findings.Finding{f}, fmt.Errorf("claiming %s: %w", ip, ErrHeld)
		}
	}

	_, err = c.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(ni.ID),
		PrivateIpAddresses: []string{ip},
		// The old holder is gone or out of service: move it, whoever has it.
		AllowReassignment: aws.Bool(true),
	})
	if err != nil {
		e := apiErr("ec2:AssignPrivateIpAddresses", err)
		return out, []findings.Finding{e.finding(target, "moving "+ip+" to "+ni.ID)}, fmt.Errorf("assigning %s to %s: %w", ip, ni.ID, e)
	}
	out.Moved = true
	c.log.Info("private address assigned to this instance", "ip", ip, "interface", ni.ID, "from_interface", out.FromInterface, "from_instance", out.FromInstance)

	if f, err := c.readBack(ctx, ni.ID, ip); err != nil {
		var fs []findings.Finding
		if f.Code.Known() {
			fs = append(fs, f)
		}
		return out, fs, err
	}
	return out, nil, nil
}

// heldBy decides whether the holder h keeps the address: held, with ADDRESS_HELD, when it is
// an InService, Healthy instance of an Auto Scaling group, or when the address is its primary
// one (which EC2 never moves: it is freed only when that interface goes). An error (with its
// finding) means the holder's state could not be read, and then nothing is taken either.
func (c *Client) heldBy(ctx context.Context, r ClaimRequest, h types.NetworkInterface, instance string) (f findings.Finding, held bool, err error) {
	ip := r.IP.String()
	id := aws.ToString(h.NetworkInterfaceId)
	for _, a := range h.PrivateIpAddresses {
		if aws.ToString(a.PrivateIpAddress) == ip && aws.ToBool(a.Primary) {
			return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is the primary private address of %s%s: EC2 never moves a primary address", ip, id, onInstance(instance)),
				fmt.Sprintf("holder=%s instance=%s primary=true", id, orNone(instance))).
				WithFix(fmt.Sprintf("haagent asks again every address.retry_every; the address is freed only when %s is deleted (its instance terminated). Otherwise choose an address.private_ip that is no interface's primary address", id)), true, nil
		}
	}
	if instance == "" || instance == c.instance {
		// An interface attached to nothing serves nobody; one of this instance's other
		// interfaces gives the address up to the primary one.
		return findings.Finding{}, false, nil
	}
	if r.Holders == nil {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s on instance %s, and without the Auto Scaling group haagent cannot tell whether it still serves", ip, id, instance),
			fmt.Sprintf("holder=%s instance=%s", id, instance)), true, nil
	}
	st, found, err := r.Holders.Instance(ctx, instance)
	if err != nil {
		e := apiErr("autoscaling:DescribeAutoScalingInstances", err)
		return e.finding(ip, "reading whether "+instance+", which holds "+ip+", is still in service"), false, e
	}
	evidence := fmt.Sprintf("holder=%s instance=%s group=%s lifecycle=%s health=%s", id, instance, orNone(st.Group), st.LifecycleState, st.HealthStatus)
	if found && st.Live(r.Group) {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s of group %s, which is InService and Healthy: haagent waits and does not take it", ip, instance, r.Group), evidence).
			WithFix(fmt.Sprintf("nothing to do if the group is replacing %[1]s (an instance refresh starts the new instance first): the address moves here once %[1]s leaves service. If %[1]s must go: aws autoscaling terminate-instance-in-auto-scaling-group --instance-id %[1]s --no-should-decrement-desired-capacity", instance)), true, nil
	}
	// A live member of another group is some other service that answers on the address: the
	// config names the wrong address, and taking it would break that service.
	if found && st.Live(st.Group) {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s, InService and Healthy in another group, %s: haagent does not take it", ip, instance, st.Group), evidence).
			WithFix(fmt.Sprintf("address.private_ip belongs to a live instance of group %s: choose an address no other service uses (aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=%s shows its holder)", st.Group, ip)), true, nil
	}
	state := "not in any Auto Scaling group"
	if found {
		state = fmt.Sprintf("%s and %s in group %s", st.LifecycleState, st.HealthStatus, orNone(st.Group))
	}
	c.log.Info("taking the address from an instance that no longer serves it", "ip", ip, "holder", id, "instance", instance, "state", state)
	return findings.Finding{}, false, nil
}

func onInstance(id string) string {
	if id == "" {
		return " (attached to no instance)"
	}
	return " on instance " + id
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// subnetCheck: a private IP belongs to one subnet, and AWS keeps five addresses of each
// (the network address, the next three, the last). The finding names the subnet the group must
// be confined to, found with DescribeSubnets (best effort: a refusal only makes the fix
// vaguer).
func (c *Client) subnetCheck(ctx context.Context, r ClaimRequest, sub netip.Prefix, subnetID, vpc string) (findings.Finding, bool) {
	ip := r.IP.String()
	group := r.Group
	if group == "" {
		group = "GROUP"
	}
	if sub.Contains(r.IP) {
		if !reserved(sub, r.IP) {
			return findings.Finding{}, false
		}
		return findings.New(findings.AddressNotInSubnet, ip, fmt.Sprintf("%s is one of the five addresses AWS reserves in subnet %s (%s)", ip, subnetID, sub),
			fmt.Sprintf("subnet=%s cidr=%s", subnetID, sub)).
			WithFix("choose another address.private_ip: AWS reserves the first four and the last address of every subnet"), true
	}
	evidence := fmt.Sprintf("this instance: subnet=%s cidr=%s vpc=%s", subnetID, sub, vpc)
	fix := fmt.Sprintf("launch the group only into the subnet that holds %s (aws autoscaling update-auto-scaling-group --auto-scaling-group-name %s --vpc-zone-identifier SUBNET), or choose an address.private_ip in %s, or use address.route53, which works across subnets and zones", ip, group, sub)
	out, err := c.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{{Name: aws.String("vpc-id"), Values: []string{vpc}}}})
	if err != nil {
		c.log.Debug("DescribeSubnets failed; the finding names no subnet", "error", err.Error())
	} else {
		home := ""
		for _, s := range out.Subnets {
			if p, err := netip.ParsePrefix(aws.ToString(s.CidrBlock)); err == nil && p.Contains(r.IP) {
				home = aws.ToString(s.SubnetId)
				evidence += fmt.Sprintf("; %s is in subnet=%s cidr=%s zone=%s", ip, home, p, aws.ToString(s.AvailabilityZone))
			}
		}
		if home != "" {
			fix = fmt.Sprintf("confine the group to %s, the subnet that holds %s: aws autoscaling update-auto-scaling-group --auto-scaling-group-name %s --vpc-zone-identifier %s (or use address.route53, which works across subnets and zones)", home, ip, group, home)
		} else {
			fix = fmt.Sprintf("no subnet of %s holds %s: choose an address.private_ip in a subnet the group launches into (this one is %s), or use address.route53", vpc, ip, sub)
		}
	}
	return findings.New(findings.AddressNotInSubnet, ip, fmt.Sprintf("%s is not in this instance's subnet %s (%s): a private IP cannot leave its subnet", ip, subnetID, sub), evidence).WithFix(fix), true
}

// reserved reports the five addresses AWS keeps in every subnet.
func reserved(sub netip.Prefix, a netip.Addr) bool {
	first := u32(sub.Masked().Addr())
	last := first | (1<<(32-sub.Bits()) - 1)
	x := u32(a)
	return x-first < 4 || x == last
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// readBack asks EC2 whether the interface now lists ip, a few times: EC2 is eventually
// consistent and the AWS reference calls a move asynchronous.
func (c *Client) readBack(ctx context.Context, eni, ip string) (findings.Finding, error) {
	var last []string
	for attempt := 1; ; attempt++ {
		out, err := c.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
		if err != nil {
			e := apiErr("ec2:DescribeNetworkInterfaces", err)
			return e.finding(ip+" on "+eni, "reading back "+eni), fmt.Errorf("reading back %s after assigning %s: %w", eni, ip, e)
		}
		last = last[:0]
		for _, n := range out.NetworkInterfaces {
			for _, a := range n.PrivateIpAddresses {
				last = append(last, aws.ToString(a.PrivateIpAddress))
			}
		}
		if slices.Contains(last, ip) {
			return findings.Finding{}, nil
		}
		if attempt >= c.readBacks {
			break
		}
		select {
		case <-ctx.Done():
			return findings.Finding{}, ctx.Err()
		case <-c.after(c.poll.Delay(attempt)):
		}
	}
	return findings.New(findings.AddressNotAssigned, ip+" on "+eni, fmt.Sprintf("EC2 accepted %s for %s but the interface does not list it after %d reads", ip, eni, c.readBacks),
			fmt.Sprintf("interface %s holds %s", eni, strings.Join(last, " "))),
		fmt.Errorf("assigning %s to %s: the interface does not list it when read back", ip, eni)
}

// WaitClaim claims r.IP, waiting every retry between attempts while a live instance holds it
// (onHeld, if set, gets the ADDRESS_HELD finding of each such attempt, for STATUS= and the
// journal). Anything else ends it: a finding that waiting does not heal goes back to the
// caller, whose step retry scope decides.
func (c *Client) WaitClaim(ctx context.Context, r ClaimRequest, retry time.Duration, onHeld func([]findings.Finding)) (Assigned, []findings.Finding, error) {
	for {
		a, fs, err := c.Claim(ctx, r)
		if !errors.Is(err, ErrHeld) {
			return a, fs, err
		}
		if onHeld != nil {
			onHeld(fs)
		}
		select {
		case <-ctx.Done():
			return a, fs, fmt.Errorf("waiting for %s: %w", r.IP, ctx.Err())
		case <-c.after(retry):
		}
	}
}

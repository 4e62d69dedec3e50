package address

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	smithy "github.com/aws/smithy-go"

	"github.com/haagent/haagent/internal/asg"
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
		if id := aws.ToString(h.NetworkInterfaceId); id == ni.ID {
			c.log.Debug("the address is already on this instance's interface", "ip", ip, "interface", id)
			return out, nil, nil
		}
	}
	// Only an instance that stays in service may take the address: an unhealthy one (marked
	// for replacement) or one leaving the group would take it back from its replacement
	// whenever haagent restarts there.
	if f, err := c.selfInService(ctx, r); err != nil {
		return out, []findings.Finding{f}, err
	}
	for _, h := range held.NetworkInterfaces {
		out.FromInterface = aws.ToString(h.NetworkInterfaceId)
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

// heldBy decides whether the holder h keeps the address. Held, with ADDRESS_HELD:
//   - the address is h's primary one (EC2 never moves it: it is freed only with h);
//   - h is requester-managed (a NAT gateway's or an endpoint's: AWS's, serving someone);
//   - the group is not known, so nothing says whether h's instance still serves;
//   - h's instance is InService and Healthy in this group or another;
//   - h's instance is Pending in this group and was launched no earlier than this one (a
//     replacement being installed; of two Pending instances the later launch wins, so they
//     never take the address from each other in turn);
//   - h's instance is in no group and EC2 says it is pending, running, stopping or stopped (a
//     machine launched by hand, another service: AWS deletes a terminated instance's primary
//     interface, so an attached holder nobody's group lists is usually alive).
//
// Taken: attached to nothing or to this instance; Terminating, Standby, Detaching or
// Unhealthy in a group; in no group and shutting-down, terminated or unknown to EC2. An error
// (with its finding) means the holder's state could not be read, and then nothing is taken
// either.
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
	if aws.ToBool(h.RequesterManaged) {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s, an interface AWS manages for a service (%s): haagent does not take it", ip, id, orNone(aws.ToString(h.Description))),
			fmt.Sprintf("holder=%s requester_managed=true type=%s", id, h.InterfaceType)).
			WithFix(fmt.Sprintf("address.private_ip is in use by an AWS-managed interface (a NAT gateway, a VPC endpoint, a load balancer): choose a free address in the subnet (aws ec2 describe-network-interfaces --network-interface-ids %s shows its owner)", id)), true, nil
	}
	if instance == "" || instance == c.instance {
		// An interface attached to nothing serves nobody; one of this instance's other
		// interfaces gives the address up to the primary one.
		return findings.Finding{}, false, nil
	}
	if r.Holders == nil {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s on instance %s, and without the Auto Scaling group haagent cannot tell whether it still serves", ip, id, instance),
			fmt.Sprintf("holder=%s instance=%s", id, instance)).
			WithFix(fmt.Sprintf("haagent takes the address only once it knows this instance's group: check the asg step's findings (autoscaling:DescribeAutoScalingInstances, asg.group). If %[1]s no longer serves, free the address: aws ec2 unassign-private-ip-addresses --network-interface-id %[2]s --private-ip-addresses %[3]s", instance, id, ip)), true, nil
	}
	st, found, err := r.Holders.Instance(ctx, instance)
	if err != nil {
		e := apiErr("autoscaling:DescribeAutoScalingInstances", err)
		return e.finding(ip, "reading whether "+instance+", which holds "+ip+", is still in service"), false, e
	}
	evidence := fmt.Sprintf("holder=%s instance=%s group=%s lifecycle=%s health=%s", id, instance, orNone(st.Group), st.LifecycleState, st.HealthStatus)
	if found && st.Live(r.Group) {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s of group %s, which is InService and Healthy: haagent waits and does not take it", ip, instance, r.Group), evidence).
			WithFix(fmt.Sprintf("address.private_ip needs a replacement that terminates %[1]s first: haagent never takes the address from a live Services machine, and this instance stays in Pending:Wait until it has it. Terminate it: aws autoscaling terminate-instance-in-auto-scaling-group --instance-id %[1]s --no-should-decrement-desired-capacity (for an instance refresh, cancel it and start it again with --preferences MinHealthyPercentage=0,MaxHealthyPercentage=100)", instance)), true, nil
	}
	// A live member of another group is some other service that answers on the address: the
	// config names the wrong address, and taking it would break that service.
	if found && st.Live(st.Group) {
		return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s, InService and Healthy in another group, %s: haagent does not take it", ip, instance, st.Group), evidence).
			WithFix(fmt.Sprintf("address.private_ip belongs to a live instance of group %s: choose an address no other service uses (aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=%s shows its holder)", st.Group, ip)), true, nil
	}
	if found && st.Group == r.Group && strings.HasPrefix(st.LifecycleState, "Pending") {
		return c.pendingHolder(ctx, r, id, instance, evidence)
	}
	if !found {
		return c.standaloneHolder(ctx, r, id, instance)
	}
	c.log.Info("taking the address from an instance that no longer serves it", "ip", ip, "holder", id, "instance", instance,
		"state", fmt.Sprintf("%s and %s in group %s", st.LifecycleState, st.HealthStatus, orNone(st.Group)))
	return findings.Finding{}, false, nil
}

// pendingHolder: a Pending instance of this group holds the address (a replacement being
// installed on it). It keeps it unless this instance was launched after it: the later launch is
// the one the group is bringing in, and the rule is the same seen from either side, so two
// Pending instances never take the address from each other in turn.
func (c *Client) pendingHolder(ctx context.Context, r ClaimRequest, id, instance, evidence string) (findings.Finding, bool, error) {
	ip := r.IP.String()
	got, err := c.describeInstances(ctx, instance, c.instance)
	if err != nil {
		e := apiErr("ec2:DescribeInstances", err)
		return e.finding(ip, "reading when "+instance+", which holds "+ip+", was launched"), false, e
	}
	theirs, mine := got[instance], got[c.instance]
	evidence += fmt.Sprintf(" holder_launched=%s this_launched=%s", stamp(theirs.LaunchTime), stamp(mine.LaunchTime))
	if mine.LaunchTime != nil && theirs.LaunchTime != nil && mine.LaunchTime.After(*theirs.LaunchTime) {
		c.log.Info("taking the address from an earlier Pending launch of the group", "ip", ip, "holder", id, "instance", instance)
		return findings.Finding{}, false, nil
	}
	return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s, a later (or equal) launch of group %s still Pending: haagent does not take it back", ip, instance, r.Group), evidence).
		WithFix(fmt.Sprintf("group %[1]s runs more than one Services machine: %[2]s was launched after this instance and holds the address. Keep one: aws autoscaling set-desired-capacity --auto-scaling-group-name %[1]s --desired-capacity 1, or terminate this instance (%[3]s) if it is the one being replaced", r.Group, instance, c.instance)), true, nil
}

// standaloneHolder: the holder's instance is in no Auto Scaling group. EC2 says whether it
// still runs: AWS deletes a terminated instance's primary interface, so such a holder is
// usually a live machine (launched by hand, detached from the group, another service).
func (c *Client) standaloneHolder(ctx context.Context, r ClaimRequest, id, instance string) (findings.Finding, bool, error) {
	ip := r.IP.String()
	got, err := c.describeInstances(ctx, instance)
	if err != nil {
		e := apiErr("ec2:DescribeInstances", err)
		return e.finding(ip, "reading whether "+instance+", which holds "+ip+", still runs"), false, e
	}
	i, ok := got[instance]
	state := "unknown to EC2"
	if ok && i.State != nil {
		state = string(i.State.Name)
	}
	switch state {
	case "unknown to EC2", string(types.InstanceStateNameShuttingDown), string(types.InstanceStateNameTerminated):
		c.log.Info("taking the address from an instance that no longer serves it", "ip", ip, "holder", id, "instance", instance, "state", state+", in no Auto Scaling group")
		return findings.Finding{}, false, nil
	}
	return findings.New(findings.AddressHeld, ip, fmt.Sprintf("%s is held by %s on instance %s, which is in no Auto Scaling group and %s: haagent does not take an address from a machine that may still serve on it", ip, id, instance, state),
		fmt.Sprintf("holder=%s instance=%s group=none state=%s", id, instance, state)).
		WithFix(fmt.Sprintf("if %[1]s must keep %[3]s, choose another address.private_ip. Otherwise free it and haagent takes it at its next attempt: aws ec2 unassign-private-ip-addresses --network-interface-id %[2]s --private-ip-addresses %[3]s (or terminate the instance: aws ec2 terminate-instances --instance-ids %[1]s)", instance, id, ip)), true, nil
}

// describeInstances reads the given instances; one EC2 no longer knows is left out of the
// map (EC2 refuses the whole call then, so the others are asked again one by one).
func (c *Client) describeInstances(ctx context.Context, ids ...string) (map[string]types.Instance, error) {
	out := map[string]types.Instance{}
	res, err := c.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "InvalidInstanceID.NotFound" {
		if len(ids) == 1 {
			return out, nil
		}
		for _, id := range ids {
			one, err := c.describeInstances(ctx, id)
			if err != nil {
				return nil, err
			}
			maps.Copy(out, one)
		}
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, rv := range res.Reservations {
		for _, i := range rv.Instances {
			out[aws.ToString(i.InstanceId)] = i
		}
	}
	return out, nil
}

func stamp(t *time.Time) string {
	if t == nil {
		return "unknown"
	}
	return t.UTC().Format(time.RFC3339)
}

// selfInService refuses the claim while this instance is leaving service in its group:
// Unhealthy (marked for replacement), Terminating*, Standby, Detaching or Detached. Its
// replacement may hold the address, and taking it back would cut the builders off the new
// machine. Without the group (r.Holders nil) nothing is known, and nothing is refused here.
func (c *Client) selfInService(ctx context.Context, r ClaimRequest) (findings.Finding, error) {
	if r.Holders == nil {
		return findings.Finding{}, nil
	}
	ip := r.IP.String()
	st, found, err := r.Holders.Instance(ctx, c.instance)
	if err != nil {
		e := apiErr("autoscaling:DescribeAutoScalingInstances", err)
		return e.finding(ip, "reading this instance's own state in its group"), fmt.Errorf("reading %s's own state before claiming %s: %w", c.instance, ip, e)
	}
	if !found || !leaving(st) {
		return findings.Finding{}, nil
	}
	return findings.New(findings.AddressSelfLeaving, ip+" on "+c.instance, fmt.Sprintf("this instance %s is %s and %s in group %s: it does not claim %s, which its replacement needs", c.instance, st.LifecycleState, st.HealthStatus, orNone(st.Group), ip),
			fmt.Sprintf("instance=%s group=%s lifecycle=%s health=%s", c.instance, orNone(st.Group), st.LifecycleState, st.HealthStatus)).
			WithFix(fmt.Sprintf("nothing to do if the group is replacing this instance. To keep it instead: aws autoscaling set-instance-health --instance-id %[1]s --health-status Healthy (or exit-standby --instance-ids %[1]s --auto-scaling-group-name %[2]s); haagent asks again every address.retry_every", c.instance, orNone(st.Group))),
		fmt.Errorf("claiming %s: %w", ip, ErrLeaving)
}

// leaving: the states in which an instance is on its way out of the group's service.
func leaving(st asg.InstanceState) bool {
	if strings.EqualFold(st.HealthStatus, "UNHEALTHY") {
		return true
	}
	for _, p := range []string{"Terminating", "Terminated", "Standby", "EnteringStandby", "Detaching", "Detached"} {
		if strings.HasPrefix(st.LifecycleState, p) {
			return true
		}
	}
	return false
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

// WaitClaim claims r.IP, waiting every retry between attempts while a live instance holds it,
// or while this instance is itself leaving service (ErrLeaving)
// (onHeld, if set, gets the ADDRESS_HELD finding of each such attempt, for STATUS= and the
// journal). Anything else ends it: a finding that waiting does not heal goes back to the
// caller, whose step retry scope decides.
func (c *Client) WaitClaim(ctx context.Context, r ClaimRequest, retry time.Duration, onHeld func([]findings.Finding)) (Assigned, []findings.Finding, error) {
	for {
		a, fs, err := c.Claim(ctx, r)
		if !errors.Is(err, ErrHeld) && !errors.Is(err, ErrLeaving) {
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

// StillHere reads this instance's primary interface from EC2 and reports whether it still lists
// ip: the OS-side checks never cross the VPC (the address is on a local interface, and a
// connection to it goes over lo), so only EC2 tells that another instance, or an operator, has
// taken the address and the builders reach someone else. Not listed is ADDRESS_NOT_HERE.
func (c *Client) StillHere(ctx context.Context, md Metadata, ip netip.Addr) ([]findings.Finding, error) {
	ni, err := md.PrimaryInterface(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading this instance's primary network interface from IMDS: %w", err)
	}
	target := ip.String() + " on " + ni.ID
	out, err := c.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{ni.ID}})
	if err != nil {
		e := apiErr("ec2:DescribeNetworkInterfaces", err)
		return []findings.Finding{e.finding(target, "reading "+ni.ID+" to check that it still holds "+ip.String())}, fmt.Errorf("reading %s: %w", ni.ID, e)
	}
	var listed []string
	for _, n := range out.NetworkInterfaces {
		for _, a := range n.PrivateIpAddresses {
			listed = append(listed, aws.ToString(a.PrivateIpAddress))
		}
	}
	if slices.Contains(listed, ip.String()) {
		return nil, nil
	}
	return []findings.Finding{findings.New(findings.AddressNotHere, target,
		fmt.Sprintf("EC2 no longer lists %s on this instance's interface %s: the builders reach whoever holds it now, not this machine", ip, ni.ID),
		fmt.Sprintf("interface %s holds %s", ni.ID, strings.Join(listed, " "))).
		WithFix(fmt.Sprintf("see who holds it: aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=%[1]s. If that instance is the Services machine the builders should use, terminate this one; if this one should serve, take the other out of service and restart haagent here (systemctl restart haagent): its address step moves %[1]s back", ip))}, nil
}

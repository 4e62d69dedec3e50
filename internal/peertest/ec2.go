package peertest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// No EC2 API server runs here (PEERS.md), so this is one for the calls internal/address makes:
// an HTTP endpoint on loopback that decodes the EC2 Query protocol the SDK sends (a
// form-encoded POST of Action, Version 2016-11-15, flattened lists such as
// PrivateIpAddress.1 and Filter.1.Name / Filter.1.Value.1), verifies the SigV4 signature,
// keeps one region's subnets and network interfaces (which interface holds which private
// IP, which instances exist and in which state), and answers with the shapes of the EC2 API
// Reference pages AssignPrivateIpAddresses, DescribeNetworkInterfaces, DescribeInstances and
// DescribeSubnets (root element ActionResponse in the
// 2016-11-15 namespace, lists as xxxSet/item), and errors as its "Error codes" page shows
// them: <Response><Errors><Error><Code>...</Code><Message>...</Message></Error></Errors>
// <RequestID>...</RequestID></Response>. A wrong secret is AuthFailure; an action the test
// denies is UnauthorizedOperation, as an IAM policy without it answers; a signature scoped to
// another region than the endpoint's is refused as well. Terminating an instance deletes its
// primary interface, as EC2 does (DeleteOnTermination), and leaves the instance visible as
// terminated; an instance id EC2 never had is InvalidInstanceID.NotFound.

// EC2 is the EC2 API endpoint.
type EC2 struct {
	URL                  string
	AccessKey, SecretKey string
	// Region is the one the endpoint serves (us-east-1 unless the test sets it before the
	// first request): a request signed for another is refused.
	Region string

	mu      sync.Mutex
	calls   []EC2Call
	enis    map[string]*ENI
	order   []string
	subnets []EC2Subnet
	// instances: an ENI's instance is added as running at AddENI unless the test added it.
	instances map[string]*EC2Instance
	deny      map[string]bool
	changed   chan struct{}
}

// ENI is one network interface. IPs holds its private IPv4 addresses, the primary first.
type ENI struct {
	ID, MAC, SubnetID, VPCID string
	// Instance is the instance it is attached to ("": available, attached to none).
	Instance    string
	DeviceIndex int
	IPs         []string
	// RequesterManaged: an interface AWS manages for a service (a NAT gateway, an endpoint).
	RequesterManaged bool
}

// EC2Instance is one instance as DescribeInstances shows it.
type EC2Instance struct {
	ID string
	// State is pending, running, shutting-down, terminated, stopping or stopped.
	State      string
	LaunchTime time.Time
}

// ec2Epoch is the launch time of instances the tests do not date.
var ec2Epoch = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// EC2Subnet is one subnet.
type EC2Subnet struct {
	ID, VPCID, CIDR, AZ string
}

// EC2Call is one decoded request that passed the signature check.
type EC2Call struct {
	Action string
	Params url.Values
}

// StartEC2 serves an empty region on a free loopback port, accepting requests signed with the
// given credentials.
func StartEC2(t testing.TB, access, secret string) *EC2 {
	t.Helper()
	e := &EC2{AccessKey: access, SecretKey: secret, Region: "us-east-1", enis: map[string]*ENI{}, instances: map[string]*EC2Instance{}, deny: map[string]bool{}, changed: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(srv.Close)
	e.URL = srv.URL
	return e
}

// AddSubnet creates a subnet.
func (e *EC2) AddSubnet(s EC2Subnet) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.subnets = append(e.subnets, s)
}

// AddENI creates a network interface.
func (e *EC2) AddENI(n ENI) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n.IPs = append([]string(nil), n.IPs...)
	e.enis[n.ID] = &n
	e.order = append(e.order, n.ID)
	if n.Instance != "" && e.instances[n.Instance] == nil {
		e.instances[n.Instance] = &EC2Instance{ID: n.Instance, State: "running", LaunchTime: ec2Epoch}
	}
}

// AddInstance creates (or replaces) an instance.
func (e *EC2) AddInstance(i EC2Instance) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i.LaunchTime.IsZero() {
		i.LaunchTime = ec2Epoch
	}
	e.instances[i.ID] = &i
}

// Move puts ip on interface to, taking it from whichever interface has it (what an operator's
// assign-private-ip-addresses --allow-reassignment does).
func (e *EC2) Move(ip, to string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, n := range e.enis {
		n.IPs = remove(n.IPs, ip)
	}
	if n := e.enis[to]; n != nil {
		n.IPs = append(n.IPs, ip)
	}
}

// ForgetInstance removes an instance from DescribeInstances (EC2 lists a terminated one for
// about an hour, then answers InvalidInstanceID.NotFound).
func (e *EC2) ForgetInstance(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.instances, id)
}

// SetInstanceState changes an instance's state. terminated also does what EC2 does to its
// interfaces: the primary one (device index 0, DeleteOnTermination) is deleted, freeing its
// addresses, and the others are detached.
func (e *EC2) SetInstanceState(id, state string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.instances[id] == nil {
		e.instances[id] = &EC2Instance{ID: id, LaunchTime: ec2Epoch}
	}
	e.instances[id].State = state
	if state != "terminated" {
		return
	}
	for eid, n := range e.enis {
		if n.Instance != id {
			continue
		}
		if n.DeviceIndex == 0 {
			delete(e.enis, eid)
		} else {
			n.Instance = ""
		}
	}
}

// DeleteENI removes an interface, as terminating its instance does to a primary interface
// (DeleteOnTermination): its addresses are free again.
func (e *EC2) DeleteENI(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.enis, id)
}

// Deny answers UnauthorizedOperation to an action.
func (e *EC2) Deny(action string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.deny[action] = true
}

// Holder returns the interface holding ip, "" when none.
func (e *EC2) Holder(ip string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range e.order {
		if n := e.enis[id]; n != nil && containsStr(n.IPs, ip) {
			return id
		}
	}
	return ""
}

// Calls returns the decoded requests so far, optionally only those of some actions.
func (e *EC2) Calls(actions ...string) []EC2Call {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []EC2Call
	for _, c := range e.calls {
		if len(actions) == 0 || contains(actions, c.Action) {
			out = append(out, c)
		}
	}
	return out
}

func containsStr(list []string, s string) bool { return contains(list, s) }

const ec2NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

func (e *EC2) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		ec2Error(w, 400, "InvalidRequest", "the EC2 Query protocol is a form-encoded POST")
		return
	}
	if err := verifySigV4(r, body, "ec2", e.Region, e.AccessKey, e.SecretKey); err != nil {
		// EC2 answers an unknown key and a wrong signature alike: 401 AuthFailure, "AWS was not
		// able to validate the provided access credentials".
		ec2Error(w, 401, "AuthFailure", "AWS was not able to validate the provided access credentials")
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || form.Get("Version") != "2016-11-15" {
		ec2Error(w, 400, "InvalidRequest", "bad form or Version (want 2016-11-15)")
		return
	}
	action := form.Get("Action")
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, EC2Call{Action: action, Params: form})
	close(e.changed)
	e.changed = make(chan struct{})
	if e.deny[action] {
		ec2Error(w, 403, "UnauthorizedOperation", "You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/circleci-services/i-x is not authorized to perform: ec2:"+action+" because no identity-based policy allows the ec2:"+action+" action.")
		return
	}
	switch action {
	case "AssignPrivateIpAddresses":
		e.assign(w, form)
	case "DescribeNetworkInterfaces":
		e.describeENIs(w, form)
	case "DescribeSubnets":
		e.describeSubnets(w, form)
	case "DescribeInstances":
		e.describeInstances(w, form)
	default:
		ec2Error(w, 400, "InvalidAction", "The action "+action+" is not valid for this web service.")
	}
}

func (e *EC2) assign(w http.ResponseWriter, form url.Values) {
	id := form.Get("NetworkInterfaceId")
	n := e.enis[id]
	if n == nil {
		ec2Error(w, 400, "InvalidNetworkInterfaceID.NotFound", fmt.Sprintf("The networkInterface ID '%s' does not exist", id))
		return
	}
	ips := flat(form, "PrivateIpAddress")
	if len(ips) == 0 {
		ec2Error(w, 400, "MissingParameter", "Either PrivateIpAddress or SecondaryPrivateIpAddressCount must be given")
		return
	}
	reassign := form.Get("AllowReassignment") == "true"
	var sub netip.Prefix
	for _, s := range e.subnets {
		if s.ID == n.SubnetID {
			sub, _ = netip.ParsePrefix(s.CIDR)
		}
	}
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip)
		if err != nil || !sub.Contains(a) {
			ec2Error(w, 400, "InvalidParameterValue", fmt.Sprintf("Address %s does not fall within the subnet's address range", ip))
			return
		}
		if reserved(sub, a) {
			ec2Error(w, 400, "InvalidParameterValue", fmt.Sprintf("Address %s is in subnet's reserved address range", ip))
			return
		}
		for _, other := range e.enis {
			if other == n || !contains(other.IPs, ip) {
				continue
			}
			if other.IPs[0] == ip {
				ec2Error(w, 400, "InvalidParameterValue", fmt.Sprintf("Address %s is the primary private IP address of %s and cannot be reassigned", ip, other.ID))
				return
			}
			if !reassign {
				ec2Error(w, 400, "PrivateIpAddressInUse", fmt.Sprintf("Address %s is in use.", ip))
				return
			}
		}
	}
	// Every address checked: move them (the call is all or nothing).
	var items strings.Builder
	for _, ip := range ips {
		for _, other := range e.enis {
			if other != n {
				other.IPs = remove(other.IPs, ip)
			}
		}
		if !contains(n.IPs, ip) {
			n.IPs = append(n.IPs, ip)
		}
		fmt.Fprintf(&items, "<item><privateIpAddress>%s</privateIpAddress></item>", esc(ip))
	}
	ec2OK(w, "AssignPrivateIpAddresses", fmt.Sprintf("<networkInterfaceId>%s</networkInterfaceId><assignedPrivateIpAddressesSet>%s</assignedPrivateIpAddressesSet><assignedIpv4PrefixSet/>",
		esc(n.ID), items.String()))
}

// reserved reports the five addresses AWS keeps in every subnet: the network address, the
// next three (router, DNS, future use) and the last.
func reserved(sub netip.Prefix, a netip.Addr) bool {
	first := sub.Masked().Addr()
	b := first.As4()
	host := uint32(1)<<(32-sub.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	c := a.As4()
	x := uint32(c[0])<<24 | uint32(c[1])<<16 | uint32(c[2])<<8 | uint32(c[3])
	return x-v < 4 || x == v+host
}

func remove(list []string, s string) []string {
	out := list[:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

// filters decodes Filter.N.Name and Filter.N.Value.M.
func filters(form url.Values) map[string][]string {
	out := map[string][]string{}
	for i := 1; ; i++ {
		name, ok := form[fmt.Sprintf("Filter.%d.Name", i)]
		if !ok {
			return out
		}
		out[name[0]] = flat(form, fmt.Sprintf("Filter.%d.Value", i))
	}
}

// flat decodes an EC2 Query flattened list: Name.1, Name.2, ...
func flat(form url.Values, name string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[fmt.Sprintf("%s.%d", name, i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

func anyOf(values []string, f func(string) bool) bool {
	for _, v := range values {
		if f(v) {
			return true
		}
	}
	return false
}

func (e *EC2) describeENIs(w http.ResponseWriter, form url.Values) {
	ids := flat(form, "NetworkInterfaceId")
	for _, id := range ids {
		if e.enis[id] == nil {
			ec2Error(w, 400, "InvalidNetworkInterfaceID.NotFound", fmt.Sprintf("The networkInterface ID '%s' does not exist", id))
			return
		}
	}
	fs := filters(form)
	for name := range fs {
		switch name {
		case "addresses.private-ip-address", "private-ip-address", "vpc-id", "subnet-id", "attachment.instance-id", "attachment.device-index", "network-interface-id":
		default:
			ec2Error(w, 400, "InvalidParameterValue", fmt.Sprintf("The filter '%s' is invalid", name))
			return
		}
	}
	var b strings.Builder
	for _, id := range e.order {
		n := e.enis[id]
		if n == nil || len(ids) > 0 && !contains(ids, id) {
			continue
		}
		match := true
		for name, vals := range fs {
			var ok bool
			switch name {
			case "addresses.private-ip-address":
				ok = anyOf(vals, func(v string) bool { return contains(n.IPs, v) })
			case "private-ip-address":
				ok = len(n.IPs) > 0 && contains(vals, n.IPs[0])
			case "vpc-id":
				ok = contains(vals, n.VPCID)
			case "subnet-id":
				ok = contains(vals, n.SubnetID)
			case "attachment.instance-id":
				ok = n.Instance != "" && contains(vals, n.Instance)
			case "attachment.device-index":
				ok = n.Instance != "" && contains(vals, fmt.Sprint(n.DeviceIndex))
			case "network-interface-id":
				ok = contains(vals, n.ID)
			}
			match = match && ok
		}
		if !match {
			continue
		}
		status, attach := "available", ""
		if n.Instance != "" {
			status = "in-use"
			attach = fmt.Sprintf("<attachment><attachmentId>eni-attach-%s</attachmentId><instanceId>%s</instanceId><instanceOwnerId>123456789012</instanceOwnerId><deviceIndex>%d</deviceIndex><networkCardIndex>0</networkCardIndex><status>attached</status><attachTime>%s</attachTime><deleteOnTermination>true</deleteOnTermination></attachment>",
				esc(strings.TrimPrefix(n.ID, "eni-")), esc(n.Instance), n.DeviceIndex, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).Format("2006-01-02T15:04:05.000Z"))
		}
		var ips strings.Builder
		for i, ip := range n.IPs {
			fmt.Fprintf(&ips, "<item><privateIpAddress>%s</privateIpAddress><primary>%t</primary></item>", esc(ip), i == 0)
		}
		primary := ""
		if len(n.IPs) > 0 {
			primary = n.IPs[0]
		}
		fmt.Fprintf(&b, "<item><networkInterfaceId>%s</networkInterfaceId><subnetId>%s</subnetId><vpcId>%s</vpcId><availabilityZone>us-east-1a</availabilityZone><description/><ownerId>123456789012</ownerId><requesterManaged>%t</requesterManaged><status>%s</status><macAddress>%s</macAddress><privateIpAddress>%s</privateIpAddress><sourceDestCheck>true</sourceDestCheck><interfaceType>interface</interfaceType><groupSet/>%s<tagSet/><privateIpAddressesSet>%s</privateIpAddressesSet><ipv6AddressesSet/></item>",
			esc(n.ID), esc(n.SubnetID), esc(n.VPCID), n.RequesterManaged, status, esc(n.MAC), esc(primary), attach, ips.String())
	}
	ec2OK(w, "DescribeNetworkInterfaces", "<networkInterfaceSet>"+b.String()+"</networkInterfaceSet>")
}

func (e *EC2) describeSubnets(w http.ResponseWriter, form url.Values) {
	ids := flat(form, "SubnetId")
	fs := filters(form)
	for name := range fs {
		switch name {
		case "vpc-id", "subnet-id", "cidr-block":
		default:
			ec2Error(w, 400, "InvalidParameterValue", fmt.Sprintf("The filter '%s' is invalid", name))
			return
		}
	}
	var b strings.Builder
	found := map[string]bool{}
	for _, s := range e.subnets {
		if len(ids) > 0 && !contains(ids, s.ID) {
			continue
		}
		found[s.ID] = true
		if v, ok := fs["vpc-id"]; ok && !contains(v, s.VPCID) {
			continue
		}
		if v, ok := fs["subnet-id"]; ok && !contains(v, s.ID) {
			continue
		}
		if v, ok := fs["cidr-block"]; ok && !contains(v, s.CIDR) {
			continue
		}
		fmt.Fprintf(&b, "<item><subnetId>%s</subnetId><subnetArn>arn:aws:ec2:us-east-1:123456789012:subnet/%s</subnetArn><state>available</state><ownerId>123456789012</ownerId><vpcId>%s</vpcId><cidrBlock>%s</cidrBlock><availableIpAddressCount>250</availableIpAddressCount><availabilityZone>%s</availabilityZone><defaultForAz>false</defaultForAz><mapPublicIpOnLaunch>false</mapPublicIpOnLaunch><tagSet/></item>",
			esc(s.ID), esc(s.ID), esc(s.VPCID), esc(s.CIDR), esc(s.AZ))
	}
	for _, id := range ids {
		if !found[id] {
			ec2Error(w, 400, "InvalidSubnetID.NotFound", fmt.Sprintf("The subnet ID '%s' does not exist", id))
			return
		}
	}
	ec2OK(w, "DescribeSubnets", "<subnetSet>"+b.String()+"</subnetSet>")
}

// ec2StateCodes are the instanceState codes of the API reference's InstanceState.
var ec2StateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

// describeInstances answers InstanceId.N (the only form internal/address sends): an id EC2
// never had refuses the whole call, as EC2 does; a terminated instance is still listed.
func (e *EC2) describeInstances(w http.ResponseWriter, form url.Values) {
	ids := flat(form, "InstanceId")
	var b strings.Builder
	for _, id := range ids {
		i := e.instances[id]
		if i == nil {
			ec2Error(w, 400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id))
			return
		}
		fmt.Fprintf(&b, "<item><reservationId>r-%s</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet><item><instanceId>%s</instanceId><imageId>ami-0abcdef1234567890</imageId><instanceState><code>%d</code><name>%s</name></instanceState><instanceType>m5.2xlarge</instanceType><launchTime>%s</launchTime><placement><availabilityZone>us-east-1a</availabilityZone></placement></item></instancesSet></item>",
			esc(strings.TrimPrefix(id, "i-")), esc(id), ec2StateCodes[i.State], esc(i.State), i.LaunchTime.UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	ec2OK(w, "DescribeInstances", "<reservationSet>"+b.String()+"</reservationSet>")
}

func ec2OK(w http.ResponseWriter, action, inner string) {
	id := reqID()
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<%sResponse xmlns="%s"><requestId>%s</requestId>%s</%sResponse>`, action, ec2NS, id, inner, action)
}

func ec2Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>`, code, esc(msg), reqID())
}

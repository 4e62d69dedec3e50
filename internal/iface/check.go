package iface

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/haagent/haagent/internal/findings"
)

// HereOptions say which address the builders use: the stable IP (private_ip mode) or the
// name (route53 mode), or both.
type HereOptions struct {
	IP   string
	Name string
	// TTL is the record's TTL: a resolver may answer with the previous instance's address
	// for that long after the UPSERT went INSYNC, so a wrong answer is asked again until the
	// TTL (plus one interval) has passed before it counts.
	TTL time.Duration
	// NotFoundFor is how long a "no such name" answer is asked again: a resolver that cached
	// the negative answer before the UPSERT (builders already asking for the name) keeps it for
	// the zone's SOA negative TTL (900 s in a zone Route 53 creates), well past the record's
	// TTL. Zero (or less than the TTL) waits the TTL only. The address step passes
	// address.route53.sync_timeout.
	NotFoundFor time.Duration
	// Every is the interval between two lookups of a stale answer (default 2s).
	Every    time.Duration
	Resolver *net.Resolver `json:"-"`
}

// CheckHere checks, from this machine, that the address the builders use reaches this
// machine: the IP is on a local interface, and the name resolves only to local addresses.
// It returns ADDRESS_NOT_HERE findings, none when all is well.
func CheckHere(ctx context.Context, o HereOptions) []findings.Finding {
	var fs []findings.Finding
	if o.IP != "" {
		if f, ok := ipHere(o.IP); !ok {
			fs = append(fs, f)
		}
	}
	if o.Name != "" {
		if f, ok := nameHere(ctx, o); !ok {
			fs = append(fs, f)
		}
	}
	return fs
}

func ipHere(ip string) (findings.Finding, bool) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return findings.New(findings.AddressNotHere, ip, "address.private_ip "+strconv.Quote(ip)+" is not an IP address", ""), false
	}
	name, err := Local(addr)
	if err != nil {
		return findings.New(findings.AddressNotHere, ip, "cannot list this machine's addresses to find "+ip, err.Error()), false
	}
	if name != "" {
		return findings.Finding{}, true
	}
	return findings.New(findings.AddressNotHere, ip,
		fmt.Sprintf("%s, the address the builders use, is on no interface of this machine: CircleCI would be installed on an address nobody reaches", ip),
		"local addresses: "+localAddrs()).
		WithFix(fmt.Sprintf("check that EC2 assigned %s to this instance's primary interface (aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=%s) and that `ip -4 addr` shows it; haagent adds it itself once EC2 has assigned it", ip, ip)), false
}

// nameHere resolves the name until every answer is local, or the TTL has passed.
func nameHere(ctx context.Context, o HereOptions) (findings.Finding, bool) {
	r := o.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	every := o.Every
	if every <= 0 {
		every = 2 * time.Second
	}
	start := time.Now()
	deadline := start.Add(o.TTL + every)
	notFound := start.Add(max(o.TTL, o.NotFoundFor) + every)
	lookups := 0
	for {
		lookups++
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ips, err := r.LookupNetIP(lctx, "ip4", o.Name)
		cancel()
		var foreign []string
		if err == nil {
			for _, ip := range ips {
				if n, lerr := Local(ip.Unmap()); lerr != nil || n == "" {
					foreign = append(foreign, ip.Unmap().String())
				}
			}
			if len(foreign) == 0 && len(ips) > 0 {
				return findings.Finding{}, true
			}
		}
		until := deadline
		if isNotFound(err) {
			until = notFound
		}
		if ctx.Err() != nil || !time.Now().Before(until) {
			return nameFinding(o, ips, foreign, err, lookups), false
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nameFinding(o, ips, foreign, err, lookups), false
		case <-t.C:
		}
	}
}

// isNotFound: the resolver says the name does not exist (NXDOMAIN, or no A record).
func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func nameFinding(o HereOptions, ips []netip.Addr, foreign []string, err error, lookups int) findings.Finding {
	if isNotFound(err) {
		return findings.New(findings.AddressNotHere, o.Name,
			fmt.Sprintf("%s, the name the builders use, still does not exist for this machine's resolver (%d lookups over %s)", o.Name, lookups, max(o.TTL, o.NotFoundFor)),
			err.Error()).
			WithFix("a resolver keeps a \"no such name\" answer cached for the zone's negative TTL (the SOA record's last field: 900 s in a zone Route 53 creates) when the name was asked before the record existed, and haagent retries the step. If it lasts beyond that, associate the private hosted zone of address.route53.zone_id with this VPC (aws route53 associate-vpc-with-hosted-zone) and enable the VPC's enableDnsSupport and enableDnsHostnames; `resolvectl flush-caches` clears this machine's cache, `getent hosts " + o.Name + "` checks")
	}
	if err != nil {
		return findings.New(findings.AddressNotHere, o.Name,
			fmt.Sprintf("%s, the name the builders use, does not resolve from this machine (%d lookups over the record's TTL %s)", o.Name, lookups, o.TTL),
			err.Error()).
			WithFix("associate the private hosted zone of address.route53.zone_id with this VPC (aws route53 associate-vpc-with-hosted-zone), and enable the VPC's enableDnsSupport and enableDnsHostnames; check with `getent hosts " + o.Name + "` on this machine")
	}
	got := make([]string, 0, len(ips))
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	return findings.New(findings.AddressNotHere, o.Name,
		fmt.Sprintf("%s, the name the builders use, resolves to %s, which is not this machine, after the record's TTL %s (%d lookups)", o.Name, strings.Join(foreign, ","), o.TTL, lookups),
		"answers: "+strings.Join(got, ",")+"; local addresses: "+localAddrs()).
		WithFix("the name must have one A record, this instance's private IP: check that no other record set (another zone associated with this VPC, a weighted or multivalue record) answers for " + o.Name + ", and that this machine's resolver (resolvectl status) asks the VPC resolver")
}

func localAddrs() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "unknown: " + err.Error()
	}
	var out []string
	for _, a := range addrs {
		if p, ok := prefixOf(a); ok && p.Addr().Is4() && !p.Addr().IsLoopback() {
			out = append(out, p.String())
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

// Port is a service the builders (or users) reach on the stable address.
type Port struct {
	Port int
	What string
	Fix  string
}

// PostBoot are the ports checked on the stable address once CircleCI runs: the Nomad
// server's RPC port, which every builder's Nomad client dials (servers = ["ADDR:4647"]),
// and the frontend.
var PostBoot = []Port{
	{4647, "the Nomad server (RPC), which the builders' Nomad clients dial",
		"the nomad container must run and publish 4647 on all addresses (docker ps --filter name=nomad; replicatedctl app status); the builders also need the Services security group to allow TCP 4647 from the builders' security group, which this check from the machine itself does not cross"},
	{443, "the CircleCI frontend (HTTPS)",
		"the frontend container must run and publish 443 (docker ps --filter name=frontend); users and builders also need the Services security group to allow TCP 443 from them, which this check from the machine itself does not cross"},
}

// CheckReachable dials each port on host (the stable IP or the name) from this machine and
// returns an ADDRESS_UNREACHABLE finding for each that does not accept a connection.
func CheckReachable(ctx context.Context, host string, ports []Port, timeout time.Duration, r *net.Resolver) []findings.Finding {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	d := net.Dialer{Timeout: timeout, Resolver: r}
	var fs []findings.Finding
	for _, p := range ports {
		target := net.JoinHostPort(host, strconv.Itoa(p.Port))
		c, err := d.DialContext(ctx, "tcp", target)
		if err == nil {
			c.Close()
			continue
		}
		why := "does not answer"
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			why = "refuses connections (nothing listens there)"
		case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
			why = "does not answer within " + timeout.String()
		}
		fs = append(fs, findings.New(findings.AddressUnreachable, target,
			fmt.Sprintf("%s on %s %s: the builders use that address", p.What, target, why), err.Error()).WithFix(p.Fix))
	}
	return fs
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/address"
	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/iface"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/replicated"
)

// addressPlan is what the address: section asks of this machine: the stable IP the builders
// dial, the name they resolve, or both. The zero value asks nothing.
type addressPlan struct {
	PrivateIP string
	Name      string
	// TTL is the record's: how long a resolver may still answer the previous instance.
	TTL time.Duration
	// NotFoundFor is how long "no such name" is asked again (address.route53.sync_timeout): a
	// resolver may hold a negative answer cached before the record existed.
	NotFoundFor time.Duration
}

func (p addressPlan) on() bool { return p.PrivateIP != "" || p.Name != "" }

// localAddress is the installer's local-address: the stable IP when there is one (the
// Replicated daemon and operator take it as theirs, PRIVATE_ADDRESS), else the instance's own
// (with a name the record points at the instance's own IP).
func localAddress(p addressPlan, instanceIP string) string {
	if p.PrivateIP != "" {
		return p.PrivateIP
	}
	return instanceIP
}

// machineIn is what the OS side needs.
type machineIn struct {
	Root string
	Plan addressPlan
	// LocalIPv4 is the instance's own private IP (IMDS local-ipv4); Subnet the primary
	// interface's subnet CIDR ("" takes the primary address's prefix).
	LocalIPv4, Subnet string
	// Systemd: the machine's own systemd runs Replicated's units (not with --root).
	Systemd bool
	Log     *slog.Logger
}

// addressOnMachine is the OS side of the address step, after EC2 (or Route 53) has done its
// part: the stable IP on the primary interface (again at every boot: see package iface), the
// installer's files rewritten when Replicated was installed here with another address, and the
// check that the address the builders use reaches this machine. It returns its findings; a
// failure holds the blocking ones.
func addressOnMachine(ctx context.Context, in machineIn) ([]findings.Finding, error) {
	var fs []findings.Finding
	p := in.Plan
	if p.PrivateIP != "" {
		_, err := iface.Ensure(ctx, iface.Options{Root: in.Root, LocalIPv4: in.LocalIPv4, Address: p.PrivateIP,
			SubnetCIDR: in.Subnet, Log: in.Log})
		var nse *iface.NotInSubnetError
		switch {
		case errors.As(err, &nse):
			return fs, &findings.Failure{Findings: []findings.Finding{notInSubnet(nse, in.LocalIPv4)}}
		case err != nil:
			return fs, fmt.Errorf("putting %s on the primary interface: %w", p.PrivateIP, err)
		}
		f, err := rewriteInstalledAddress(ctx, in.Root, in.Systemd, p.PrivateIP)
		if err != nil {
			return fs, err
		}
		if f != nil {
			fs = append(fs, *f)
		}
	}
	here := iface.CheckHere(ctx, iface.HereOptions{IP: p.PrivateIP, Name: p.Name, TTL: p.TTL, NotFoundFor: p.NotFoundFor})
	fs = append(fs, here...)
	if len(here) > 0 {
		return fs, &findings.Failure{Findings: here}
	}
	return fs, nil
}

// notInSubnet is the OS side's ADDRESS_NOT_IN_SUBNET: the interface's subnet (from IMDS, else
// the primary address's prefix) does not hold the address, with what was seen and the fix.
func notInSubnet(e *iface.NotInSubnetError, localIPv4 string) findings.Finding {
	return findings.New(findings.AddressNotInSubnet, e.Address, e.Error(),
		fmt.Sprintf("address=%s interface_subnet=%s local_ipv4=%s", e.Address, e.Subnet, localIPv4)).
		WithFix(fmt.Sprintf("a private IP cannot leave its subnet: confine the group to the subnet that holds %s (aws ec2 describe-subnets --filters Name=cidr-block,Values=... shows it; then aws autoscaling update-auto-scaling-group --auto-scaling-group-name GROUP --vpc-zone-identifier SUBNET), or choose an address.private_ip in %s, or use address.route53", e.Address, e.Subnet))
}

// rewriteInstalledAddress puts the stable IP in Replicated's environment files when it was
// installed here with another address, and restarts the units that read them (under systemd
// only: with --root there is no unit to restart, and the finding says what to do).
func rewriteInstalledAddress(ctx context.Context, root string, systemd bool, addr string) (*findings.Finding, error) {
	old := replicated.InstalledAddress(root)
	changed, err := replicated.RewriteAddress(root, addr)
	if err != nil {
		return nil, err
	}
	if len(changed) == 0 {
		return nil, nil
	}
	summary := fmt.Sprintf("Replicated was installed with local address %s: %s now hold %s", old, strings.Join(changed, " and "), addr)
	if systemd {
		if err := replicated.RestartForAddress(ctx); err != nil {
			// Put the old address back, so that the retry of this step rewrites and restarts
			// again: otherwise it would find the files rewritten and never restart the units,
			// which would keep the old address for good.
			if _, rerr := replicated.RewriteAddress(root, old); rerr != nil {
				return nil, fmt.Errorf("restarting Replicated after rewriting its address from %s to %s: %w (and putting %s back: %w)", old, addr, err, old, rerr)
			}
			return nil, fmt.Errorf("restarting Replicated after rewriting its address from %s to %s (the files hold %s again): %w", old, addr, old, err)
		}
		summary += "; replicated and replicated-operator restarted"
	} else {
		summary += "; restart replicated and replicated-operator (systemctl try-restart replicated replicated-operator)"
	}
	f := findings.New(findings.AddressRewritten, strings.Join(changed, ","), summary, "")
	return &f, nil
}

// addressReachable is the post-boot check: the Nomad server and the frontend accept
// connections on the address the builders use, each of them when both the IP and the name are
// configured (builders may be configured with either).
func addressReachable(ctx context.Context, p addressPlan, r *net.Resolver) []findings.Finding {
	var fs []findings.Finding
	for _, host := range []string{p.PrivateIP, p.Name} {
		if host != "" {
			fs = append(fs, iface.CheckReachable(ctx, host, iface.PostBoot, 5*time.Second, r)...)
		}
	}
	return fs
}

// planOf is what the config's address section asks of this machine.
func planOf(a config.Address) addressPlan {
	p := addressPlan{PrivateIP: a.PrivateIP}
	if a.Route53 != nil {
		p.Name = strings.TrimSuffix(a.Route53.Name, ".")
		p.TTL = time.Duration(a.Route53.TTL) * time.Second
		p.NotFoundFor = a.Route53.SyncTimeout.D()
	}
	return p
}

// addressIn is what the address step reads of the boot.
type addressIn struct {
	Root     string
	Config   config.Address
	Instance imds.Info
	IMDS     *imds.Client
	// ASG is the group's client, nil while the group is not known: the holder of private_ip
	// is then not taken from (ADDRESS_HELD), since nothing says whether it still serves.
	ASG *asg.Client
	// Systemd: Replicated's units are this machine's (not with --root).
	Systemd bool
}

// stepAddress gives this instance the address the builders know, before the installer runs:
// the AWS side (internal/address: the private IP moved to the primary interface, never from a
// live holder of the group; the Route 53 record UPSERTed and INSYNC), then the OS side
// (addressOnMachine) and the check that the address reaches this machine. It runs at every
// boot: the address goes back on the interface each time.
func stepAddress(ctx context.Context, x Exec, in addressIn) (struct{}, []findings.Finding, error) {
	a := in.Config
	if !a.On() {
		return struct{}{}, nil, nil
	}
	c, err := address.FromConfig(ctx, a, in.Instance.InstanceID, in.Instance.Region, x.Log, nil)
	if err != nil {
		return struct{}{}, nil, err
	}
	// A held address is reported at each attempt, while the step waits.
	ei := address.EnsureInput{Metadata: in.IMDS, OnHeld: func(fs []findings.Finding) {
		for _, f := range fs {
			x.Report(f)
		}
	}}
	if in.ASG != nil {
		ei.Group, ei.Holders, ei.Policy = in.ASG.Group, in.ASG, in.ASG
	}
	if ei.LocalIPv4, err = netip.ParseAddr(in.Instance.LocalIPv4); err != nil {
		return struct{}{}, nil, fmt.Errorf("reading the instance's local-ipv4 %q: %w", in.Instance.LocalIPv4, err)
	}
	res, fs, err := c.Ensure(ctx, a, ei)
	if err != nil {
		if blocking := blockingOf(fs); len(blocking) > 0 {
			return struct{}{}, fs, &findings.Failure{Findings: blocking}
		}
		return struct{}{}, fs, err
	}
	subnet := ""
	if res.Assigned != nil {
		subnet = res.Assigned.Subnet.String()
	}
	p := planOf(a)
	more, err := addressOnMachine(ctx, machineIn{Root: in.Root, Plan: p, LocalIPv4: in.Instance.LocalIPv4, Subnet: subnet,
		Systemd: in.Systemd, Log: x.Log})
	fs = append(fs, more...)
	if err != nil {
		return struct{}{}, fs, err
	}
	x.Log.Info("the stable address reaches this machine", "private_ip", p.PrivateIP, "name", p.Name)
	return struct{}{}, fs, nil
}

// addressCheckIn is what the post-boot check reads of the boot.
type addressCheckIn struct {
	Config   config.Address
	Instance imds.Info
	IMDS     *imds.Client
}

// addressCheckOut is what the post-boot check leaves running: the periodic EC2 re-read.
type addressCheckOut struct {
	Monitors []Monitor
}

// addressEvery is how often the address monitor asks EC2 whether the interface still lists
// private_ip: one DescribeNetworkInterfaces per machine every five minutes.
const addressEvery = 5 * time.Minute

// stepAddressCheck, after the boot: EC2 still lists private_ip on this instance's interface
// (the checks from inside the machine cannot see that another instance took it), and the Nomad
// server and the frontend answer on the address the builders use. While they do not, the run
// is not complete and the step is retried. Once it passes, a monitor asks EC2 again every
// addressEvery.
func stepAddressCheck(ctx context.Context, x Exec, in addressCheckIn) (addressCheckOut, []findings.Finding, error) {
	var out addressCheckOut
	p := planOf(in.Config)
	if !p.on() {
		return out, nil, nil
	}
	if p.PrivateIP != "" {
		ip, err := netip.ParseAddr(p.PrivateIP)
		if err != nil {
			return out, nil, fmt.Errorf("address.private_ip %q: %w", p.PrivateIP, err)
		}
		c, err := address.FromConfig(ctx, in.Config, in.Instance.InstanceID, in.Instance.Region, x.Log, nil)
		if err != nil {
			return out, nil, err
		}
		fs, err := c.StillHere(ctx, in.IMDS, ip)
		if len(fs) > 0 {
			return out, fs, &findings.Failure{Findings: blockingOf(fs)}
		}
		if err != nil {
			return out, nil, err
		}
		out.Monitors = append(out.Monitors, addressMonitor(c, in.IMDS, ip, nil))
	}
	if fs := addressReachable(ctx, p, nil); len(fs) > 0 {
		return out, nil, &findings.Failure{Findings: fs}
	}
	x.Log.Info("EC2 lists the stable address here, and the Nomad server and the frontend answer on it", "private_ip", p.PrivateIP, "name", p.Name)
	return out, nil, nil
}

// stillHere is what the address monitor asks: *address.Client.
type stillHere interface {
	StillHere(ctx context.Context, md address.Metadata, ip netip.Addr) ([]findings.Finding, error)
}

// addressReadBound bounds one EC2 read of the address monitor; addressAliveEvery is how often
// its loop says it lives while the read waits (tests shorten it).
var (
	addressReadBound  = 5 * time.Minute
	addressAliveEvery = asg.AliveEvery
)

// addressMonitor asks EC2 at every tick (nil: every addressEvery) whether this instance's
// interface still lists ip, and holds ADDRESS_NOT_HERE while it does not (withdrawn when it
// does again). A failed read with no finding is the monitor's error: the supervisor restarts
// it with backoff and says MONITOR_FAILING if it keeps failing.
func addressMonitor(c stillHere, md address.Metadata, ip netip.Addr, tick <-chan time.Time) Monitor {
	return Monitor{Name: monitorAddress, Within: 2 * asg.AliveEvery, Run: func(ctx context.Context, h *Handle) error {
		if tick == nil {
			t := time.NewTicker(addressEvery)
			defer t.Stop()
			tick = t.C
		}
		wake := time.NewTicker(asg.AliveEvery)
		defer wake.Stop()
		for {
			h.Alive()
			select {
			case <-ctx.Done():
				return nil
			case <-wake.C:
				continue
			case <-tick:
			}
			// One read may outlast the monitor's bound (the SDK's three attempts of 30 s each
			// against an EC2 that hangs): the loop stays alive while it waits, and the read
			// itself is bounded, so a hanging EC2 is the monitor's error (restarted with
			// backoff, MONITOR_FAILING), never a stalled monitor that gets haagent restarted.
			var fs []findings.Finding
			var err error
			rctx, cancel := context.WithTimeout(ctx, addressReadBound)
			aliveWhile(h.Alive, addressAliveEvery, func() { fs, err = c.StillHere(rctx, md, ip) })
			cancel()
			if err != nil && len(fs) == 0 {
				return err
			}
			h.Set(fs...)
		}
	}}
}

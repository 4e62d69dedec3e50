// Package iface puts the Services machine's stable private IP (address.private_ip) on its
// primary network interface in the OS, keeps it there across reboots, and checks from the
// machine itself that the address the builders use is here and answers.
//
// EC2 moving the secondary IP to this instance's interface (internal/address's side) only
// makes the VPC deliver its packets here; the kernel answers them only once the address is on
// an interface. Ubuntu's AMIs (18.04 and later) configure the primary interface with
// systemd-networkd through netplan, and networkd flushes the addresses it did not configure
// itself when it brings a link up (systemd-networkd.service(8); KeepConfiguration= only keeps
// "static" or DHCP addresses, and ManageForeignRoutes= is about routes): an `ip addr add`
// alone would be lost on a `netplan apply`, a networkd restart or the next boot. So the
// address is given to networkd as its own, with a drop-in for the .network file that manages
// the interface, and haagent adds it itself at every boot in any case (an image without
// networkd, or a boot on which networkd has not read the drop-in yet).
package iface

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/layout"
)

// Paths under --root (internal/layout). DropInName is haagent's drop-in, one per .network
// file, replaced when the address changes.
const (
	NetifLinks   = layout.NetifLinks
	NetworkDir   = layout.NetworkDir
	DropInName   = "50-haagent-address.conf"
	dropInHeader = "# Written by haagent (address.private_ip): the stable address the builders use.\n" +
		"# networkd configures it as its own, so a reconfigure or restart keeps it; haagent also adds it at every boot.\n"
)

// Options say which address goes on which interface.
type Options struct {
	// Root is --root: networkd's state and drop-in paths are under it. The interfaces are
	// those of the network namespace haagent runs in.
	Root string
	// LocalIPv4 is the instance's primary private IP (IMDS local-ipv4): the interface that
	// holds it is the primary interface, where EC2 assigns secondary IPs.
	LocalIPv4 string
	// Address is the stable private IP (address.private_ip).
	Address string
	// SubnetCIDR is the subnet's IPv4 CIDR (IMDS subnet-ipv4-cidr-block) and gives the prefix
	// length; "" takes the primary address's own prefix, which the VPC's DHCP sets from the
	// subnet.
	SubnetCIDR string
	Log        *slog.Logger `json:"-"`
}

// Result says what Ensure found and did.
type Result struct {
	Interface string
	// Prefix is the address with its prefix length, as added ("10.0.1.50/24").
	Prefix netip.Prefix
	// Added is true when the address was not on the interface and haagent added it.
	Added bool
	// NetworkFile is the .network file networkd applies to the interface ("" when networkd
	// does not manage it); DropIn the drop-in written for it, DropInChanged whether this run
	// wrote it.
	NetworkFile   string
	DropIn        string
	DropInChanged bool
}

// ErrNoPrimary is returned when no interface holds the instance's local-ipv4.
var ErrNoPrimary = errors.New("no network interface holds the instance's local-ipv4")

// NotInSubnetError says that the stable address is outside the interface's subnet: EC2 can
// only assign a secondary IP of the interface's own subnet, so the group must be confined to it.
type NotInSubnetError struct {
	Address string
	Subnet  netip.Prefix
}

func (e *NotInSubnetError) Error() string {
	return fmt.Sprintf("address %s is not in this instance's subnet %s: EC2 assigns secondary IPs only within the interface's subnet; confine the Auto Scaling group to that subnet (VPCZoneIdentifier) or choose an address inside it", e.Address, e.Subnet)
}

// Ensure adds the stable address to the primary interface unless it is there already, and
// writes the networkd drop-in when networkd manages that interface. Running it again changes
// nothing.
func Ensure(ctx context.Context, o Options) (Result, error) {
	var res Result
	addr, err := netip.ParseAddr(o.Address)
	if err != nil || !addr.Is4() {
		return res, fmt.Errorf("address.private_ip %q is not an IPv4 address", o.Address)
	}
	ifi, primary, err := Primary(o.LocalIPv4)
	if err != nil {
		return res, err
	}
	res.Interface = ifi.Name
	subnet := primary.Masked()
	if o.SubnetCIDR != "" {
		if subnet, err = netip.ParsePrefix(o.SubnetCIDR); err != nil {
			return res, fmt.Errorf("reading the subnet CIDR %q: %w", o.SubnetCIDR, err)
		}
		subnet = subnet.Masked()
	}
	if !subnet.Contains(addr) {
		return res, &NotInSubnetError{Address: o.Address, Subnet: subnet}
	}
	res.Prefix = netip.PrefixFrom(addr, subnet.Bits())

	have, err := hasAddr(ifi, addr)
	if err != nil {
		return res, err
	}
	if !have {
		// Same prefix as the primary: the kernel files it as a secondary address and adds no
		// second subnet route.
		if err := addAddr(ifi.Index, res.Prefix); err != nil {
			// Added meanwhile (another haagent, networkd reading the drop-in): as wanted.
			if !errors.Is(err, unix.EEXIST) {
				return res, fmt.Errorf("adding %s to %s: %w", res.Prefix, ifi.Name, err)
			}
		} else {
			res.Added = true
		}
	}

	res.NetworkFile = networkFile(o.Root, ifi.Index)
	if res.NetworkFile != "" {
		res.DropIn = filepath.Join(NetworkDir, filepath.Base(res.NetworkFile)+".d", DropInName)
		content := dropInHeader + "[Address]\nAddress=" + res.Prefix.String() + "\n"
		path := filepath.Join(o.Root, res.DropIn)
		if old, err := os.ReadFile(path); err != nil || string(old) != content {
			if _, err := atomicfile.WriteFile(path, []byte(content), atomicfile.Options{Mode: 0o644, DirMode: 0o755, UID: -1, GID: -1}); err != nil {
				return res, fmt.Errorf("writing the networkd drop-in %s for %s: %w", res.DropIn, res.NetworkFile, err)
			}
			res.DropInChanged = true
		}
	}
	if o.Log != nil {
		o.Log.Info("stable address on the primary interface", "address", res.Prefix.String(), "interface", res.Interface,
			"added", res.Added, "network_file", res.NetworkFile, "dropin", res.DropIn, "dropin_changed", res.DropInChanged)
	}
	return res, nil
}

// Primary returns the interface holding localIPv4 and that address with its prefix.
func Primary(localIPv4 string) (*net.Interface, netip.Prefix, error) {
	want, err := netip.ParseAddr(localIPv4)
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("the instance's local-ipv4 %q is not an IP address", localIPv4)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("listing network interfaces: %w", err)
	}
	for i := range ifs {
		addrs, err := ifs[i].Addrs()
		if err != nil {
			return nil, netip.Prefix{}, fmt.Errorf("listing the addresses of %s: %w", ifs[i].Name, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a); ok && p.Addr() == want {
				return &ifs[i], p, nil
			}
		}
	}
	return nil, netip.Prefix{}, fmt.Errorf("%w (%s): check IMDS local-ipv4 against `ip -4 addr`", ErrNoPrimary, localIPv4)
}

// Local returns the name of the interface holding ip, or "" when none does.
func Local(ip netip.Addr) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("listing network interfaces: %w", err)
	}
	for i := range ifs {
		ok, err := hasAddr(&ifs[i], ip)
		if err != nil {
			return "", err
		}
		if ok {
			return ifs[i].Name, nil
		}
	}
	return "", nil
}

func hasAddr(ifi *net.Interface, ip netip.Addr) (bool, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return false, fmt.Errorf("listing the addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a); ok && p.Addr() == ip.Unmap() {
			return true, nil
		}
	}
	return false, nil
}

func prefixOf(a net.Addr) (netip.Prefix, bool) {
	n, ok := a.(*net.IPNet)
	if !ok {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	ip = ip.Unmap()
	if ip.Is4() && bits > 32 {
		bits -= 96
	}
	return netip.PrefixFrom(ip, bits), true
}

// networkFile is the .network file networkd applies to the interface, from its state file;
// "" when networkd does not manage the interface (no state file, or no NETWORK_FILE key:
// an unmanaged link). The file says "do not parse", but its NETWORK_FILE= line is what
// networkctl itself shows, unchanged from systemd 237 to 252.
func networkFile(root string, index int) string {
	b, err := os.ReadFile(filepath.Join(root, NetifLinks, strconv.Itoa(index)))
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "NETWORK_FILE="); ok && strings.HasSuffix(v, ".network") {
			return v
		}
	}
	return ""
}

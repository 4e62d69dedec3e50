package iface

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// The OS side runs inside a network namespace each test creates (root only): a veth pair whose
// namespace end, eth0, is the primary interface with the instance's local-ipv4. The package's
// code runs there as this test binary, re-executed with `ip netns exec` (a goroutine of this
// process cannot be pinned to another namespace for the resolver's and exec's threads).

const helperEnv = "HAAGENT_IFACE_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

// helperIn is what a helper run is asked to do.
type helperIn struct {
	Options Options
	Here    HereOptions
	// Listen are ports the helper listens on (on Here.IP) before it checks them.
	Listen []int
	Ports  []int
}

// helperOut is what it found.
type helperOut struct {
	Result   Result
	Err      string
	Subnet   bool // the error was a NotInSubnetError
	Findings []findings.Finding
}

func helper(mode string) int {
	var in helperIn
	if err := json.Unmarshal([]byte(os.Getenv("HAAGENT_IFACE_IN")), &in); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	var out helperOut
	switch mode {
	case "ensure":
		res, err := Ensure(ctx, in.Options)
		out.Result = res
		if err != nil {
			out.Err = err.Error()
			var nse *NotInSubnetError
			out.Subnet = errors.As(err, &nse)
		}
	case "here":
		out.Findings = CheckHere(ctx, in.Here)
	case "reach":
		for _, p := range in.Listen {
			l, err := net.Listen("tcp", net.JoinHostPort(in.Here.IP, fmt.Sprint(p)))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			defer l.Close()
		}
		var ports []Port
		for _, p := range in.Ports {
			ports = append(ports, Port{Port: p, What: fmt.Sprintf("port %d", p), Fix: "start it"})
		}
		out.Findings = CheckReachable(ctx, in.Here.IP, ports, time.Second, nil)
	default:
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

// netns is a namespace of peertest's, with eth0 as the primary interface.
type netns struct{ *peertest.Netns }

func newNetns(t *testing.T, local string) netns { return netns{peertest.NewNetns(t, local)} }

// run runs the helper in the namespace.
func (ns netns) run(t *testing.T, mode string, in helperIn) helperOut {
	t.Helper()
	b, _ := json.Marshal(in)
	cmd := exec.Command("ip", "netns", "exec", ns.Name, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "HAAGENT_IFACE_IN="+string(b))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %s: %v: %s", mode, err, stderr.String())
	}
	var out helperOut
	if err := json.Unmarshal(stdout, &out); err != nil {
		t.Fatalf("helper %s output %q: %v", mode, stdout, err)
	}
	return out
}

func (ns netns) addrs(t *testing.T) []string { return ns.Addrs(t, "eth0") }

// networkd writes networkd's state file for eth0 under root, naming the .network file that
// manages it, as systemd-networkd does (/run/systemd/netif/links/IFINDEX).
func (ns netns) networkd(t *testing.T, root, networkFile string) {
	t.Helper()
	p := filepath.Join(root, NetifLinks, fmt.Sprint(ns.Index))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	state := "# This is private data. Do not parse.\nADMIN_STATE=configured\nOPER_STATE=routable\nNETWORK_FILE=" + networkFile + "\nDNS=\n"
	if err := os.WriteFile(p, []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
}

func count(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}

func TestEnsureAddsOnceAndWritesDropIn(t *testing.T) {
	ns := newNetns(t, "10.0.1.17/24")
	root := t.TempDir()
	ns.networkd(t, root, "/run/systemd/network/10-netplan-eth0.network")
	in := helperIn{Options: Options{Root: root, LocalIPv4: "10.0.1.17", Address: "10.0.1.50"}}

	// Before: the stable address is not here.
	if out := ns.run(t, "here", helperIn{Here: HereOptions{IP: "10.0.1.50"}}); len(out.Findings) != 1 || out.Findings[0].Code != findings.AddressNotHere {
		t.Fatalf("before Ensure: findings %+v, want ADDRESS_NOT_HERE", out.Findings)
	}

	first := ns.run(t, "ensure", in)
	if first.Err != "" {
		t.Fatal(first.Err)
	}
	if !first.Result.Added || first.Result.Interface != "eth0" || first.Result.Prefix.String() != "10.0.1.50/24" {
		t.Fatalf("first Ensure: %+v", first.Result)
	}
	wantDropIn := "/etc/systemd/network/10-netplan-eth0.network.d/" + DropInName
	if first.Result.DropIn != wantDropIn || !first.Result.DropInChanged {
		t.Fatalf("drop-in %q changed %v, want %s written", first.Result.DropIn, first.Result.DropInChanged, wantDropIn)
	}
	b, err := os.ReadFile(filepath.Join(root, wantDropIn))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\n[Address]\nAddress=10.0.1.50/24\n") {
		t.Fatalf("drop-in:\n%s", b)
	}
	if fi, _ := os.Stat(filepath.Join(root, wantDropIn)); fi.Mode().Perm() != 0o644 {
		t.Fatalf("drop-in mode %v, want 0644 (networkd reads it)", fi.Mode().Perm())
	}

	second := ns.run(t, "ensure", in)
	if second.Err != "" || second.Result.Added || second.Result.DropInChanged {
		t.Fatalf("second Ensure changed something: %+v %s", second.Result, second.Err)
	}
	got := ns.addrs(t)
	if count(got, "10.0.1.50/24") != 1 || count(got, "10.0.1.17/24") != 1 {
		t.Fatalf("eth0 holds %v, want 10.0.1.17/24 and 10.0.1.50/24 once each", got)
	}

	if out := ns.run(t, "here", helperIn{Here: HereOptions{IP: "10.0.1.50"}}); len(out.Findings) != 0 {
		t.Fatalf("after Ensure: findings %+v, want none", out.Findings)
	}
}

// Without networkd managing the interface there is no drop-in; the address is still added
// (haagent's own re-apply at every boot keeps it).
func TestEnsureWithoutNetworkd(t *testing.T) {
	ns := newNetns(t, "10.0.1.17/24")
	root := t.TempDir()
	out := ns.run(t, "ensure", helperIn{Options: Options{Root: root, LocalIPv4: "10.0.1.17", Address: "10.0.1.50", SubnetCIDR: "10.0.0.0/16"}})
	if out.Err != "" {
		t.Fatal(out.Err)
	}
	if !out.Result.Added || out.Result.DropIn != "" || out.Result.Prefix.String() != "10.0.1.50/16" {
		t.Fatalf("Ensure: %+v", out.Result)
	}
	if _, err := os.Stat(filepath.Join(root, NetworkDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s written without networkd: %v", NetworkDir, err)
	}
	if got := ns.addrs(t); count(got, "10.0.1.50/16") != 1 {
		t.Fatalf("eth0 holds %v", got)
	}
}

func TestEnsureRefusesAnotherSubnet(t *testing.T) {
	ns := newNetns(t, "10.0.1.17/24")
	out := ns.run(t, "ensure", helperIn{Options: Options{Root: t.TempDir(), LocalIPv4: "10.0.1.17", Address: "10.0.2.50"}})
	if !out.Subnet {
		t.Fatalf("Ensure of an address outside 10.0.1.0/24: err %q, want a NotInSubnetError", out.Err)
	}
	if got := ns.addrs(t); len(got) != 1 {
		t.Fatalf("eth0 holds %v, want only the primary", got)
	}
}

func TestCheckReachable(t *testing.T) {
	ns := newNetns(t, "10.0.1.17/24")
	if out := ns.run(t, "ensure", helperIn{Options: Options{Root: t.TempDir(), LocalIPv4: "10.0.1.17", Address: "10.0.1.50"}}); out.Err != "" {
		t.Fatal(out.Err)
	}
	here := HereOptions{IP: "10.0.1.50"}

	out := ns.run(t, "reach", helperIn{Here: here, Ports: []int{4647}})
	if len(out.Findings) != 1 || out.Findings[0].Code != findings.AddressUnreachable || out.Findings[0].Target != "10.0.1.50:4647" {
		t.Fatalf("nothing listening: findings %+v, want ADDRESS_UNREACHABLE for 10.0.1.50:4647", out.Findings)
	}
	if !strings.Contains(out.Findings[0].Summary, "refuses") || out.Findings[0].Fix != "start it" {
		t.Fatalf("finding %+v", out.Findings[0])
	}

	out = ns.run(t, "reach", helperIn{Here: here, Listen: []int{4647, 443}, Ports: []int{4647, 443}})
	if len(out.Findings) != 0 {
		t.Fatalf("listeners on 4647 and 443: findings %+v, want none", out.Findings)
	}
}

// The catalogue's ports carry the fixes the operator reads.
func TestPostBootPorts(t *testing.T) {
	if len(PostBoot) != 2 || PostBoot[0].Port != 4647 || PostBoot[1].Port != 443 {
		t.Fatalf("PostBoot %+v", PostBoot)
	}
	for _, p := range PostBoot {
		if !strings.Contains(p.Fix, "security group") {
			t.Errorf("port %d fix %q names no security group", p.Port, p.Fix)
		}
	}
}

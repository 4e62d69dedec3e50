package main

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/replicated"
)

// runIn runs haagent --root w.root inside the network namespace (ip netns exec), so the
// address it adds is on the namespace's eth0, never on the host's interfaces.
func (w *world) runIn(ns *peertest.Netns, args ...string) result {
	w.t.Helper()
	argv := append([]string{"netns", "exec", ns.Name, haagentBin, "--root", w.root}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Env = w.env(w.imds.URL)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	return r
}

// forwardWorld makes the world's peers reachable inside ns at their loopback addresses.
func forwardWorld(t *testing.T, ns *peertest.Netns, urls ...string) {
	t.Helper()
	var addrs []string
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, pu.Host)
	}
	ns.Forward(t, addrs...)
}

// addressWorld is a world whose instance is the one member of a group, with its primary
// interface in IMDS and EC2, in a network namespace of its own where eth0 holds its private IP.
type addressWorld struct {
	*world
	ns     *peertest.Netns
	ec2    *peertest.EC2
	asgCfg string
}

const (
	addrInstance = "i-0add0000000000001"
	stableIP     = "10.0.1.50"
)

func newAddressWorld(t *testing.T) *addressWorld {
	t.Helper()
	w := newWorld(t, addrInstance)
	aw := &addressWorld{world: w, ns: peertest.NewNetns(t, "10.0.1.23/24")}
	w.imds = peertest.StartIMDS(t, peertest.Instance{ID: addrInstance, LocalIPv4: "10.0.1.23", Region: "us-east-1", ASGGroup: asgGroup,
		MAC: "0e:00:00:00:00:01", InterfaceID: "eni-1", SubnetID: "subnet-1", SubnetCIDR: "10.0.1.0/24", VPCID: "vpc-1", LocalIPv4s: "10.0.1.23"})
	aw.ec2 = peertest.StartEC2(t, w.s3.AccessKey, w.s3.SecretKey)
	aw.ec2.AddSubnet(peertest.EC2Subnet{ID: "subnet-1", VPCID: "vpc-1", CIDR: "10.0.1.0/24", AZ: "us-east-1a"})
	aw.ec2.AddENI(peertest.ENI{ID: "eni-1", MAC: "0e:00:00:00:00:01", SubnetID: "subnet-1", VPCID: "vpc-1", Instance: addrInstance, IPs: []string{"10.0.1.23"}})
	a := w.startASG(addrInstance, nil)
	forwardWorld(t, aw.ns, w.s3.URL, w.imds.URL, a.URL, aw.ec2.URL, w.installer.URL)
	aw.asgCfg = "asg:\n  enabled: true\n  endpoint: " + a.URL + "\n"
	w.writeConfig(w.s3.URL, aw.asgCfg)
	return aw
}

func (aw *addressWorld) withAddress() {
	aw.writeConfig(aw.s3.URL, aw.asgCfg+"address:\n  private_ip: "+stableIP+"\n  endpoint: "+aw.ec2.URL+"\n")
}

// listen serves the builders' ports inside the namespace on all addresses, as the nomad and
// frontend containers publish them (and before the stable address is there).
func (aw *addressWorld) listen(t *testing.T) {
	t.Helper()
	for _, port := range []string{"4647", "443"} {
		l, err := aw.ns.Listen("tcp", ":"+port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
}

func lastCodes(w *world) string { return findings.Codes(w.record().Last().Findings) }

// private_ip end to end through the binary: EC2 moves the address, haagent puts it on eth0 once
// (a second run adds nothing and assigns nothing), the installer gets it as local-address, and
// the post-boot check fails (ADDRESS_UNREACHABLE, the run not complete) while nothing answers
// on 4647 and 443, then passes once something does.
func TestAddressPrivateIPOnTheInterface(t *testing.T) {
	aw := newAddressWorld(t)
	aw.withAddress()

	r := aw.runIn(aw.ns, "run", "--once")
	if r.code == 0 {
		t.Fatalf("the run completed with nothing answering on %s:4647 and :443:\n%s", stableIP, r.stderr)
	}
	last := aw.record().Last()
	var unreachable []string
	for _, f := range last.Findings {
		if f.Code == findings.AddressUnreachable {
			unreachable = append(unreachable, f.Target)
		}
	}
	if !slices.Equal(unreachable, []string{stableIP + ":4647", stableIP + ":443"}) || !strings.Contains(last.Error, "address-check") {
		t.Fatalf("run %s (%s), ADDRESS_UNREACHABLE for %v; want both ports, at address-check\n%s", last.Status, last.Error, unreachable, r.stderr)
	}
	if got := aw.ns.Addrs(t, "eth0"); !slices.Equal(got, []string{"10.0.1.23/24", stableIP + "/24"}) {
		t.Fatalf("eth0 holds %v, want the primary and %s/24", got, stableIP)
	}
	if h := aw.ec2.Holder(stableIP); h != "eni-1" {
		t.Fatalf("EC2: %s holds %s, want eni-1", h, stableIP)
	}
	if args := aw.installer.rec("args"); !strings.HasPrefix(args, "local-address="+stableIP+"\n") {
		t.Fatalf("installer arguments:\n%s", args)
	}
	if d := replicated.InstalledAddress(aw.root); d != stableIP {
		t.Fatalf("/etc/default/replicated PRIVATE_ADDRESS=%q, want %s", d, stableIP)
	}

	aw.listen(t)
	if r := aw.runIn(aw.ns, "run", "--once"); r.code != 0 {
		t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
	}
	if codes := lastCodes(aw.world); strings.Contains(codes, "ADDRESS_") {
		t.Fatalf("address findings once the ports answer: %s", codes)
	}
	if got := aw.ns.Addrs(t, "eth0"); !slices.Equal(got, []string{"10.0.1.23/24", stableIP + "/24"}) {
		t.Fatalf("after the second run eth0 holds %v", got)
	}
	if n := len(aw.ec2.Calls("AssignPrivateIpAddresses")); n != 1 {
		t.Fatalf("%d AssignPrivateIpAddresses, want 1 (the second run finds the address on its interface)", n)
	}
	if n := aw.installer.runs(); n != 1 {
		t.Fatalf("the installer ran %d times", n)
	}
}

// An instance installed with its own address before address: was configured: the next boot
// rewrites the address in Replicated's environment files (every other line kept) and says so,
// without running the installer again.
func TestAddressRewritesAnInstallWithAnotherAddress(t *testing.T) {
	aw := newAddressWorld(t)
	aw.listen(t)
	if r := aw.runIn(aw.ns, "run", "--once"); r.code != 0 {
		t.Fatalf("first run: exit %d\n%s", r.code, r.stderr)
	}
	if d := replicated.InstalledAddress(aw.root); d != "10.0.1.23" {
		t.Fatalf("installed with PRIVATE_ADDRESS=%q, want the instance's own 10.0.1.23", d)
	}
	before, _ := os.ReadFile(filepath.Join(aw.root, replicated.DefaultOperator))

	aw.withAddress()
	if r := aw.runIn(aw.ns, "run", "--once"); r.code != 0 {
		t.Fatalf("run with address: exit %d\n%s", r.code, r.stderr)
	}
	if d := replicated.InstalledAddress(aw.root); d != stableIP {
		t.Fatalf("/etc/default/replicated PRIVATE_ADDRESS=%q, want %s", d, stableIP)
	}
	after, _ := os.ReadFile(filepath.Join(aw.root, replicated.DefaultOperator))
	if want := strings.ReplaceAll(string(before), "10.0.1.23", stableIP); string(after) != want {
		t.Fatalf("%s:\n%s\nwant:\n%s", replicated.DefaultOperator, after, want)
	}
	var rewritten *findings.Finding
	for _, f := range aw.record().Last().Findings {
		if f.Code == findings.AddressRewritten {
			rewritten = &f
		}
	}
	if rewritten == nil || !strings.Contains(rewritten.Summary, "10.0.1.23") || !strings.Contains(rewritten.Summary, "systemctl try-restart replicated replicated-operator") {
		t.Fatalf("ADDRESS_REWRITTEN: %+v (findings %s)", rewritten, lastCodes(aw.world))
	}
	if n := aw.installer.runs(); n != 1 {
		t.Fatalf("the installer ran %d times", n)
	}
}

// route53 end to end through the binary: the record is UPSERTed (the Route 53 stand-in) and
// the machine's own resolver (a DNS server in the namespace, named by its resolv.conf) must
// answer this instance. While it still answers another machine past the record's TTL, the boot
// stops before the installer (ADDRESS_NOT_HERE, the name asked again within the TTL); once it
// answers this instance, the installer runs with the instance's own local-address and the
// builders' ports answer on the name.
func TestAddressRoute53NameResolvesHere(t *testing.T) {
	const zone, name = "Z0123456789ABCDEFGHIJ", "services.circleci.internal"
	aw := newAddressWorld(t)
	r53 := peertest.StartRoute53(t, aw.s3.AccessKey, aw.s3.SecretKey)
	r53.AddZone(zone, "circleci.internal")
	forwardWorld(t, aw.ns, r53.URL)
	var stale atomic.Bool
	stale.Store(true)
	pc, err := aw.ns.ListenPacket("udp", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	dns := peertest.ServeDNS(pc, 1, func(q string, _ int) string {
		if q != name {
			return ""
		}
		if stale.Load() {
			return "10.0.1.99" // the previous instance, from a resolver's cache
		}
		if rec, ok := r53.Record(zone, name); ok && len(rec.Values) > 0 {
			return rec.Values[0]
		}
		return ""
	})
	aw.ns.ResolvConf(t, "127.0.0.1")
	aw.listen(t)
	aw.writeConfig(aw.s3.URL, aw.asgCfg+"address:\n  route53:\n    zone_id: "+zone+"\n    name: "+name+"\n    ttl: 1\n    endpoint: "+r53.URL+"\n")

	r := aw.runIn(aw.ns, "run", "--once")
	last := aw.record().Last()
	var here *findings.Finding
	for _, f := range last.Findings {
		if f.Code == findings.AddressNotHere {
			here = &f
		}
	}
	if r.code == 0 || here == nil || here.Target != name || !strings.Contains(here.Summary, "10.0.1.99") || !strings.HasPrefix(last.Error, "address") {
		t.Fatalf("exit %d, run error %q, ADDRESS_NOT_HERE %+v; want the boot stopped at address\n%s", r.code, last.Error, here, r.stderr)
	}
	if n := dns.Queries.Load(); n < 2 {
		t.Fatalf("%d A queries: a wrong answer must be asked again within the TTL", n)
	}
	if aw.installer.runs() != 0 {
		t.Fatal("the installer ran while the name resolved to another machine")
	}
	if rec, ok := r53.Record(zone, name); !ok || !slices.Equal(rec.Values, []string{"10.0.1.23"}) || rec.TTL != 1 {
		t.Fatalf("the record: %+v %v, want 10.0.1.23 with TTL 1", rec, ok)
	}

	stale.Store(false)
	if r := aw.runIn(aw.ns, "run", "--once"); r.code != 0 {
		t.Fatalf("with the name resolving here: exit %d\n%s", r.code, r.stderr)
	}
	if codes := lastCodes(aw.world); strings.Contains(codes, "ADDRESS_") {
		t.Fatalf("address findings: %s", codes)
	}
	if args := aw.installer.rec("args"); !strings.HasPrefix(args, "local-address=10.0.1.23\n") {
		t.Fatalf("installer arguments:\n%s", args)
	}
}

package main

import (
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/state"
)

// The replacement run (issue 18): two Services machines, one after the other, each a fresh
// nspawn box in a network namespace of its own (eth0 a veth holding the instance's private IP;
// an `ip addr add` there changes nothing on the host), with the host's peers forwarded into
// it. Instance 1 boots and ends holding the builders' address, 10.0.1.50, through the EC2
// stand-in and on its interface; then it is gone (powered off, terminated in the group, its
// interface still listed with the address, as while EC2 tears it down). Instance 2, another
// instance id in IMDS, boots and takes the address over (AssignPrivateIpAddresses with
// AllowReassignment): it ends on its interface, the installer got it as local-address, and
// the Nomad server port and the frontend answer on it.
func TestSystemdReplacement(t *testing.T) {
	const (
		id1, id2 = "i-0aaaa00000000001", "i-0bbbb00000000002"
		stable   = "10.0.1.50"
	)
	host := peertest.StartDocker(t)
	image := host.BusyboxImage(t)
	w := newWorld(t, id1)
	w.watchCfg = "watch:\n  stuck_after: 1h\n"
	// The application's containers, on the box's network (its own namespace): the frontend on
	// 443 and the Nomad server's RPC port 4647, as CircleCI's nomad container publishes it.
	w.installer.setScript(standinWith(t, `systemctl start docker
docker load -i /frontend-image.tar
docker run -d --name frontend --network host --restart always `+image+` sh -c 'echo frontend says hello; exec httpd -f -p 443 -h /'
docker run -d --name nomad --network host --restart always `+image+` httpd -f -p 4647 -h /`))

	ec2 := peertest.StartEC2(t, w.s3.AccessKey, w.s3.SecretKey)
	ec2.AddSubnet(peertest.EC2Subnet{ID: "subnet-1", VPCID: "vpc-1", CIDR: "10.0.1.0/24", AZ: "us-east-1a"})
	ec2.AddENI(peertest.ENI{ID: "eni-1", MAC: "0e:00:00:00:00:01", SubnetID: "subnet-1", VPCID: "vpc-1", Instance: id1, IPs: []string{"10.0.1.23"}})
	a := w.startASG(id1, nil)

	type box struct {
		ns   *peertest.Netns
		m    *peertest.Machine
		root string
		imds *peertest.IMDS
	}
	boot := func(id, eni, mac, ip string) box {
		t.Helper()
		b := box{root: peertest.NspawnRoot(t), ns: peertest.NewNetns(t, ip+"/24")}
		// Under `make cover`, as in the boot test: the box's haagent writes its counters in the
		// box, copied out once the box is down (this cleanup runs after the box's own).
		boxCover := ""
		if coverDir != "" {
			boxCover = "/var/tmp/haagent-cover"
			if err := os.MkdirAll(filepath.Join(b.root, boxCover), 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				files, _ := filepath.Glob(filepath.Join(b.root, boxCover, "cov*"))
				for _, f := range files {
					data, err := os.ReadFile(f)
					if err == nil {
						err = os.WriteFile(filepath.Join(coverDir, filepath.Base(f)), data, 0o644)
					}
					if err != nil {
						t.Errorf("copying the box's coverage counters out: %v", err)
					}
				}
			})
		}
		b.imds = peertest.StartIMDS(t, peertest.Instance{ID: id, LocalIPv4: ip, Region: "us-east-1", ASGGroup: asgGroup,
			MAC: mac, InterfaceID: eni, SubnetID: "subnet-1", SubnetCIDR: "10.0.1.0/24", VPCID: "vpc-1", LocalIPv4s: ip})
		var addrs []string
		for _, u := range []string{w.s3.URL, b.imds.URL, a.URL, ec2.URL, w.installer.URL} {
			pu, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			addrs = append(addrs, pu.Host)
		}
		b.ns.Forward(t, addrs...)
		w.root = b.root
		w.installer.set(func(s *installerServer) {
			s.root, s.delay = "", "0"
			s.recIn, s.recDir = "/var/tmp/haagent-standin", filepath.Join(b.root, "var/tmp/haagent-standin")
		})
		host.MustRun(t, "save", "-o", filepath.Join(b.root, "frontend-image.tar"), image)
		copyFile(t, haagentBin, filepath.Join(b.root, "usr/local/bin/haagent"), 0o755)
		os.MkdirAll(filepath.Join(b.root, "etc/docker"), 0o755)
		os.WriteFile(filepath.Join(b.root, "etc/docker/daemon.json"), []byte(`{"bridge": "none", "iptables": false, "ip6tables": false}`), 0o644)
		w.writeConfig(w.s3.URL, "asg:\n  enabled: true\n  endpoint: "+a.URL+"\naddress:\n  private_ip: "+stable+"\n  endpoint: "+ec2.URL+"\n")
		defaults := []string{"AWS_ACCESS_KEY_ID=" + w.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + w.s3.SecretKey,
			"AWS_EC2_METADATA_SERVICE_ENDPOINT=" + b.imds.URL}
		if boxCover != "" {
			defaults = append(defaults, "GOCOVERDIR="+boxCover)
		}
		os.WriteFile(filepath.Join(b.root, "etc/default/haagent"), []byte(strings.Join(defaults, "\n")+"\n"), 0o600)
		b.m = peertest.BootIn(t, b.root, b.ns)
		if boxCover != "" {
			b.m.Env = []string{"GOCOVERDIR=" + boxCover}
		}
		b.m.MustExec(t, "haagent", "install")
		b.m.MustExec(t, "systemctl", "start", "haagent")
		if out, err := b.m.Exec("haagent", "status", "--wait", "--timeout", "180s"); err != nil {
			j, _ := b.m.Exec("journalctl", "-u", "haagent", "--no-pager", "-o", "cat")
			t.Fatalf("%s: status --wait: %v\n%s\njournal:\n%s", id, err, out, j)
		}
		return b
	}
	// What each instance must end with: the address on its interface and in EC2, given to the
	// installer and to Replicated's units, and no address finding in its run record.
	holds := func(b box, id, eni string) {
		t.Helper()
		if got := b.ns.Addrs(t, "eth0"); !slices.Contains(got, stable+"/24") {
			t.Fatalf("%s: eth0 holds %v, want %s/24", id, got, stable)
		}
		if h := ec2.Holder(stable); h != eni {
			t.Fatalf("%s: EC2 says %s holds %s, want %s", id, h, stable, eni)
		}
		if args := w.installer.rec("args"); !strings.HasPrefix(args, "local-address="+stable+"\n") {
			t.Fatalf("%s: installer arguments:\n%s", id, args)
		}
		if d, _ := os.ReadFile(filepath.Join(b.root, "etc/default/replicated")); !strings.Contains(string(d), "\nPRIVATE_ADDRESS="+stable+"\n") {
			t.Fatalf("%s: /etc/default/replicated:\n%s", id, d)
		}
		if j := b.m.MustExec(t, "journalctl", "-u", "replicated", "--no-pager", "-o", "cat"); !strings.Contains(j, "started with PRIVATE_ADDRESS="+stable) {
			t.Fatalf("%s: the replicated unit did not start with the stable address:\n%s", id, j)
		}
		rec, err := state.Load(filepath.Join(b.root, layout.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		last := rec.Last()
		if last.Status != state.Complete || last.InstanceID != id {
			t.Fatalf("%s: last run %s (%s)", id, last.Status, last.InstanceID)
		}
		if codes := findings.Codes(last.Findings); strings.Contains(codes, "ADDRESS_") {
			t.Fatalf("%s: address findings in a complete run: %s", id, codes)
		}
	}

	first := boot(id1, "eni-1", "0e:00:00:00:00:01", "10.0.1.23")
	holds(first, id1, "eni-1")

	// Instance 1 is going: powered off, out of the group, and shutting-down in EC2. Its
	// interface is still listed holding the address (EC2 deletes it once the instance is
	// terminated): only AllowReassignment moves it. A running instance in no group would keep it.
	first.m.Stop(t)
	a.Terminate(id1)
	ec2.SetInstanceState(id1, "shutting-down")
	a.AddGroup(peertest.ASGGroup{Name: asgGroup, HealthCheckType: "EC2", Min: 1, Max: 1, Desired: 1, Instances: []string{id2},
		Hooks: []peertest.ASGHook{{Name: "haagent-launch", Transition: "autoscaling:EC2_INSTANCE_LAUNCHING", DefaultResult: "CONTINUE", HeartbeatTimeout: 900}}})
	ec2.AddENI(peertest.ENI{ID: "eni-2", MAC: "0e:00:00:00:00:02", SubnetID: "subnet-1", VPCID: "vpc-1", Instance: id2, IPs: []string{"10.0.1.24"}})

	second := boot(id2, "eni-2", "0e:00:00:00:00:02", "10.0.1.24")
	holds(second, id2, "eni-2")
	assigns := ec2.Calls("AssignPrivateIpAddresses")
	if len(assigns) != 2 || assigns[1].Params.Get("AllowReassignment") != "true" || assigns[1].Params.Get("NetworkInterfaceId") != "eni-2" {
		t.Fatalf("AssignPrivateIpAddresses calls: %+v", assigns)
	}
}

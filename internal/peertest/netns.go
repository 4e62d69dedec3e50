package peertest

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace a test creates (root only) with a primary interface, eth0: one
// end of a veth pair whose other end stays on the host without an address, so nothing the
// test does to eth0 (ip addr add) touches the host's routing. Its own lo is up; the host's
// peers on 127.0.0.1 are reachable there only through Forward.
type Netns struct {
	Name string
	// Path is /run/netns/NAME, for systemd-nspawn --network-namespace-path= and setns.
	Path string
	// Index is eth0's interface index inside the namespace.
	Index int
	host  string
}

// NewNetns creates the namespace with eth0 holding primary ("10.0.1.17/24").
func NewNetns(t testing.TB, primary string) *Netns {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "network namespace tests need root (ip netns add)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		Missing(t, "iproute2's ip is not installed")
	}
	// Names unique on a machine other tests share; an interface name has at most 15 bytes.
	id := fmt.Sprintf("%05d%04x", os.Getpid()%100000, rand.IntN(1<<16))
	n := &Netns{Name: "hgns" + id, host: "hgv" + id}
	n.Path = "/run/netns/" + n.Name
	ipCmd(t, "netns", "add", n.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.Name).Run() })
	ipCmd(t, "link", "add", n.host, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", n.host).Run() })
	ipCmd(t, "link", "set", n.host, "up")
	ipCmd(t, "-n", n.Name, "addr", "add", primary, "dev", "eth0")
	ipCmd(t, "-n", n.Name, "link", "set", "eth0", "up")
	ipCmd(t, "-n", n.Name, "link", "set", "lo", "up")
	var links []struct {
		Ifindex int `json:"ifindex"`
	}
	if err := json.Unmarshal([]byte(ipCmd(t, "-n", n.Name, "-j", "link", "show", "eth0")), &links); err != nil || len(links) != 1 {
		t.Fatalf("reading eth0's index in %s: %v", n.Name, err)
	}
	n.Index = links[0].Ifindex
	return n
}

func ipCmd(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Addrs lists dev's IPv4 addresses in the namespace as ip shows them ("10.0.1.50/24").
func (n *Netns) Addrs(t testing.TB, dev string) []string {
	t.Helper()
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ipCmd(t, "-n", n.Name, "-j", "-4", "addr", "show", "dev", dev)), &links); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		for _, a := range l.AddrInfo {
			out = append(out, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
		}
	}
	return out
}

// Forward makes each host address ("127.0.0.1:PORT") reachable at the same address inside
// the namespace: a listener bound there, each connection relayed to the host's. A box in the
// namespace then uses the peers' URLs unchanged.
func (n *Netns) Forward(t testing.TB, addrs ...string) {
	t.Helper()
	for _, addr := range addrs {
		l, err := n.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on %s in %s: %v", addr, n.Name, err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go relay(c, addr)
			}
		}()
	}
}

func relay(c net.Conn, addr string) {
	defer c.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	wg.Wait()
}

// Listen opens a listener inside the namespace (see in).
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.in(func() (err error) { l, err = net.Listen(network, addr); return err })
	return l, err
}

// ListenPacket opens a packet socket inside the namespace (see in).
func (n *Netns) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.in(func() (err error) { pc, err = net.ListenPacket(network, addr); return err })
	return pc, err
}

// in runs open on a thread moved into the namespace: a socket stays in the namespace it was
// created in, whichever thread uses it later. The thread is moved back before it is released to
// other goroutines; a thread that cannot go back is never released (it ends with its
// goroutine), so no other goroutine runs in the wrong namespace.
func (n *Netns) in(open func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer self.Close()
		target, err := os.Open(n.Path)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns %s: %w", n.Path, err)
			return
		}
		err = open()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// ResolvConf makes `ip netns exec` give the namespace's processes a resolv.conf of their own,
// naming nameserver (ip-netns(8): /etc/netns/NAME/resolv.conf is bind-mounted over
// /etc/resolv.conf).
func (n *Netns) ResolvConf(t testing.TB, nameserver string) {
	t.Helper()
	dir := "/etc/netns/" + n.Name
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(dir+"/resolv.conf", []byte("nameserver "+nameserver+"\noptions attempts:1 timeout:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

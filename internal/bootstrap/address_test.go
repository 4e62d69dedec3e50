package bootstrap

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/address"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/iface"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/supervisor"
)

// Under systemd the rewrite restarts the units that read the address; a failed restart puts
// the old address back, so the step's retry rewrites and restarts again instead of finding the
// files done and leaving the units on the old address.
func TestRewriteInstalledAddressRestartsOrPutsBack(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/default"), 0o755)
	const installed = "RELEASE_CHANNEL=stable\nPRIVATE_ADDRESS=10.0.1.23\nREPLICATED_OPTS=\"\"\n"
	os.WriteFile(filepath.Join(root, replicated.DefaultReplicated), []byte(installed), 0o644)
	saved := replicated.Systemctl
	t.Cleanup(func() { replicated.Systemctl = saved })
	log := filepath.Join(t.TempDir(), "systemctl.log")
	fake := func(code string) []string {
		return []string{"sh", "-c", `echo "$@" >> ` + log + `; exit ` + code, "systemctl"}
	}

	replicated.Systemctl = fake("1")
	if _, err := rewriteInstalledAddress(context.Background(), root, true, "10.0.1.50"); err == nil || !strings.Contains(err.Error(), "hold 10.0.1.23 again") {
		t.Fatalf("a failed restart: %v", err)
	}
	if got := replicated.InstalledAddress(root); got != "10.0.1.23" {
		t.Fatalf("after a failed restart the file holds %s, want the old address back", got)
	}

	replicated.Systemctl = fake("0")
	f, err := rewriteInstalledAddress(context.Background(), root, true, "10.0.1.50")
	if err != nil || f == nil || f.Code != findings.AddressRewritten || !strings.Contains(f.Summary, "restarted") {
		t.Fatalf("rewrite: %+v %v", f, err)
	}
	if got := replicated.InstalledAddress(root); got != "10.0.1.50" {
		t.Fatalf("the file holds %s", got)
	}
	b, _ := os.ReadFile(log)
	if want := "try-restart replicated replicated-operator\n"; string(b) != want+want {
		t.Fatalf("systemctl calls:\n%s\nwant two of %q", b, want)
	}
	// Nothing left to rewrite: no restart.
	if f, err := rewriteInstalledAddress(context.Background(), root, true, "10.0.1.50"); f != nil || err != nil {
		t.Fatalf("again: %+v %v", f, err)
	}
	if b2, _ := os.ReadFile(log); string(b2) != string(b) {
		t.Fatalf("restarted with nothing rewritten:\n%s", b2)
	}
}

// The OS side's ADDRESS_NOT_IN_SUBNET says what it saw and what to do, like the AWS side's.
func TestNotInSubnetHasEvidenceAndFix(t *testing.T) {
	f := notInSubnet(&iface.NotInSubnetError{Address: "10.0.2.50", Subnet: netip.MustParsePrefix("10.0.1.0/24")}, "10.0.1.20")
	if f.Code != findings.AddressNotInSubnet || !strings.Contains(f.Evidence, "interface_subnet=10.0.1.0/24") || !strings.Contains(f.Evidence, "local_ipv4=10.0.1.20") ||
		!strings.Contains(f.Fix, "--vpc-zone-identifier") || !strings.Contains(f.Fix, "address.private_ip in 10.0.1.0/24") {
		t.Fatalf("finding: %+v", f)
	}
}

// fakeHere answers StillHere from a queue of answers and counts the calls. The EC2 read itself
// is tested against the EC2 stand-in (internal/address TestStillHereReadsTheInterfaceFromEC2);
// this is the monitor's loop.
type fakeHere struct {
	answers chan []findings.Finding
	calls   atomic.Int32
}

func (f *fakeHere) StillHere(ctx context.Context, _ address.Metadata, _ netip.Addr) ([]findings.Finding, error) {
	f.calls.Add(1)
	return <-f.answers, nil
}

// After the boot the address monitor asks EC2 at each tick: ADDRESS_NOT_HERE is held while the
// interface does not list the address, withdrawn when it does again.
func TestAddressMonitorHoldsNotHereWhileEC2DoesNotListIt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 100)
	sup := supervisor.New(ctx, supervisor.Options{Changed: func() { changed <- struct{}{} }})
	f := &fakeHere{answers: make(chan []findings.Finding)}
	tick := make(chan time.Time)
	sup.Start(addressMonitor(f, nil, netip.MustParseAddr("10.0.1.50"), tick))
	until := func(want string) {
		t.Helper()
		for findings.Codes(sup.Findings()) != want {
			select {
			case <-changed:
			case <-time.After(10 * time.Second):
				t.Fatalf("findings %s, want %s", findings.Codes(sup.Findings()), want)
			}
		}
	}
	tick <- time.Time{}
	f.answers <- []findings.Finding{findings.New(findings.AddressNotHere, "10.0.1.50 on eni-1", "EC2 no longer lists 10.0.1.50", "")}
	until("ADDRESS_NOT_HERE")
	tick <- time.Time{}
	f.answers <- nil
	until("none")
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("%d EC2 reads for 2 ticks", n)
	}
}

// hangingHere is an EC2 that never answers: StillHere returns only when its context ends.
type hangingHere struct{ entered chan struct{} }

func (h *hangingHere) StillHere(ctx context.Context, _ address.Metadata, _ netip.Addr) ([]findings.Finding, error) {
	close(h.entered)
	<-ctx.Done()
	return nil, ctx.Err()
}

// An EC2 read that outlasts the monitor's bound keeps the monitor alive while it waits: a
// hanging EC2 must not stall the monitor (MONITOR_STALLED stops the watchdog, and systemd would
// restart haagent for as long as EC2 hangs).
func TestAddressMonitorStaysAliveWhileEC2Hangs(t *testing.T) {
	defer func(d time.Duration) { addressAliveEvery = d }(addressAliveEvery)
	addressAliveEvery = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	changed := make(chan struct{}, 100)
	sup := supervisor.New(ctx, supervisor.Options{Now: clock, Changed: func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}})
	f := &hangingHere{entered: make(chan struct{})}
	tick := make(chan time.Time)
	m := addressMonitor(f, nil, netip.MustParseAddr("10.0.1.50"), tick)
	sup.Start(m)
	tick <- time.Time{}
	<-f.entered
	// Well past the monitor's bound while the read still waits.
	mu.Lock()
	now = now.Add(3 * m.Within)
	mu.Unlock()
	deadline := time.After(10 * time.Second)
	for sup.Healthy() != nil {
		select {
		case <-deadline:
			t.Fatalf("the monitor stalled while EC2 hung: %v", sup.Healthy())
		case <-time.After(time.Millisecond):
		}
	}
}

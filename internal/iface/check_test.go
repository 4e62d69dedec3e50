package iface

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// startDNS is a resolver on a loopback UDP port whose A answer for every name is answer(n), n
// counting the A queries from 1; "" answers NXDOMAIN (peertest.ServeDNS: the real wire format,
// so the check's own resolver code runs as on the machine).
func startDNS(t *testing.T, ttl uint32, answer func(n int) string) (*peertest.DNSServer, *net.Resolver) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := peertest.ServeDNS(pc, ttl, func(_ string, n int) string { return answer(n) })
	addr := pc.LocalAddr().String()
	return s, &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// The name check runs on the host: 127.0.0.1 is on its lo, 192.0.2.9 (TEST-NET-1) on no
// interface.
func TestCheckHereName(t *testing.T) {
	t.Run("stale answer within the TTL is waited for", func(t *testing.T) {
		// The previous instance's address for three lookups, then this machine's.
		s, r := startDNS(t, 60, func(n int) string {
			if n <= 3 {
				return "192.0.2.9"
			}
			return "127.0.0.1"
		})
		fs := CheckHere(context.Background(), HereOptions{Name: "services.internal", TTL: time.Minute, Every: time.Millisecond, Resolver: r})
		if len(fs) != 0 {
			t.Fatalf("findings %+v, want none once the answer is this machine", fs)
		}
		if got := s.Queries.Load(); got != 4 {
			t.Fatalf("%d A queries, want 4 (three stale answers, then this machine)", got)
		}
	})
	t.Run("another machine after the TTL", func(t *testing.T) {
		s, r := startDNS(t, 1, func(int) string { return "192.0.2.9" })
		fs := CheckHere(context.Background(), HereOptions{Name: "services.internal", TTL: 20 * time.Millisecond, Every: 5 * time.Millisecond, Resolver: r})
		if len(fs) != 1 || fs[0].Code != findings.AddressNotHere || fs[0].Target != "services.internal" || !strings.Contains(fs[0].Summary, "192.0.2.9") {
			t.Fatalf("findings %+v, want ADDRESS_NOT_HERE naming 192.0.2.9", fs)
		}
		if s.Queries.Load() < 2 {
			t.Fatalf("%d A queries: a wrong answer must be asked again within the TTL", s.Queries.Load())
		}
		if !strings.Contains(fs[0].Fix, "services.internal") {
			t.Fatalf("fix %q", fs[0].Fix)
		}
	})
	t.Run("does not resolve", func(t *testing.T) {
		_, r := startDNS(t, 1, func(int) string { return "" })
		fs := CheckHere(context.Background(), HereOptions{Name: "services.internal", Every: time.Millisecond, Resolver: r})
		if len(fs) != 1 || fs[0].Code != findings.AddressNotHere || !strings.Contains(fs[0].Fix, "associate-vpc-with-hosted-zone") {
			t.Fatalf("findings %+v, want ADDRESS_NOT_HERE with the zone association fix", fs)
		}
	})
	t.Run("this machine at once", func(t *testing.T) {
		s, r := startDNS(t, 60, func(int) string { return "127.0.0.1" })
		if fs := CheckHere(context.Background(), HereOptions{Name: "services.internal", TTL: time.Hour, Resolver: r}); len(fs) != 0 {
			t.Fatalf("findings %+v", fs)
		}
		if s.Queries.Load() != 1 {
			t.Fatalf("%d queries, want 1", s.Queries.Load())
		}
	})
}

// A resolver that cached NXDOMAIN before the UPSERT keeps it past the record's TTL, up to the
// zone's negative TTL: "not found" is asked again for NotFoundFor, and when it outlasts that
// the fix names negative caching before the zone association.
func TestCheckHereWaitsOutANegativeCache(t *testing.T) {
	// NXDOMAIN for the first 20 lookups (about 100 ms, five times the TTL), then this machine.
	s, r := startDNS(t, 1, func(n int) string {
		if n <= 20 {
			return ""
		}
		return "127.0.0.1"
	})
	fs := CheckHere(context.Background(), HereOptions{Name: "services.internal", TTL: 20 * time.Millisecond, NotFoundFor: time.Minute, Every: 5 * time.Millisecond, Resolver: r})
	if len(fs) != 0 {
		t.Fatalf("after %d lookups: %s %q (the name resolves here at lookup 21)", s.Queries.Load(), fs[0].Code, fs[0].Summary)
	}
	// Never found within NotFoundFor: the finding says why it may be so.
	_, r = startDNS(t, 1, func(int) string { return "" })
	fs = CheckHere(context.Background(), HereOptions{Name: "services.internal", TTL: 5 * time.Millisecond, NotFoundFor: 30 * time.Millisecond, Every: 5 * time.Millisecond, Resolver: r})
	if codes := findings.Codes(fs); codes != "ADDRESS_NOT_HERE" || !strings.Contains(fs[0].Fix, "negative TTL") {
		t.Fatalf("never found: %+v", fs)
	}
}

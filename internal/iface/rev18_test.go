package iface

import (
	"context"
	"strings"
	"testing"
	"time"
)

// rev18: a resolver that cached NXDOMAIN before the UPSERT (the builders already ask for the
// name on a first install; a private zone's SOA gives negative answers a 900 s TTL) keeps
// answering NXDOMAIN well past the A record's TTL. The check waits only TTL+every, whatever the
// error, then blocks with ADDRESS_NOT_HERE and tells the operator to associate the zone, which
// is associated.
func TestRev18NegativeCacheOutlastsTheRecordTTL(t *testing.T) {
	// NXDOMAIN for the first 20 lookups (≈100 ms, five times the TTL), then this machine.
	s, r := startDNS(t, 1, func(n int) string {
		if n <= 20 {
			return ""
		}
		return "127.0.0.1"
	})
	fs := CheckHere(context.Background(), HereOptions{Name: "services.internal", TTL: 20 * time.Millisecond, Every: 5 * time.Millisecond, Resolver: r})
	if len(fs) != 0 {
		t.Errorf("BUG: after %d lookups: %s %q; fix: %q (the name resolves here at lookup 21)", s.Queries.Load(), fs[0].Code, fs[0].Summary, fs[0].Fix)
		if strings.Contains(fs[0].Fix, "associate-vpc-with-hosted-zone") {
			t.Logf("the fix sends the operator to the zone association, not to the resolver's negative cache")
		}
	}
}

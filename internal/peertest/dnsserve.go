package peertest

import (
	"net"
	"strings"
	"sync/atomic"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSServer answers A queries on a packet socket the test opened (on loopback, or inside a
// network namespace) in the real DNS wire format, from a function of the name and the query's
// number; "" is NXDOMAIN. Queries counts the A queries answered.
type DNSServer struct {
	Queries atomic.Int32
}

// ServeDNS serves pc until it is closed. Records carry ttl.
func ServeDNS(pc net.PacketConn, ttl uint32, answer func(name string, n int) string) *DNSServer {
	s := &DNSServer{}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			hdr := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true}
			ip := ""
			if q.Type == dnsmessage.TypeA {
				ip = answer(strings.TrimSuffix(q.Name.String(), "."), int(s.Queries.Add(1)))
				if ip == "" {
					hdr.RCode = dnsmessage.RCodeNameError
				}
			}
			b := dnsmessage.NewBuilder(nil, hdr)
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if ip != "" {
				var a [4]byte
				copy(a[:], net.ParseIP(ip).To4())
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}, dnsmessage.AResource{A: a})
			}
			if out, err := b.Finish(); err == nil {
				pc.WriteTo(out, addr)
			}
		}
	}()
	return s
}

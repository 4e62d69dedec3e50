package probes

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/haagent/haagent/internal/findings"
)

// endpoint is one host:port a probe connects to. Target is what findings show (never a
// password).
type endpoint struct {
	Host, Port string
	Target     string
}

func (e endpoint) addr() string { return net.JoinHostPort(e.Host, e.Port) }

// reach resolves and dials the endpoint once, so a failure is named for its layer (DNS, TCP)
// before any protocol is spoken. It returns nil when the port accepted a connection.
func (p *prober) reach(ctx context.Context, ep endpoint) *findings.Finding {
	addrs := []string{ep.Host}
	if net.ParseIP(ep.Host) == nil {
		var err error
		addrs, err = p.opts.Resolver.LookupHost(ctx, ep.Host)
		if err != nil {
			var de *net.DNSError
			if errors.As(err, &de) && de.IsNotFound {
				// A bare host: a name that does not resolve fails on every port (findings.Fold).
				f := findings.New(findings.DNSNotFound, ep.Target, fmt.Sprintf("%s does not resolve", ep.Host), err.Error()).WithHost(ep.Host)
				return &f
			}
			f := findings.New(findings.ProbeInconclusive, ep.Target, fmt.Sprintf("resolving %s failed", ep.Host), err.Error()).
				WithFix("check the VPC's DNS resolver (/etc/resolv.conf) from this machine").WithHost(ep.Host)
			return &f
		}
	}
	var last error
	for _, a := range addrs {
		d := net.Dialer{}
		dctx := ctx
		if dl, ok := ctx.Deadline(); ok {
			// Keep a little of the budget to report what happened.
			var cancel context.CancelFunc
			dctx, cancel = context.WithDeadline(ctx, dl.Add(-150*time.Millisecond))
			defer cancel()
		}
		c, err := d.DialContext(dctx, "tcp", net.JoinHostPort(a, ep.Port))
		if err == nil {
			c.Close()
			return nil
		}
		last = err
	}
	return dialFinding(ep, last)
}

func dialFinding(ep endpoint, err error) *findings.Finding {
	var f findings.Finding
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		f = findings.New(findings.TCPRefused, ep.Target, fmt.Sprintf("%s refused the connection", ep.addr()), err.Error())
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		f = findings.New(findings.TCPTimeout, ep.Target, fmt.Sprintf("no route to %s", ep.addr()), err.Error())
	case isTimeout(err):
		f = findings.New(findings.TCPTimeout, ep.Target, fmt.Sprintf("%s did not answer the connection attempt", ep.addr()), err.Error())
	default:
		f = findings.New(findings.ProbeInconclusive, ep.Target, fmt.Sprintf("connecting to %s failed", ep.addr()), err.Error())
	}
	f.Host = ep.addr()
	return &f
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// tlsFinding classifies a certificate verification failure, or returns nil.
func tlsFinding(ep endpoint, err error) *findings.Finding {
	var cve *tls.CertificateVerificationError
	var cert *x509.Certificate
	if errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0 {
		cert = cve.UnverifiedCertificates[0]
	}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	var f findings.Finding
	switch {
	case errors.As(err, &ua):
		issuer := "an unknown issuer"
		if cert != nil {
			issuer = fmt.Sprintf("%q", cert.Issuer.String())
		}
		f = findings.New(findings.TLSUnknownAuthority, ep.Target,
			fmt.Sprintf("the certificate of %s is signed by %s, which this machine does not trust", ep.addr(), issuer), err.Error())
	case errors.As(err, &he):
		names := certNames(he.Certificate)
		f = findings.New(findings.TLSHostnameMismatch, ep.Target,
			fmt.Sprintf("the certificate of %s is not valid for %q; it holds %s", ep.addr(), he.Host, names), err.Error())
	case errors.As(err, &ie) && ie.Reason == x509.Expired:
		c := ie.Cert
		f = findings.New(findings.TLSExpired, ep.Target,
			fmt.Sprintf("the certificate of %s is valid from %s to %s; this machine's clock says %s", ep.addr(),
				c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339)), err.Error())
	default:
		return nil
	}
	f.Host = ep.addr()
	return &f
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "no names"
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, "CN="+c.Subject.CommonName)
	}
	return strings.Join(names, ", ")
}

// notTLS reports a TLS client that met a server speaking something else.
func notTLS(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh) || strings.Contains(err.Error(), "first record does not look like a TLS handshake")
}

// Package probes checks, on exactly the settings the CircleCI services will read, that
// MongoDB, PostgreSQL and Vault can be reached and used, and turns every failure into a
// finding with its cause, evidence and fix. Probes run in parallel, each bounded in time.
package probes

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/settings"
)

// Services haagent can probe, in report order.
var Services = []string{"postgres", "mongo", "vault"}

// Override changes a code's severity and whether it blocks the install.
type Override = findings.Override

// Options configure a check.
type Options struct {
	// Timeout bounds each service's probe; the whole check returns within it plus a second.
	Timeout time.Duration
	// Only limits the check to these services (nil: all).
	Only []string
	// RootCAs is the trust pool; nil means TrustPool(root).
	RootCAs  *x509.CertPool
	Resolver *net.Resolver
	Postgres PostgresOptions
	// Overrides by code.
	Overrides map[string]Override
}

// Checked is one endpoint a probe looked at, with the state it found.
type Checked struct {
	Service string `json:"service"`
	Target  string `json:"target"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail,omitempty"`
}

// Report is the outcome of a check.
type Report struct {
	Findings []findings.Finding `json:"findings"`
	Checked  []Checked          `json:"checked"`
	Duration time.Duration      `json:"-"`
}

// Blocking returns the findings that stop the install.
func (r *Report) Blocking() []findings.Finding {
	var out []findings.Finding
	for _, f := range r.Findings {
		if f.Blocking {
			out = append(out, f)
		}
	}
	return out
}

// Errors counts error findings.
func (r *Report) Errors() int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == findings.Error {
			n++
		}
	}
	return n
}

// result is what one probe found.
type result struct {
	findings []findings.Finding
	checked  []Checked
}

func (r *result) add(f findings.Finding)       { r.findings = append(r.findings, f) }
func (r *result) check(c Checked)              { r.checked = append(r.checked, c) }
func (r *result) addAll(fs []findings.Finding) { r.findings = append(r.findings, fs...) }

type probeFunc func(ctx context.Context, p *prober, s *settings.Settings) *result

var registry = map[string]probeFunc{
	"postgres": probePostgres,
	"mongo":    probeMongo,
	"vault":    probeVault,
}

// Run loads the settings under root and probes every selected service in parallel.
func Run(ctx context.Context, root string, o Options) *Report {
	start := time.Now()
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.RootCAs == nil {
		o.RootCAs = TrustPool(root)
	}
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	s, sfs := settings.Load(root)
	rep := &Report{}
	for _, f := range sfs {
		f.Service = "settings"
		rep.Findings = append(rep.Findings, f)
	}
	p := &prober{opts: o}

	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	type done struct {
		service string
		res     *result
	}
	ch := make(chan done, len(Services))
	var pending = map[string]bool{}
	for _, svc := range Services {
		fn, ok := registry[svc]
		if !ok || !selected(o.Only, svc) {
			continue
		}
		pending[svc] = true
		go func(svc string, fn probeFunc) {
			ch <- done{svc, fn(ctx, p, s)}
		}(svc, fn)
	}
	// A probe that ignores its context must not hold the report: past the bound plus a
	// margin, it is reported as inconclusive.
	hard := time.NewTimer(o.Timeout + 700*time.Millisecond)
	defer hard.Stop()
	for len(pending) > 0 {
		select {
		case d := <-ch:
			delete(pending, d.service)
			for _, f := range d.res.findings {
				if f.Service == "" || f.Service == "network" {
					f.Service = d.service
				}
				rep.Findings = append(rep.Findings, f)
			}
			rep.Checked = append(rep.Checked, d.res.checked...)
		case <-hard.C:
			for svc := range pending {
				rep.Findings = append(rep.Findings, findings.New("PROBE_INCONCLUSIVE", svc,
					fmt.Sprintf("the %s probe did not finish within %s", svc, o.Timeout), ""))
			}
			pending = nil
		}
	}
	rep.Findings = applyOverrides(dedupe(rep.Findings), o.Overrides)
	findings.Sort(rep.Findings)
	sort.SliceStable(rep.Checked, func(i, j int) bool { return rep.Checked[i].Service < rep.Checked[j].Service })
	rep.Duration = time.Since(start)
	return rep
}

func selected(only []string, svc string) bool {
	if len(only) == 0 {
		return true
	}
	for _, o := range only {
		if o == svc {
			return true
		}
	}
	return false
}

func dedupe(fs []findings.Finding) []findings.Finding {
	seen := map[string]bool{}
	var out []findings.Finding
	for _, f := range fs {
		k := f.Code + "\x00" + f.Target + "\x00" + f.Summary
		if !seen[k] {
			seen[k] = true
			out = append(out, f)
		}
	}
	return out
}

func applyOverrides(fs []findings.Finding, ov map[string]Override) []findings.Finding {
	return findings.Apply(fs, ov)
}

// TrustPool is the system store plus the CA certificates haagent installs, read under root
// so that a check in a temp dir trusts what the CA step put there.
func TrustPool(root string) *x509.CertPool {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	dir := filepath.Join(root, "/usr/local/share/ca-certificates")
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".crt") {
			if b, err := os.ReadFile(p); err == nil {
				pool.AppendCertsFromPEM(b)
			}
		}
		return nil
	})
	return pool
}

type prober struct {
	opts Options
}

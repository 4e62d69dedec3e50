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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
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
	// RootCAs is the trust pool; nil means TrustPool of the layout.
	RootCAs  *x509.CertPool
	Resolver *net.Resolver
	Postgres PostgresOptions
	// Overrides by code.
	Overrides map[findings.Code]Override
}

// Checked is one endpoint a probe looked at, with the state it found.
type Checked struct {
	Service string `json:"service"`
	Target  string `json:"target"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail,omitempty"`
	// UsedBy names the CircleCI services whose settings lead to this target, when their own
	// customizations make them use different ones ("" when every service uses the same).
	UsedBy string `json:"used_by,omitempty"`
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

// stamp gives the findings added since index from that name no server the host they concern
// (host:port), so findings.Fold can match them with a DNS, TCP or TLS finding for it.
func (r *result) stamp(from int, host string) {
	for i := from; i < len(r.findings); i++ {
		if r.findings[i].Host == "" {
			r.findings[i].Host = host
		}
	}
}

type probeFunc func(ctx context.Context, p *prober, s *settings.Settings) *result

var registry = map[string]probeFunc{
	"postgres": probePostgres,
	"mongo":    probeMongo,
	"vault":    probeVault,
}

// Reads says which settings each probe reads. Services whose settings agree on these use the
// same target: it is probed once. A probe that reads a variable outside its prefixes must add
// it here, or two services that differ only in it would share one probe.
var Reads = map[string][]string{
	"postgres": {"POSTGRES_", "CIRCLE_SECRETS_POSTGRES_"},
	"mongo":    {"CIRCLE_SECRETS_MONGODB_"},
	"vault":    {"VAULT__"},
}

func readsMatch(svc string) func(string) bool {
	prefixes := Reads[svc]
	return func(name string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return false
	}
}

// users is who uses a target: every service but some (the shared settings), or only some.
type users struct {
	all   bool
	names []string // with all: the exceptions
}

// union is who uses either.
func (a users) union(b users) users {
	switch {
	case a.all && b.all:
		return users{all: true, names: intersect(a.names, b.names)}
	case a.all:
		return users{all: true, names: minus(a.names, b.names)}
	case b.all:
		return users{all: true, names: minus(b.names, a.names)}
	}
	return users{names: append(append([]string{}, a.names...), minus(b.names, a.names)...)}
}

func (a users) String() string {
	switch {
	case a.all && len(a.names) == 0:
		return "every service"
	case a.all:
		return "every service but " + strings.Join(a.names, ", ")
	}
	return strings.Join(a.names, ", ")
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// target is one distinct set of settings for one probe, and the services that see it.
type target struct {
	service  string // the probe: postgres, mongo, vault
	settings *settings.Settings
	users    users
	// named is set when the services do not all share this probe's settings: what it finds
	// then says who uses it.
	named bool
}

// targets groups the views by what svc's probe reads: the shared settings first, then each
// distinct set some services' own customizations give.
func targets(svc string, v *settings.Views) []*target {
	match := readsMatch(svc)
	shared := &target{service: svc, settings: v.Shared, users: users{all: true}}
	out := []*target{shared}
	byKey := map[string]*target{v.Shared.Key(match): shared}
	for _, name := range v.Names() {
		s := v.Services[name]
		k := s.Key(match)
		t, ok := byKey[k]
		if !ok {
			t = &target{service: svc, settings: s}
			byKey[k] = t
			out = append(out, t)
		}
		if t != shared {
			t.users.names = append(t.users.names, name)
			shared.users.names = append(shared.users.names, name)
		}
	}
	for _, t := range out {
		t.named = len(out) > 1
	}
	return out
}

// found is one finding or checked line and who uses its target; the same one reached through
// several services' settings is reported once, naming all of them.
type found struct {
	f     findings.Finding
	c     *Checked
	users users
	named bool
	// order puts checked lines in target order (the shared target first), then as probed.
	order [2]int
}

func (x found) key() string {
	if x.c != nil {
		return fmt.Sprintf("c\x00%s\x00%s\x00%v\x00%s", x.c.Service, x.c.Target, x.c.OK, x.c.Detail)
	}
	return "f\x00" + x.f.Code.String() + "\x00" + x.f.Service + "\x00" + x.f.Target + "\x00" + x.f.Summary
}

// Run loads the settings where the layout puts them, as each service sees them, and probes
// every distinct target of every selected service in parallel.
func Run(ctx context.Context, l layout.Layout, o Options) *Report {
	start := time.Now()
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.RootCAs == nil {
		o.RootCAs = TrustPool(l)
	}
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	views, sfs := settings.LoadViews(l)
	rep := &Report{}
	for _, f := range sfs {
		f.Service = "settings"
		rep.Findings = append(rep.Findings, f)
	}
	p := &prober{opts: o}

	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	type done struct {
		id  int
		res *result
	}
	var all []*target
	for _, svc := range Services {
		if _, ok := registry[svc]; ok && selected(o.Only, svc) {
			all = append(all, targets(svc, views)...)
		}
	}
	ch := make(chan done, len(all))
	pending := map[int]bool{}
	for id, t := range all {
		pending[id] = true
		go func(id int, t *target) {
			ch <- done{id, registry[t.service](ctx, p, t.settings)}
		}(id, t)
	}
	var got []found
	index := map[string]int{}
	add := func(x found) {
		k := x.key()
		if i, ok := index[k]; ok {
			got[i].users = got[i].users.union(x.users)
			got[i].named = got[i].named || x.named
			if o := x.order; o[0] < got[i].order[0] || o[0] == got[i].order[0] && o[1] < got[i].order[1] {
				got[i].order = o
			}
			return
		}
		index[k] = len(got)
		got = append(got, x)
	}
	// A probe that ignores its context must not hold the report: past the bound plus a
	// margin, it is reported as inconclusive.
	hard := time.NewTimer(o.Timeout + 700*time.Millisecond)
	defer hard.Stop()
	for len(pending) > 0 {
		select {
		case d := <-ch:
			delete(pending, d.id)
			t := all[d.id]
			for _, f := range d.res.findings {
				if f.Service == "" || f.Service == "network" {
					f.Service = t.service
				}
				add(found{f: f, users: t.users, named: t.named})
			}
			for i := range d.res.checked {
				add(found{c: &d.res.checked[i], users: t.users, named: t.named, order: [2]int{d.id, i}})
			}
		case <-hard.C:
			for id := range pending {
				t := all[id]
				add(found{f: findings.New(findings.ProbeInconclusive, t.service,
					fmt.Sprintf("the %s probe did not finish within %s", t.service, o.Timeout), ""), users: t.users, named: t.named})
			}
			pending = nil
		}
	}
	// Reports read the same from one run to the next, whichever probe finished first.
	sort.SliceStable(got, func(i, j int) bool {
		a, b := got[i].order, got[j].order
		return a[0] < b[0] || a[0] == b[0] && a[1] < b[1]
	})
	for _, x := range got {
		label := ""
		if x.named {
			label = x.users.String()
		}
		if x.c != nil {
			c := *x.c
			c.UsedBy = label
			rep.Checked = append(rep.Checked, c)
			continue
		}
		if label != "" {
			x.f.Summary += " (used by " + label + ")"
		}
		rep.Findings = append(rep.Findings, x.f)
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
		k := f.Code.String() + "\x00" + f.Target + "\x00" + f.Summary
		if !seen[k] {
			seen[k] = true
			out = append(out, f)
		}
	}
	return out
}

func applyOverrides(fs []findings.Finding, ov map[findings.Code]Override) []findings.Finding {
	return findings.Apply(fs, ov)
}

// TrustPool is the system store plus the local CA store (where haagent installs its CAs),
// read under the layout's root so that a check in a temp dir trusts what the CA step put there.
func TrustPool(l layout.Layout) *x509.CertPool {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	dir := l.Path(layout.LocalCADir)
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
	mu   sync.Mutex
	// probed holds every target probed in this run, by kind and key: services whose settings
	// differ elsewhere but lead to the same target share one probe of it (see once).
	probed map[string]*probed
}

type probed struct {
	done chan struct{}
	res  result
}

// once probes a target the first time any service's settings lead to it, and gives every
// caller what that probe found (Run then reports it once, naming all their services). key must
// hold everything the probe's outcome depends on (credentials included: it is never printed).
func (p *prober) once(ctx context.Context, kind, key string, res *result, probe func(r *result)) {
	k := kind + "\x00" + key
	p.mu.Lock()
	if p.probed == nil {
		p.probed = map[string]*probed{}
	}
	e, seen := p.probed[k]
	if !seen {
		e = &probed{done: make(chan struct{})}
		p.probed[k] = e
	}
	p.mu.Unlock()
	if !seen {
		probe(&e.res)
		close(e.done)
	} else {
		select {
		case <-e.done:
		case <-ctx.Done():
			return // the run's bound: the first caller reports it
		}
	}
	res.addAll(e.res.findings)
	res.checked = append(res.checked, e.res.checked...)
}

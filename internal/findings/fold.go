package findings

import (
	"net"
	"slices"
	"strings"
)

// Fold returns fs without the findings an upstream finding explains, each folded into that
// upstream one: a finding whose entry DependsOn a code that fired for the same host (Host) is
// not reported on its own but listed in the upstream finding's Suppressed, so nothing is lost
// and the journal shows the cause once. The upstream finding takes the highest severity and
// the blocking flag of what it absorbs, so folding never changes whether the install goes on.
// Findings without a host are never folded, nor is anything into them. fs is not modified.
// The runner calls it on each step's findings, after the config's overrides, before they are
// recorded.
func Fold(fs []Finding) []Finding {
	into := make([]int, len(fs)) // index of the upstream finding each one folds into, or -1
	for i := range fs {
		into[i] = upstreamOf(fs, i)
	}
	root := func(i int) int {
		// The catalogue is acyclic (TestCatalogue), so this ends; the bound guards against a
		// cycle among findings all the same.
		for n := 0; into[i] >= 0 && n < len(fs); n++ {
			i = into[i]
		}
		return i
	}
	out := make([]Finding, 0, len(fs))
	pos := map[int]int{} // index in fs -> index in out
	for i, f := range fs {
		if root(i) == i {
			pos[i] = len(out)
			out = append(out, f)
		}
	}
	for i, f := range fs {
		r := root(i)
		if r == i {
			continue
		}
		u := &out[pos[r]]
		line := f.String()
		if !slices.Contains(u.Suppressed, line) {
			// A fresh slice: out[...] shares its Suppressed with the caller's finding.
			u.Suppressed = append(slices.Clip(u.Suppressed), line)
		}
		if f.Severity.rank() > u.Severity.rank() {
			u.Severity = f.Severity
		}
		u.Blocking = u.Blocking || f.Blocking
	}
	return out
}

// upstreamOf is the index of the first finding in fs that explains fs[i], or -1.
func upstreamOf(fs []Finding, i int) int {
	d := fs[i]
	deps := d.Code.Entry().DependsOn
	if d.Host == "" || len(deps) == 0 {
		return -1
	}
	for j, u := range fs {
		if j != i && u.Host != "" && slices.Contains(deps, u.Code) && covers(u.Host, d.Host) {
			return j
		}
	}
	return -1
}

// covers reports whether a finding about host up concerns the server down: the same host and
// port, or up names a host without a port (a name that does not resolve fails on every port).
// Host names compare without regard to case, as DNS does.
func covers(up, down string) bool {
	if strings.EqualFold(up, down) {
		return true
	}
	if _, _, err := net.SplitHostPort(up); err == nil {
		return false
	}
	h, _, err := net.SplitHostPort(down)
	return err == nil && strings.EqualFold(strings.Trim(up, "[]"), h)
}

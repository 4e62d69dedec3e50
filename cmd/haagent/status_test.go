package main

import (
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/state"
)

// status shows what a finding took in (findings.Fold) under it, so an operator reading only
// the upstream finding still sees everything the run found.
func TestStatusShowsSuppressedFindings(t *testing.T) {
	fs := findings.Fold([]findings.Finding{
		findings.New(findings.DNSNotFound, "circle@db.internal:5432", "db.internal does not resolve", "").WithHost("db.internal"),
		findings.New(findings.PGAuthFailed, "circle@db.internal:5432", "PostgreSQL rejected the password of user \"circle\"", "").WithHost("db.internal:5432"),
	})
	rec := &state.Record{Runs: []state.Run{{ID: "r1", Status: "failed", Findings: fs}}}
	var out strings.Builder
	(&statusCmd{g: &globals{root: t.TempDir()}, runs: 5}).print(&out, rec)
	if !strings.Contains(out.String(), "DNS_NOT_FOUND: db.internal does not resolve") ||
		!strings.Contains(out.String(), "also suppressed: PG_AUTH_FAILED PostgreSQL rejected the password of user \"circle\" [circle@db.internal:5432]") {
		t.Fatalf("status:\n%s", out.String())
	}
}

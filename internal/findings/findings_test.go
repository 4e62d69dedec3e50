package findings

import (
	"regexp"
	"testing"
)

func TestCatalogue(t *testing.T) {
	code := regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$`)
	for _, e := range Catalogue {
		if !code.MatchString(e.Code) {
			t.Errorf("%s: codes are UPPER_SNAKE", e.Code)
		}
		if e.Fix == "" || e.Service == "" {
			t.Errorf("%s: every code needs a service and a default fix", e.Code)
		}
		if e.Blocking && e.Severity != Error {
			t.Errorf("%s: only errors block", e.Code)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"mongodb://circle:s3cret@db:27017/circle_ghe?ssl=true": "mongodb://circle:xxxxx@db:27017/circle_ghe?ssl=true",
		"postgres://u:p%40ss@h/db":                             "postgres://u:xxxxx@h/db",
		"mongodb://circle:pa@ss@db:27017/x":                    "mongodb://circle:xxxxx@db:27017/x",
		"https://vault:8200":                                   "https://vault:8200",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSortAndWorst(t *testing.T) {
	fs := []Finding{{Code: "B", Severity: Info}, {Code: "A", Severity: Warning}, {Code: "C", Severity: Error}}
	Sort(fs)
	if fs[0].Code != "C" || fs[1].Code != "A" || Worst(fs) != Error {
		t.Fatalf("%+v", fs)
	}
}

func TestSafetyCodesAreCataloguedAndNotOverridden(t *testing.T) {
	no := false
	for code := range Safety {
		e := Lookup(code) // panics when not catalogued
		fs := Apply([]Finding{New(code, "t", "s", "")}, map[string]Override{code: {Severity: Info, Blocking: &no}})
		if fs[0].Severity != e.Severity || fs[0].Blocking != e.Blocking {
			t.Errorf("%s was overridden: %+v", code, fs[0])
		}
	}
	fs := Apply([]Finding{New("TLS_EXPIRED", "t", "s", "")}, map[string]Override{"TLS_EXPIRED": {Severity: Warning, Blocking: &no}})
	if fs[0].Severity != Warning {
		t.Errorf("an ordinary code was not overridden: %+v", fs[0])
	}
}

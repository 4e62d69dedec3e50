package findings

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCatalogue(t *testing.T) {
	code := regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$`)
	for _, e := range Catalogue() {
		if !code.MatchString(e.Code) {
			t.Errorf("%s: codes are UPPER_SNAKE", e.Code)
		}
		if e.Fix == "" || e.Service == "" {
			t.Errorf("%s: every code needs a service and a default fix", e.Code)
		}
		if e.Blocking && e.Severity != Error {
			t.Errorf("%s: only errors block", e.Code)
		}
		for _, up := range e.DependsOn {
			if !up.Known() {
				t.Errorf("%s depends on %s, which is not catalogued", e.Code, up)
			}
		}
		// Fold follows a chain of upstream findings to its root: the chain must end.
		seen := map[Code]bool{}
		var walk func(c Code)
		walk = func(c Code) {
			if seen[c] {
				t.Fatalf("%s: DependsOn has a cycle through %s", e.Code, c)
			}
			seen[c] = true
			for _, up := range c.Entry().DependsOn {
				walk(up)
			}
			delete(seen, c)
		}
		c, _ := Lookup(e.Code)
		walk(c)
	}
}

func TestRedact(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"plain", "mongodb://circle:s3cret@db:27017/circle_ghe?ssl=true", "mongodb://circle:xxxxx@db:27017/circle_ghe?ssl=true"},
		{"escaped", "postgres://u:p%40ss@h/db", "postgres://u:xxxxx@h/db"},
		{"unescaped @", "mongodb://circle:pa@ss@db:27017/x", "mongodb://circle:xxxxx@db:27017/x"},
		{"no userinfo", "https://vault:8200", "https://vault:8200"},
		{"user only", "postgres://circle@db/x", "postgres://circle@db/x"},
		{"space", "postgres://circle:Hunter2 pass@db:5432/circle", "postgres://circle:xxxxx@db:5432/circle"},
		{"tab", "postgres://circle:Hunter2\tpass@db:5432/circle", "postgres://circle:xxxxx@db:5432/circle"},
		{"slash", "postgres://circle:Hunter2Prefix/rest@db:5432/circle", "postgres://circle:xxxxx@db:5432/circle"},
		{"in text", "cannot use postgres://circle:a b/c@db/x: bad", "cannot use postgres://circle:xxxxx@db/x: bad"},
		{"two URIs", "a=mongodb://u:p1@h1/x b=mongodb://v:p 2@h2/y", "a=mongodb://u:xxxxx@h1/x b=mongodb://v:xxxxx@h2/y"},
		{"two lines", "postgres://u:p1@h1/x\nnext line with @ in it", "postgres://u:xxxxx@h1/x\nnext line with @ in it"},
		{"dsn", "host=db user=circle password=Hunter2 dbname=x", "host=db user=circle password=xxxxx dbname=x"},
		{"dsn quoted", "host=db password='Hunter 2' dbname=x", "host=db password=xxxxx dbname=x"},
		{"idempotent", "postgres://circle:xxxxx@db/x", "postgres://circle:xxxxx@db/x"},
		{"embedded ://", "mongodb://circle:ab://cdSECRET1@127.0.0.1:1/circle_ghe", "mongodb://circle:xxxxx@127.0.0.1:1/circle_ghe"},
		{"embedded :// in text", "bad postgres://u:ab://cdSECRET4@h/db here", "bad postgres://u:xxxxx@h/db here"},
		{"newline in the password", "mongodb://circle:abSECRET2\nxyz@127.0.0.1:1/circle_ghe", "mongodb://circle:xxxxx@127.0.0.1:1/circle_ghe"},
		{"an address after the URI", "see mongodb://u:p@h/db and then user@example.com", "see mongodb://u:xxxxx@h/db and then user@example.com"},
		{"no userinfo, then a URI", "https://vault:8200/v1 then postgres://u:p w@h/db", "https://vault:8200/v1 then postgres://u:xxxxx@h/db"},
	} {
		if got := Redact(c.in); got != c.want {
			t.Errorf("%s: Redact(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
}

// URIEvidence is built from the parts: the password never shows, however it is written.
func TestURIEvidence(t *testing.T) {
	for in, want := range map[string]string{
		"mongodb://circle:ab://cdSECRET1@127.0.0.1:1/circle_ghe":         "mongodb://circle:xxxxx@127.0.0.1:1/circle_ghe",
		"postgres://circle:abSECRET3\nxyz@127.0.0.1:1/circle":            "postgres://circle:xxxxx@127.0.0.1:1/circle",
		"mongodb://circle:p@ss\"w'SECRET@db1:27017,db2:x/circle_ghe?a=b": "mongodb://circle:xxxxx@db1:27017,db2:x/circle_ghe?a=b",
		"mongodb://circle@db1/x":                                         "mongodb://circle@db1/x",
		"mongodb://db1:27017/x":                                          "mongodb://db1:27017/x",
		"mongodb://circle:SECRETnoat/x":                                  "mongodb://...",
		"db1:27017":                                                      "",
		"SECRET word://x":                                                "",
	} {
		if got := URIEvidence(in); got != want {
			t.Errorf("URIEvidence(%q) = %q, want %q", in, got, want)
		}
	}
}

// A fix is redacted as the summary is: when it is set, in JSON and in a Failure's text.
func TestFixRedacted(t *testing.T) {
	f := New(URIMalformed, "f:1", "bad", "").WithFix("use postgres://circle:Hunter2SECRET@db/x")
	raw := f
	raw.Fix = "use mongodb://circle:Hunter2SECRET@db/x"
	b, _ := json.Marshal(raw)
	err := (&Failure{Findings: []Finding{raw}}).Error()
	if strings.Contains(f.Fix+string(b)+err, "Hunter2SECRET") || !strings.Contains(f.Fix, "circle:xxxxx@db") {
		t.Fatalf("fix %q, JSON %s, error %q", f.Fix, b, err)
	}
}

func TestSplitURI(t *testing.T) {
	p, ok := SplitURI("postgres://circle:Hunter2Prefix/x y@db.internal:5432/circle?sslmode=require")
	if !ok || p.Scheme != "postgres" || p.User != "circle" || p.Password != "Hunter2Prefix/x y" || p.HostPort != "db.internal:5432" || p.Rest != "/circle?sslmode=require" {
		t.Fatalf("%+v", p)
	}
	if got := strings.Join(UnescapedIn(p.Password), ", "); got != "'/' (%2F), a space (%20)" {
		t.Fatalf("UnescapedIn = %q", got)
	}
	if got := UnescapedIn("a-b.c_d~e!$&'()*+,;=:%41"); len(got) != 0 {
		t.Fatalf("characters URIs allow are reported: %q", got)
	}
	if _, ok := SplitURI("db:5432"); ok {
		t.Fatal("no scheme, yet split")
	}
}

// Evidence is capped however it got into the finding: New, WithEvidence, a field set directly
// (then the JSON of the record and --json caps it).
func TestEvidenceCapped(t *testing.T) {
	body := strings.Repeat("é", 600*1024) // a 1.2 MB error body, two bytes a rune
	for name, f := range map[string]Finding{
		"New":          New(ProbeInconclusive, "vault", "x", body),
		"WithEvidence": New(ProbeInconclusive, "vault", "x", "").WithEvidence(body),
	} {
		if len(f.Evidence) > MaxEvidence || !utf8.ValidString(f.Evidence) || !strings.Contains(f.Evidence, "bytes cut]") {
			t.Errorf("%s: evidence of %d bytes, valid UTF-8 %v: %.60q", name, len(f.Evidence), utf8.ValidString(f.Evidence), f.Evidence)
		}
	}
	direct := New(ProbeInconclusive, "vault", "x", "")
	direct.Evidence = body + " postgres://u:Hunter2@h/x"
	b, err := json.Marshal([]Finding{direct})
	if err != nil {
		t.Fatal(err)
	}
	var back []Finding
	if err := json.Unmarshal(b, &back); err != nil || len(back[0].Evidence) > MaxEvidence {
		t.Fatalf("JSON carries %d bytes of evidence (%v)", len(back[0].Evidence), err)
	}
	short := New(ProbeInconclusive, "vault", "x", "postgres://u:Hunter2@h/x")
	if short.Evidence != "postgres://u:xxxxx@h/x" {
		t.Fatalf("New does not redact: %q", short.Evidence)
	}
}

func TestWithSeverity(t *testing.T) {
	f := New(PGDatabaseMissing, "db", "x", "").WithSeverity(Warning)
	if f.Severity != Warning || f.Blocking {
		t.Fatalf("%+v", f)
	}
	if f := New(PGDatabaseMissing, "db", "x", ""); !f.Blocking {
		t.Fatal("the catalogue's PG_DATABASE_MISSING blocks")
	}
}

func TestSortAndWorst(t *testing.T) {
	fs := []Finding{{Code: TLSOff, Severity: Info}, {Code: ProbeInconclusive, Severity: Warning}, {Code: PGAuthFailed, Severity: Error}}
	Sort(fs)
	if fs[0].Code != PGAuthFailed || fs[1].Code != ProbeInconclusive || Worst(fs) != Error {
		t.Fatalf("%+v", fs)
	}
}

func TestSafetyCodesAreCataloguedAndNotOverridden(t *testing.T) {
	no := false
	for code := range Safety {
		if !code.Known() {
			t.Errorf("safety code %s is not catalogued", code)
		}
		e := code.Entry()
		fs := Apply([]Finding{New(code, "t", "s", "")}, map[Code]Override{code: {Severity: Info, Blocking: &no}})
		if fs[0].Severity != e.Severity || fs[0].Blocking != e.Blocking {
			t.Errorf("%s was overridden: %+v", code, fs[0])
		}
	}
	fs := Apply([]Finding{New(TLSExpired, "t", "s", "")}, map[Code]Override{TLSExpired: {Severity: Warning, Blocking: &no}})
	if fs[0].Severity != Warning {
		t.Errorf("an ordinary code was not overridden: %+v", fs[0])
	}
}

// Codes travel as their names: a record written by this haagent reads back into the same
// values, and one written by another version, naming a code this one lacks, still reads.
func TestCodeJSON(t *testing.T) {
	b, err := json.Marshal(New(PGAuthFailed, "db:5432", "s", ""))
	if err != nil || !strings.Contains(string(b), `"code":"PG_AUTH_FAILED"`) {
		t.Fatalf("%s (%v)", b, err)
	}
	var back Finding
	if err := json.Unmarshal(b, &back); err != nil || back.Code != PGAuthFailed {
		t.Fatalf("%+v (%v)", back, err)
	}
	var old []Finding
	if err := json.Unmarshal([]byte(`[{"code":"RETIRED_CODE","severity":"warning","summary":"s"}]`), &old); err != nil {
		t.Fatalf("an unknown code does not decode: %v", err)
	}
	if old[0].Code.String() != "RETIRED_CODE" || old[0].Code.Known() || old[0].Code == (Code{}) {
		t.Fatalf("unknown code decoded as %#v", old[0].Code)
	}
	if b, _ := json.Marshal(old[0]); !strings.Contains(string(b), `"code":"RETIRED_CODE"`) {
		t.Fatalf("an unknown code does not round-trip: %s", b)
	}
}

func TestLookup(t *testing.T) {
	if c, ok := Lookup("KEYS_CONFLICT"); !ok || c != KeysConflict {
		t.Fatalf("Lookup(KEYS_CONFLICT) = %#v, %v", c, ok)
	}
	if c, ok := Lookup("PG_AUTH_FAILD"); ok || c.Known() {
		t.Fatalf("a misspelt name was found: %#v", c)
	}
	for _, e := range Catalogue() {
		if c, ok := Lookup(e.Code); !ok || c.Entry().Fix != e.Fix {
			t.Errorf("%s does not look up to its entry", e.Code)
		}
	}
}

// README's findings table is the operators' list: every catalogued code is in it and it names
// no code the catalogue lacks.
func TestReadmeListsEveryCode(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "\n## Findings\n")
	if !ok {
		t.Fatal("README has no ## Findings section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	listed := map[string]bool{}
	code := regexp.MustCompile("`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`")
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first, _, _ := strings.Cut(line[1:], "|") // the code column only
		for _, m := range code.FindAllStringSubmatch(first, -1) {
			listed[m[1]] = true
		}
	}
	for _, e := range Catalogue() {
		if !listed[e.Code] {
			t.Errorf("%s is catalogued but not in README's findings table", e.Code)
		}
		delete(listed, e.Code)
	}
	for name := range listed {
		t.Errorf("README's findings table lists %s, which is not catalogued", name)
	}
}

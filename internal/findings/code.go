package findings

import "fmt"

// Code is a catalogued finding code. Its only constructor is register, called once per code in
// catalogue.go, so every Code a reporter can name is in the catalogue and a typo fails to
// compile. Codes compare with ==. A Code decoded from JSON keeps its name even when this
// haagent does not know it (a run record written by another version), and is then not Known.
type Code struct{ name string }

// Entry is a catalogued code: its default severity, whether it blocks the install, the service
// it concerns and the fix shown when the reporter has nothing more specific.
type Entry struct {
	Code     string
	Severity Severity
	Blocking bool
	Service  string
	Fix      string
	// DependsOn lists the upstream codes that explain this one when they fire for the same
	// host: after DNS_NOT_FOUND for db.internal, a PG_AUTH_FAILED for db.internal:5432 is noise
	// (Fold).
	DependsOn []Code
}

var (
	registry = map[string]Entry{}
	ordered  []Code
)

// register declares a code. Only catalogue.go calls it, at package initialisation, so a
// duplicate or malformed code panics before any test or boot can run.
func register(e Entry) Code {
	if _, dup := registry[e.Code]; dup {
		panic("findings: duplicate catalogue code " + e.Code)
	}
	registry[e.Code] = e
	c := Code{name: e.Code}
	ordered = append(ordered, c)
	return c
}

// Catalogue lists every registered entry in the order of catalogue.go.
func Catalogue() []Entry {
	es := make([]Entry, 0, len(ordered))
	for _, c := range ordered {
		es = append(es, registry[c.name])
	}
	return es
}

// Lookup returns the code registered under name, for names that come from outside the program
// (probes.overrides keys in the config).
func Lookup(name string) (Code, bool) {
	if _, ok := registry[name]; !ok {
		return Code{}, false
	}
	return Code{name: name}, true
}

// String is the code's stable name, e.g. PG_AUTH_FAILED.
func (c Code) String() string { return c.name }

// Known reports whether c is in this haagent's catalogue; a code read from an older or newer
// haagent's run record may not be.
func (c Code) Known() bool {
	_, ok := registry[c.name]
	return ok
}

// Entry returns c's catalogue entry; for an unknown code, an entry with its name alone.
func (c Code) Entry() Entry {
	if e, ok := registry[c.name]; ok {
		return e
	}
	return Entry{Code: c.name}
}

// MarshalText writes the code's name, so JSON carries the same string as before codes were
// typed (state.json and the run record stay readable both ways).
func (c Code) MarshalText() ([]byte, error) { return []byte(c.name), nil }

// UnmarshalText reads a code's name. An unknown name is kept, not refused: the record of a
// run by another haagent version must still read.
func (c *Code) UnmarshalText(b []byte) error {
	c.name = string(b)
	return nil
}

// GoString helps test failures (%#v) name the code rather than a struct.
func (c Code) GoString() string { return fmt.Sprintf("findings.Code(%q)", c.name) }

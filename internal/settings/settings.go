// Package settings reads the customization files the CircleCI services source (the
// MongoDB, PostgreSQL and Vault connection settings) the way bash would, with a real shell
// parser and expander, without ever executing them.
package settings

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/syntax"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// Where the services' settings live is the layout's to say (layout.Layout's
// InstallationCustomizations, CircleConfigDir and SharedDir). Every service reads the
// installation's own customizations first, then every file of the shared directory in name
// order (a later file can use and override what an earlier one set), then its own
// <circleconfig>/<service>/customizations when it has one, whose values take precedence.

// ServiceFile is the name of a service's own file in <circleconfig>/<service>/.
const ServiceFile = "customizations"

// IsShellFile reports whether a file under the circleconfig directory (rel is slash-separated
// and relative to it) is one the services source as shell: a file of shared/ or a <service>/customizations.
// Others (picard-dispatcher/resource-definitions.edn, telegraf's TOML, postgres/extra.conf)
// are other formats: synced, never parsed as shell.
func IsShellFile(rel string) bool {
	dir, name, ok := strings.Cut(rel, "/")
	if !ok || name == "" || strings.Contains(name, "/") || strings.HasPrefix(name, ".") {
		return false
	}
	if dir == "shared" {
		return true
	}
	return name == ServiceFile && dir != "" && !strings.HasPrefix(dir, ".")
}

// Setting is one variable's final value and where it was set.
type Setting struct {
	Name  string
	Value string
	File  string
	Line  int
}

// Where is file:line, for findings.
func (s Setting) Where() string { return fmt.Sprintf("%s:%d", s.File, s.Line) }

// Settings is the environment the services would see.
type Settings struct {
	vars map[string]Setting
	// Missing records references to variables nothing set, by the variable that used them.
	missing map[string][]findings.Finding
	// onRead, when set, is told what readers ask for (see OnRead).
	onRead func(name string)
	// install and shared are the installation customizations and the shared directory, as
	// the layout places them, for fixes; "" for a file parsed on its own (Parse).
	install, shared string
}

// sharedDir names the shared directory in a fix: the machine path when known, else the
// bucket's prefix of it.
func (s *Settings) sharedDir() string {
	if s.shared != "" {
		return s.shared
	}
	return "circleconfig/shared"
}

// OnRead makes s tell fn the name of every variable a reader asks for (Get, Require) and,
// followed by "*", the prefix of every Names call; nil stops it. The probes' tests check with
// it that each probe reads only the settings it declares. fn may be called concurrently.
func (s *Settings) OnRead(fn func(name string)) { s.onRead = fn }

func (s *Settings) read(name string) {
	if s.onRead != nil {
		s.onRead(name)
	}
}

// Get returns a setting; ok is false when nothing set it.
func (s *Settings) Get(name string) (Setting, bool) {
	s.read(name)
	v, ok := s.vars[name]
	return v, ok
}

// Names returns the variables with the given prefix that a file sets, sorted: those whose
// value could be built and those that use a variable nothing sets (Require reports those), so
// a CIRCLE_SECRETS_POSTGRES_*_URI="$UNSET/vms" is reported, not skipped.
func (s *Settings) Names(prefix string) []string {
	s.read(prefix + "*")
	var out []string
	for n := range s.vars {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	for n := range s.missing {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Require returns the non-empty value of name, or a SETTING_MISSING finding for service.
// When the value was built from a variable nothing set, that is the finding.
func (s *Settings) Require(service, name string) (Setting, []findings.Finding) {
	s.read(name)
	if fs := s.missing[name]; len(fs) > 0 {
		return Setting{}, fs
	}
	v, ok := s.vars[name]
	if !ok || v.Value == "" {
		what := "is not set"
		target := s.sharedDir() + "/"
		if ok {
			what, target = "is empty", v.Where()
		}
		f := findings.New(findings.SettingMissing, target, fmt.Sprintf("%s %s; the %s connection needs it", name, what, service), "").
			WithFix(fmt.Sprintf("add export %s=\"...\" to circle-installation-customizations or a file of circleconfig/shared/ in the bucket (they become %s and %s/)", name, s.install, s.sharedDir()))
		f.Service = service
		return Setting{}, []findings.Finding{f}
	}
	return v, nil
}

// Load reads the shared settings where the layout puts them: the installation customizations
// and shared/. Findings are for files that cannot be read safely; the settings hold whatever
// could be.
func Load(l layout.Layout) (*Settings, []findings.Finding) {
	files := []string{l.InstallationCustomizations()}
	entries, _ := os.ReadDir(l.Path(l.SharedDir()))
	for _, e := range entries {
		if e.Type().IsRegular() && IsShellFile("shared/"+e.Name()) {
			files = append(files, path.Join(l.SharedDir(), e.Name()))
		}
	}
	s := &Settings{vars: map[string]Setting{}, missing: map[string][]findings.Finding{},
		install: l.InstallationCustomizations(), shared: l.SharedDir()}
	var fs []findings.Finding
	for _, f := range files {
		fs = append(fs, s.load(l.Root, f)...)
	}
	return s, fs
}

// load parses one file under root into s; an absent file is no finding.
func (s *Settings) load(root, name string) []findings.Finding {
	data, err := os.ReadFile(filepath.Join(root, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []findings.Finding{findings.New(findings.ConfigSyntax, name, "cannot read "+name, err.Error())}
	}
	return s.parse(name, data)
}

// Views are the environments the services see: Shared for every service without a
// customizations file of its own, and one per service that has one (the shared settings, then
// that file on top).
type Views struct {
	Shared *Settings
	// Services maps a service (a directory of the circleconfig directory holding a customizations file) to
	// what it sees.
	Services map[string]*Settings
}

// Names returns the services with their own view, sorted.
func (v *Views) Names() []string {
	out := make([]string, 0, len(v.Services))
	for n := range v.Services {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// LoadViews reads the shared settings and every service's own customizations where the
// layout puts them. Each file is parsed once; a service's file is read on top of a copy of the
// shared settings, so it can use and override them as the service's shell would.
func LoadViews(l layout.Layout) (*Views, []findings.Finding) {
	shared, fs := Load(l)
	v := &Views{Shared: shared, Services: map[string]*Settings{}}
	entries, _ := os.ReadDir(l.Path(l.CircleConfigDir()))
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "shared" || !IsShellFile(e.Name()+"/"+ServiceFile) {
			continue
		}
		name := path.Join(l.CircleConfigDir(), e.Name(), ServiceFile)
		fi, err := os.Stat(l.Path(name))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		s := shared.Clone()
		fs = append(fs, s.load(l.Root, name)...)
		v.Services[e.Name()] = s
	}
	return v, fs
}

// Clone returns an independent copy of s.
func (s *Settings) Clone() *Settings {
	c := &Settings{vars: make(map[string]Setting, len(s.vars)), missing: make(map[string][]findings.Finding, len(s.missing)),
		install: s.install, shared: s.shared}
	for k, v := range s.vars {
		c.vars[k] = v
	}
	for k, v := range s.missing {
		c.missing[k] = v
	}
	return c
}

// Key is a canonical text of the values of the variables match selects (and of those that
// reference a variable nothing sets): two settings with the same Key give a reader of only
// those variables the same answers. It holds secrets: compare it, never print it.
func (s *Settings) Key(match func(name string) bool) string {
	var names []string
	for n := range s.vars {
		if match(n) {
			names = append(names, n)
		}
	}
	for n := range s.missing {
		if match(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		if fs, ok := s.missing[n]; ok {
			b.WriteString(n + "\x00!")
			for _, f := range fs {
				b.WriteString(f.Summary + "\x00")
			}
		} else {
			b.WriteString(n + "\x00=" + s.vars[n].Value)
		}
		b.WriteString("\x01")
	}
	return b.String()
}

// Parse reads one file's content on its own (the fetch's shell check, the cookie key's line,
// the fuzz target).
func Parse(name string, data []byte) (*Settings, []findings.Finding) {
	s := &Settings{vars: map[string]Setting{}, missing: map[string][]findings.Finding{}}
	return s, s.parse(name, data)
}

func (s *Settings) parse(name string, data []byte) []findings.Finding {
	// bash keeps a carriage return as part of the word (POSTGRES_HOST=$'pg.internal\r'), while
	// the parser below drops it: the probes would pass and the services get other values.
	if f, ok := CarriageReturn(name, data); ok {
		return []findings.Finding{f}
	}
	f, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(bytes.NewReader(data), name)
	if err != nil {
		var pe syntax.ParseError
		where := name
		if errors.As(err, &pe) {
			where = fmt.Sprintf("%s:%d:%d", name, pe.Pos.Line(), pe.Pos.Col())
		}
		return []findings.Finding{findings.New(findings.ConfigSyntax, where, "cannot parse "+name+" as a shell file", parseErrorText(err))}
	}
	var fs []findings.Finding
	for _, st := range f.Stmts {
		assigns, bad := assignments(st)
		if bad != "" {
			pos := st.Pos()
			fs = append(fs, findings.New(findings.SettingRefused, fmt.Sprintf("%s:%d:%d", name, pos.Line(), pos.Col()),
				fmt.Sprintf("%s contains %s; haagent only reads NAME=value and export NAME=value lines and never runs code", name, bad), ""))
			continue
		}
		for _, as := range assigns {
			fs = append(fs, s.assign(name, as)...)
		}
	}
	return fs
}

// CarriageReturn is a CONFIG_SYNTAX finding for a file with a carriage return (Windows line
// endings), naming its first line; ok is false for a file without one.
func CarriageReturn(name string, data []byte) (findings.Finding, bool) {
	i := bytes.IndexByte(data, '\r')
	if i < 0 {
		return findings.Finding{}, false
	}
	line := bytes.Count(data[:i], []byte("\n")) + 1
	n := 0
	for _, l := range bytes.Split(data, []byte("\n")) {
		if bytes.IndexByte(l, '\r') >= 0 {
			n++
		}
	}
	return findings.New(findings.ConfigSyntax, fmt.Sprintf("%s:%d", name, line),
		fmt.Sprintf("%s has a carriage return at line %d (%d lines: Windows line endings); bash would keep it in the values, so the services would not get what the probes checked", name, line, n), "").
		WithFix(fmt.Sprintf("convert the file to LF line endings (dos2unix %s, or save it with LF in your editor) and upload it again", filepath.Base(name))), true
}

// assignments returns the assignments of a statement that is nothing but assignments, or a
// description of what else it is.
func assignments(st *syntax.Stmt) ([]*syntax.Assign, string) {
	if st.Background || st.Coprocess || st.Negated || len(st.Redirs) > 0 {
		return nil, "a redirection or job control"
	}
	switch c := st.Cmd.(type) {
	case *syntax.CallExpr:
		if len(c.Args) > 0 {
			// Never the command's words: after NAME=pass word the "command" is the rest of a
			// password with an unquoted space, and after a ';' or a broken line it can be too.
			if len(c.Assigns) > 0 {
				return nil, fmt.Sprintf("a command after an unquoted space in the value of %s (quote the value in single quotes: %s='...')", c.Assigns[0].Name.Value, c.Assigns[0].Name.Value)
			}
			if w := c.Args[0].Lit(); knownCommands[w] {
				return nil, fmt.Sprintf("a command (%q)", w)
			}
			return nil, "a command"
		}
		return c.Assigns, ""
	case *syntax.DeclClause:
		if c.Variant.Value != "export" && c.Variant.Value != "declare" && c.Variant.Value != "readonly" {
			return nil, "a " + c.Variant.Value + " declaration"
		}
		for _, a := range c.Args {
			if a.Name == nil {
				return nil, "an export option or name without a value"
			}
		}
		return c.Args, ""
	case nil:
		return nil, ""
	}
	return nil, "a compound command"
}

// knownCommands are the commands a settings file is seen to hold by mistake, named in the
// finding; any other word could be a piece of a value and is not.
var knownCommands = map[string]bool{
	"source": true, ".": true, "eval": true, "exec": true, "echo": true, "printf": true, "set": true,
	"unset": true, "cd": true, "curl": true, "wget": true, "aws": true, "sudo": true, "bash": true,
	"sh": true, "cat": true, "rm": true, "alias": true, "local": true, "true": true, "false": true,
	"test": true, "[": true, "[[": true,
}

// backquotedRE finds the tokens mvdan.cc/sh's parse errors quote.
var backquotedRE = regexp.MustCompile("`[^`]*`")

// parseErrorText is a parse error without the words of the file it may quote ("%#q cannot be
// followed by a word" quotes a parameter's name, an unclosed here-document its delimiter):
// those can be a piece of a password. Operators and keywords stay, so the message still says
// what is wrong; the target holds the line and column.
func parseErrorText(err error) string {
	msg := err.Error()
	var pe syntax.ParseError
	if errors.As(err, &pe) {
		msg = pe.Text
	}
	return backquotedRE.ReplaceAllStringFunc(msg, func(q string) string {
		tok := q[1 : len(q)-1]
		if shellKeywords[tok] || (len(tok) <= 2 && strings.Trim(tok, "\"'`()[]{}<>;&|!$=#*?@+-,:") == "") {
			return q
		}
		return "(a word of the file)"
	})
}

var shellKeywords = map[string]bool{
	"export": true, "declare": true, "readonly": true, "if": true, "then": true, "elif": true, "else": true,
	"fi": true, "for": true, "while": true, "until": true, "do": true, "done": true, "case": true,
	"esac": true, "in": true, "function": true, "select": true, "time": true, "coproc": true, "]]": true,
}

func (s *Settings) assign(file string, as *syntax.Assign) []findings.Finding {
	name := as.Name.Value
	pos := as.Pos()
	where := fmt.Sprintf("%s:%d:%d", file, pos.Line(), pos.Col())
	if as.Array != nil || as.Index != nil || as.Append {
		return []findings.Finding{findings.New(findings.SettingRefused, where, name+" is assigned as an array or with +=; haagent reads plain NAME=value", "")}
	}
	if as.Value == nil {
		if as.Naked {
			return nil // `export NAME` alone exports what is already set
		}
		s.vars[name] = Setting{Name: name, Value: "", File: file, Line: int(pos.Line())}
		delete(s.missing, name)
		return nil
	}
	var refused string
	var missing []string
	syntax.Walk(as.Value, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.CmdSubst:
			refused = "a command substitution $(...)"
		case *syntax.ProcSubst:
			refused = "a process substitution"
		case *syntax.ArithmExp:
			refused = "an arithmetic expansion"
		case *syntax.ExtGlob:
			refused = "an extended glob"
		case *syntax.ParamExp:
			if n.Param != nil && n.Exp == nil && !n.Length && n.Repl == nil && n.Slice == nil {
				if _, ok := s.vars[n.Param.Value]; !ok && !special(n.Param.Value) {
					missing = append(missing, n.Param.Value)
				}
			}
		}
		return true
	})
	if refused != "" {
		return []findings.Finding{findings.New(findings.SettingRefused, where,
			fmt.Sprintf("the value of %s uses %s; haagent never runs code from settings files", name, refused), "")}
	}
	if len(missing) > 0 {
		var fs []findings.Finding
		unnamed := false
		for _, m := range missing {
			if !nameable(m, name) {
				// "pass$word" in double quotes: the "variable" is the rest of the password.
				if !unnamed {
					unnamed = true
					fs = append(fs, findings.New(findings.SettingMissing, where,
						fmt.Sprintf("the value of %s holds a $ the shell would expand, to a variable no settings file sets (it would become an empty string)", name), "").
						WithFix(fmt.Sprintf("if the $ is part of a password or token, put the value in single quotes (%s='...'; a ' inside is written '\\''); else define the variable before it is used (in %s or an earlier file of %s/)", name, file, s.sharedDir())))
				}
				continue
			}
			f := findings.New(findings.SettingMissing, where,
				fmt.Sprintf("%s uses $%s, which no settings file sets (it would expand to an empty string)", name, m), "").
				WithFix(fmt.Sprintf("define %s before it is used (in %s or an earlier file of %s/), or write the value out in full", m, file, s.sharedDir()))
			fs = append(fs, f)
		}
		s.missing[name] = fs
		delete(s.vars, name)
		return nil
	}
	val, err := expand.Literal(&expand.Config{Env: environ(s.vars)}, as.Value)
	if err != nil {
		// Not the error's text: ${X?message} puts the message, a piece of the value, in it.
		return []findings.Finding{findings.New(findings.SettingRefused, where,
			fmt.Sprintf("the value of %s uses a ${...} form that fails to expand (such as ${NAME?message} with NAME unset)", name), "").
			WithFix(fmt.Sprintf("write the value of %s out in full, in single quotes (%s='...')", name, name))}
	}
	s.vars[name] = Setting{Name: name, Value: val, File: file, Line: int(pos.Line())}
	delete(s.missing, name)
	return nil
}

// knownReferences are variables settings files are known to build others from (the
// runbook's five CIRCLE_SECRETS_MONGODB_*_URI="$MONGO_BASE_URI/..."), named in a finding even
// inside a secret's value.
var knownReferences = map[string]bool{
	"MONGO_BASE_URI": true, "POSTGRES_HOST": true, "POSTGRES_PORT": true, "POSTGRES_USER": true,
	"POSTGRES_PASSWORD": true, "VAULT__SCHEME": true, "VAULT__HOST": true, "VAULT__PORT": true,
	"VAULT__CLIENT_TOKEN": true, "VAULT__TRANSIT_MOUNT": true,
}

// nameable reports whether a finding may name $ref, referenced in the value of name: ref is a
// word of the value, so only a name no password is made of: a known one, or an upper-case
// name in a value that holds no secret.
func nameable(ref, name string) bool {
	if knownReferences[ref] {
		return true
	}
	if ref == "" || strings.Trim(ref, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
		return false
	}
	return !secretName(name)
}

// secretName says whether a variable's value may hold a credential: a password, a token, a key,
// or a URI (whose user information holds one).
func secretName(name string) bool {
	u := strings.ToUpper(name)
	for _, w := range []string{"PASS", "PWD", "TOKEN", "SECRET", "KEY", "AUTH", "CRED", "COOKIE", "URI", "URL", "DSN"} {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}

// special parameters ($HOME and friends are not set by the files, but neither do services
// use them in connection settings; only $1, $@ and the like are treated as set-by-shell).
func special(name string) bool {
	return strings.ContainsAny(name[:1], "0123456789@*#?$!-")
}

type environ map[string]Setting

func (e environ) Get(name string) expand.Variable {
	v, ok := e[name]
	if !ok {
		return expand.Variable{}
	}
	return expand.Variable{Set: true, Exported: true, Kind: expand.String, Str: v.Value}
}

func (e environ) Each(fn func(name string, vr expand.Variable) bool) {
	for n := range e {
		if !fn(n, e.Get(n)) {
			return
		}
	}
}

// Package cookie keeps CIRCLE_SECRETS_SESSION_COOKIE_KEY in the installation customizations
// (where the layout puts them: /etc/circle-installation-customizations):
// exactly one export line, 16 characters, the same on every boot and on every replacement
// instance (a new value logs every CircleCI user out), merged into the bucket's copy of the file
// with the operator's lines as they are. The bucket's session-cookie-key object is the source
// of truth.
package cookie

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"mvdan.cc/sh/v3/syntax"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/settings"
)

// Names of the key in the bucket and the variable. The file on the machine is the layout's
// installation_customizations entry.
const (
	Object = "session-cookie-key"
	// CustomizationsObject is the bucket's copy of the file (optional: CircleCI's HA page
	// keeps the MongoDB URIs there, and a deployment built by it the cookie key too).
	CustomizationsObject = "circle-installation-customizations"
	Variable             = "CIRCLE_SECRETS_SESSION_COOKIE_KEY"
	Length               = 16
)

// The runbook's echo wrapped the line in typographic quotes (and the shell would take it for
// a command); such a line is ours to replace. Every other line for the variable is found with
// the shell parser (see spans).
var quotedLineRE = regexp.MustCompile(`^\s*[‘’'"]\s*(export\s+)?` + Variable + `\s*=`)

// lineRE is the line-by-line fallback for a file the shell parser cannot read.
var lineRE = regexp.MustCompile(`^\s*[‘’'"]?\s*(export\s+)?` + Variable + `\s*=`)

// Input is what the merge starts from.
type Input struct {
	// InPlace is the file on the machine; nil when there is none.
	InPlace []byte
	// Bucket is the bucket's copy of the file, when FromBucket: the merge starts from it, so
	// the operator's lines reach the machine as they are in the bucket.
	Bucket     []byte
	FromBucket bool
	// Remote, when set, is what the fetch's concurrent pass already read from the
	// session-cookie-key object (its bytes, or S3's error): Merge judges it exactly as its own
	// read, and reads again only after a conditional put that another instance won.
	Remote *fetch.Read
}

// Result says where the key came from (never the key itself) and what the file must hold.
type Result struct {
	Source   string // s3, customizations (adopted from the bucket's copy), local, generated
	Content  []byte // the merged file: the base with exactly one line for the key
	Findings []findings.Finding
}

// Merge decides the session cookie key and returns the file to put in place. The bucket's
// session-cookie-key object is the source of truth. When S3 says it does not exist (and only
// then), the key on the bucket's copy of the file is adopted (a deployment built by CircleCI's
// HA page keeps it there), else the machine's, else a new one; it is stored as the object with
// a conditional put, so two instances booting at once agree.
func Merge(ctx context.Context, b *bucket.Bucket, in Input) (Result, error) {
	var res Result
	base := in.InPlace
	if in.FromBucket {
		base = in.Bucket
	}
	local := LocalValue(in.InPlace)
	var inBucket string // the bucket's copy's key, when valid
	lineInvalid := false
	if in.FromBucket {
		v, present := lineValue(in.Bucket)
		inBucket, lineInvalid = v, present && !Valid(v)
		if lineInvalid {
			inBucket = ""
		}
	}
	target := b.URI(Object)
	custom := b.URI(CustomizationsObject)

	var value string
	var err error
	if in.Remote != nil {
		value, err = parseRemote(in.Remote.Data, in.Remote.Err)
	} else {
		value, err = readRemote(ctx, b)
	}
	switch {
	case err == nil:
		res.Source = "s3"
		if (inBucket != "" && inBucket != value) || lineInvalid {
			res.Findings = append(res.Findings, findings.New(findings.CookieKeyOverridden, custom,
				fmt.Sprintf("%s in %s differs from %s; the object's key is used (keys not shown)", Variable, custom, target), ""))
		}
	case errors.Is(err, errInvalid):
		f := findings.New(findings.CookieKeyInvalid, target, "the session cookie key in the bucket is not 16 printable ASCII characters", err.Error())
		return res, &findings.Failure{Findings: []findings.Finding{f}}
	case errors.Is(err, bucket.ErrNotFound):
		if lineInvalid {
			// The line may be the key the users' sessions use: never replace it unasked.
			f := findings.New(findings.CookieKeyInvalid, custom,
				fmt.Sprintf("%s in %s is not 16 printable ASCII characters and %s does not exist; haagent will not replace it with a new key", Variable, custom, target), "contents not shown").
				WithFix(fmt.Sprintf("write the 16-character key your installation uses into %s (aws s3 cp KEYFILE %s), or fix the line in %s", target, target, custom))
			return res, &findings.Failure{Findings: []findings.Finding{f}}
		}
		candidate, source := inBucket, "customizations"
		if candidate == "" {
			candidate, source = local, "local"
		}
		if candidate == "" {
			if candidate, err = Generate(); err != nil {
				return res, err
			}
			source = "generated"
		}
		perr := b.PutIfAbsent(ctx, Object, []byte(candidate))
		var be *bucket.Error
		switch {
		case perr == nil:
			// The put was conditional (If-None-Match: *): it succeeded only where no object
			// was, so the object is this candidate and reading it back would tell nothing.
			value, res.Source = candidate, source
		case errors.Is(perr, bucket.ErrExists):
			// Another instance won the race: its key is the one.
			v, rerr := readRemote(ctx, b)
			if rerr != nil {
				return res, fmt.Errorf("reading %s after another instance created it: %w", target, rerr)
			}
			value = v
			if v != candidate {
				source = "s3"
			}
			res.Source = source
		case errors.As(perr, &be) && be.Code() == findings.S3AccessDenied:
			value, res.Source = candidate, source
			res.Findings = append(res.Findings, findings.New(findings.CookieKeyNotSaved, target,
				"the session cookie key could not be saved to the bucket; a replacement instance would log every user out", be.Error()).
				WithFix(fmt.Sprintf("grant the instance role s3:PutObject on arn:aws:s3:::%s/%s%s, or upload the key yourself", b.Name, b.Prefix, Object)))
		default:
			if source == "generated" {
				f := findings.New(findings.CookieKeyUnavailable, target, "creating the session cookie key in the bucket failed, and neither the machine nor the bucket's circle-installation-customizations holds one", perr.Error())
				return res, &findings.Failure{Findings: []findings.Finding{f}}
			}
			// A key the bucket's copy or the machine already holds is kept: it is the one in use.
			value, res.Source = candidate, source
			res.Findings = append(res.Findings, findings.New(findings.CookieKeyLocalOnly, target,
				"saving the session cookie key to the bucket failed; keeping the one in use", perr.Error()).
				WithFix(fmt.Sprintf("check the instance role's s3:PutObject on arn:aws:s3:::%s/%s%s and the route to S3; until the key is there, a replacement instance may get another key and log every user out", b.Name, b.Prefix, Object)))
		}
	default:
		// 403, 5xx, timeout: S3 did not say the key is absent, so any other key could replace
		// the real one.
		if local == "" {
			f := findings.New(findings.CookieKeyUnavailable, target, "cannot read the session cookie key from the bucket and none is on the machine", err.Error())
			var be *bucket.Error
			if errors.As(err, &be) && be.Code() == findings.S3AccessDenied {
				f = f.WithFix(fmt.Sprintf("grant the instance role s3:GetObject on arn:aws:s3:::%s/%s%s (and s3:ListBucket, so a missing key answers 404)", b.Name, b.Prefix, Object))
			}
			return res, &findings.Failure{Findings: []findings.Finding{f}}
		}
		value, res.Source = local, "local"
		res.Findings = append(res.Findings, findings.New(findings.CookieKeyLocalOnly, target,
			"cannot read the session cookie key from the bucket; keeping the one on the machine", err.Error()))
	}
	res.Content = Render(base, value)
	return res, nil
}

// Ensure merges the file in place (the layout entry's Dest under root) with the bucket's key
// and writes it when it changed, with the entry's mode and owner. The boot stages the merge
// with the bundle instead (see bootstrap); Ensure serves a reboot that goes on without S3's
// files.
func Ensure(ctx context.Context, b *bucket.Bucket, root string, e config.Entry) (Result, bool, error) {
	file := e.Dest
	path := filepath.Join(root, file)
	content, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Result{}, false, fmt.Errorf("reading %s: %w", file, err)
	}
	res, err := Merge(ctx, b, Input{InPlace: content})
	if err != nil {
		return res, false, err
	}
	changed, err := write(path, content, res.Content, e)
	if errors.Is(err, atomicfile.ErrSymlink) {
		// Same content behind a link: left as it is, as the fetch leaves one, and said.
		target, _ := os.Readlink(path)
		res.Findings = append(res.Findings, findings.New(findings.FileSymlinkNotFollowed, file,
			fmt.Sprintf("%s is a symbolic link (to %s); haagent does not follow it, so the target keeps its own mode and owner instead of %#o root", file, target, e.Mode.Perm()),
			err.Error()).WithFix(fmt.Sprintf("replace the link with the file: cp --remove-destination \"$(readlink -f %s)\" %s", file, file)))
		err = nil
	}
	return res, changed, err
}

var errInvalid = errors.New("invalid session cookie key")

// MaxObject is the largest session-cookie-key object read (the key is 16 bytes).
const MaxObject = 1024

func readRemote(ctx context.Context, b *bucket.Bucket) (string, error) {
	return parseRemote(b.GetBytes(ctx, Object, MaxObject))
}

// parseRemote judges what a read of the object returned.
func parseRemote(data []byte, err error) (string, error) {
	if err != nil {
		return "", err
	}
	v := strings.TrimRight(string(data), "\r\n")
	if !Valid(v) {
		return "", fmt.Errorf("%w: %d bytes, want %d printable ASCII characters (contents not shown)", errInvalid, len(v), Length)
	}
	return v, nil
}

// Valid reports whether v is 16 printable ASCII characters.
func Valid(v string) bool {
	if len(v) != Length {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// Generate returns 16 random letters and digits (safe unquoted in a shell file).
func Generate() (string, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, Length)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return "", fmt.Errorf("generating a session cookie key: %w", err)
		}
		b[i] = alphabet[n.Int64()]
	}
	return string(b), nil
}

// LocalValue returns the valid key on the last line for the variable, or "".
func LocalValue(content []byte) string {
	v, _ := lineValue(content)
	if !Valid(v) {
		return ""
	}
	return v
}

// span is one place the file sets the variable: bytes [start, end) of the content, whole
// lines or part of a statement that also sets other variables (export A=1 VARIABLE=...).
type span struct {
	start, end int
	lines      bool
	value      string // as the services' shell would read it; "" when not a plain value
}

// spans finds every place content sets the variable, in order: the runbook's quoted lines
// line by line, the rest with the shell parser, so that export A=1 VARIABLE=..., declare -x
// and any spacing are found as bash would run them. A file the parser cannot read (the boot
// reports its syntax elsewhere) is searched line by line.
func spans(content []byte) []span {
	var out []span
	masked := append([]byte(nil), content...)
	for off := 0; off < len(content); {
		end := bytes.IndexByte(content[off:], '\n')
		if end < 0 {
			end = len(content)
		} else {
			end += off
		}
		line := string(content[off:end])
		if quotedLineRE.MatchString(line) {
			out = append(out, span{start: off, end: min(end+1, len(content)), lines: true, value: lineAssignValue(strings.Trim(strings.TrimSpace(line), "‘’"))})
			for i := off; i < end; i++ {
				masked[i] = ' '
			}
		}
		off = end + 1
	}
	f, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(bytes.NewReader(masked), CustomizationsObject)
	if err != nil {
		return lineSpans(content)
	}
	for _, st := range f.Stmts {
		var assigns []*syntax.Assign
		switch c := st.Cmd.(type) {
		case *syntax.CallExpr:
			if len(c.Args) == 0 {
				assigns = c.Assigns
			}
		case *syntax.DeclClause:
			assigns = c.Args
		}
		named := 0
		for _, a := range assigns {
			if a.Name != nil {
				named++
			}
		}
		for _, a := range assigns {
			if a.Name == nil || a.Name.Value != Variable {
				continue
			}
			sp := span{value: lineAssignValue(string(content[a.Pos().Offset():a.End().Offset()]))}
			if named == 1 {
				sp.start, sp.end = int(st.Pos().Offset()), int(st.End().Offset())
				sp = wholeLines(content, sp)
			} else {
				sp.start, sp.end = int(a.Pos().Offset()), int(a.End().Offset())
				for sp.start > 0 && (content[sp.start-1] == ' ' || content[sp.start-1] == '\t') {
					sp.start--
				}
			}
			out = append(out, sp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out
}

// wholeLines widens a statement to its lines when nothing but blanks and a comment share them.
func wholeLines(content []byte, sp span) span {
	ls := bytes.LastIndexByte(content[:sp.start], '\n') + 1
	le := bytes.IndexByte(content[sp.end:], '\n')
	if le < 0 {
		le = len(content)
	} else {
		le += sp.end
	}
	before := strings.TrimSpace(string(content[ls:sp.start]))
	after := strings.TrimSpace(string(content[sp.end:le]))
	if before != "" || (after != "" && !strings.HasPrefix(after, "#")) {
		return sp
	}
	sp.start, sp.end, sp.lines = ls, min(le+1, len(content)), true
	return sp
}

// lineSpans is the line-by-line search, for a file the parser cannot read.
func lineSpans(content []byte) []span {
	var out []span
	off := 0
	for _, l := range strings.SplitAfter(string(content), "\n") {
		if lineRE.MatchString(l) {
			out = append(out, span{start: off, end: off + len(l), lines: true, value: lineAssignValue(strings.Trim(strings.TrimSpace(l), "‘’"))})
		}
		off += len(l)
	}
	return out
}

// lineAssignValue is the value one assignment's text sets, as the services' shell would read
// it, or "" when it is not a plain value.
func lineAssignValue(assign string) string {
	s, fs := settings.Parse(CustomizationsObject, []byte(assign+"\n"))
	if v, ok := s.Get(Variable); ok && len(fs) == 0 {
		return v.Value
	}
	return ""
}

// lineValue returns the value the last assignment of the variable sets, as the services'
// shell would read it (present is false when nothing sets it; the value is "" when it is not
// a plain assignment). The runbook's typographic quotes around the whole line are dropped
// first: a machine built from its echo holds them literally.
func lineValue(content []byte) (value string, present bool) {
	sps := spans(content)
	if len(sps) == 0 {
		return "", false
	}
	return sps[len(sps)-1].value, true
}

// quote writes v in double quotes, as every property of the file is written, escaping what
// the shell would otherwise expand.
func quote(v string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "`", "\\`").Replace(v) + `"`
}

// Render returns content with its first assignment of the variable replaced by the line
// `export VARIABLE="value"` and every other one removed (from a statement that sets other
// variables too, only the variable's part goes, and the line follows it); without one, the
// line is added at the end. Everything else is kept as it is.
func Render(content []byte, value string) []byte {
	var out bytes.Buffer
	line := "export " + Variable + "=" + quote(value) + "\n"
	sps := spans(content)
	at := 0
	pending := false // the line waits for the end of the current line
	for i, sp := range sps {
		if sp.start < at {
			continue
		}
		out.Write(content[at:sp.start])
		at = sp.end
		if i == 0 {
			if sp.lines {
				out.WriteString(line)
			} else {
				pending = true
			}
		}
		if pending {
			if nl := bytes.IndexByte(content[at:], '\n'); nl >= 0 && (i+1 == len(sps) || sps[i+1].start > at+nl) {
				out.Write(content[at : at+nl+1])
				at += nl + 1
				out.WriteString(line)
				pending = false
			}
		}
	}
	out.Write(content[at:])
	if b := out.Bytes(); len(b) > 0 && b[len(b)-1] != '\n' {
		out.WriteByte('\n')
	}
	if len(sps) == 0 || pending {
		out.WriteString(line)
	}
	return out.Bytes()
}

func write(path string, content, want []byte, e config.Entry) (bool, error) {
	if bytes.Equal(want, content) {
		// Unchanged: still converge mode and owner (a 0600 left by an older haagent), never
		// through a symlink at the path.
		uid, gid := e.UID, e.GID
		if uid < 0 {
			uid = os.Geteuid()
		}
		if gid < 0 {
			gid = os.Getegid()
		}
		if _, err := atomicfile.Converge(path, e.Mode.Perm(), uid, gid, false); err != nil {
			return false, fmt.Errorf("converging the mode and owner of %s: %w", e.Dest, err)
		}
		return false, nil
	}
	if _, err := atomicfile.WriteFile(path, want, atomicfile.Options{Mode: e.Mode, DirMode: 0o755, UID: e.UID, GID: e.GID}); err != nil {
		return false, fmt.Errorf("writing %s: %w", e.Dest, err)
	}
	return true, nil
}

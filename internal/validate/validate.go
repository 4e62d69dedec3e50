// Package validate checks the fetched files Replicated will read, before they are moved into
// place: a hand-edited replicated.conf that lost a brace must stop the boot with file:line:col,
// not replace a good file and fail the install twenty minutes later.
package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// Files says where each file is meant to be (the layout), where to read it (a staged copy or
// the file in place) and how to resolve the paths replicated.conf names.
type Files struct {
	// Layout says where replicated.conf, settings.conf and the licence land.
	Layout layout.Layout
	// Read maps a machine path (/etc/settings.conf) to the path holding its new content.
	Read func(machinePath string) string
	// Exists reports whether a machine path exists or is about to (it is in the bundle).
	Exists func(machinePath string) bool
}

// InPlace reads the files of the layout under its root as they are.
func InPlace(l layout.Layout) Files {
	return Files{
		Layout: l,
		Read:   l.Path,
		Exists: func(p string) bool {
			_, err := os.Stat(l.Path(p))
			return err == nil
		},
	}
}

// Fetched reports whether any of the files Check validates is in place (before the first
// boot, in an image build, none is).
func (f Files) Fetched() bool {
	l := f.Layout
	return f.Exists(l.ReplicatedConf()) || f.Exists(l.SettingsConf()) || f.Exists(l.License())
}

var knownReplicatedKeys = map[string]bool{
	"DaemonAuthenticationType": true, "DaemonAuthenticationPassword": true, "DaemonToken": true,
	"TlsBootstrapType": true, "TlsBootstrapHostname": true, "TlsBootstrapCert": true, "TlsBootstrapKey": true,
	"LogLevel": true, "Channel": true, "ReleaseChannel": true, "ReleaseSequence": true,
	"LicenseFileLocation": true, "LicenseBootstrapAirgapPackagePath": true, "LicenseBootstrapChannelID": true,
	"ImportSettingsFrom": true, "BypassPreflightChecks": true, "SkipPreflights": true, "AppID": true,
	"HostnameOverride": true, "LocalAddress": true, "NoProxy": true, "HttpProxy": true,
}

// Check validates replicated.conf, settings.conf and the licence they name, at the paths the
// layout gives them.
func Check(f Files) []findings.Finding {
	var out []findings.Finding
	l := f.Layout
	rc, fs := readJSON(f, l.ReplicatedConf())
	out = append(out, fs...)
	// The licence Replicated reads is the one LicenseFileLocation names; checkReplicated
	// reports when that is not the file the layout writes.
	license := l.License()
	if rc != nil {
		out = append(out, checkReplicated(f, rc)...)
		if v, ok := rc["LicenseFileLocation"].(string); ok && v != "" {
			license = v
		}
	}
	sc, fs := readJSON(f, l.SettingsConf())
	out = append(out, fs...)
	if sc != nil {
		out = append(out, checkSettings(l.SettingsConf(), sc)...)
	}
	out = append(out, checkLicense(f, license)...)
	return out
}

func readJSON(f Files, path string) (map[string]any, []findings.Finding) {
	data, err := os.ReadFile(f.Read(path))
	if errors.Is(err, os.ErrNotExist) {
		return nil, []findings.Finding{findings.New(findings.FileInvalid, path, path+" does not exist", "").
			WithFix("upload it to the bucket; Replicated needs it at install time")}
	}
	if err != nil {
		return nil, []findings.Finding{findings.New(findings.FileInvalid, path, "cannot read "+path, err.Error())}
	}
	if f := syntaxFinding(path, data); f != nil {
		return nil, []findings.Finding{*f}
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, []findings.Finding{findings.New(findings.FileSyntax, path+":1:1", path+" must be a JSON object", err.Error())}
	}
	return m, nil
}

// syntaxFinding finds the first JSON syntax error and names its line, column and the text
// around it (a curly quote pasted from a web page, a trailing comma, a lost brace).
func syntaxFinding(path string, data []byte) *findings.Finding {
	var v any
	err := json.Unmarshal(data, &v)
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		return nil
	}
	msg := strings.TrimPrefix(se.Error(), "json: ")
	off := se.Offset
	switch {
	case strings.Contains(msg, "unexpected end of JSON input"):
		off = int64(len(data)) + 1
		msg = "the file ends before its JSON does (a missing closing brace, bracket or quote)"
	case strings.Contains(msg, "after top-level value"):
		msg += " (the content is not one JSON object: a missing opening brace, or a brace too many)"
	case curlyAt(data, off):
		msg += " (a typographic quote: use plain \" quotes)"
	case strings.Contains(msg, "looking for beginning of object key string") && prevNonSpace(data, off) == ',':
		msg += " (a trailing comma)"
	}
	return syntaxAt(path, data, off, msg)
}

func prevNonSpace(data []byte, off int64) byte {
	for i := int(off) - 2; i >= 0 && i < len(data); i-- {
		if c := data[i]; c != ' ' && c != '\n' && c != '\t' && c != '\r' {
			return c
		}
	}
	return 0
}

func curlyAt(data []byte, off int64) bool {
	start := max(off-4, 0)
	end := min(off+4, int64(len(data)))
	s := string(data[start:end])
	return strings.ContainsAny(s, "“”‘’")
}

func syntaxAt(path string, data []byte, off int64, msg string) *findings.Finding {
	if off > int64(len(data))+1 {
		off = int64(len(data)) + 1
	}
	line, col := 1, 1
	lineStart := 0
	for i := 0; i < int(off)-1 && i < len(data); i++ {
		if data[i] == '\n' {
			line++
			lineStart = i + 1
		}
	}
	col = utf8.RuneCount(data[lineStart:min(max(int(off)-1, lineStart), len(data))]) + 1
	lineEnd := bytes.IndexByte(data[lineStart:], '\n')
	text := data[lineStart:]
	if lineEnd >= 0 {
		text = data[lineStart : lineStart+lineEnd]
	}
	where := fmt.Sprintf("%s:%d:%d", path, line, col)
	f := findings.New(findings.FileSyntax, where, fmt.Sprintf("%s is not valid JSON at line %d, column %d: %s", path, line, col, maskChar(msg)),
		fmt.Sprintf("line %d, string values masked, %s marks the error: %s", line, errMark, lineShape(string(text), int(off)-1-lineStart)))
	return &f
}

// errMark shows where on the line the parser stopped; the shape's columns are not the file's.
const errMark = ">>>"

// lineShape is the line with every string value and bare word masked: a settings.conf value
// (a passphrase, a client secret) sits on its own `"value": "..."` line, so hiding only lines
// that name a password is not enough. Keys stay (a key is a string or word in key position,
// after '{' or ',' or at the line's start, followed by ':'), and so do punctuation, true, false
// and null: that is the shape the operator needs to see a lost comma or a curly quote. at is
// the error's byte offset in the line.
func lineShape(line string, at int) string {
	var b strings.Builder
	mark := -1
	keyPos := true
	nextIsColon := func(i int) bool {
		for ; i < len(line); i++ {
			if c := line[i]; c != ' ' && c != '\t' && c != '\r' {
				return c == ':'
			}
		}
		return false
	}
	for i := 0; i < len(line); {
		if mark < 0 && i >= at {
			mark = b.Len()
		}
		c := line[i]
		switch {
		case c == '"':
			j := i + 1
			for j < len(line) && line[j] != '"' {
				if line[j] == '\\' {
					j++
				}
				j++
			}
			closed := j < len(line)
			end := min(j+1, len(line))
			if mark < 0 && at < end {
				mark = b.Len() // inside the string: mark its start, not the character
			}
			switch {
			case keyPos && closed && nextIsColon(end):
				b.WriteString(line[i:end])
			case closed:
				b.WriteString(`"…"`)
			default:
				b.WriteString(`"…`)
			}
			keyPos = false
			i = end
		case c == ' ' || c == '\t' || c == '\r':
			b.WriteByte(c)
			i++
		case c == '{' || c == ',':
			b.WriteByte(c)
			keyPos = true
			i++
		case c == '}' || c == '[' || c == ']' || c == ':':
			b.WriteByte(c)
			keyPos = false
			i++
		default:
			j := i
			for j < len(line) && !strings.ContainsRune(" \t\r{}[]:,\"", rune(line[j])) {
				j++
			}
			if mark < 0 && at < j {
				mark = b.Len()
			}
			switch word := line[i:j]; {
			case word == "true" || word == "false" || word == "null":
				b.WriteString(word)
			case keyPos && nextIsColon(j):
				b.WriteString(word) // a key in typographic quotes, the usual paste from a web page
			default:
				b.WriteString("…")
			}
			keyPos = false
			i = j
		}
	}
	shape := b.String()
	if mark < 0 {
		mark = len(shape)
	}
	shape = shape[:mark] + errMark + shape[mark:]
	// A minified file is one long line: show the part around the error.
	const half = 120
	if len(shape) > 2*half {
		from, to := max(mark-half, 0), min(mark+len(errMark)+half, len(shape))
		for from > 0 && !utf8.RuneStart(shape[from]) {
			from--
		}
		for to < len(shape) && !utf8.RuneStart(shape[to]) {
			to++
		}
		cut := shape[from:to]
		if from > 0 {
			cut = "…" + cut
		}
		if to < len(shape) {
			cut += "…"
		}
		shape = cut
	}
	return strings.TrimSpace(shape)
}

// quotedCharRE is the character encoding/json quotes in a syntax error ("invalid character
// 'x' after object key:value pair").
var quotedCharRE = regexp.MustCompile(`character '((?:\\.|[^'\\])+)'`)

// maskChar hides the character a JSON syntax error quotes when it is a letter, a digit or not
// ASCII: inside a value it is a character of that value. Punctuation stays (it is what tells a
// lost comma from a stray brace).
func maskChar(msg string) string {
	return quotedCharRE.ReplaceAllStringFunc(msg, func(m string) string {
		c := quotedCharRE.FindStringSubmatch(m)[1]
		if len(c) == 1 && c[0] < 0x80 && !(c[0] >= 'a' && c[0] <= 'z' || c[0] >= 'A' && c[0] <= 'Z' || c[0] >= '0' && c[0] <= '9') {
			return m
		}
		if strings.HasPrefix(c, "\\") && len(c) <= 4 {
			return m // an escaped control character or quote
		}
		return "character (a letter, digit or non-ASCII character, not shown)"
	})
}

func checkReplicated(f Files, m map[string]any) []findings.Finding {
	var out []findings.Finding
	conf := f.Layout.ReplicatedConf()
	need := func(key, why string) {
		if v, ok := m[key].(string); !ok || strings.TrimSpace(v) == "" {
			out = append(out, findings.New(findings.FileInvalid, conf, fmt.Sprintf("%s lacks %q (%s)", conf, key, why), "").
				WithFix(fmt.Sprintf("add \"%s\": \"...\" to replicated.conf in the bucket", key)))
		}
	}
	need("TlsBootstrapHostname", "the CircleCI host name the console's certificate is made for")
	need("DaemonAuthenticationType", "how the Replicated console is protected")
	if m["DaemonAuthenticationType"] == "password" {
		need("DaemonAuthenticationPassword", "the console password, required with DaemonAuthenticationType password")
	}
	for _, named := range []struct{ key, entry, dest string }{
		{"LicenseFileLocation", layout.License, f.Layout.License()},
		{"ImportSettingsFrom", layout.Settings, f.Layout.SettingsConf()},
	} {
		v, ok := m[named.key].(string)
		switch {
		case !ok || v == "":
			need(named.key, "the installer reads it unattended")
		case path.Clean(v) != named.dest:
			// Replicated reads the file replicated.conf names, haagent writes and checks the
			// one its layout names: they must be the same file.
			out = append(out, findings.New(findings.FileInvalid, conf,
				fmt.Sprintf("%s names %s %s, but haagent's layout writes that file to %s (files.%s): Replicated would read a file haagent neither fetches nor checks", conf, named.key, v, named.dest, named.entry), "").
				WithFix(fmt.Sprintf("set \"%s\": \"%s\" in the bucket's replicated.conf, or files.%s.dest: %s in haagent's config", named.key, named.dest, named.entry, path.Clean(v))))
		case !f.Exists(v):
			out = append(out, findings.New(findings.FileInvalid, conf, fmt.Sprintf("%s names %s %s, which does not exist", conf, named.key, v), "").
				WithFix(fmt.Sprintf("upload the file to the bucket (haagent writes it to %s, files.%s)", named.dest, named.entry)))
		}
	}
	var unknown []string
	for k := range m {
		if !knownReplicatedKeys[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		out = append(out, findings.New(findings.FileUnknownKey, conf, fmt.Sprintf("%s has an unknown key %q; Replicated ignores it (a typo?)", conf, k), ""))
	}
	return out
}

func checkSettings(settingsConf string, m map[string]any) []findings.Finding {
	var out []findings.Finding
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		obj, ok := m[k].(map[string]any)
		if _, has := obj["value"]; !ok || !has {
			out = append(out, findings.New(findings.FileInvalid, settingsConf, fmt.Sprintf("%s: %q must be an object {\"value\": ...}", settingsConf, k), fmt.Sprintf("found %s", shape(m[k]))).
				WithFix(fmt.Sprintf("write it as \"%s\": {\"value\": \"...\"}", k)))
		}
	}
	str := func(k string) string {
		obj, _ := m[k].(map[string]any)
		v, _ := obj["value"].(string)
		return v
	}
	need := func(k, why string) {
		if strings.TrimSpace(str(k)) == "" {
			out = append(out, findings.New(findings.FileInvalid, settingsConf, fmt.Sprintf("%s lacks %q (%s)", settingsConf, k, why), "").
				WithFix(fmt.Sprintf("add \"%s\": {\"value\": \"...\"} to settings.conf in the bucket", k)))
		}
	}
	need("hostname", "the CircleCI host name")
	if str("allow_cluster") == "1" {
		need("storage_backend", "high availability keeps build artifacts in object storage")
		if str("storage_backend") == "storage_backend_s3" {
			need("s3_bucket", "the artifacts bucket, required with storage_backend_s3")
			need("aws_region", "the artifacts bucket's region")
		}
		need("sqs_queue_url", "high availability needs the SQS queue")
	}
	return out
}

func shape(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object without \"value\""
	}
	return "something else"
}

func checkLicense(f Files, path string) []findings.Finding {
	fi, err := os.Stat(f.Read(path))
	if err != nil || fi.Size() == 0 {
		what := "does not exist"
		if err == nil {
			what = "is empty"
		}
		return []findings.Finding{findings.New(findings.LicenseMissing, path, fmt.Sprintf("the CircleCI licence %s %s", path, what), "").
			WithFix("upload the licence file (license.rli) to the bucket")}
	}
	return nil
}

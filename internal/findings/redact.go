package findings

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// dsnPasswordRE finds a password in libpq's keyword=value form (password=x, password='a b').
var dsnPasswordRE = regexp.MustCompile(`(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s]+)`)

// Redact hides the password of every URI and keyword=value DSN in s so the rest can be shown as
// evidence. It does not trust a URL parser: the values it is given are often the ones that do
// not parse (an unescaped '@', '/', space, newline or even "://" in the password). The user
// information of a URI runs to the last '@' before the next whitespace, across any "://" (a
// password may hold one); failing that, to the last '@' of the line (a password with a space),
// stopping where another URI begins; failing that, when what follows "://" looks like USER:...,
// to the last '@' before the next URI (a password with a line break). Everything after the user
// name's ':' there is hidden. Over-redacting a stray '@' later in the text is the price of never
// missing one.
func Redact(s string) string {
	var b strings.Builder
	rest := s
	for {
		i := strings.Index(rest, "://")
		if i < 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:i+3])
		rest = rest[i+3:]
		end := userinfoEnd(rest)
		if end < 0 {
			// No user information: the URI's text is left as it is, up to where the next one
			// begins (which is redacted on its own).
			end = len(rest)
			if j := strings.Index(rest, "://"); j >= 0 {
				end = schemeStart(rest, j)
			}
			b.WriteString(rest[:end])
			rest = rest[end:]
			continue
		}
		userinfo := rest[:end]
		if user, _, hasPassword := strings.Cut(userinfo, ":"); hasPassword {
			userinfo = user + ":xxxxx"
		}
		b.WriteString(userinfo + "@")
		rest = rest[end+1:]
	}
	return dsnPasswordRE.ReplaceAllString(b.String(), "${1}=xxxxx")
}

// userinfoEnd returns the index of the '@' that ends the user information at the start of s
// (the text after a "://"), or -1 when there is none. See Redact for the three tries.
func userinfoEnd(s string) int {
	word := s
	if j := strings.IndexFunc(s, unicode.IsSpace); j >= 0 {
		word = s[:j]
	}
	if k := strings.LastIndex(word, "@"); k >= 0 {
		return k
	}
	line := s
	if j := strings.IndexAny(s, "\r\n"); j >= 0 {
		line = s[:j]
	}
	if j := strings.Index(line, "://"); j >= 0 {
		line = line[:schemeStart(line, j)]
	}
	if k := strings.LastIndex(line, "@"); k >= 0 {
		return k
	}
	if !strings.Contains(word, ":") {
		return -1
	}
	upto := s
	if j := strings.Index(s, "://"); j >= 0 {
		upto = s[:schemeStart(s, j)]
	}
	return strings.LastIndex(upto, "@")
}

// URIEvidence shows a URI the probes could not use as SCHEME://USER:xxxxx@HOST/REST, built from
// SplitURI's parts and never from the value itself, so no way of writing the password (a line
// break, a "://", a quote) can carry it into a finding. Without user information it is
// SCHEME://HOST/REST only when the host part holds no ':' beyond a port (else "user:password"
// written without the '@' would show), and "" when s is no URI at all.
func URIEvidence(s string) string {
	p, ok := SplitURI(s)
	if !ok || p.Scheme == "" || strings.Trim(strings.ToLower(p.Scheme), "abcdefghijklmnopqrstuvwxyz0123456789+.-") != "" {
		return ""
	}
	out := p.Scheme + "://"
	if p.HasUserinfo {
		out += p.User
		if p.HasPassword {
			out += ":xxxxx"
		}
		out += "@"
	} else if h, port, found := strings.Cut(p.HostPort, ":"); found && (strings.Contains(port, ":") || strings.Trim(port, "0123456789") != "" || h == "") {
		return p.Scheme + "://..."
	}
	return out + p.HostPort + p.Rest
}

// schemeStart walks back from the "://" at j over the scheme's letters.
func schemeStart(s string, j int) int {
	for j > 0 {
		c := s[j-1]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			break
		}
		j--
	}
	return j
}

func lastCut(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// URIParts is a URI split the tolerant way Redact reads one: the user information runs to the
// last '@', so a password with an unescaped '/', '@' or space stays in Password instead of
// turning into a host, port or path.
type URIParts struct {
	Scheme   string
	User     string
	Password string
	// HasUserinfo and HasPassword tell an absent part from an empty one.
	HasUserinfo, HasPassword bool
	// HostPort is everything up to the first '/', '?' or '#' after the user information.
	HostPort string
	// Rest is the path, query and fragment, with their leading '/', '?' or '#'.
	Rest string
}

// SplitURI splits s; ok is false when s has no "scheme://".
func SplitURI(s string) (p URIParts, ok bool) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return p, false
	}
	p.Scheme = scheme
	if userinfo, after, found := lastCut(rest, "@"); found {
		p.HasUserinfo = true
		p.User, p.Password, p.HasPassword = strings.Cut(userinfo, ":")
		rest = after
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		p.HostPort, p.Rest = rest[:i], rest[i:]
	} else {
		p.HostPort = rest
	}
	return p, true
}

// UnescapedIn names the characters of a URI's user name or password that must be
// percent-encoded, each once and in a form safe to print ("'/' (%2F)", "a space (%20)"), so a
// finding can say what to fix without quoting the password. '@' is among them: Go's parser takes
// the last '@', but other drivers the services use stop at the first.
func UnescapedIn(s string) []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range s {
		var name string
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("-._~!$&'()*+,;=:%", r):
			continue
		case r == ' ':
			name = "a space (%20)"
		case r == '\t':
			name = "a tab (%09)"
		case r < 0x20 || r == 0x7f:
			name = "a control character"
		case r >= 0x80:
			name = "a non-ASCII character (percent-encode its UTF-8 bytes)"
		default:
			name = fmt.Sprintf("'%c' (%%%02X)", r, r)
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

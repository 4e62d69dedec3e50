package findings

import (
	"fmt"
	"regexp"
	"strings"
)

// dsnPasswordRE finds a password in libpq's keyword=value form (password=x, password='a b').
var dsnPasswordRE = regexp.MustCompile(`(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s]+)`)

// Redact hides the password of every URI and keyword=value DSN in s so the rest can be shown as
// evidence. It does not trust a URL parser: the values it is given are often the ones that do
// not parse (an unescaped '@', '/' or space in the password). Everything between "://" and the
// last '@' of the URI is its user information, and everything after the user name's ':' there
// is hidden. Over-redacting a stray '@' later in the text is the price of never missing one.
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
		// The URI's text ends at a line break or where the next URI begins: a password holds
		// neither, and a second URI is redacted on its own.
		end := len(rest)
		if j := strings.IndexAny(rest, "\r\n"); j >= 0 {
			end = j
		}
		if j := strings.Index(rest[:end], "://"); j >= 0 {
			end = schemeStart(rest, j)
		}
		userinfo, after, found := lastCut(rest[:end], "@")
		if found {
			if user, _, hasPassword := strings.Cut(userinfo, ":"); hasPassword {
				userinfo = user + ":xxxxx"
			}
			b.WriteString(userinfo + "@" + after)
		} else {
			b.WriteString(rest[:end])
		}
		rest = rest[end:]
	}
	return dsnPasswordRE.ReplaceAllString(b.String(), "${1}=xxxxx")
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

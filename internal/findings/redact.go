package findings

import (
	"net/url"
	"regexp"
)

var userinfoRE = regexp.MustCompile(`(://[^/@\s:]*):[^@\s]*@`)

// Redact hides the password of a URI or DSN so the rest can be shown as evidence. It works on
// text that does not parse as a URL too (an unescaped '@' in a password breaks url.Parse).
func Redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			return u.String()
		}
		return s
	}
	return userinfoRE.ReplaceAllString(s, "$1:xxxxx@")
}

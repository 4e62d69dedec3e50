// Package cookie keeps CIRCLE_SECRETS_SESSION_COOKIE_KEY in /etc/circle-installation-customizations:
// exactly one line, 16 characters, the same on every boot and on every replacement instance
// (a new value logs every CircleCI user out). The bucket is the source of truth.
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
	"strings"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
)

// Names of the key in the bucket, the file and the variable.
const (
	Object   = "session-cookie-key"
	File     = "/etc/circle-installation-customizations"
	Variable = "CIRCLE_SECRETS_SESSION_COOKIE_KEY"
	Length   = 16
)

// The runbook's echo wrapped the line in typographic quotes; such a line is ours to replace.
var lineRE = regexp.MustCompile(`^\s*[‘’'"]?\s*(export\s+)?` + Variable + `\s*=`)

// plainRE is a value that needs no quoting in a shell file.
var plainRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// Result says where the key came from; never the key itself.
type Result struct {
	Source   string // s3, generated, local
	Changed  bool
	Findings []findings.Finding
}

// Ensure makes the file hold the bucket's key, creating the key in the bucket (conditionally,
// so two instances booting at once agree) only when S3 said it does not exist.
func Ensure(ctx context.Context, b *bucket.Bucket, root string) (Result, error) {
	var res Result
	path := filepath.Join(root, File)
	content, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("reading %s: %w", File, err)
	}
	local := LocalValue(content)
	target := b.URI(Object)

	value, err := readRemote(ctx, b)
	switch {
	case err == nil:
		res.Source = "s3"
	case errors.Is(err, errInvalid):
		f := findings.New("COOKIE_KEY_INVALID", target, "the session cookie key in the bucket is not 16 printable ASCII characters", err.Error())
		return res, &findings.Failure{Findings: []findings.Finding{f}}
	case errors.Is(err, bucket.ErrNotFound):
		candidate, source := local, "local"
		if candidate == "" {
			if candidate, err = Generate(); err != nil {
				return res, err
			}
			source = "generated"
		}
		perr := b.PutIfAbsent(ctx, Object, []byte(candidate))
		var be *bucket.Error
		switch {
		case perr == nil || errors.Is(perr, bucket.ErrExists):
			// Read back: when another instance won the race, its key is the one.
			if v, rerr := readRemote(ctx, b); rerr == nil {
				value = v
				if v != candidate {
					source = "s3"
				}
			} else if perr == nil {
				value = candidate
			} else {
				return res, fmt.Errorf("reading back %s after another instance created it: %w", target, rerr)
			}
			res.Source = source
		case errors.As(perr, &be) && be.Code() == "S3_ACCESS_DENIED":
			value, res.Source = candidate, source
			res.Findings = append(res.Findings, findings.New("COOKIE_KEY_NOT_SAVED", target,
				"the session cookie key could not be saved to the bucket; a replacement instance would log every user out", be.Error()).
				WithFix(fmt.Sprintf("grant the instance role s3:PutObject on arn:aws:s3:::%s/%s%s, or upload the key yourself", b.Name, b.Prefix, Object)))
		default:
			if local == "" {
				f := findings.New("COOKIE_KEY_UNAVAILABLE", target, "creating the session cookie key in the bucket failed and none is on the machine", perr.Error())
				return res, &findings.Failure{Findings: []findings.Finding{f}}
			}
			value, res.Source = local, "local"
			res.Findings = append(res.Findings, findings.New("COOKIE_KEY_LOCAL_ONLY", target,
				"saving the machine's session cookie key to the bucket failed; keeping it", perr.Error()))
		}
	default:
		// 403, 5xx, timeout: S3 did not say the key is absent, so inventing one could replace
		// the real one.
		if local == "" {
			f := findings.New("COOKIE_KEY_UNAVAILABLE", target, "cannot read the session cookie key from the bucket and none is on the machine", err.Error())
			var be *bucket.Error
			if errors.As(err, &be) && be.Code() == "S3_ACCESS_DENIED" {
				f = f.WithFix(fmt.Sprintf("grant the instance role s3:GetObject on arn:aws:s3:::%s/%s%s (and s3:ListBucket, so a missing key answers 404)", b.Name, b.Prefix, Object))
			}
			return res, &findings.Failure{Findings: []findings.Finding{f}}
		}
		value, res.Source = local, "local"
		res.Findings = append(res.Findings, findings.New("COOKIE_KEY_LOCAL_ONLY", target,
			"cannot read the session cookie key from the bucket; keeping the one on the machine", err.Error()))
	}

	changed, err := write(path, content, value)
	if errors.Is(err, atomicfile.ErrSymlink) {
		// Same content behind a link: left as it is, as the fetch leaves one, and said.
		target, _ := os.Readlink(path)
		res.Findings = append(res.Findings, findings.New("FILE_SYMLINK_NOT_FOLLOWED", File,
			fmt.Sprintf("%s is a symbolic link (to %s); haagent does not follow it, so the target keeps its own mode and owner instead of %#o root", File, target, FileMode),
			err.Error()).WithFix(fmt.Sprintf("replace the link with the file: cp --remove-destination \"$(readlink -f %s)\" %s", File, File)))
		err = nil
	}
	res.Changed = changed
	return res, err
}

var errInvalid = errors.New("invalid session cookie key")

func readRemote(ctx context.Context, b *bucket.Bucket) (string, error) {
	data, err := b.GetBytes(ctx, Object, 1024)
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

// LocalValue returns the valid key on the last matching line of the file, or "".
func LocalValue(content []byte) string {
	var v string
	for _, line := range strings.Split(string(content), "\n") {
		if loc := lineRE.FindStringIndex(line); loc != nil {
			v = unquote(strings.TrimSpace(line[loc[1]:]))
		}
	}
	if !Valid(v) {
		return ""
	}
	return v
}

func unquote(s string) string {
	s = strings.TrimRight(s, "’‘ \t\r")
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		return strings.ReplaceAll(s[1:len(s)-1], `'\''`, `'`)
	}
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

func quote(v string) string {
	if plainRE.MatchString(v) {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// Render returns content with every line for the variable replaced by one line at the end.
func Render(content []byte, value string) []byte {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(content), "\n") {
		if line == "" || lineRE.MatchString(line) {
			continue
		}
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteByte('\n')
		}
	}
	fmt.Fprintf(&out, "%s=%s\n", Variable, quote(value))
	return out.Bytes()
}

// FileMode is the customization file's mode, root-owned: CircleCI's own userdata wrote it with
// the default umask, and the containers that source it do so as a user no document names, so
// 0644 is the setup known to work (README, Layout, says what that exposes).
const FileMode os.FileMode = 0o644

func write(path string, content []byte, value string) (bool, error) {
	want := Render(content, value)
	if bytes.Equal(want, content) {
		// Unchanged: still converge mode and owner (a 0600 left by an older haagent), never
		// through a symlink at the path.
		if _, err := atomicfile.Converge(path, FileMode, os.Geteuid(), os.Getegid(), false); err != nil {
			return false, fmt.Errorf("setting mode %#o on %s: %w", FileMode, File, err)
		}
		return false, nil
	}
	if _, err := atomicfile.WriteFile(path, want, atomicfile.Options{Mode: FileMode, DirMode: 0o755, UID: -1, GID: -1}); err != nil {
		return false, fmt.Errorf("writing %s: %w", File, err)
	}
	return true, nil
}

// Package certs installs the CA certificates the databases and Vault are signed with into the
// system store, as the runbook asks ("saved in /usr/local/share/ca-certificates with file
// extension .crt"), and refreshes the store only when something changed.
package certs

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// UpdateCACerts is the command that rebuilds the system bundle (Debian's ca-certificates).
var UpdateCACerts = []string{"update-ca-certificates"}

// ExpiryWarning is how close to expiry a CA certificate becomes a warning.
const ExpiryWarning = 30 * 24 * time.Hour

// Result says what the step did.
type Result struct {
	Installed []string // file names under layout.CAInstallDir
	Removed   []string
	Changed   bool
	Refreshed bool
	Findings  []findings.Finding
}

// Source is one CA file to install: where it is on the machine (a machine path) and the name it is
// known by (its bucket key, or its path for one from the config), which names the installed
// file.
type Source struct {
	Path string
	Name string
}

// Paths makes sources of machine paths named after themselves.
func Paths(paths ...string) []Source {
	out := make([]Source, len(paths))
	for i, p := range paths {
		out[i] = Source{Path: p, Name: p}
	}
	return out
}

// InstalledName is the file a source's i-th of n certificates is installed as: its name made
// safe, plus a hash of the whole name, so that postgres/ca.pem and vault/ca.pem (or ca.pem and
// ca.crt) never land on the same file and one silently replace the other.
func InstalledName(name string, i, n int) string {
	base := strings.TrimSuffix(name, path.Ext(name))
	safe := []byte(strings.Trim(base, "/"))
	for j, c := range safe {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			safe[j] = '_'
		}
	}
	h := sha256.Sum256([]byte(name))
	out := fmt.Sprintf("%s-%s", safe, hex.EncodeToString(h[:4]))
	if n > 1 {
		out += fmt.Sprintf("-%d", i+1)
	}
	return out + ".crt"
}

// Install validates every source file and makes haagent's directory of the local store
// (layout.CAInstallDir, under the layout's root) hold exactly the valid CA certificates, one
// per .crt file: a CA that is no longer among the sources is removed, so it is no longer
// trusted. Everything in that directory is haagent's, so removing is safe.
func Install(l layout.Layout, sources []Source, now time.Time) (Result, error) {
	var res Result
	want := map[string][]byte{}
	// Sources still present but refused whole (unreadable, or nothing valid in them) keep what
	// they installed before: a broken upload must not take away trust in a working CA.
	var keep []string
	for _, s := range sources {
		src := s.Path
		data, err := os.ReadFile(l.Path(src))
		if err != nil {
			res.Findings = append(res.Findings, findings.New(findings.CACertInvalid, src, "cannot read "+src, err.Error()))
			keep = append(keep, strings.TrimSuffix(InstalledName(s.Name, 0, 1), ".crt"))
			continue
		}
		certs, fs := parse(src, data, now)
		res.Findings = append(res.Findings, fs...)
		if len(certs) == 0 {
			keep = append(keep, strings.TrimSuffix(InstalledName(s.Name, 0, 1), ".crt"))
		}
		for i, c := range certs {
			want[InstalledName(s.Name, i, len(certs))] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	kept := func(name string) bool {
		for _, k := range keep {
			if name == k+".crt" || strings.HasPrefix(name, k+"-") {
				return true
			}
		}
		return false
	}
	dir := l.Path(layout.CAInstallDir)
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(dir, n)
		if cur, err := os.ReadFile(p); err == nil && bytes.Equal(cur, want[n]) {
			res.Installed = append(res.Installed, n)
			continue
		}
		if _, err := atomicfile.WriteFile(p, want[n], atomicfile.Options{Mode: 0o644, DirMode: 0o755, UID: -1, GID: -1}); err != nil {
			return res, fmt.Errorf("installing CA certificate %s: %w", n, err)
		}
		res.Installed = append(res.Installed, n)
		res.Changed = true
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if _, wanted := want[e.Name()]; !wanted && !e.IsDir() && !kept(e.Name()) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return res, fmt.Errorf("removing CA certificate %s that left the bucket: %w", e.Name(), err)
			}
			res.Removed = append(res.Removed, e.Name())
			res.Changed = true
		}
	}
	if res.Changed {
		if err := refresh(l.Root); err != nil {
			return res, err
		}
		res.Refreshed = true
	}
	return res, nil
}

// parse accepts PEM CA certificates only.
func parse(src string, data []byte, now time.Time) ([]*x509.Certificate, []findings.Finding) {
	var certs []*x509.Certificate
	var fs []findings.Finding
	bad := func(why string) {
		fs = append(fs, findings.New(findings.CACertInvalid, src, fmt.Sprintf("%s is refused: %s", src, why), ""))
	}
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.Contains(b.Type, "PRIVATE KEY") {
			bad("it contains a private key; only CA certificates belong in ca-certificates/ (and the key must be considered exposed)")
			return nil, fs
		}
		if b.Type != "CERTIFICATE" {
			bad(fmt.Sprintf("it contains a %q PEM block, not a certificate", b.Type))
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			bad("a certificate in it does not parse: " + err.Error())
			continue
		}
		if !c.IsCA {
			bad(fmt.Sprintf("%q is a server (leaf) certificate, not a CA: install the CA that issued it (%q)", c.Subject.String(), c.Issuer.String()))
			continue
		}
		switch {
		case now.After(c.NotAfter):
			fs = append(fs, findings.New(findings.CACertExpired, src, fmt.Sprintf("CA %q in %s expired on %s", c.Subject.String(), src, c.NotAfter.UTC().Format(time.RFC3339)), ""))
			continue
		case c.NotAfter.Sub(now) < ExpiryWarning:
			fs = append(fs, findings.New(findings.CACertExpiring, src, fmt.Sprintf("CA %q in %s expires on %s", c.Subject.String(), src, c.NotAfter.UTC().Format(time.RFC3339)), ""))
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 && len(fs) == 0 {
		bad("it holds no PEM certificate (is it DER, or not a certificate at all?)")
	}
	return certs, fs
}

// refresh runs update-ca-certificates; under a --root other than / it points every directory
// of the tool at the root, so tests and image builds never touch the host's store.
func refresh(root string) error {
	argv := append([]string{}, UpdateCACerts...)
	if filepath.Clean(root) != "/" {
		store := layout.CAStore
		for _, d := range []string{store.Certs, store.Share, store.Hooks} {
			os.MkdirAll(filepath.Join(root, d), 0o755)
		}
		conf := filepath.Join(root, store.Conf)
		if _, err := os.Stat(conf); errors.Is(err, os.ErrNotExist) {
			os.WriteFile(conf, nil, 0o644)
		}
		argv = append(argv,
			"--certsconf", conf,
			"--certsdir", filepath.Join(root, store.Share),
			"--localcertsdir", filepath.Join(root, layout.LocalCADir),
			"--etccertsdir", filepath.Join(root, store.Certs),
			"--hooksdir", filepath.Join(root, store.Hooks))
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running %s: %w; output: %s", strings.Join(argv, " "), err, tail(out.String(), 800))
	}
	return nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

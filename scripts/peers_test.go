// Package scripts holds tests of the shell scripts beside it.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// peers.sh takes debootstrap's mirror from the machine's apt sources, however they are written:
// deb822 (several URIs on a line or continued, a trailing slash, a disabled stanza, a security
// mirror first) and one-line sources.list (with [options], in sources.list.d/*.list), and
// prints nothing when there is no Debian mirror, so the script stops with its message.
func TestDebianMirrorFromAptSources(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	cases := []struct {
		name  string
		files map[string]string // under the sources directory; "sources.list" is the list
		want  string
	}{
		{"deb822 with a trailing slash", map[string]string{"d/debian.sources": "Types: deb\nURIs: http://deb.debian.org/debian/\nSuites: bookworm\nComponents: main\n"}, "http://deb.debian.org/debian"},
		{"deb822, several URIs on one line", map[string]string{"d/debian.sources": "Types: deb\nURIs: http://deb.debian.org/debian-security http://ftp.de.debian.org/debian http://deb.debian.org/debian\nSuites: bookworm\n"}, "http://ftp.de.debian.org/debian"},
		{"deb822, URIs continued, security and disabled stanzas first", map[string]string{"d/a.sources": "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\nTypes: deb\n# an old mirror\nEnabled: no\nURIs: http://old.example/debian\nSuites: bookworm\n\nTypes: deb-src deb\nURIs:\n http://mirror.example.org/debian/\nSuites: trixie\n"}, "http://mirror.example.org/debian"},
		{"deb-src only is no mirror for debootstrap", map[string]string{"d/a.sources": "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"}, ""},
		{"sources.list with options", map[string]string{"sources.list": "# comment\ndeb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] https://deb.debian.org/debian/ bookworm main\n"}, "https://deb.debian.org/debian"},
		{"sources.list with one option, deb-src first", map[string]string{"sources.list": "deb-src http://deb.debian.org/debian bookworm main\ndeb [trusted=yes] http://deb.debian.org/debian bookworm main\n"}, "http://deb.debian.org/debian"},
		{"a .list in the directory", map[string]string{"d/mirror.list": "deb http://ftp.fr.debian.org/debian bookworm main\n"}, "http://ftp.fr.debian.org/debian"},
		{"no Debian mirror", map[string]string{"d/other.sources": "Types: deb\nURIs: https://packages.cloud.google.com/apt\nSuites: cloud-sdk\n", "sources.list": "deb mirror+file:/etc/apt/mirrors/debian.list bookworm main\n"}, ""},
		{"nothing at all", map[string]string{}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			os.MkdirAll(filepath.Join(root, "d"), 0o755)
			for name, body := range tc.files {
				if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command("bash", "peers.sh", "mirror", filepath.Join(root, "d"), filepath.Join(root, "sources.list"))
			cmd.Env = append(os.Environ(), "HAAGENT_PEERS="+filepath.Join(root, "peers"))
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("peers.sh mirror: %v", err)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Fatalf("mirror %q, want %q", got, tc.want)
			}
		})
	}
}

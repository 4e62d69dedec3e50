package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
)

// daemonTree is a root as haagent leaves it: the docker group in etc/group, the licence and
// settings 0640 root:docker, replicated.conf 0644, /etc 0755. change edits it before the check.
func daemonTree(t *testing.T, replicated string, change func(root string)) string {
	t.Helper()
	if os.Geteuid() != 0 {
		peertest.Missing(t, "needs root: chown to the docker group")
	}
	root := t.TempDir()
	os.Chmod(root, 0o755)
	etc := filepath.Join(root, "etc")
	os.MkdirAll(etc, 0o755)
	os.Chmod(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\ndocker:x:4242:\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "replicated.conf"), []byte(replicated), 0o644)
	for _, n := range []string{"license.rli", "settings.conf"} {
		p := filepath.Join(etc, n)
		os.WriteFile(p, []byte("{}"), 0o640)
		os.Chmod(p, 0o640)
		if err := os.Chown(p, 0, 4242); err != nil {
			t.Fatal(err)
		}
	}
	if change != nil {
		change(root)
	}
	return root
}

func TestReadableByReplicated(t *testing.T) {
	tls := strings.Replace(goodReplicated, `"TlsBootstrapType": "self-signed",`,
		`"TlsBootstrapType": "server-path", "TlsBootstrapCert": "/etc/ssl/ci/cert.pem", "TlsBootstrapKey": "/etc/ssl/ci/key.pem",`, 1)
	tlsFiles := func(keyMode os.FileMode, dirMode os.FileMode) func(string) {
		return func(root string) {
			d := filepath.Join(root, "etc/ssl/ci")
			os.MkdirAll(d, 0o755)
			os.Chmod(d, dirMode)
			os.WriteFile(filepath.Join(d, "cert.pem"), []byte("C"), 0o644)
			os.WriteFile(filepath.Join(d, "key.pem"), []byte("K"), 0o600)
			os.Chmod(filepath.Join(d, "key.pem"), keyMode)
			os.Chown(filepath.Join(d, "key.pem"), 0, 4242)
		}
	}
	cases := []struct {
		name, replicated string
		change           func(root string)
		want             string // target of the one finding; "" for none
		says             string
	}{
		{"the defaults", goodReplicated, nil, "", ""},
		{"world-readable is fine too", goodReplicated, func(root string) {
			os.Chmod(filepath.Join(root, "etc/license.rli"), 0o644)
			os.Chown(filepath.Join(root, "etc/license.rli"), 0, 0)
		}, "", ""},
		{"licence 0600 root:root", goodReplicated, func(root string) {
			os.Chmod(filepath.Join(root, "etc/license.rli"), 0o600)
			os.Chown(filepath.Join(root, "etc/license.rli"), 0, 0)
		}, "/etc/license.rli", "gives others no read permission"},
		{"group docker without its read bit (others' bit does not count)", goodReplicated, func(root string) {
			os.Chmod(filepath.Join(root, "etc/settings.conf"), 0o604)
		}, "/etc/settings.conf", "gives group docker no read permission"},
		{"no docker group yet", goodReplicated, func(root string) {
			os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
			os.Chown(filepath.Join(root, "etc/settings.conf"), 0, 0)
			os.Chown(filepath.Join(root, "etc/license.rli"), 0, 0)
			os.Chmod(filepath.Join(root, "etc/license.rli"), 0o644)
		}, "/etc/settings.conf", "no docker group"},
		{"the licence's directory 0700", strings.Replace(goodReplicated, "/etc/license.rli", "/etc/circle/license.rli", 1), func(root string) {
			d := filepath.Join(root, "etc/circle")
			os.Mkdir(d, 0o700)
			os.Chmod(d, 0o700)
			os.Rename(filepath.Join(root, "etc/license.rli"), filepath.Join(d, "license.rli"))
		}, "/etc/circle/license.rli", "/etc/circle is 0700 uid 0 gid 0, which gives others no search"},
		{"/etc itself 0750 root:root", goodReplicated, func(root string) {
			os.Chmod(filepath.Join(root, "etc"), 0o750)
		}, "/etc/license.rli", "/etc is 0750 uid 0 gid 0, which gives others no search"},
		{"licence outside /etc", strings.Replace(goodReplicated, "/etc/license.rli", "/opt/license.rli", 1), func(root string) {
			os.MkdirAll(filepath.Join(root, "opt"), 0o755)
			os.WriteFile(filepath.Join(root, "opt/license.rli"), []byte("L"), 0o644)
		}, "/opt/license.rli", "outside /etc"},
		{"a path that climbs out of /etc", strings.Replace(goodReplicated, "/etc/license.rli", "/etc/../root/license.rli", 1), nil,
			"/etc/../root/license.rli", "outside /etc"},
		{"a missing file", strings.Replace(goodReplicated, "/etc/license.rli", "/etc/licence.rli", 1), nil, "/etc/licence.rli", "does not exist"},
		{"an airgap package the daemon cannot read", strings.Replace(goodReplicated, `"TlsBootstrapType"`, `"LicenseBootstrapAirgapPackagePath": "/etc/circle.airgap", "TlsBootstrapType"`, 1), func(root string) {
			os.WriteFile(filepath.Join(root, "etc/circle.airgap"), []byte("A"), 0o600)
			os.Chmod(filepath.Join(root, "etc/circle.airgap"), 0o600)
		}, "/etc/circle.airgap", "gives others no read permission"},
		{"a relative link inside /etc is followed", strings.Replace(goodReplicated, "/etc/license.rli", "/etc/circle/license.rli", 1), func(root string) {
			os.Mkdir(filepath.Join(root, "etc/circle"), 0o755)
			os.Symlink("../license.rli", filepath.Join(root, "etc/circle/license.rli"))
		}, "", ""},
		{"a relative link to a private file inside /etc", strings.Replace(goodReplicated, "/etc/license.rli", "/etc/circle/license.rli", 1), func(root string) {
			os.Mkdir(filepath.Join(root, "etc/circle"), 0o755)
			os.Symlink("../license.rli", filepath.Join(root, "etc/circle/license.rli"))
			os.Chmod(filepath.Join(root, "etc/license.rli"), 0o600)
		}, "/etc/circle/license.rli", "/etc/license.rli is 0600"},
		{"a relative link out of /etc", goodReplicated, func(root string) {
			os.MkdirAll(filepath.Join(root, "opt"), 0o755)
			os.Rename(filepath.Join(root, "etc/license.rli"), filepath.Join(root, "opt/license.rli"))
			os.Symlink("../opt/license.rli", filepath.Join(root, "etc/license.rli"))
		}, "/etc/license.rli", "symbolic link (to ../opt/license.rli)"},
		{"an absolute link, even inside /etc", goodReplicated, func(root string) {
			os.Rename(filepath.Join(root, "etc/license.rli"), filepath.Join(root, "etc/license.real"))
			os.Symlink("/etc/license.real", filepath.Join(root, "etc/license.rli"))
		}, "/etc/license.rli", "symbolic link (to /etc/license.real)"},
		{"a link loop", goodReplicated, func(root string) {
			os.Remove(filepath.Join(root, "etc/license.rli"))
			os.Symlink("license.rli", filepath.Join(root, "etc/license.rli"))
		}, "/etc/license.rli", "symbolic link"},
		{"TLS files readable", tls, tlsFiles(0o640, 0o755), "", ""},
		{"TLS key 0600", tls, tlsFiles(0o600, 0o755), "/etc/ssl/ci/key.pem", "TlsBootstrapKey"},
		{"TLS directory 0700", tls, tlsFiles(0o640, 0o700), "/etc/ssl/ci/cert.pem", "/etc/ssl/ci is 0700 uid 0 gid 0, which gives others no search"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := daemonTree(t, c.replicated, c.change)
			fs := Readable(layout.New(root, nil))
			if c.want == "" {
				if len(fs) != 0 {
					t.Fatalf("want none, got %+v", fs)
				}
				return
			}
			if len(fs) == 0 || fs[0].Code != findings.FileUnreadableByReplicated || fs[0].Target != c.want || !fs[0].Blocking {
				t.Fatalf("want a blocking FILE_UNREADABLE_BY_REPLICATED for %s, got %+v", c.want, fs)
			}
			if all := fs[0].Summary + " " + fs[0].Evidence; !strings.Contains(all, c.says) {
				t.Errorf("the finding does not say %q: %s", c.says, all)
			}
			if fs[0].Fix == "" {
				t.Error("no fix")
			}
		})
	}
}

// The replicated user, once the installer made it, reads a file it owns through its owner bits.
func TestReadableByTheReplicatedUserItself(t *testing.T) {
	root := daemonTree(t, goodReplicated, func(root string) {
		os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("replicated:x:998:4242::/home/replicated:/bin/sh\n"), 0o644)
		p := filepath.Join(root, "etc/license.rli")
		os.Chown(p, 998, 0)
		os.Chmod(p, 0o400)
	})
	if fs := Readable(layout.New(root, nil)); len(fs) != 0 {
		t.Fatalf("%+v", fs)
	}
}

package replicated

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The files as replicated-2.0.sh and replicated-operator.sh write them (with a proxy, so the
// private address is also in NO_PROXY).
const (
	installedDefault = `RELEASE_CHANNEL=stable
PRIVATE_ADDRESS=10.0.1.17
SKIP_OPERATOR_INSTALL=0
REPLICATED_OPTS=" -e HTTP_PROXY=http://proxy:3128 -e HTTPS_PROXY=http://proxy:3128 -e NO_PROXY=10.0.1.17,127.0.0.1,10.0.1.170 -e LOG_LEVEL=info -e NODENAME=ip-10-0-1-17"
REPLICATED_UI_OPTS=""
`
	installedOperator = `RELEASE_CHANNEL=stable
DAEMON_ENDPOINT=10.0.1.17:9879
DAEMON_TOKEN=0123456789abcdef
DAEMON_HOST=10.0.1.17
PRIVATE_ADDRESS=10.0.1.17
REPLICATED_OPERATOR_OPTS=""
`
)

func TestRewriteAddress(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(DefaultReplicated, installedDefault, 0o644)
	write(DefaultOperator, installedOperator, 0o600)
	if got := InstalledAddress(root); got != "10.0.1.17" {
		t.Fatalf("InstalledAddress %q", got)
	}
	changed, err := RewriteAddress(root, "10.0.1.50")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{DefaultReplicated, DefaultOperator}) {
		t.Fatalf("changed %v", changed)
	}
	wantDefault := `RELEASE_CHANNEL=stable
PRIVATE_ADDRESS=10.0.1.50
SKIP_OPERATOR_INSTALL=0
REPLICATED_OPTS=" -e HTTP_PROXY=http://proxy:3128 -e HTTPS_PROXY=http://proxy:3128 -e NO_PROXY=10.0.1.50,127.0.0.1,10.0.1.170 -e LOG_LEVEL=info -e NODENAME=ip-10-0-1-17"
REPLICATED_UI_OPTS=""
`
	wantOperator := `RELEASE_CHANNEL=stable
DAEMON_ENDPOINT=10.0.1.50:9879
DAEMON_TOKEN=0123456789abcdef
DAEMON_HOST=10.0.1.50
PRIVATE_ADDRESS=10.0.1.50
REPLICATED_OPERATOR_OPTS=""
`
	for p, want := range map[string]string{DefaultReplicated: wantDefault, DefaultOperator: wantOperator} {
		b, _ := os.ReadFile(filepath.Join(root, p))
		if string(b) != want {
			t.Errorf("%s:\n%s\nwant:\n%s", p, b, want)
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, DefaultOperator)); fi.Mode().Perm() != 0o600 {
		t.Errorf("operator file mode %v, want its own 0600 kept", fi.Mode().Perm())
	}
	// Again: nothing to do.
	if changed, err := RewriteAddress(root, "10.0.1.50"); err != nil || len(changed) != 0 {
		t.Fatalf("second rewrite: %v %v", changed, err)
	}
	// Not installed: nothing to do.
	if changed, err := RewriteAddress(t.TempDir(), "10.0.1.50"); err != nil || len(changed) != 0 {
		t.Fatalf("rewrite without Replicated: %v %v", changed, err)
	}
}

package atomicfile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/haagent/haagent/internal/peertest"
)

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		peertest.Missing(t, "needs root: "+why)
	}
}

func TestLookupInTheRootsOwnDatabases(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\ndocker:x:4242:replicated\nbroken:x:abc:\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nreplicated:x:1001:4242::/home/replicated:/bin/sh\n"), 0o644)
	if gid, err := LookupGroup(root, "docker"); err != nil || gid != 4242 {
		t.Fatalf("docker: %d %v", gid, err)
	}
	if uid, err := LookupUser(root, "replicated"); err != nil || uid != 1001 {
		t.Fatalf("replicated: %d %v", uid, err)
	}
	// A name the host has (root, surely) but the root's file lacks is unknown: the host's
	// database is never consulted under --root.
	var unknown *UnknownNameError
	if _, err := LookupGroup(root, "nogroup"); !errors.As(err, &unknown) || unknown.DB != filepath.Join(root, "etc/group") {
		t.Fatalf("nogroup: %v", err)
	}
	if _, err := LookupGroup(root, "broken"); err == nil {
		t.Fatal("a group without a numeric gid was accepted")
	}
	if _, err := LookupUser(t.TempDir(), "root"); !errors.As(err, &unknown) {
		t.Fatalf("a root without etc/passwd: %v", err)
	}
}

// groupadd --prefix writes the root's etc/group and nothing of the host's.
func TestEnsureSystemGroupChangesOnlyTheRootsGroupFile(t *testing.T) {
	needRoot(t, "groupadd")
	if _, err := os.Stat("/usr/sbin/groupadd"); err != nil {
		peertest.Missing(t, "groupadd (Debian passwd) not installed")
	}
	hostBefore := map[string][]byte{}
	for _, p := range []string{"/etc/group", "/etc/gshadow", "/etc/passwd"} {
		hostBefore[p], _ = os.ReadFile(p)
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)

	gid, created, err := EnsureSystemGroup(context.Background(), root, "docker")
	if err != nil || !created {
		t.Fatalf("created=%v err=%v", created, err)
	}
	if got, err := LookupGroup(root, "docker"); err != nil || got != gid {
		t.Fatalf("docker in the root's etc/group: %d %v (returned %d)", got, err, gid)
	}
	// A system group: below the login.defs range of ordinary groups (GID_MIN 1000).
	if gid <= 0 || gid >= 1000 {
		t.Errorf("gid %d is not a system group's", gid)
	}
	for p, before := range hostBefore {
		after, _ := os.ReadFile(p)
		if !bytes.Equal(before, after) {
			t.Errorf("the host's %s changed", p)
		}
	}
	// Existing: found, not created again.
	again, created, err := EnsureSystemGroup(context.Background(), root, "docker")
	if err != nil || created || again != gid {
		t.Fatalf("second call: gid %d created %v err %v", again, created, err)
	}
}

func TestEnsureSystemGroupFailureCarriesArgvAndStderr(t *testing.T) {
	old := GroupAdd
	t.Cleanup(func() { GroupAdd = old })
	GroupAdd = []string{"sh", "-c", "echo groupadd: cannot lock /etc/group >&2; exit 10", "sh"}
	root := t.TempDir()
	_, _, err := EnsureSystemGroup(context.Background(), root, "docker")
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Argv[len(ce.Argv)-1] != "docker" || ce.Argv[len(ce.Argv)-2] != root ||
		!bytes.Contains([]byte(err.Error()), []byte("cannot lock")) || !bytes.Contains([]byte(err.Error()), []byte("exit status 10")) {
		t.Fatalf("want a CommandError with argv, exit status and stderr, got %v", err)
	}
}

func TestConvergeSetsModeAndOwnerAndNeverFollowsASymlink(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	os.WriteFile(p, []byte("k"), 0o666)
	os.Chmod(p, 0o666)
	changed, err := Converge(p, 0o600, os.Geteuid(), os.Getegid(), false)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %#o", fi.Mode().Perm())
	}
	if changed, err := Converge(p, 0o600, os.Geteuid(), os.Getegid(), false); err != nil || changed {
		t.Fatalf("already right: changed=%v err=%v", changed, err)
	}

	target := filepath.Join(dir, "shadow")
	os.WriteFile(target, []byte("root:*:"), 0o640)
	os.Chmod(target, 0o640)
	link := filepath.Join(dir, "license.rli")
	os.Symlink(target, link)
	if _, err := Converge(link, 0o644, -1, -1, false); !errors.Is(err, ErrSymlink) {
		t.Fatalf("want ErrSymlink, got %v", err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o640 {
		t.Fatalf("the symlink was followed: its target is now %#o", fi.Mode().Perm())
	}
	// A symlinked directory is refused the same way.
	os.Mkdir(filepath.Join(dir, "real"), 0o700)
	os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "linked"))
	if _, err := Converge(filepath.Join(dir, "linked"), 0o755, -1, -1, true); !errors.Is(err, ErrSymlink) {
		t.Fatalf("directory: want ErrSymlink, got %v", err)
	}
	if _, err := Converge(p, 0o600, -1, -1, true); err == nil {
		t.Fatal("a file was accepted as a directory")
	}
}

func TestConvergeOwner(t *testing.T) {
	needRoot(t, "chown to another user")
	p := filepath.Join(t.TempDir(), "license.rli")
	os.WriteFile(p, []byte("L"), 0o600)
	if _, err := Converge(p, 0o640, 0, 4242, false); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o640 || st.Uid != 0 || st.Gid != 4242 {
		t.Fatalf("%#o %d:%d", fi.Mode().Perm(), st.Uid, st.Gid)
	}
}

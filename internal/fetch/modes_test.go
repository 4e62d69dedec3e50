package fetch

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/validate"
)

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		peertest.Missing(t, "needs root: "+why)
	}
}

// layoutWith is the default layout with a files: section (YAML, indented two spaces) merged in.
func layoutWith(t *testing.T, files string) []config.Entry {
	t.Helper()
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: "+testBucket+"\nfiles:\n"+files), "test")
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Layout
}

// machineRoot is a temp root with the etc/group a machine has before Docker is installed.
func machineRoot(t *testing.T, group string) string {
	t.Helper()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

type perm struct {
	mode     os.FileMode
	uid, gid uint32
}

func statOf(t *testing.T, p string) perm {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return perm{fi.Mode().Perm(), st.Uid, st.Gid}
}

func fetchCommit(t *testing.T, s *peertest.S3, root string, l []config.Entry, known map[string]Known) *Bundle {
	t.Helper()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: l, Concurrency: 4, Known: known})
	if err != nil {
		t.Fatal(err)
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	return bd
}

// The whole fetch under a temp root: each file's mode and owner follow who reads it, the
// docker group is created in the root's etc/group (and only there), and the directories above
// the entries are 0755.
func TestFetchModesAndOwners(t *testing.T) {
	needRoot(t, "groupadd and chown to the docker group")
	s := peertest.StartS3(t)
	objs := seed(t, s)
	hostGroup, _ := os.ReadFile("/etc/group")
	root := machineRoot(t, "root:x:0:\n")
	fetchCommit(t, s, root, testLayout(t), nil)

	docker, err := atomicfile.LookupGroup(root, "docker")
	if err != nil {
		t.Fatalf("the docker group was not created in the root's etc/group: %v", err)
	}
	if after, _ := os.ReadFile("/etc/group"); !bytes.Equal(after, hostGroup) {
		t.Fatal("the host's /etc/group changed")
	}
	g := uint32(docker)
	for k := range objs {
		want := perm{0o600, 0, 0}
		switch {
		case k == "license.rli", k == "settings.conf":
			want = perm{0o640, 0, g}
		case k == "replicated.conf", k == "circle-installation-customizations", strings.HasPrefix(k, "circleconfig/"):
			want = perm{0o644, 0, 0}
		}
		if got := statOf(t, filepath.Join(root, destOf(k))); got != want {
			t.Errorf("%s: %#o %d:%d, want %#o %d:%d", destOf(k), got.mode, got.uid, got.gid, want.mode, want.uid, want.gid)
		}
	}
	for d, want := range map[string]os.FileMode{
		"/etc/circleconfig": 0o755, "/etc/circleconfig/shared": 0o755,
		"/data": 0o755, "/data/circle": 0o755, "/data/circle/circleci-encryption-keys": 0o700,
	} {
		if got := statOf(t, filepath.Join(root, d)); got != (perm{want, 0, 0}) {
			t.Errorf("%s: %#o %d:%d, want %#o root", d, got.mode, got.uid, got.gid, want)
		}
	}
	// The files the daemon reads pass the daemon's check as they are.
	os.Chmod(root, 0o755)
	if fs := validate.Readable(layout.New(root, nil)); len(fs) != 0 {
		t.Errorf("the default modes fail the daemon's check: %+v", fs)
	}
}

// An existing docker group is the root's, whatever gid the host's has.
func TestFetchUsesTheRootsDockerGroup(t *testing.T) {
	needRoot(t, "chown to the docker group")
	s := peertest.StartS3(t)
	seed(t, s)
	root := machineRoot(t, "root:x:0:\ndocker:x:4242:\n")
	fetchCommit(t, s, root, testLayout(t), nil)
	if got := statOf(t, filepath.Join(root, "etc/license.rli")); got != (perm{0o640, 0, 4242}) {
		t.Fatalf("licence %#o %d:%d, want 0640 0:4242", got.mode, got.uid, got.gid)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/group")); string(b) != "root:x:0:\ndocker:x:4242:\n" {
		t.Fatalf("the root's etc/group changed although docker existed:\n%s", b)
	}
}

// A chmod'ed key, a file chown'ed by hand and a tightened files.*.mode are put right by the
// next fetch, although nothing changed in S3 and nothing is rewritten: with the run record
// (objects skipped by ETag or answered 304) and without it (same content found by hash).
func TestFetchConvergesUnchangedFiles(t *testing.T) {
	needRoot(t, "chown")
	s := peertest.StartS3(t)
	seed(t, s)
	root := machineRoot(t, "root:x:0:\n")
	bd := fetchCommit(t, s, root, testLayout(t), nil)
	known := map[string]Known{}
	for _, f := range bd.Files {
		known[f.Dest] = Known{Key: f.Key, ETag: f.ETag, Size: f.Size, SHA256: f.SHA256}
	}
	key := filepath.Join(root, "data/circle/circleci-encryption-keys/00-default.key")
	vault := filepath.Join(root, "etc/circleconfig/shared/vault")
	licence := filepath.Join(root, "etc/license.rli")
	keysDir := filepath.Join(root, "data/circle/circleci-encryption-keys")
	docker, _ := atomicfile.LookupGroup(root, "docker")
	tightened := layoutWith(t, "  circleconfig: {mode: \"0600\", dir_mode: \"0700\"}\n")

	for _, withKnown := range []bool{true, false} {
		t.Run(fmt.Sprintf("known=%v", withKnown), func(t *testing.T) {
			os.Chmod(key, 0o644)
			os.Chmod(keysDir, 0o755)
			os.Chown(licence, 1234, 1234)
			os.Chmod(licence, 0o600)
			os.Chmod(vault, 0o666)
			inode := statIno(t, key)
			k := known
			if !withKnown {
				k = nil
			}
			bd := fetchCommit(t, s, root, tightened, k)
			for _, f := range bd.Files {
				if f.Changed {
					t.Errorf("%s rewritten although unchanged", f.Dest)
				}
			}
			if statIno(t, key) != inode {
				t.Error("the key was rewritten, not converged")
			}
			if got := statOf(t, key); got != (perm{0o600, 0, 0}) {
				t.Errorf("key %#o %d:%d, want 0600 root", got.mode, got.uid, got.gid)
			}
			if got := statOf(t, keysDir); got.mode != 0o700 {
				t.Errorf("keys directory %#o, want 0700", got.mode)
			}
			if got := statOf(t, licence); got != (perm{0o640, 0, uint32(docker)}) {
				t.Errorf("licence %#o %d:%d, want 0640 0:%d", got.mode, got.uid, got.gid, docker)
			}
			for _, p := range []string{vault, filepath.Join(root, "etc/circleconfig/frontend/customizations")} {
				if got := statOf(t, p); got.mode != 0o600 {
					t.Errorf("%s: %#o, want the tightened 0600", p, got.mode)
				}
			}
			if got := statOf(t, filepath.Join(root, "etc/circleconfig/shared")); got.mode != 0o700 {
				t.Errorf("circleconfig/shared: %#o, want the tightened 0700", got.mode)
			}
		})
	}
}

func statIno(t *testing.T, p string) uint64 {
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// A symlink at a final path is not followed: its target keeps its mode, and it is reported.
func TestFetchDoesNotFollowASymlinkAtAFinalPath(t *testing.T) {
	needRoot(t, "chown to the docker group")
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := machineRoot(t, "root:x:0:\n")
	bd := fetchCommit(t, s, root, testLayout(t), nil)
	known := map[string]Known{}
	for _, f := range bd.Files {
		known[f.Dest] = Known{Key: f.Key, ETag: f.ETag, Size: f.Size, SHA256: f.SHA256}
	}
	// The planted link points at a file with the same content (so the object is unchanged)
	// that must stay private.
	elsewhere := filepath.Join(t.TempDir(), "private")
	os.WriteFile(elsewhere, objs["license.rli"], 0o600)
	os.Chmod(elsewhere, 0o600)
	licence := filepath.Join(root, "etc/license.rli")
	os.Remove(licence)
	if err := os.Symlink(elsewhere, licence); err != nil {
		t.Fatal(err)
	}
	for _, k := range []map[string]Known{known, nil} {
		bd = fetchCommit(t, s, root, testLayout(t), k)
		if got := statOf(t, elsewhere); got != (perm{0o600, 0, 0}) {
			t.Fatalf("the link's target became %#o %d:%d", got.mode, got.uid, got.gid)
		}
		f := hasCode(bd.CommitFindings, findings.FileSymlinkNotFollowed)
		if f == nil || f.Target != "/etc/license.rli" || !strings.Contains(f.Summary, elsewhere) || !strings.Contains(f.Fix, "rm /etc/license.rli") {
			t.Fatalf("want FILE_SYMLINK_NOT_FOLLOWED for /etc/license.rli naming its target, got %+v", bd.CommitFindings)
		}
		if fi, _ := os.Lstat(licence); fi.Mode()&os.ModeSymlink == 0 {
			t.Fatal("the link was replaced although the content is unchanged")
		}
	}
	// The daemon's check says the same from its side.
	os.Chmod(root, 0o755)
	if f := hasCode(validate.Readable(layout.New(root, nil)), findings.FileUnreadableByReplicated); f == nil || !strings.Contains(f.Summary, "symbolic link") {
		t.Fatalf("a symlinked licence passes the daemon's check")
	}
}

// A group the root does not have (other than docker) is a finding, and nothing is written.
func TestFetchUnknownGroupIsAFinding(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	root := machineRoot(t, "root:x:0:\n")
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	_, err := Fetch(context.Background(), b, Options{Root: root, Layout: layoutWith(t, "  circleconfig: {group: circleci}\n"), Concurrency: 4})
	f := hasCode(failure(t, err), findings.FileOwnerUnresolved)
	if f == nil || f.Target != "files.circleconfig.group" || !strings.Contains(f.Summary, `group "circleci", the owner of /etc/circleconfig/`) ||
		!strings.Contains(f.Summary, filepath.Join(root, "etc/group")) || !strings.Contains(f.Fix, "groupadd circleci") {
		t.Fatalf("want FILE_OWNER_UNRESOLVED naming the group, the field and the root's etc/group, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/license.rli")); err == nil {
		t.Fatal("a file was written although an owner did not resolve")
	}

	// The docker group that cannot be created (not root, a locked etc/group) says so.
	old := atomicfile.GroupAdd
	t.Cleanup(func() { atomicfile.GroupAdd = old })
	atomicfile.GroupAdd = []string{"sh", "-c", "echo groupadd: cannot lock /etc/group >&2; exit 10", "groupadd"}
	_, err = Fetch(context.Background(), b, Options{Root: machineRoot(t, "root:x:0:\n"), Layout: testLayout(t), Concurrency: 4})
	f = hasCode(failure(t, err), findings.FileOwnerUnresolved)
	if f == nil || !strings.Contains(f.Summary, "the docker group, which /etc/settings.conf belongs to") || !strings.Contains(f.Evidence, "cannot lock") ||
		!strings.Contains(f.Fix, "run haagent as root") {
		t.Fatalf("want FILE_OWNER_UNRESOLVED saying the docker group could not be created, got %v", err)
	}
}

// The daemon's view, for real: a process with the uid of nobody and the docker group alone
// (as the daemon's container runs, -u replicated:docker) reads the licence as haagent writes
// it, and cannot read one at 0600 root:root (haagent's old mode).
func TestDaemonUserCanReadTheLicence(t *testing.T) {
	needRoot(t, "setpriv to another uid")
	if _, err := exec.LookPath("setpriv"); err != nil {
		peertest.Missing(t, "setpriv (util-linux) not installed")
	}
	s := peertest.StartS3(t)
	seed(t, s)
	root := machineRoot(t, "root:x:0:\n")
	// t.TempDir's own directories are 0700: open the way to the root, as / is on a machine.
	for d := root; d != filepath.Dir(os.TempDir()) && d != "/"; d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()+"/") {
			os.Chmod(d, 0o755)
		}
	}
	fetchCommit(t, s, root, testLayout(t), nil)
	docker, err := atomicfile.LookupGroup(root, "docker")
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) error {
		out, err := exec.Command("setpriv", "--reuid=65534", fmt.Sprintf("--regid=%d", docker), "--clear-groups", "cat", p).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	for _, p := range []string{"etc/license.rli", "etc/settings.conf", "etc/replicated.conf"} {
		if err := read(filepath.Join(root, p)); err != nil {
			t.Errorf("the daemon's user cannot read %s with the default modes: %v", p, err)
		}
	}
	licence := filepath.Join(root, "etc/license.rli")
	os.Chmod(licence, 0o600)
	os.Chown(licence, 0, 0)
	if err := read(licence); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("a 0600 root:root licence was readable, or failed otherwise: %v", err)
	}
	if f := hasCode(validate.Readable(layout.New(root, nil)), findings.FileUnreadableByReplicated); f == nil || f.Target != "/etc/license.rli" {
		t.Fatal("the daemon's check passes a licence the daemon's user cannot read")
	}
}

// With S3 unreachable on a reboot there is no bundle; the files the last run wrote still get
// their modes and owners back.
func TestConvergeInPlaceWithoutABundle(t *testing.T) {
	needRoot(t, "chown")
	s := peertest.StartS3(t)
	seed(t, s)
	root := machineRoot(t, "root:x:0:\n")
	bd := fetchCommit(t, s, root, testLayout(t), nil)
	known := map[string]Known{}
	for _, f := range bd.Files {
		known[f.Dest] = Known{Key: f.Key, ETag: f.ETag, Size: f.Size, SHA256: f.SHA256}
	}
	known["/etc/gone.conf"] = Known{Key: "gone.conf", SHA256: "x"} // no entry writes it any more
	key := filepath.Join(root, "data/circle/circleci-encryption-keys/01-contexts.key")
	licence := filepath.Join(root, "etc/license.rli")
	os.Chmod(key, 0o644)
	os.Chmod(licence, 0o600)
	os.Chown(licence, 0, 0)
	os.Remove(filepath.Join(root, "etc/circleconfig/shared/vault")) // gone: skipped
	s.Stop()

	fs, err := ConvergeInPlace(context.Background(), root, testLayout(t), known, nil)
	if err != nil || len(fs) != 0 {
		t.Fatalf("findings %+v err %v", fs, err)
	}
	docker, _ := atomicfile.LookupGroup(root, "docker")
	if got := statOf(t, key); got.mode != 0o600 {
		t.Errorf("key %#o, want 0600", got.mode)
	}
	if got := statOf(t, licence); got != (perm{0o640, 0, uint32(docker)}) {
		t.Errorf("licence %#o %d:%d, want 0640 0:%d", got.mode, got.uid, got.gid, docker)
	}
}

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/state"
)

const keyDir = "data/circle/circleci-encryption-keys"

// settle dates a key file a minute back, as a key CircleCI wrote long ago: the backup uploads
// only keys that kept their size and mtime for 10 s.
func settle(t *testing.T, p string) {
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
}

// A local key that differs from the bucket's is never replaced. Before the installer it stops
// the boot; on a machine where CircleCI runs it does not stop what runs. Either way status and
// check show KEYS_CONFLICT, with both hashes, until a person resolves it as the README says.
func TestKeyConflictStopsAFirstBootButNotAnInstalledMachine(t *testing.T) {
	t.Run("first boot", func(t *testing.T) {
		w := newWorld(t, "i-0keysfirst000000")
		local := filepath.Join(w.root, keyDir, "01-contexts.key")
		os.MkdirAll(filepath.Dir(local), 0o700)
		os.WriteFile(local, []byte("a key placed on this machine"), 0o600)
		r := w.run("run", "--once")
		if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step validate-files: KEYS_CONFLICT") || w.installer.runs() != 0 {
			t.Fatalf("a conflict before the installer must stop the boot: exit %d, installer runs %d\n%s", r.code, w.installer.runs(), r.stderr)
		}
		if got, _ := os.ReadFile(local); string(got) != "a key placed on this machine" {
			t.Fatalf("the local key was replaced: %q", got)
		}
		if st := w.run("status"); !strings.Contains(st.stdout, findings.KeysConflict.String()) {
			t.Fatalf("status does not show the conflict:\n%s", st.stdout)
		}
		if c := w.run("check"); c.code != 1 || !strings.Contains(c.stdout, findings.KeysConflict.String()) {
			t.Fatalf("check does not show the conflict: exit %d\n%s", c.code, c.stdout)
		}
	})

	t.Run("installed machine", func(t *testing.T) {
		w := newWorld(t, "i-0keysinstalled00")
		if r := w.run("run", "--once"); r.code != 0 {
			t.Fatalf("first boot: exit %d\n%s", r.code, r.stderr)
		}
		local := filepath.Join(w.root, keyDir, "01-contexts.key")
		mine, _ := os.ReadFile(local)
		w.s3.Put(t, bkt, "circleci-encryption-keys/01-contexts.key", []byte("another instance's key under the same name"))
		r := w.run("run", "--once")
		for _, want := range []string{"[finished] validate-files", "[finished] replicated-install", "boot failed at step backup-keys: KEYS_CONFLICT"} {
			if !strings.Contains(r.stderr, want) {
				t.Fatalf("the reboot lacks %q: exit %d\n%s", want, r.code, r.stderr)
			}
		}
		if got, _ := os.ReadFile(local); string(got) != string(mine) || w.installer.runs() != 1 {
			t.Fatalf("the local key was replaced (%q) or the installer ran again (%d)", got, w.installer.runs())
		}
		if string(w.s3.Object(bkt, "circleci-encryption-keys/01-contexts.key")) != "another instance's key under the same name" {
			t.Fatal("the bucket's key was replaced")
		}
		if rec := w.record(); len(rec.KeyConflicts) != 1 || rec.KeyConflicts[0].Path != "/"+keyDir+"/01-contexts.key" {
			t.Fatalf("the record's conflicts: %+v", rec.KeyConflicts)
		}
		if st := w.run("status"); !strings.Contains(st.stdout, findings.KeysConflict.String()) {
			t.Fatalf("status does not show the conflict:\n%s", st.stdout)
		}
		if c := w.run("check"); c.code != 1 || !strings.Contains(c.stdout, findings.KeysConflict.String()) {
			t.Fatalf("check does not show the conflict: exit %d\n%s", c.code, c.stdout)
		}
		if st := w.run("status", "--json"); !strings.Contains(st.stdout, `"key_conflicts"`) || !strings.Contains(st.stdout, sha256hex(mine)) {
			t.Fatalf("status --json lacks the conflict and its local hash:\n%s", st.stdout)
		}

		// Resolved as the README says: this machine's key is the one, the bucket's copy is
		// moved out of the keys prefix. The next run copies the kept key across.
		w.s3.Put(t, bkt, "circleci-encryption-keys-conflicts/01-contexts.key", w.s3.Object(bkt, "circleci-encryption-keys/01-contexts.key"))
		w.s3.Delete(t, bkt, "circleci-encryption-keys/01-contexts.key")
		settle(t, local)
		if r := w.run("run", "--once"); r.code != 0 {
			t.Fatalf("after the resolution: exit %d\n%s", r.code, r.stderr)
		}
		if string(w.s3.Object(bkt, "circleci-encryption-keys/01-contexts.key")) != string(mine) {
			t.Fatal("the kept key was not copied to the bucket")
		}
		// (The earlier runs' lines keep their history; the current findings do not.)
		if st := w.run("status"); strings.Contains(strings.Split(st.stdout, "earlier runs:")[0], findings.KeysConflict.String()) {
			t.Fatalf("status still shows a resolved conflict:\n%s", st.stdout)
		}
		if c := w.run("check"); strings.Contains(c.stdout, findings.KeysConflict.String()) {
			t.Fatalf("check still shows a resolved conflict:\n%s", c.stdout)
		}
	})
}

// A replacement for an existing deployment (the bucket holds the session cookie key) finding
// no keys in the bucket stops before the installer: CircleCI would mint new keys and the
// backup would make them permanent.
func TestEmptyKeysPrefixOfAnExistingDeploymentStopsTheBoot(t *testing.T) {
	w := newWorld(t, "i-0keysmissing0000")
	for k := range w.objs {
		if strings.HasPrefix(k, "circleci-encryption-keys/") {
			w.s3.Delete(t, bkt, k)
		}
	}
	w.s3.Put(t, bkt, "session-cookie-key", []byte("Abcdefgh12345678"))
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step fetch: KEYS_MISSING") || w.installer.runs() != 0 {
		t.Fatalf("exit %d, installer runs %d\n%s", r.code, w.installer.runs(), r.stderr)
	}
	if !strings.Contains(r.stderr, "session-cookie-key") {
		t.Fatalf("the finding does not say why the deployment is taken as existing:\n%s", r.stderr)
	}
}

// The session cookie key a first boot created itself is no evidence of an older deployment: a
// brand-new install whose first boot failed after the cookie-key step boots again normally.
func TestARetriedFirstBootIsNotTakenForAnExistingDeployment(t *testing.T) {
	w := newWorld(t, "i-0keysretried0000")
	for k := range w.objs {
		if strings.HasPrefix(k, "circleci-encryption-keys/") {
			w.s3.Delete(t, bkt, k)
		}
	}
	w.installer.setScript("#!/bin/bash\necho 'installer failed' >&2\nexit 3\n")
	if r := w.run("run", "--once"); r.code != 1 || !strings.Contains(r.stderr, findings.KeysPrefixEmpty.String()) || w.s3.Object(bkt, "session-cookie-key") == nil {
		t.Fatalf("the first attempt must fail at the installer, having created the cookie key: exit %d\n%s", r.code, r.stderr)
	}
	w.installer.setScript(standin(t))
	if r := w.run("run", "--once"); r.code != 0 || strings.Contains(r.stderr, findings.KeysMissing.String()) {
		t.Fatalf("the retried first boot: exit %d\n%s", r.code, r.stderr)
	}
}

// A broken customization file in the bucket does not replace the working one on a reboot.
func TestBrokenCustomizationFileKeepsTheWorkingOne(t *testing.T) {
	w := newWorld(t, "i-0shellsyntax0000")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	path := filepath.Join(w.root, "etc/circleconfig/shared/vault")
	good, _ := os.ReadFile(path)
	w.s3.Put(t, bkt, "circleconfig/shared/vault", []byte("export VAULT__SCHEME=\"https\nexport VAULT__HOST=vault.internal\n"))
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step validate-files: CONFIG_SYNTAX") || !strings.Contains(r.stderr, "s3://circleci-ha/circleconfig/shared/vault") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if now, _ := os.ReadFile(path); string(now) != string(good) {
		t.Fatal("the broken file replaced the working one")
	}
}

// While haagent runs, a key CircleCI creates later is backed up by the periodic scan, not only
// at the next boot.
func TestKeysScanBacksUpNewKeysWhileRunning(t *testing.T) {
	w := newWorld(t, "i-0keysscan0000000")
	w.writeConfig(w.s3.URL, "backup:\n  scan_every: 100ms\n")
	cmd, stderr, _ := w.startService()
	eventually(t, 60*time.Second, "the boot completing", func() bool {
		rec, err := state.Load(filepath.Join(w.root, layout.StateFile))
		return err == nil && rec.Last() != nil && rec.Last().Status == state.Complete
	}, stderr.String)
	made := filepath.Join(w.root, keyDir, "05-rotated.key")
	os.WriteFile(made, []byte("a key CircleCI made after the boot"), 0o600)
	settle(t, made)
	eventually(t, 30*time.Second, "the new key reaching the bucket", func() bool {
		return string(w.s3.Object(bkt, "circleci-encryption-keys/05-rotated.key")) == "a key CircleCI made after the boot"
	}, stderr.String)
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
}

// A CA removed from the bucket is no longer trusted at the next boot (the staged copy stays
// behind, but the CA list comes from the bucket's listing), and two CAs with the same file
// name in different directories are both installed.
func TestCARemovedFromTheBucketIsNoLongerTrusted(t *testing.T) {
	w := newWorld(t, "i-0capruning000000")
	pgCA, vaultCA := peertest.NewCA(t, "PostgreSQL CA"), peertest.NewCA(t, "Vault CA")
	w.s3.Put(t, bkt, "ca-certificates/postgres/ca.pem", pgCA.CertPEM)
	w.s3.Put(t, bkt, "ca-certificates/vault/ca.pem", vaultCA.CertPEM)
	store := filepath.Join(w.root, layout.CAInstallDir)
	trusted := func(ca *peertest.CA) bool {
		entries, _ := os.ReadDir(store)
		for _, e := range entries {
			if b, _ := os.ReadFile(filepath.Join(store, e.Name())); strings.TrimSpace(string(b)) == strings.TrimSpace(string(ca.CertPEM)) {
				return true
			}
		}
		return false
	}
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if !trusted(pgCA) || !trusted(vaultCA) {
		t.Fatal("postgres/ca.pem and vault/ca.pem must both be installed")
	}
	w.s3.Delete(t, bkt, "ca-certificates/vault/ca.pem")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if trusted(vaultCA) || !trusted(pgCA) {
		t.Fatalf("after the removal: vault CA trusted %v (want false), postgres CA trusted %v (want true)", trusted(vaultCA), trusted(pgCA))
	}
}

// A full disk on a reboot is the disk's problem: LOCAL_WRITE_FAILED fails the boot. It used to
// be taken for S3 being unreachable and, on a reboot, turned into S3_OFFLINE_LAST_GOOD: the boot
// went on and the new bundle was silently dropped. The root is a real tmpfs.
func TestDiskFullOnARebootIsNotS3Offline(t *testing.T) {
	if os.Geteuid() != 0 {
		peertest.Missing(t, "mounting a tmpfs needs root")
	}
	w := newWorld(t, "i-0diskfull0000000")
	root := filepath.Join(t.TempDir(), "root")
	os.MkdirAll(root, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", root).CombinedOutput(); err != nil {
		peertest.Missing(t, fmt.Sprintf("cannot mount a tmpfs: %v %s", err, out))
	}
	t.Cleanup(func() { exec.Command("umount", root).Run() })
	cfg, _ := os.ReadFile(filepath.Join(w.root, "etc/haagent/haagent.yaml"))
	os.MkdirAll(filepath.Join(root, "etc/haagent"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/haagent/haagent.yaml"), cfg, 0o644)
	w.root = root
	w.installer.set(func(s *installerServer) { s.root = root }) // the stand-in installs under the machine's root
	bakeDocker(t, root)
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("first boot: exit %d\n%s", r.code, r.stderr)
	}
	w.s3.Put(t, bkt, "license.rli", make([]byte, 2<<20))
	r := w.run("run", "--once")
	if r.code != 1 || !strings.Contains(r.stderr, "boot failed at step fetch: LOCAL_WRITE_FAILED") || strings.Contains(r.stderr, findings.S3OfflineLastGood.String()) ||
		strings.Contains(r.stderr, "retrying S3 request") {
		t.Fatalf("a full disk must fail the reboot, unretried, not go on offline: exit %d\n%s", r.code, r.stderr)
	}
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

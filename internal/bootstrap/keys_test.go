package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/peertest"
	"github.com/haagent/haagent/internal/state"
)

// S3 unreachable at the backup: skipped (a warning) only on a reboot of an instance whose
// earlier boot completed, whose keys an earlier boot backed up. On a first boot the keys exist
// only here: the step fails, so the run is not "complete" and the service retries.
func TestBackupSkippedOnlyOnARebootOfACompletedInstance(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	dead := peertest.OpenBucket(t, fmt.Sprintf("http://127.0.0.1:%d", peertest.ClosedPort(t)), "a", "b", "circleci-ha", 2, 2*time.Second)
	for _, tc := range []struct {
		name     string
		runs     []state.Run
		wantFail bool
	}{
		{"first boot", nil, true},
		{"another instance completed on this disk", []state.Run{{InstanceID: "i-0other", Status: state.Complete}}, true},
		{"reboot of a completed instance", []state.Run{{InstanceID: "i-0this", Status: state.Complete}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			env := quietEnv(Inputs{Root: t.TempDir()}, &state.Record{Version: state.Version, Runs: tc.runs})
			env.Config, env.Bucket, env.Instance = cfg, dead, imds.Info{InstanceID: "i-0this"}
			fs, err := attempt(t, ctx, env, "backup-keys")
			var fail *findings.Failure
			if tc.wantFail {
				if !errors.As(err, &fail) || fail.Findings[0].Code != findings.KeysNotBackedUp {
					t.Fatalf("want KEYS_NOT_BACKED_UP failing the step, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("a reboot with S3 down goes on: %v", err)
			}
			if len(fs) != 1 || fs[0].Code != findings.KeysBackupSkipped {
				t.Fatalf("want KEYS_BACKUP_SKIPPED, got %+v", fs)
			}
		})
	}
}

// The bucket every step writes through carries backup.sse and kms_key_id, so the cookie key and
// the replacement ledger get the same encryption as the keys.
func TestConfiguredEncryptionIsTheBucketsDefault(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: circleci-ha\n  endpoint: http://127.0.0.1:9\nbackup:\n  sse: aws:kms\n  kms_key_id: alias/circleci\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	env := quietEnv(Inputs{Root: t.TempDir(), FileConfig: cfg}, nil)
	env.Instance = imds.Info{Region: "us-east-1"}
	if _, err := attempt(t, context.Background(), env, "config"); err != nil {
		t.Fatal(err)
	}
	if enc := env.Bucket.Encryption(); enc.SSE != "aws:kms" || enc.KMSKeyID != "alias/circleci" {
		t.Fatalf("the bucket's encryption is %+v", enc)
	}
}

// A replacement instance of an existing deployment (the bucket holds the old session cookie
// key; no ledger, no keys) is stopped by KEYS_MISSING at the fetch, and stays stopped when
// haagent is restarted: an earlier run of the same instance is no proof that it created the
// cookie key. Only the record's CookieCreatedBy (written at the cookie-key step) is.
func TestKeysMissingHoldsAcrossRestarts(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	s := peertest.StartS3(t)
	s.MakeBucket(t, "circleci-ha")
	src := "../../examples/bucket"
	err = filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel = filepath.ToSlash(rel); !strings.HasPrefix(rel, "circleci-encryption-keys/") {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s.Put(t, "circleci-ha", rel, data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Put(t, "circleci-ha", "session-cookie-key", []byte("Abcdefgh12345678"))
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, "circleci-ha", 2, 5*time.Second)
	root := t.TempDir()
	statePath := filepath.Join(t.TempDir(), "state.json")
	fetchOnce := func(run int, rec *state.Record) error {
		rec.Runs = append(rec.Runs, state.Run{ID: fmt.Sprint(run), InstanceID: "i-0new", Status: state.Retrying})
		env := quietEnv(Inputs{Root: root}, rec)
		env.Config, env.Bucket, env.Instance = cfg, b, imds.Info{InstanceID: "i-0new"}
		_, err := attempt(t, context.Background(), env, "fetch")
		if env.Bundle != nil {
			env.Bundle.Discard()
		}
		rec.Runs[len(rec.Runs)-1].Steps = []state.Step{{Name: "fetch", Status: "failed"}}
		return err
	}
	blockedByKeysMissing := func(err error) bool {
		var fail *findings.Failure
		return errors.As(err, &fail) && len(fail.Findings) > 0 && fail.Findings[0].Code == findings.KeysMissing
	}
	for run := 1; run <= 3; run++ {
		// Each run is a new process: the record is read back from disk.
		rec, err := state.Load(statePath)
		if err != nil {
			t.Fatal(err)
		}
		if err := fetchOnce(run, rec); !blockedByKeysMissing(err) {
			t.Fatalf("run %d of the replacement was not stopped by KEYS_MISSING (the installer would run and CircleCI mint new keys): %v", run, err)
		}
		if err := rec.Save(statePath); err != nil {
			t.Fatal(err)
		}
	}
	// The cookie key this very instance created (a first boot that failed later) is no
	// evidence: the retried first boot goes on.
	rec, err := state.Load(statePath)
	if err != nil {
		t.Fatal(err)
	}
	// (What the cookie-key step writes; cmd/haagent's TestARetriedFirstBootIsNotTakenForAnExistingDeployment
	// covers the step itself.)
	rec.CookieCreatedBy = "i-0new"
	if err := rec.Save(statePath); err != nil {
		t.Fatal(err)
	}
	if rec, err = state.Load(statePath); err != nil {
		t.Fatal(err)
	}
	if err := fetchOnce(4, rec); err != nil {
		t.Fatalf("the retried first boot of the instance that created the cookie key was stopped: %v", err)
	}
	// Another instance on this disk did not create it: still blocked.
	rec.CookieCreatedBy = "i-0other"
	if err := fetchOnce(5, rec); !blockedByKeysMissing(err) {
		t.Fatalf("a cookie key created by another instance must count as evidence: %v", err)
	}
}

// The periodic scan puts back a backup copy deleted from the bucket (by hand, a lifecycle
// rule): every scan lists the keys prefix (names and sizes), so a settled scan compares again
// when the bucket's side changed, not only when the machine's did. Driven scan by scan: no
// timing.
func TestKeysScanRestoresABackupDeletedFromTheBucket(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	s := peertest.StartS3(t)
	s.MakeBucket(t, "circleci-ha")
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, "circleci-ha", 2, 5*time.Second)
	root := t.TempDir()
	d := filepath.Join(root, "data/circle/circleci-encryption-keys")
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(d, "00-default.key")
	if err := os.WriteFile(k, []byte("the only key"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(k, old, old); err != nil {
		t.Fatal(err)
	}
	env := quietEnv(Inputs{Root: root}, nil)
	env.Config, env.Bucket, env.Instance = cfg, b, imds.Info{InstanceID: "i-0this"}
	ctx := context.Background()
	set := func(...findings.Finding) {} // the monitor's Set: its findings are not what this test is about
	var sc keyScanner
	backedUp := func() bool {
		return string(s.Object("circleci-ha", "circleci-encryption-keys/00-default.key")) == "the only key"
	}
	for i := 0; i < 3; i++ {
		sc.scan(ctx, env, set, time.Minute)
	}
	if !backedUp() {
		t.Fatal("the scan did not back up the key")
	}
	if sc.scan(ctx, env, set, time.Minute) {
		t.Fatal("a settled scan with nothing changed on either side compared every key again")
	}
	s.Delete(t, "circleci-ha", "circleci-encryption-keys/00-default.key")
	sc.scan(ctx, env, set, time.Minute)
	if !backedUp() {
		t.Fatal("the backup copy was deleted from the bucket and the next scan did not put it back")
	}
	// Replaced in the bucket by a copy of another size: compared again, a conflict.
	s.Delete(t, "circleci-ha", "circleci-encryption-keys/00-default.key")
	s.Put(t, "circleci-ha", "circleci-encryption-keys/00-default.key", []byte("someone else's key"))
	sc.scan(ctx, env, set, time.Minute)
	if env.syncRecord(); len(env.Record.KeyConflicts) != 1 {
		t.Fatalf("a bucket copy that changed was not compared again: conflicts %+v", env.Record.KeyConflicts)
	}
}

// The scan remembers what it verified: when a new key appears, the next comparison uploads it
// (one put, whose answer echoes the checksum S3 verified: no read-back) and asks nothing about the keys an earlier scan backed up; the
// backup compares against the listing the scan just took instead of listing again. Counted at
// versitygw.
func TestKeysScanAsksOnlyAboutNewKeys(t *testing.T) {
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: circleci-ha\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	s := peertest.StartS3(t)
	s.MakeBucket(t, "circleci-ha")
	c := peertest.CountS3(t, s.URL)
	b := peertest.OpenBucket(t, c.URL, s.AccessKey, s.SecretKey, "circleci-ha", 2, 5*time.Second)
	root := t.TempDir()
	d := filepath.Join(root, "data/circle/circleci-encryption-keys")
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	write := func(name string) {
		k := filepath.Join(d, name)
		if err := os.WriteFile(k, []byte("key "+name), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(k, old, old)
	}
	for i := 0; i < 10; i++ {
		write(fmt.Sprintf("%02d.key", i))
	}
	env := quietEnv(Inputs{Root: root}, nil)
	env.Config, env.Bucket, env.Instance = cfg, b, imds.Info{InstanceID: "i-0this"}
	set := func(...findings.Finding) {}
	var alive atomic.Int32
	sc := keyScanner{alive: func() { alive.Add(1) }}
	if !sc.scan(context.Background(), env, set, time.Minute) || s.Object("circleci-ha", "circleci-encryption-keys/09.key") == nil {
		t.Fatal("the first scan did not back up the keys")
	}
	// Alive after the listing and after each of the 10 uploads: a scan of hundreds of keys
	// is no stall while it moves.
	if got := alive.Load(); got != 11 {
		t.Fatalf("the scan said it was alive %d times, want 11 (the listing and each key)", got)
	}
	write("10.key")
	c.Reset()
	if !sc.scan(context.Background(), env, set, time.Minute) {
		t.Fatal("a new key did not make the scan compare")
	}
	if got := c.Counts(); len(got) != 2 || got["ListObjectsV2"] != 1 || got["PutObject"] != 1 {
		t.Fatalf("requests %v, want one listing (the backup takes the scan's) and one put (no read-back, nothing about the 10 keys backed up before)", got)
	}
}

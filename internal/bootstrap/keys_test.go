package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
			env := &Env{Root: t.TempDir(), Log: slog.New(slog.DiscardHandler), Config: cfg, Bucket: dead,
				Instance: imds.Info{InstanceID: "i-0this"}, Record: &state.Record{Version: state.Version, Runs: tc.runs}}
			env.beginStep("backup-keys")
			err := StepBackupKeys(ctx, env)
			var fail *findings.Failure
			if tc.wantFail {
				if !errors.As(err, &fail) || fail.Findings[0].Code != "KEYS_NOT_BACKED_UP" {
					t.Fatalf("want KEYS_NOT_BACKED_UP failing the step, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("a reboot with S3 down goes on: %v", err)
			}
			if fs := env.Findings([]Step{{Name: "backup-keys"}}); len(fs) != 1 || fs[0].Code != "KEYS_BACKUP_SKIPPED" {
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
	env := &Env{Root: t.TempDir(), Log: slog.New(slog.DiscardHandler), Config: cfg, Instance: imds.Info{Region: "us-east-1"}}
	if err := stepConfig(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	if enc := env.Bucket.Encryption(); enc.SSE != "aws:kms" || enc.KMSKeyID != "alias/circleci" {
		t.Fatalf("the bucket's encryption is %+v", enc)
	}
}

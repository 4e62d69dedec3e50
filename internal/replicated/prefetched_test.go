package replicated

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
)

// A script the fetch's pass read from the bucket is judged as a download would be, without a
// request of its own (OpenBucket is never called): a failed read is INSTALLER_DOWNLOAD_FAILED,
// bytes that do not match the pin are INSTALLER_CHECKSUM_MISMATCH, and neither runs.
func TestPrefetchedScriptKeepsTheChecks(t *testing.T) {
	opened := 0
	base := Options{Root: t.TempDir(), URL: "s3://circleci-ha/replicated/install.sh", SHA256: strings.Repeat("a", 64), InstanceID: "i-0pre",
		Log: slog.Default(), Timeout: time.Minute,
		OpenBucket: func(context.Context, string) (*bucket.Bucket, error) {
			opened++
			return nil, errors.New("no second request")
		}}
	for _, tc := range []struct {
		name string
		pre  Prefetched
		code findings.Code
	}{
		{"read failed", Prefetched{Err: &bucket.Error{Op: "GetObject", URI: "s3://circleci-ha/replicated/install.sh", Err: bucket.ErrNotFound}}, findings.InstallerDownloadFailed},
		{"not the pinned script", Prefetched{Body: []byte("#!/bin/sh\necho another script\n")}, findings.InstallerChecksumMismatch},
	} {
		o := base
		o.Fetched = &tc.pre
		res, err := Ensure(context.Background(), o)
		var fail *findings.Failure
		if !errors.As(err, &fail) || fail.Findings[0].Code != tc.code || res.Ran {
			t.Errorf("%s: ran %v, %v, want %s", tc.name, res.Ran, err, tc.code)
		}
	}
	if opened != 0 {
		t.Fatalf("the bucket was asked again %d times", opened)
	}
}

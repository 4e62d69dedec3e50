package replicated

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// An installer in a bucket whose endpoint's certificate the client cannot verify (its CA is
// not in the client's pool: here, a client opened without source.ca_file) is
// INSTALLER_DOWNLOAD_FAILED with the bucket's own fix, which names source.ca_file, not the
// generic "check replicated.installer_url"; it is one attempt, not retried.
func TestDownloadFromS3ReportsAnUntrustedCertificateWithItsFix(t *testing.T) {
	ca := peertest.NewCA(t, "on-prem S3 CA")
	s := peertest.StartS3TLS(t, ca)
	s.MakeBucket(t, "installers")
	s.Put(t, "installers", "replicated-2.0.sh", []byte("#!/bin/bash\necho installed\n"))
	opened := 0
	var log strings.Builder
	o := Options{URL: "s3://installers/replicated-2.0.sh", OpenBucket: func(ctx context.Context, name string) (*bucket.Bucket, error) {
		opened++
		return bucket.New(ctx, bucket.Options{Name: name, Region: "us-east-1", Endpoint: s.URL, PathStyle: true, Attempts: 3, Timeout: 10 * time.Second,
			Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""), Log: slog.New(slog.NewTextHandler(&log, nil))})
	}}
	_, _, err := download(context.Background(), o)
	var fail *findings.Failure
	if !errors.As(err, &fail) || len(fail.Findings) != 1 {
		t.Fatalf("want one finding, got %v", err)
	}
	f := fail.Findings[0]
	if f.Code != findings.InstallerDownloadFailed || !strings.Contains(f.Evidence, "certificate signed by unknown authority") ||
		!strings.Contains(f.Fix, "source.ca_file") || opened != 1 || strings.Contains(log.String(), "retrying") {
		t.Fatalf("finding %+v (bucket opened %d times)\nthe bucket's log:\n%s", f, opened, log.String())
	}
}

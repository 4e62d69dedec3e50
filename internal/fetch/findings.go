package fetch

import (
	"errors"
	"fmt"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
)

// bucketFinding turns a failed listing into a finding.
func bucketFinding(err error, e config.Entry) findings.Finding {
	var be *bucket.Error
	if !errors.As(err, &be) {
		return findings.New(findings.S3FetchFailed, e.Key, "listing "+e.Key+" failed", err.Error())
	}
	return findings.New(be.Code(), be.URI, fmt.Sprintf("cannot list %s (%s)", be.URI, e.Purpose), be.Error()).WithFix(be.Fix())
}

// fileFinding turns a failed download into a finding.
func fileFinding(b *bucket.Bucket, err error, f *File) findings.Finding {
	if errors.Is(err, ErrEmptyKey) {
		return findings.New(findings.KeysEmpty, b.URI(f.Key),
			fmt.Sprintf("encryption key %s is empty (0 bytes); it is refused and nothing is installed", b.URI(f.Key)), "").
			WithFix(fmt.Sprintf("upload the real key over it (aws s3 cp KEYFILE %s) from the machine or backup that holds it", b.URI(f.Key)))
	}
	var nf *notFileError
	if errors.As(err, &nf) {
		return notFileFinding(b.URI(f.Key), nf)
	}
	var be *bucket.Error
	if !errors.As(err, &be) {
		le := &bucket.LocalError{Path: f.Dest, Err: err}
		return findings.New(findings.LocalWriteFailed, f.Dest, fmt.Sprintf("writing %s failed on this machine", f.Dest), err.Error()).WithFix(le.Fix())
	}
	code := be.Code()
	summary := fmt.Sprintf("cannot download %s to %s (%s)", be.URI, f.Dest, f.purpose)
	var le *bucket.LocalError
	if errors.As(err, &le) {
		// The machine's fault: the target is the local path, the object is only context.
		return findings.New(code, f.Dest, fmt.Sprintf("cannot write %s (from %s) on this machine", f.Dest, be.URI), le.Error()).WithFix(le.Fix())
	}
	if code == findings.S3ObjectMissing {
		summary = fmt.Sprintf("%s does not exist; it is %s, written to %s", be.URI, f.purpose, f.Dest)
	}
	return findings.New(code, be.URI, summary, be.Error()).WithFix(be.Fix())
}

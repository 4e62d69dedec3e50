package bucket

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"

	smithy "github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/haagent/haagent/internal/findings"
)

// Error is a failed bucket operation: what was done, to which object, and why.
type Error struct {
	Op  string
	URI string
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %s", e.Op, e.URI, describe(e.Err))
}

func (e *Error) Unwrap() error { return e.Err }

// Code is the finding code for this failure.
func (e *Error) Code() findings.Code { return Code(e.Err) }

// Fix says what to do about it, naming the IAM permission or setting involved.
func (e *Error) Fix() string {
	switch e.Code() {
	case findings.S3AccessDenied:
		perm := "s3:GetObject on " + arnOf(e.URI)
		switch e.Op {
		case "ListObjectsV2":
			perm = "s3:ListBucket on arn:aws:s3:::" + bucketOf(e.URI) + " (with an s3:prefix condition covering the haagent prefix)"
		case "PutObject":
			perm = "s3:PutObject on " + arnOf(e.URI)
		case "GetObject":
			perm += "; without s3:ListBucket S3 also answers 403 for an object that does not exist"
		}
		return "grant the instance role " + perm + ", and kms:Decrypt when the bucket uses SSE-KMS (examples/iam-policy.json)"
	case findings.S3BucketMissing:
		return "bucket " + bucketOf(e.URI) + " does not exist: check source.bucket in the haagent config"
	case findings.S3CredentialsInvalid:
		return "the request signature was rejected: check the instance profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in /etc/default/haagent, and the clock (chronyc tracking)"
	case findings.S3ObjectMissing:
		return "upload it: aws s3 cp FILE " + e.URI
	case findings.LocalWriteFailed:
		var le *LocalError
		if errors.As(e.Err, &le) {
			return le.Fix()
		}
	case findings.S3TLSUntrusted:
		return tlsFix(e.Err)
	case findings.S3Unreachable:
		return "check the route to S3 (VPC endpoint or NAT gateway, security group egress), HTTPS_PROXY/NO_PROXY in /etc/default/haagent, and source.endpoint"
	}
	return "haagent retried what could heal; see the error"
}

// Sentinels callers branch on.
var (
	ErrNotFound    = errors.New("no such key")
	ErrNotModified = errors.New("not modified")
	ErrExists      = errors.New("object already exists")
)

// Is maps S3's answers onto the sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return apiCode(e.Err) == "NoSuchKey" || apiCode(e.Err) == "NotFound" || (status(e.Err) == 404 && apiCode(e.Err) != "NoSuchBucket")
	case ErrNotModified:
		return status(e.Err) == 304
	case ErrExists:
		return status(e.Err) == 412 || apiCode(e.Err) == "PreconditionFailed" || apiCode(e.Err) == "ConditionalRequestConflict"
	}
	return false
}

// LocalError is a failure on this machine's side of a transfer: the bytes arrived but could not
// be written (ENOSPC, EROFS, ENAMETOOLONG, EACCES). It is never S3's fault and never heals by
// asking S3 again, so it is neither retried nor reported as S3 being unreachable (a
// syscall.Errno satisfies net.Error, which made a full disk look like a network outage).
type LocalError struct {
	Path string // the destination being written
	Err  error
}

func (e *LocalError) Error() string {
	return fmt.Sprintf("writing %s on this machine: %v", e.Path, e.Err)
}
func (e *LocalError) Unwrap() error { return e.Err }

// Fix names what to do on the machine, by the errno underneath.
func (e *LocalError) Fix() string {
	dir := filepath.Dir(e.Path)
	switch {
	case errors.Is(e.Err, syscall.ENOSPC), errors.Is(e.Err, syscall.EDQUOT):
		return fmt.Sprintf("free space on the filesystem holding %s (df -h %s; df -i %s for inodes), then haagent fetches again", dir, dir, dir)
	case errors.Is(e.Err, syscall.EROFS):
		return fmt.Sprintf("the filesystem holding %s is read-only: remount it read-write (mount -o remount,rw) or check the disk for errors (dmesg)", dir)
	case errors.Is(e.Err, syscall.ENAMETOOLONG):
		return "the object's name is too long for this filesystem (255 bytes per path segment, with haagent's temp-file suffix): rename the object in the bucket"
	case errors.Is(e.Err, syscall.EACCES), errors.Is(e.Err, syscall.EPERM):
		return fmt.Sprintf("haagent may not write in %s: check the directory's owner, mode and mount options", dir)
	}
	return fmt.Sprintf("check the filesystem holding %s (space, read-only mount, permissions, dmesg)", dir)
}

// Code classifies an error into a finding code.
func Code(err error) findings.Code {
	var le *LocalError
	if errors.As(err, &le) {
		return findings.LocalWriteFailed
	}
	switch apiCode(err) {
	case "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState", "KMS.AccessDeniedException":
		return findings.S3AccessDenied
	case "NoSuchBucket":
		return findings.S3BucketMissing
	case "NoSuchKey", "NotFound":
		return findings.S3ObjectMissing
	case "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "RequestTimeTooSkewed", "InvalidClientTokenId":
		return findings.S3CredentialsInvalid
	}
	switch status(err) {
	case 403:
		return findings.S3AccessDenied
	case 404:
		return findings.S3ObjectMissing
	}
	if certificateError(err) {
		return findings.S3TLSUntrusted
	}
	if Unreachable(err) {
		return findings.S3Unreachable
	}
	return findings.S3FetchFailed
}

// certificateError reports whether the TLS handshake refused the endpoint's certificate. It is
// a setting to fix, not an outage: never retried, and never taken for S3 being offline (a
// reboot does not go on with the old files past a certificate it cannot verify).
func certificateError(err error) bool {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var ve *tls.CertificateVerificationError
	return errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &ve)
}

// tlsFix names what to change for a refused certificate, by its kind. The bucket's
// ca-certificates/ cannot help here: it is fetched over this very connection.
func tlsFix(err error) string {
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &he):
		return "the S3 endpoint's certificate does not name the host in source.endpoint: use a name the certificate holds, or reissue the certificate with it"
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		return "the S3 endpoint's certificate is expired or not yet valid: renew it, and check this machine's clock (timedatectl)"
	}
	return "the certificate of the S3 endpoint (or of a TLS-inspecting proxy on the way) is signed by a CA this machine does not trust: " +
		"put that CA's PEM certificate in a file on the machine (baked into the AMI, or written by user-data) and name it in source.ca_file"
}

// Retryable reports whether another attempt may succeed: throttling, server errors, dropped
// or cut connections, timeouts. Denials and missing objects never heal by retrying.
func Retryable(err error) bool {
	var le *LocalError
	if errors.Is(err, context.Canceled) || errors.As(err, &le) {
		return false
	}
	var hm *HashMismatchError
	if errors.As(err, &hm) {
		return true
	}
	switch apiCode(err) {
	case "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests":
		return true
	}
	if s := status(err); s != 0 {
		return s >= 500 || s == 429 || s == 408
	}
	if apiCode(err) != "" || certificateError(err) {
		return false
	}
	// No HTTP answer: a transport error, a cut body or a timeout. A missing credential
	// provider answer also lands here: a new instance's role may need a moment.
	return true
}

// Unreachable reports whether S3 gave no HTTP answer at all (as opposed to refusing).
func Unreachable(err error) bool {
	var le *LocalError
	if err == nil || status(err) != 0 || apiCode(err) != "" || errors.As(err, &le) {
		return false
	}
	var ne net.Error
	var oe *net.OpError
	var te *TimeoutError
	return errors.As(err, &oe) || errors.As(err, &ne) || errors.As(err, &te) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded)
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func status(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		return re.Response.StatusCode
	}
	return 0
}

// redirectRegion returns the bucket's region when S3 answered that it lives elsewhere.
func redirectRegion(err error) string {
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.Response == nil {
		return ""
	}
	c := apiCode(err)
	if re.Response.StatusCode == 301 || c == "PermanentRedirect" || c == "AuthorizationHeaderMalformed" || c == "IllegalLocationConstraintException" {
		return re.Response.Header.Get("X-Amz-Bucket-Region")
	}
	return ""
}

// describe shortens the SDK's nested error text to what an operator needs: the S3 code and
// message, or the transport failure.
func describe(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		msg := ae.ErrorMessage()
		if s := status(err); s != 0 {
			return fmt.Sprintf("%s (HTTP %d): %s", ae.ErrorCode(), s, msg)
		}
		return fmt.Sprintf("%s: %s", ae.ErrorCode(), msg)
	}
	if s := status(err); s != 0 {
		return fmt.Sprintf("HTTP %d", s)
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ", "); i >= 0 && strings.HasPrefix(msg, "operation error") {
		msg = msg[i+2:]
	}
	return msg
}

func bucketOf(uri string) string {
	b, _, _ := strings.Cut(strings.TrimPrefix(uri, "s3://"), "/")
	return b
}

func arnOf(uri string) string { return "arn:aws:s3:::" + strings.TrimPrefix(uri, "s3://") }

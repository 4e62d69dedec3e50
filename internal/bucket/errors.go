package bucket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	smithy "github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
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
func (e *Error) Code() string { return Code(e.Err) }

// Fix says what to do about it, naming the IAM permission or setting involved.
func (e *Error) Fix() string {
	switch e.Code() {
	case "S3_ACCESS_DENIED":
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
	case "S3_BUCKET_MISSING":
		return "bucket " + bucketOf(e.URI) + " does not exist: check source.bucket in the haagent config"
	case "S3_CREDENTIALS_INVALID":
		return "the request signature was rejected: check the instance profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in /etc/default/haagent, and the clock (chronyc tracking)"
	case "S3_OBJECT_MISSING":
		return "upload it: aws s3 cp FILE " + e.URI
	case "S3_UNREACHABLE":
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

// Code classifies an error into a finding code.
func Code(err error) string {
	switch apiCode(err) {
	case "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidObjectState", "KMS.AccessDeniedException":
		return "S3_ACCESS_DENIED"
	case "NoSuchBucket":
		return "S3_BUCKET_MISSING"
	case "NoSuchKey", "NotFound":
		return "S3_OBJECT_MISSING"
	case "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "RequestTimeTooSkewed", "InvalidClientTokenId":
		return "S3_CREDENTIALS_INVALID"
	}
	switch status(err) {
	case 403:
		return "S3_ACCESS_DENIED"
	case 404:
		return "S3_OBJECT_MISSING"
	}
	if Unreachable(err) {
		return "S3_UNREACHABLE"
	}
	return "S3_FETCH_FAILED"
}

// Retryable reports whether another attempt may succeed: throttling, server errors, dropped
// or cut connections, timeouts. Denials and missing objects never heal by retrying.
func Retryable(err error) bool {
	if errors.Is(err, context.Canceled) {
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
	if apiCode(err) != "" {
		return false
	}
	// No HTTP answer: a transport error, a cut body or a timeout. A missing credential
	// provider answer also lands here: a new instance's role may need a moment.
	return true
}

// Unreachable reports whether S3 gave no HTTP answer at all (as opposed to refusing).
func Unreachable(err error) bool {
	if err == nil || status(err) != 0 || apiCode(err) != "" {
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

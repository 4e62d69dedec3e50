// Package bucket is haagent's access to the S3 bucket: client construction (region, endpoint,
// proxy, extra CA), retries of what can heal, and classification of what cannot into the
// findings an operator can act on.
package bucket

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/net/http/httpproxy"

	"github.com/haagent/haagent/internal/backoff"
)

// Options configure a Bucket.
type Options struct {
	Name      string
	Prefix    string // "" or ending in "/"
	Region    string // from config; "" means AWS_REGION, then FallbackRegion
	Endpoint  string
	PathStyle bool
	CAFile    string // already resolved under --root
	// FallbackRegion is the instance's region from IMDS.
	FallbackRegion string
	Attempts       int
	Timeout        time.Duration // per attempt
	Log            *slog.Logger
	// Encryption is the server-side encryption of every object haagent writes (the keys, the
	// session cookie key, the replacement ledger): a bucket policy that requires SSE denies a
	// put without it, and a denied cookie key put logs every user out at the next replacement.
	Encryption Encryption
	// Credentials replaces the SDK's default chain (tests talking to a local S3); nil keeps
	// the chain: environment, shared files, the instance role.
	Credentials aws.CredentialsProvider
}

// Bucket is a prefix in an S3 bucket.
type Bucket struct {
	Name, Prefix string
	attempts     int
	timeout      time.Duration
	log          *slog.Logger
	enc          Encryption

	mu  sync.Mutex
	cli *s3.Client
	// backoff is replaceable so fault-injection tests do not wait for real backoff.
	backoff func(attempt int) time.Duration
}

// New builds the client. It does no network I/O.
func New(ctx context.Context, o Options) (*Bucket, error) {
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.Proxy = ProxyFunc()
		// One idle connection per download worker (fetch.concurrency is at most 128): a
		// connection dropped from a small pool costs a new TCP and TLS handshake per object.
		tr.MaxIdleConnsPerHost = 128
	})
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading source.ca_file %s: %w", o.CAFile, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("source.ca_file %s holds no PEM certificate", o.CAFile)
		}
		hc = hc.WithTransportOptions(func(tr *http.Transport) {
			if tr.TLSClientConfig == nil {
				tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			tr.TLSClientConfig.RootCAs = pool
		})
	}
	loadOpts := []func(*awsconfig.LoadOptions) error{awsconfig.WithHTTPClient(hc)}
	if o.Region != "" {
		loadOpts = append(loadOpts, awsconfig.WithRegion(o.Region))
	}
	if o.Credentials != nil {
		loadOpts = append(loadOpts, awsconfig.WithCredentialsProvider(o.Credentials))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("loading the AWS SDK configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = o.FallbackRegion
	}
	if awsCfg.Region == "" {
		return nil, errors.New("no AWS region: set source.region in the haagent config or AWS_REGION in /etc/default/haagent (IMDS gave none)")
	}
	cli := s3.NewFromConfig(awsCfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = so.UsePathStyle || o.PathStyle
		// haagent retries itself, around the whole download including the body; the SDK's
		// retryer would multiply attempts and its retry quota fails fast under SlowDown bursts.
		so.RetryMaxAttempts = 1
		// S3-compatible stores differ in their support for the newer default checksums;
		// checksums are validated on download when the store sends them.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.DisableLogOutputChecksumValidationSkipped = true
	})
	if o.Attempts < 1 {
		o.Attempts = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Bucket{Name: o.Name, Prefix: o.Prefix, attempts: o.Attempts, timeout: o.Timeout, log: o.Log, enc: o.Encryption, cli: cli, backoff: defaultBackoff}, nil
}

// SetEncryption replaces the server-side encryption of puts (tests, which open their bucket
// through peertest).
func (b *Bucket) SetEncryption(enc Encryption) { b.enc = enc }

// Encryption is what every put asks for.
func (b *Bucket) Encryption() Encryption { return b.enc }

// SetBackoff replaces the delay between attempts (tests).
func (b *Bucket) SetBackoff(f func(attempt int) time.Duration) { b.backoff = f }

// Region is the region requests currently go to (it changes after a redirect).
func (b *Bucket) Region() string { return b.client().Options().Region }

// URI names a key under the prefix for messages: s3://bucket/prefix/key.
func (b *Bucket) URI(key string) string { return "s3://" + b.Name + "/" + b.Prefix + key }

func (b *Bucket) client() *s3.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cli
}

// defaultBackoff is capped exponential backoff with full jitter (attempt from 0 here).
func defaultBackoff(attempt int) time.Duration { return s3Backoff.Delay(attempt + 1) }

var s3Backoff = backoff.Policy{Base: 250 * time.Millisecond, Max: 10 * time.Second, Jitter: true, Floor: 50 * time.Millisecond}

// ProxyFunc honours HTTPS_PROXY/NO_PROXY as they are now, except that the link-local
// instance metadata addresses are never proxied (a proxy cannot reach them, and must not see
// the role's credentials).
func ProxyFunc() func(*http.Request) (*url.URL, error) {
	env := httpproxy.FromEnvironment().ProxyFunc()
	return func(r *http.Request) (*url.URL, error) {
		h := r.URL.Hostname()
		if h == "169.254.169.254" || h == "fd00:ec2::254" {
			return nil, nil
		}
		return env(r.URL)
	}
}

// do runs fn with retries. fn gets a client and a per-attempt context. A redirect to the
// bucket's real region switches the client and retries at once.
func (b *Bucket) do(ctx context.Context, op, key string, fn func(ctx context.Context, cli *s3.Client) error) error {
	var last error
	redirected := false
	for attempt := 0; attempt < b.attempts; attempt++ {
		if attempt > 0 {
			d := b.backoff(attempt - 1)
			b.log.Warn("retrying S3 request", "op", op, "object", b.URI(key), "attempt", attempt+1, "of", b.attempts, "after", d.Round(time.Millisecond).String(), "error", last.Error())
			select {
			case <-ctx.Done():
				return b.wrap(op, key, ctx.Err())
			case <-time.After(d):
			}
		}
		actx, cancel := context.WithTimeout(ctx, b.timeout)
		err := fn(actx, b.client())
		timedOut := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		if timedOut {
			err = &TimeoutError{After: b.timeout, Err: err}
		}
		if r := redirectRegion(err); r != "" && !redirected {
			redirected = true
			b.log.Info("bucket is in another region; following", "bucket", b.Name, "region", r)
			b.mu.Lock()
			b.cli = s3.New(b.cli.Options(), func(o *s3.Options) { o.Region = r })
			b.mu.Unlock()
			attempt--
			continue
		}
		last = err
		if ctx.Err() != nil || !Retryable(err) {
			break
		}
	}
	return b.wrap(op, key, last)
}

func (b *Bucket) wrap(op, key string, err error) error {
	return &Error{Op: op, URI: b.URI(key), Err: err}
}

// TimeoutError marks an attempt that ran past its own deadline (not the caller's).
type TimeoutError struct {
	After time.Duration
	Err   error
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("no complete answer within %s: %v", e.After, e.Err)
}
func (e *TimeoutError) Unwrap() error { return e.Err }

// Object is a listed object, its key relative to the listed prefix.
type Object struct {
	Rel  string
	Key  string // full key in the bucket
	Size int64
	ETag string
}

// List returns every object under prefix (relative to the bucket prefix), paginated.
func (b *Bucket) List(ctx context.Context, prefix string) ([]Object, error) {
	full := b.Prefix + prefix
	var out []Object
	var token *string
	for {
		var page *s3.ListObjectsV2Output
		err := b.do(ctx, "ListObjectsV2", prefix, func(ctx context.Context, cli *s3.Client) error {
			var err error
			page, err = cli.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(b.Name), Prefix: aws.String(full), ContinuationToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, o := range page.Contents {
			k := aws.ToString(o.Key)
			out = append(out, Object{Rel: strings.TrimPrefix(k, full), Key: k, Size: aws.ToInt64(o.Size), ETag: strings.Trim(aws.ToString(o.ETag), `"`)})
		}
		if !aws.ToBool(page.IsTruncated) || page.NextContinuationToken == nil {
			return out, nil
		}
		token = page.NextContinuationToken
	}
}

// Meta is what S3 said about an object it returned.
type Meta struct {
	Size int64 // -1 when unknown
	ETag string
	// PlainMD5 is true when the ETag is the MD5 of the content (single-part upload without
	// SSE-KMS or SSE-C): only then can it verify the bytes.
	PlainMD5 bool
	// SHA256 is the object's full-object SHA-256 checksum as S3 stores it (hex), "" when the
	// object was uploaded without one (Head only).
	SHA256 string
}

// Get downloads key (relative to the prefix) and hands the body to consume, once per attempt:
// consume must start over each time it is called. ifNoneMatch, when set, makes an unchanged
// object answer ErrNotModified without a body.
func (b *Bucket) Get(ctx context.Context, key, ifNoneMatch string, consume func(body io.Reader, m Meta) error) error {
	return b.do(ctx, "GetObject", key, func(ctx context.Context, cli *s3.Client) error {
		in := &s3.GetObjectInput{Bucket: aws.String(b.Name), Key: aws.String(b.Prefix + key), ChecksumMode: types.ChecksumModeEnabled}
		if ifNoneMatch != "" {
			in.IfNoneMatch = aws.String(`"` + ifNoneMatch + `"`)
		}
		out, err := cli.GetObject(ctx, in)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		m := Meta{Size: -1, ETag: strings.Trim(aws.ToString(out.ETag), `"`)}
		if out.ContentLength != nil {
			m.Size = *out.ContentLength
		}
		m.PlainMD5 = isHexMD5(m.ETag) && out.ServerSideEncryption != types.ServerSideEncryptionAwsKms &&
			out.ServerSideEncryption != types.ServerSideEncryptionAwsKmsDsse && out.SSECustomerAlgorithm == nil
		return consume(out.Body, m)
	})
}

// Head asks S3 what it holds at key without the body, with checksum mode on: Meta.SHA256 is
// the object's full-object SHA-256 when the bucket stores one (uploaded with that checksum),
// and PlainMD5 says whether the ETag is the content's MD5. It costs one round trip, like a
// GET of a small object, but says as much about an object of any size.
func (b *Bucket) Head(ctx context.Context, key string) (Meta, error) {
	var m Meta
	err := b.do(ctx, "HeadObject", key, func(ctx context.Context, cli *s3.Client) error {
		out, err := cli.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.Name), Key: aws.String(b.Prefix + key), ChecksumMode: types.ChecksumModeEnabled})
		if err != nil {
			return err
		}
		m = Meta{Size: -1, ETag: strings.Trim(aws.ToString(out.ETag), `"`)}
		if out.ContentLength != nil {
			m.Size = *out.ContentLength
		}
		m.PlainMD5 = isHexMD5(m.ETag) && out.ServerSideEncryption != types.ServerSideEncryptionAwsKms &&
			out.ServerSideEncryption != types.ServerSideEncryptionAwsKmsDsse && out.SSECustomerAlgorithm == nil
		// A composite checksum (multipart, "...-N") is a checksum of part checksums, not of
		// the content: only a full-object one can be compared with a file's hash.
		if out.ChecksumType != types.ChecksumTypeComposite {
			m.SHA256 = decodeSHA256(aws.ToString(out.ChecksumSHA256))
		}
		return nil
	})
	return m, err
}

// GetBytes reads a small object whole.
func (b *Bucket) GetBytes(ctx context.Context, key string, max int64) ([]byte, error) {
	var data []byte
	err := b.Get(ctx, key, "", func(body io.Reader, m Meta) error {
		d, err := io.ReadAll(io.LimitReader(body, max+1))
		if err != nil {
			return err
		}
		if int64(len(d)) > max {
			return fmt.Errorf("object is larger than %d bytes", max)
		}
		if m.Size >= 0 && int64(len(d)) != m.Size {
			return &TruncatedError{Expected: m.Size, Got: int64(len(d))}
		}
		data = d
		return nil
	})
	return data, err
}

// Encryption is the server-side encryption asked for on upload.
type Encryption struct {
	SSE      string // "", "AES256" or "aws:kms"
	KMSKeyID string // with aws:kms; empty uses the bucket's or AWS's default key
}

// PutIfAbsent writes a small object only when none exists (If-None-Match: *). It returns
// ErrExists when another writer was first: nothing is ever overwritten.
func (b *Bucket) PutIfAbsent(ctx context.Context, key string, data []byte, enc ...Encryption) error {
	return b.PutIfMatch(ctx, key, data, "", enc...)
}

// PutIfMatch replaces a small object only while its ETag is still etag (If-Match), or creates
// it when etag is "" (If-None-Match: *): a read-modify-write that loses no concurrent update.
// It returns ErrExists when another writer changed the object first. Without enc, or with an
// enc whose SSE is "", the put carries the bucket's encryption (Options.Encryption), so no
// caller can forget it.
func (b *Bucket) PutIfMatch(ctx context.Context, key string, data []byte, etag string, enc ...Encryption) error {
	_, err := b.put(ctx, key, data, etag, enc...)
	return err
}

// Stored is what S3 said of an object it accepted.
type Stored struct {
	ETag   string // without quotes
	SHA256 string // hex: the checksum the answer echoed, "" when it echoed none
}

// Create is PutIfAbsent that also returns the put's answer. S3 stores the object only when its
// bytes match the SHA-256 the put carries and then echoes that checksum, so an answer that
// echoes the content's SHA-256 proves the bucket holds exactly these bytes, with no read-back.
func (b *Bucket) Create(ctx context.Context, key string, data []byte) (Stored, error) {
	return b.put(ctx, key, data, "")
}

func (b *Bucket) put(ctx context.Context, key string, data []byte, etag string, enc ...Encryption) (Stored, error) {
	if len(enc) == 0 || enc[0].SSE == "" {
		enc = []Encryption{b.enc}
	}
	sum := sha256.Sum256(data)
	var st Stored
	err := b.do(ctx, "PutObject", key, func(ctx context.Context, cli *s3.Client) error {
		in := &s3.PutObjectInput{
			Bucket: aws.String(b.Name),
			Key:    aws.String(b.Prefix + key),
			Body:   bytes.NewReader(data),
			// S3 refuses a body that does not match, and keeps the checksum: a later
			// HeadObject (checksum mode) can then compare the object with a local file by
			// SHA-256 without downloading it, whatever the encryption does to the ETag.
			ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(sum[:])),
		}
		if etag == "" {
			in.IfNoneMatch = aws.String("*")
		} else {
			in.IfMatch = aws.String(`"` + etag + `"`)
		}
		if len(enc) > 0 && enc[0].SSE != "" {
			in.ServerSideEncryption = types.ServerSideEncryption(enc[0].SSE)
			if enc[0].KMSKeyID != "" {
				in.SSEKMSKeyId = aws.String(enc[0].KMSKeyID)
			}
		}
		out, err := cli.PutObject(ctx, in)
		if err != nil {
			return err
		}
		st = Stored{ETag: strings.Trim(aws.ToString(out.ETag), `"`), SHA256: decodeSHA256(aws.ToString(out.ChecksumSHA256))}
		return nil
	})
	return st, err
}

// decodeSHA256 turns S3's base64 checksum into hex; a composite one ("...-N") or anything that
// is not 32 bytes is "", as it cannot be compared with a file's hash.
func decodeSHA256(c string) string {
	if c == "" || strings.Contains(c, "-") {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(c)
	if err != nil || len(raw) != sha256.Size {
		return ""
	}
	return hex.EncodeToString(raw)
}

func isHexMD5(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// TruncatedError is a body shorter or longer than its Content-Length, or than the size the
// listing gave (From says which; "" is Content-Length).
type TruncatedError struct {
	Expected, Got int64
	From          string
}

func (e *TruncatedError) Error() string {
	from := e.From
	if from == "" {
		from = "Content-Length"
	}
	if e.Expected < 0 {
		return fmt.Sprintf("body has %d bytes and nothing vouches for its size (%s); haagent retries, listing the object again", e.Got, from)
	}
	return fmt.Sprintf("body has %d bytes, %s said %d", e.Got, from, e.Expected)
}

// Unwrap makes a truncated body count as an unexpected EOF for classification.
func (e *TruncatedError) Unwrap() error { return io.ErrUnexpectedEOF }

// HashMismatchError is content that does not match what S3 said it is.
type HashMismatchError struct {
	Object, Algorithm, Expected, Actual string
}

func (e *HashMismatchError) Error() string {
	return fmt.Sprintf("%s of %s is %s, S3 said %s", e.Algorithm, e.Object, e.Actual, e.Expected)
}

package bucket_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// A bucket in another region answers 301 PermanentRedirect naming its region; haagent follows
// it instead of reporting a failure.
func TestRegionRedirectIsFollowed(t *testing.T) {
	f := peertest.StartFakeS3(t, "b", map[string][]byte{"settings.conf": []byte("{}")})
	var regions []string
	f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		// SigV4's credential scope names the region the client signed for.
		auth := r.Header.Get("Authorization")
		region := ""
		if i := strings.Index(auth, "Credential="); i >= 0 {
			parts := strings.Split(auth[i:], "/")
			if len(parts) > 2 {
				region = parts[2]
			}
		}
		regions = append(regions, region)
		if region != "eu-west-1" {
			w.Header().Set("X-Amz-Bucket-Region", "eu-west-1")
			peertest.S3Error(w, http.StatusMovedPermanently, "PermanentRedirect", "The bucket you are attempting to access must be addressed using the specified endpoint.")
			return true
		}
		return false
	})
	b := peertest.OpenBucket(t, f.URL, "a", "b", "b", 1, 5*time.Second)
	data, err := b.GetBytes(context.Background(), "settings.conf", 1024)
	if err != nil {
		t.Fatalf("the redirect was not followed: %v", err)
	}
	if string(data) != "{}" || b.Region() != "eu-west-1" {
		t.Fatalf("data %q region %s", data, b.Region())
	}
	if len(regions) != 2 || regions[0] != "us-east-1" {
		t.Fatalf("requests signed for %v, want us-east-1 then eu-west-1", regions)
	}
}

func TestProxyFuncNeverProxiesIMDS(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://proxy.internal:3128")
	t.Setenv("HTTP_PROXY", "http://proxy.internal:3128")
	t.Setenv("NO_PROXY", "")
	for target, proxied := range map[string]bool{
		"http://169.254.169.254/latest/api/token": false,
		"http://[fd00:ec2::254]/latest/api/token": false,
		"https://s3.us-east-1.amazonaws.com/b/k":  true,
	} {
		u, _ := url.Parse(target)
		p, err := bucket.ProxyFunc()(&http.Request{URL: u})
		if err != nil || (p != nil) != proxied {
			t.Errorf("%s: proxy %v (err %v), want proxied=%v", target, p, err, proxied)
		}
	}
}

func TestErrorsNameThePermission(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, "bkt")
	s.CreateUser(t, "norights", "norights-secret")
	b := peertest.OpenBucket(t, s.URL, "norights", "norights-secret", "bkt", 1, 5*time.Second)
	err := b.PutIfAbsent(context.Background(), "session-cookie-key", []byte("x"))
	var be *bucket.Error
	if !asError(err, &be) || be.Code() != findings.S3AccessDenied || !strings.Contains(be.Fix(), "s3:PutObject on arn:aws:s3:::bkt/session-cookie-key") {
		t.Fatalf("want S3_ACCESS_DENIED naming s3:PutObject, got %v", err)
	}
	_, err = b.List(context.Background(), "circleconfig/shared/")
	if !asError(err, &be) || !strings.Contains(be.Fix(), "s3:ListBucket on arn:aws:s3:::bkt") {
		t.Fatalf("want a fix naming s3:ListBucket, got %v", err)
	}
}

func asError(err error, target **bucket.Error) bool {
	e, ok := err.(*bucket.Error)
	if ok {
		*target = e
	}
	return ok
}

// haagent's puts carry the content's SHA-256, which S3 keeps; HeadObject in checksum mode
// gives it back, so a later comparison needs no download. An object uploaded without one has
// none to give, and a missing key is ErrNotFound.
func TestHeadGivesTheStoredChecksum(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, "bkt-head")
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, "bkt-head", 1, 5*time.Second)
	if err := b.PutIfAbsent(context.Background(), "k", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	m, err := b.Head(context.Background(), "k")
	if err != nil || m.SHA256 != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" || m.Size != 5 || !m.PlainMD5 || m.ETag != "5d41402abc4b2a76b9719d911017c592" {
		t.Fatalf("head of an object haagent put: %+v, %v", m, err)
	}
	s.Put(t, "bkt-head", "plain", []byte("hello"))
	if m, err := b.Head(context.Background(), "plain"); err != nil || m.SHA256 != "" {
		t.Fatalf("head of an object put without a checksum: %+v, %v", m, err)
	}
	if _, err := b.Head(context.Background(), "nope"); !errors.Is(err, bucket.ErrNotFound) {
		t.Fatalf("head of a missing key: %v, want ErrNotFound", err)
	}
}

// The read-back backup-keys no longer makes rests on two facts of the real store: a put whose
// body does not match its x-amz-checksum-sha256 is refused and stores nothing, and a put that
// is stored echoes the checksum, which Create returns with the ETag.
func TestPutChecksumIsVerifiedAndEchoed(t *testing.T) {
	s := peertest.StartS3(t)
	s.MakeBucket(t, "bkt-sum")
	cli := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(s.URL), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
	wrong := sha256.Sum256([]byte("not these bytes"))
	_, err := cli.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String("bkt-sum"), Key: aws.String("k"), Body: strings.NewReader("hello"),
		ChecksumSHA256: aws.String(base64.StdEncoding.EncodeToString(wrong[:])),
	})
	if err == nil {
		t.Fatal("versitygw stored a put whose body does not match its x-amz-checksum-sha256")
	}
	// S3's answer to it (and versitygw's): 400 BadDigest, not a signature or other failure.
	if !strings.Contains(err.Error(), "BadDigest") {
		t.Fatalf("the put was refused, but not for its checksum: %v", err)
	}
	if s.Object("bkt-sum", "k") != nil {
		t.Fatal("a refused put left an object behind")
	}
	b := peertest.OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, "bkt-sum", 1, 5*time.Second)
	st, err := b.Create(context.Background(), "k", []byte("hello"))
	if err != nil || st.SHA256 != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" || st.ETag != "5d41402abc4b2a76b9719d911017c592" {
		t.Fatalf("the put's answer: %+v, %v; want the content's SHA-256 echoed and its ETag", st, err)
	}
	if _, err := b.Create(context.Background(), "k", []byte("other")); !errors.Is(err, bucket.ErrExists) {
		t.Fatalf("a second Create: %v, want ErrExists", err)
	}
}

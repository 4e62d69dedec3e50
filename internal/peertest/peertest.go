// Package peertest starts the real servers the tests talk to (../shared/PEERS.md): versitygw
// for S3 and amazon-ec2-metadata-mock for IMDS, built by scripts/peers.sh into a cache outside
// the checkout. A missing peer fails the test in CI and skips it, with a message, elsewhere.
package peertest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/haagent/haagent/internal/bucket"
)

// Bin returns the path of a peer binary.
func Bin(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("HAAGENT_PEERS_BIN")
	if dir == "" {
		base := os.Getenv("HAAGENT_PEERS")
		if base == "" {
			base = "/tmp/haagent-peers"
		}
		dir = filepath.Join(base, "bin")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		Missing(t, fmt.Sprintf("peer %s not found at %s: run scripts/peers.sh build", name, p))
	}
	return p
}

// Missing fails in CI and skips elsewhere.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI must have every peer)", why)
	}
	t.Skipf("skipping: %s", why)
}

// FreePort returns a loopback port nothing listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ClosedPort returns a loopback port that refuses connections for the whole test: a socket is
// bound to it without listening (and without SO_REUSEADDR), so no other test's server can take
// it meanwhile, as one did to a port FreePort had handed out as "closed".
func ClosedPort(t testing.TB) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

// running maps each started command to a channel closed when it exits (reading
// cmd.ProcessState while Wait writes it would race).
var running sync.Map

func exited(cmd *exec.Cmd) bool {
	ch, ok := running.Load(cmd)
	if !ok {
		return false
	}
	select {
	case <-ch.(chan struct{}):
		return true
	default:
		return false
	}
}

// WaitListening polls until addr accepts connections or the process exits.
func WaitListening(t testing.TB, addr string, cmd *exec.Cmd, logf string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if exited(cmd) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(logf)
	t.Fatalf("%s never listened on %s; its log:\n%s", cmd.Path, addr, log)
}

func start(t testing.TB, cmd *exec.Cmd, logf string) {
	t.Helper()
	f, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	running.Store(cmd, done)
	go func() { cmd.Wait(); f.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
}

// S3 is a running versitygw.
type S3 struct {
	URL       string
	Dir       string // the posix root: a bucket is a directory, an object a file
	AccessKey string
	SecretKey string
	bin       string
	cmd       *exec.Cmd
	// uploaders are Upload's clients, one per bucket: building one loads the SDK's config.
	mu        sync.Mutex
	uploaders map[string]*bucket.Bucket
}

// StartS3 starts versitygw on a free loopback port.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	return startS3(t, nil)
}

// StartS3TLS starts versitygw serving HTTPS only, with a certificate for 127.0.0.1 and
// localhost issued by ca (an on-premises store, or a TLS-inspecting proxy, whose CA no system
// pool holds). URL is then https://127.0.0.1:PORT.
func StartS3TLS(t testing.TB, ca *CA) *S3 {
	t.Helper()
	return startS3(t, ca)
}

func startS3(t testing.TB, ca *CA) *S3 {
	t.Helper()
	bin := Bin(t, "versitygw")
	dir := t.TempDir()
	s := &S3{Dir: filepath.Join(dir, "data"), AccessKey: "test-root", SecretKey: "test-root-secret", bin: bin}
	os.MkdirAll(s.Dir, 0o755)
	os.MkdirAll(filepath.Join(dir, "iam"), 0o755)
	port := FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s.URL = "http://" + addr
	args := []string{"--port", addr, "--iam-dir", filepath.Join(dir, "iam")}
	if ca != nil {
		certPEM, keyPEM := ca.Issue(t, []string{"127.0.0.1", "localhost"}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
		certFile, keyFile := filepath.Join(dir, "s3.crt"), filepath.Join(dir, "s3.key")
		if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--cert", certFile, "--key", keyFile)
		s.URL = "https://" + addr
	}
	cmd := exec.Command(bin, append(args, "posix", s.Dir)...)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	logf := filepath.Join(dir, "versitygw.log")
	start(t, cmd, logf)
	WaitListening(t, addr, cmd, logf)
	s.cmd = cmd
	return s
}

// Stop kills the server and waits for it: S3 gives no answer at all from then on.
func (s *S3) Stop() {
	s.cmd.Process.Kill()
	if ch, ok := running.Load(s.cmd); ok {
		<-ch.(chan struct{})
	}
}

// MakeBucket creates an empty bucket.
func (s *S3) MakeBucket(t testing.TB, name string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(s.Dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Put writes an object directly into the backing directory.
func (s *S3) Put(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	p := filepath.Join(s.Dir, bucket, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Upload writes an object through the S3 API (PutObject), so versitygw keeps its ETag (the MD5
// of a single-part upload, as S3 gives it); Put's files written into the directory have none,
// and a store without ETags makes every comparison that relies on one fall back to content.
func (s *S3) Upload(t testing.TB, bucketName, key string, data []byte) {
	t.Helper()
	s.mu.Lock()
	b := s.uploaders[bucketName]
	if b == nil {
		b = OpenBucket(t, s.URL, s.AccessKey, s.SecretKey, bucketName, 1, 30*time.Second)
		if s.uploaders == nil {
			s.uploaders = map[string]*bucket.Bucket{}
		}
		s.uploaders[bucketName] = b
	}
	s.mu.Unlock()
	// Replacing: the put is conditional (If-None-Match), as haagent's own puts are.
	if err := os.Remove(filepath.Join(s.Dir, bucketName, key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err := b.PutIfAbsent(context.Background(), key, data); err != nil {
		t.Fatalf("uploading s3://%s/%s: %v", bucketName, key, err)
	}
}

// Delete removes an object from the backing directory.
func (s *S3) Delete(t testing.TB, bucket, key string) {
	t.Helper()
	if err := os.Remove(filepath.Join(s.Dir, bucket, key)); err != nil {
		t.Fatal(err)
	}
}

// Object reads an object from the backing directory; nil when absent.
func (s *S3) Object(bucket, key string) []byte {
	b, err := os.ReadFile(filepath.Join(s.Dir, bucket, key))
	if err != nil {
		return nil
	}
	return b
}

// CreateUser adds an account without rights on any bucket (requests answer AccessDenied).
func (s *S3) CreateUser(t testing.TB, access, secret string) {
	t.Helper()
	out, err := exec.Command(s.bin, "admin", "-a", s.AccessKey, "-s", s.SecretKey, "--er", s.URL,
		"create-user", "--access", access, "--secret", secret, "--role", "user").CombinedOutput()
	if err != nil {
		t.Fatalf("versitygw admin create-user: %v\n%s", err, out)
	}
}

// IMDS is a running amazon-ec2-metadata-mock in IMDSv2-only mode.
type IMDS struct {
	URL string
}

// Instance is what the mock serves.
type Instance struct {
	ID, LocalIPv4, Region string
	// PublicIPv4 is served as public-ipv4; empty serves an empty answer, the mock's way of
	// an instance without one (the real IMDS answers 404, which haagent takes the same way).
	PublicIPv4 string
	UserData   []byte
	// ASGGroup, when set, is served as the instance's aws:autoscaling:groupName tag (instance
	// metadata tags enabled); otherwise that tag answers 404.
	ASGGroup string
	// The primary network interface, served under network/interfaces/macs/MAC/ (the mock's
	// own defaults when empty): its MAC (also meta-data/mac), id, subnet, subnet CIDR, VPC and
	// local-ipv4s.
	MAC, InterfaceID, SubnetID, SubnetCIDR, VPCID, LocalIPv4s string
}

// StartIMDS starts the metadata mock on a free loopback port.
func StartIMDS(t testing.TB, in Instance) *IMDS {
	t.Helper()
	bin := Bin(t, "ec2-metadata-mock")
	dir := t.TempDir()
	cfg := map[string]any{
		"metadata": map[string]any{"values": map[string]any{"instance-id": in.ID, "local-ipv4": in.LocalIPv4,
			"public-ipv4": in.PublicIPv4, "placement-region": in.Region}},
		"dynamic": map[string]any{"values": map[string]any{"instance-identity-document": map[string]any{
			"instanceId": in.ID, "region": in.Region, "privateIp": in.LocalIPv4, "availabilityZone": in.Region + "a"}}},
		"userdata": map[string]any{"values": map[string]any{"userdata": base64.StdEncoding.EncodeToString(in.UserData)}},
	}
	vals := cfg["metadata"].(map[string]any)["values"].(map[string]any)
	for k, v := range map[string]string{"mac": in.MAC, "mac-network-interface-id": in.InterfaceID, "mac-subnet-id": in.SubnetID,
		"mac-subnet-ipv4-cidr-block": in.SubnetCIDR, "mac-vpc-id": in.VPCID, "mac-local-ipv4s": in.LocalIPv4s} {
		if v != "" {
			vals[k] = v
		}
	}
	if in.ASGGroup != "" {
		md := cfg["metadata"].(map[string]any)
		md["paths"] = map[string]any{"tags-instance-test": "/latest/meta-data/tags/instance/aws:autoscaling:groupName"}
		md["values"].(map[string]any)["tags-instance-test"] = in.ASGGroup
	}
	data, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644)
	port := FreePort(t)
	cmd := exec.Command(bin, "-n", "127.0.0.1", "-p", fmt.Sprint(port), "-I", "-c", filepath.Join(dir, "config.json"),
		"--asg-termination-delay-sec", "86400")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir)
	logf := filepath.Join(dir, "imds.log")
	start(t, cmd, logf)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	WaitListening(t, addr, cmd, logf)
	return &IMDS{URL: "http://" + addr}
}

// OpenBucket is a bucket client for a local S3 server with static credentials and no real
// backoff between attempts.
func OpenBucket(t testing.TB, url, access, secret, name string, attempts int, timeout time.Duration) *bucket.Bucket {
	t.Helper()
	b, err := bucket.New(context.Background(), bucket.Options{
		Name: name, Region: "us-east-1", Endpoint: url, PathStyle: true,
		Attempts: attempts, Timeout: timeout,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	b.SetBackoff(func(int) time.Duration { return time.Millisecond })
	return b
}

package peertest

// Injected S3 faults against gofakes3, in process (../shared/PEERS.md: versitygw cannot be made
// to fail on demand). The wrapper speaks real HTTP on a real socket; only the failures are
// made up.

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Fault decides, per object request, whether to misbehave; it returns true when it handled
// the request itself.
type Fault func(w http.ResponseWriter, r *http.Request, real http.Handler) bool

// FakeS3 is gofakes3 behind a fault-injecting handler.
type FakeS3 struct {
	URL     string
	Bucket  string
	backend *s3mem.Backend
	mu      sync.Mutex
	fault   Fault
	counts  map[string]int
}

// StartFakeS3 serves one bucket holding objs.
func StartFakeS3(t testing.TB, bucket string, objs map[string][]byte) *FakeS3 {
	t.Helper()
	f := &FakeS3{Bucket: bucket, backend: s3mem.New(), counts: map[string]int{}}
	if err := f.backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	for k, v := range objs {
		f.Put(t, k, v)
	}
	real := gofakes3.New(f.backend).Server()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimPrefix(r.URL.Path, "/"+bucket+"/")
		if key != r.URL.Path && key != "" {
			f.mu.Lock()
			f.counts[r.Method+" "+key]++
			fl := f.fault
			f.mu.Unlock()
			if fl != nil && fl(w, r, real) {
				return
			}
		}
		real.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// Put stores an object directly in the backend.
func (f *FakeS3) Put(t testing.TB, key string, data []byte) {
	t.Helper()
	if _, err := f.backend.PutObject(f.Bucket, key, map[string]string{}, bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
}

// Object reads an object from the backend; nil when absent.
func (f *FakeS3) Object(key string) []byte {
	o, err := f.backend.GetObject(f.Bucket, key, nil)
	if err != nil {
		return nil
	}
	defer o.Contents.Close()
	var b bytes.Buffer
	b.ReadFrom(o.Contents)
	return b.Bytes()
}

// SetFault installs (or, with nil, removes) the fault.
func (f *FakeS3) SetFault(fl Fault) { f.mu.Lock(); f.fault = fl; f.mu.Unlock() }

// DenyPuts answers every PUT with 403 AccessDenied, as a role without s3:PutObject gets.
func (f *FakeS3) DenyPuts() {
	f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if r.Method == http.MethodPut {
			S3Error(w, 403, "AccessDenied", "Access Denied")
			return true
		}
		return false
	})
}

// RequireSSE answers a PUT without the server-side encryption header sse (and, when kmsKey is
// set, that KMS key) with 403 AccessDenied, as a bucket policy with a
// s3:x-amz-server-side-encryption condition does. It returns the headers each PUT carried, by
// key, for the test to read once the puts are done.
func (f *FakeS3) RequireSSE(sse, kmsKey string) func() map[string]http.Header {
	var mu sync.Mutex
	seen := map[string]http.Header{}
	f.SetFault(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if r.Method != http.MethodPut {
			return false
		}
		mu.Lock()
		seen[strings.TrimPrefix(r.URL.Path, "/"+f.Bucket+"/")] = r.Header.Clone()
		mu.Unlock()
		if r.Header.Get("X-Amz-Server-Side-Encryption") != sse ||
			(kmsKey != "" && r.Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id") != kmsKey) {
			S3Error(w, 403, "AccessDenied", "Access Denied")
			return true
		}
		return false
	})
	return func() map[string]http.Header {
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

// Count is how many requests of method reached key.
func (f *FakeS3) Count(method, key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[method+" "+key]
}

// S3Error answers with an S3 error document.
func S3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>`, code, msg)
}

// Cut serves the real response's headers (with the full Content-Length) and the first n bytes
// of its body, then closes the connection, with a reset when reset is set.
func Cut(w http.ResponseWriter, r *http.Request, real http.Handler, n int, reset bool) {
	rec := httptest.NewRecorder()
	real.ServeHTTP(rec, r)
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	body := rec.Body.Bytes()
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", rec.Code, http.StatusText(rec.Code))
	for k, vs := range rec.Header() {
		for _, v := range vs {
			fmt.Fprintf(buf, "%s: %s\r\n", k, v)
		}
	}
	fmt.Fprintf(buf, "Content-Length: %d\r\n\r\n", len(body))
	buf.Write(body[:min(n, len(body))])
	buf.Flush()
	if reset {
		conn.(*net.TCPConn).SetLinger(0) // RST instead of FIN
	}
	conn.Close()
}

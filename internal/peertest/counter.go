package peertest

// A counting proxy in front of a real peer (versitygw, the IMDS mock): every request is passed
// on unchanged and recorded by kind, so a test can say how many round trips a boot costs
// without a clock. It is a reverse proxy, not the peer: the answers are the peer's own.

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one request seen by a Counter.
type Request struct {
	Kind string // S3: ListObjectsV2, GetObject, HeadObject, PutObject, or METHOD for others; IMDS: METHOD path
	Path string // the URL path (an S3 object's /bucket/key)
	// Prefix is a listing's prefix parameter (S3's ListObjectsV2), "" for other requests.
	Prefix string
	// Status is the peer's answer; 0 while unanswered or when the client went away first.
	// An answer of 5xx or 429 is what an SDK retries: a test of a healthy run's requests
	// can leave such an attempt out and count its retry.
	Status int
}

// Retried reports whether the peer's answer to r is one the SDK retries (5xx, 429 throttling).
func (r Request) Retried() bool { return r.Status >= 500 || r.Status == http.StatusTooManyRequests }

// statusWriter records the peer's status as it is written, before the client can see the
// answer: whoever read the answer finds its status recorded.
type statusWriter struct {
	http.ResponseWriter
	record func(status int)
	done   bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.done {
		w.done = true
		w.record(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Counter forwards to a peer and records what passes.
type Counter struct {
	URL  string
	mu   sync.Mutex
	reqs []Request
	gen  int // Resets so far
	kind func(*http.Request) string
	// gate holds the first requests of one kind until that many are in flight together.
	gate *gate
}

type gate struct {
	kind     string
	n, seen  int
	open     chan struct{}
	timedOut bool
}

// CountS3 starts a counting proxy in front of an S3 endpoint (path-style addressing).
func CountS3(t testing.TB, upstream string) *Counter {
	return startCounter(t, upstream, S3Kind)
}

// CountIMDS starts a counting proxy in front of an IMDS endpoint; each request counts as its
// method and path (PUT /latest/api/token, GET /latest/meta-data/instance-id).
func CountIMDS(t testing.TB, upstream string) *Counter {
	return startCounter(t, upstream, func(r *http.Request) string { return r.Method + " " + r.URL.Path })
}

// S3Kind names an S3 request by its API operation, as S3 tells them apart: a GET of a bucket
// with list-type=2 is ListObjectsV2, a GET of a key GetObject, and so on.
func S3Kind(r *http.Request) string {
	object := strings.Count(strings.Trim(r.URL.Path, "/"), "/") >= 1
	switch {
	case r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "2":
		return "ListObjectsV2"
	case r.Method == http.MethodGet && object:
		return "GetObject"
	case r.Method == http.MethodHead && object:
		return "HeadObject"
	case r.Method == http.MethodPut && object:
		return "PutObject"
	}
	return r.Method + " " + r.URL.Path
}

func startCounter(t testing.TB, upstream string, kind func(*http.Request) string) *Counter {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	c := &Counter{kind: kind}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		// SigV4 signs the Host header: it must reach the peer as the client sent it.
		r.Out.Host = r.In.Host
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := c.kind(r)
		c.mu.Lock()
		c.reqs = append(c.reqs, Request{Kind: k, Path: r.URL.Path, Prefix: r.URL.Query().Get("prefix")})
		idx, gen := len(c.reqs)-1, c.gen
		g := c.gate
		wait := g != nil && g.kind == k && g.seen < g.n
		if wait {
			if g.seen++; g.seen == g.n {
				close(g.open)
			}
		}
		c.mu.Unlock()
		if wait {
			select {
			case <-g.open:
			case <-time.After(10 * time.Second): // a guard only: a client that sends one at a time never opens it
				c.mu.Lock()
				g.timedOut = true
				c.mu.Unlock()
			}
		}
		rp.ServeHTTP(&statusWriter{ResponseWriter: w, record: func(status int) {
			c.mu.Lock()
			// A Reset meanwhile dropped the record: it is not another request's to fill in.
			if gen == c.gen {
				c.reqs[idx].Status = status
			}
			c.mu.Unlock()
		}}, r)
	}))
	t.Cleanup(srv.Close)
	c.URL = srv.URL
	return c
}

// Together holds the first n requests of kind until all n are in flight at once: a client that
// sends them one after another waits out the guard instead, and Apart reports it. It proves
// concurrency by what arrives, not by a clock.
func (c *Counter) Together(kind string, n int) {
	c.mu.Lock()
	c.gate = &gate{kind: kind, n: n, open: make(chan struct{})}
	c.mu.Unlock()
}

// Apart reports whether the requests Together waited for did not all arrive together.
func (c *Counter) Apart() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gate != nil && (c.gate.timedOut || c.gate.seen < c.gate.n)
}

// Requests returns what was seen since the last Reset.
func (c *Counter) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Request(nil), c.reqs...)
}

// Counts returns the number of requests of each kind since the last Reset.
func (c *Counter) Counts() map[string]int {
	out := map[string]int{}
	for _, r := range c.Requests() {
		out[r.Kind]++
	}
	return out
}

// PerPath returns, for one kind, the number of requests per path.
func (c *Counter) PerPath(kind string) map[string]int {
	out := map[string]int{}
	for _, r := range c.Requests() {
		if r.Kind == kind {
			out[r.Path]++
		}
	}
	return out
}

// Reset forgets what was seen.
func (c *Counter) Reset() {
	c.mu.Lock()
	c.reqs = nil
	c.gen++
	c.mu.Unlock()
}

// Unwrap lets the proxy flush through the writer (http.ResponseController).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

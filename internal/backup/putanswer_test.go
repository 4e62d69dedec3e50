package backup

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/peertest"
)

// answerProxy stands between haagent and versitygw and changes what versitygw answered: put
// rewrites a PutObject answer's headers, get (when set) answers a GetObject itself. It
// records the kinds of request that passed.
type answerProxy struct {
	URL  string
	put  func(h http.Header)
	get  func(w http.ResponseWriter) bool
	mu   sync.Mutex
	seen []string
}

func startAnswerProxy(t *testing.T, upstream string, put func(http.Header), get func(http.ResponseWriter) bool) *answerProxy {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &answerProxy{put: put, get: get}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		ModifyResponse: func(resp *http.Response) error {
			if peertest.S3Kind(resp.Request) == "PutObject" && resp.StatusCode == http.StatusOK {
				p.put(resp.Header)
			}
			return nil
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := peertest.S3Kind(r)
		p.mu.Lock()
		p.seen = append(p.seen, k)
		p.mu.Unlock()
		if k == "GetObject" && p.get != nil && p.get(w) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *answerProxy) count(kind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, k := range p.seen {
		if k == kind {
			n++
		}
	}
	return n
}

// A put is taken as the backup only when its answer echoes the key's SHA-256: an answer naming
// other contents is KEYS_NOT_BACKED_UP (and never Verified); an answer without a checksum, as
// some S3-compatible stores give, costs the read-back, and a read-back that fails is
// KEYS_NOT_BACKED_UP too.
func TestBackedUpOnlyWhenThePutAnswerEchoesTheKey(t *testing.T) {
	other := sha256.Sum256([]byte("some other bytes"))
	cases := []struct {
		name     string
		put      func(http.Header)
		get      func(http.ResponseWriter) bool
		backedUp bool
		gets     int
	}{
		{"echoes the key", func(http.Header) {}, nil, true, 0},
		{"echoes other contents", func(h http.Header) { h.Set("X-Amz-Checksum-Sha256", base64.StdEncoding.EncodeToString(other[:])) }, nil, false, 0},
		{"echoes nothing, reads back the same", func(h http.Header) { h.Del("X-Amz-Checksum-Sha256") }, nil, true, 1},
		{"echoes nothing, read-back fails", func(h http.Header) { h.Del("X-Amz-Checksum-Sha256") }, func(w http.ResponseWriter) bool {
			peertest.S3Error(w, http.StatusForbidden, "AccessDenied", "Access Denied")
			return true
		}, false, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := peertest.StartS3(t)
			s.MakeBucket(t, bkt)
			p := startAnswerProxy(t, s.URL, tc.put, tc.get)
			b := peertest.OpenBucket(t, p.URL, s.AccessKey, s.SecretKey, bkt, 1, 5*time.Second)
			root := keysRoot(t, map[string]string{"01-new.key": "key CircleCI just made"})
			res, err := Keys(context.Background(), b, opts(root))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.count("GetObject"); got != tc.gets {
				t.Errorf("%d GetObject, want %d", got, tc.gets)
			}
			if tc.backedUp {
				if strings.Join(res.Uploaded, ",") != "01-new.key" || len(res.Verified) != 1 || res.Verified[0].ETag == "" || len(res.Findings) != 0 {
					t.Fatalf("want the key uploaded and verified with its ETag: %+v", res)
				}
				return
			}
			if strings.Join(res.NotBackedUp, ",") != "01-new.key" || len(res.Uploaded) != 0 || len(res.Verified) != 0 ||
				len(res.Findings) != 1 || res.Findings[0].Code != findings.KeysNotBackedUp {
				t.Fatalf("want the key not backed up, one KEYS_NOT_BACKED_UP, nothing verified: %+v", res)
			}
			if strings.Contains(res.Findings[0].Summary+res.Findings[0].Evidence, "key CircleCI just made") {
				t.Fatal("the finding carries the key's contents")
			}
			if _, err := os.Stat(filepath.Join(root, local, "01-new.key")); err != nil {
				t.Fatal("the local key is gone")
			}
		})
	}
}

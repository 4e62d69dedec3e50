package peertest

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// The counter records each request's answer and a listing's prefix: a test of a healthy run's
// requests leaves out the attempts an SDK retries (5xx, 429) and tells listings apart.
func TestCounterRecordsAnswersAndPrefixes(t *testing.T) {
	n := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n++; n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(up.Close)
	c := CountS3(t, up.URL)
	for _, u := range []string{"/b/k", "/b/k", "/b?list-type=2&prefix=keys%2F"} {
		resp, err := http.Get(c.URL + u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	got := c.Requests()
	if len(got) != 3 || got[0].Status != 503 || !got[0].Retried() || got[1].Status != 200 || got[1].Retried() ||
		got[2].Kind != "ListObjectsV2" || got[2].Prefix != "keys/" || got[0].Prefix != "" {
		t.Fatalf("requests %+v", got)
	}
}

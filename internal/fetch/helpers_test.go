package fetch

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/peertest"
)

const testBucket = "circleci-ha"

func testLayout(t *testing.T) []config.Entry {
	t.Helper()
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: "+testBucket+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Layout
}

// examples returns the example bucket's objects: key -> content.
func examples(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	root := "../../examples/bucket"
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		b, err := os.ReadFile(p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func seed(t *testing.T, s *peertest.S3) map[string][]byte {
	t.Helper()
	s.MakeBucket(t, testBucket)
	objs := examples(t)
	for k, v := range objs {
		s.Put(t, testBucket, k, v)
	}
	return objs
}

func open(t *testing.T, url, access, secret, name string) *bucket.Bucket {
	return peertest.OpenBucket(t, url, access, secret, name, 4, 10*time.Second)
}

// destOf maps an example key to its destination under the default layout.
func destOf(key string) string {
	switch {
	case key == "settings.conf", key == "replicated.conf", key == "license.rli", key == "circle-installation-customizations":
		return "/etc/" + key
	case hasPrefix(key, "circleci-encryption-keys/"):
		return "/data/circle/" + key
	case hasPrefix(key, "circleconfig/"):
		return "/etc/" + key
	case hasPrefix(key, "ca-certificates/"):
		return "/var/lib/haagent/" + key
	}
	return ""
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

package fetch

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/peertest"
)

func entryNamed(t *testing.T, name string) config.Entry {
	t.Helper()
	for _, e := range testLayout(t) {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("no %s entry", name)
	return config.Entry{}
}

// The installation customizations are optional: absent from the bucket, they are neither a
// finding nor a file of the bundle; Stage then adds the file the merge made.
func TestOptionalObjectAbsentAndStaged(t *testing.T) {
	s := peertest.StartS3(t)
	seed(t, s)
	s.Delete(t, testBucket, "circle-installation-customizations")
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
	if err != nil {
		t.Fatalf("an absent optional object failed the fetch: %v", err)
	}
	e := entryNamed(t, "installation_customizations")
	if bd.Has(e.Dest) || len(bd.Findings) != 0 {
		t.Fatalf("an absent optional object is in the bundle or reported: %+v", bd.Findings)
	}
	changed, err := bd.Stage(e, []byte("export A=\"1\"\n"))
	if err != nil || !changed {
		t.Fatalf("Stage: changed=%v err=%v", changed, err)
	}
	if _, err := os.Stat(filepath.Join(root, e.Dest)); err == nil {
		t.Fatal("a staged file is in place before Commit")
	}
	if err := bd.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, e.Dest)); string(got) != "export A=\"1\"\n" {
		t.Fatalf("committed %q", got)
	}
	if f := bd.File(e.Dest); f == nil || len(f.SHA256) != 64 || f.Size != 13 {
		t.Fatalf("the staged file's record: %+v", f)
	}
}

// Stage replaces what was fetched; content equal to the file in place is not staged, and a
// discarded bundle leaves the file in place as it was.
func TestStageReplacesTheFetchedCopy(t *testing.T) {
	s := peertest.StartS3(t)
	objs := seed(t, s)
	root := t.TempDir()
	b := open(t, s.URL, s.AccessKey, s.SecretKey, testBucket)
	e := entryNamed(t, "installation_customizations")
	fetchStage := func(content string) (*Bundle, bool) {
		t.Helper()
		bd, err := Fetch(context.Background(), b, Options{Root: root, Layout: testLayout(t), Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(bd.PathOf(e.Dest)); string(got) != string(objs["circle-installation-customizations"]) {
			t.Fatal("the bundle does not bring the bucket's copy")
		}
		changed, err := bd.Stage(e, []byte(content))
		if err != nil {
			t.Fatal(err)
		}
		return bd, changed
	}
	merged := string(objs["circle-installation-customizations"]) + "export K=\"v\"\n"
	bd, changed := fetchStage(merged)
	if !changed || bd.Commit() != nil {
		t.Fatal("the merge was not staged and committed")
	}
	path := filepath.Join(root, e.Dest)
	fi1, _ := os.Stat(path)
	bd, changed = fetchStage(merged)
	if changed {
		t.Fatal("a merge equal to the file in place was staged")
	}
	bd.Commit()
	if fi2, _ := os.Stat(path); !os.SameFile(fi1, fi2) {
		t.Fatal("an unchanged file was rewritten")
	}
	bd, changed = fetchStage(merged + "# more\n")
	if !changed {
		t.Fatal("a changed merge was not staged")
	}
	bd.Discard()
	if got, _ := os.ReadFile(path); string(got) != merged {
		t.Fatal("a discarded bundle changed the file in place")
	}
}

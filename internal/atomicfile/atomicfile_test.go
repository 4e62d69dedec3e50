package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errors.New("connection reset")
	}
	r.n--
	return copy(p, "partial"), nil
}

func TestWriteSetsModeAndReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "secrets", "nested", "key")
	res, err := WriteFile(p, []byte("first"), Secret)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != 5 || len(res.SHA256) != 64 {
		t.Fatalf("result %+v", res)
	}
	for _, d := range []string{filepath.Join(dir, "secrets"), filepath.Join(dir, "secrets", "nested")} {
		fi, _ := os.Stat(d)
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: created with %#o, want 0700", d, fi.Mode().Perm())
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %#o", fi.Mode().Perm())
	}
	// A failed write leaves the previous file and no temp file.
	if _, err := Write(p, &failingReader{n: 2}, Secret); err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("want the reader's error, got %v", err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != "first" {
		t.Fatalf("a failed write changed the file: %q", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

// The temp file has its final mode before the first byte: a reader watching the directory
// never sees the content under a wider mode.
func TestModeIsSetBeforeTheFirstByte(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := Write(p, pr, Options{Mode: 0o640, DirMode: 0o700, UID: -1, GID: -1})
		done <- err
	}()
	pw.Write([]byte("x")) // returns once Write has started copying: the temp file exists
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || !strings.Contains(entries[0].Name(), ".haagent-") {
		t.Fatalf("want one temp file while writing, got %v", entries)
	}
	fi, _ := entries[0].Info()
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("temp file mode %#o while writing, want the final 0640", fi.Mode().Perm())
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestMkdirAllKeepsExistingModes(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	os.Mkdir(etc, 0o755)
	if err := MkdirAll(filepath.Join(etc, "circleconfig"), 0o700); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(etc)
	if fi.Mode().Perm() != 0o755 {
		t.Fatalf("an existing directory's mode changed to %#o", fi.Mode().Perm())
	}
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
	if err := MkdirAll(filepath.Join(dir, "file", "sub"), 0o700); err == nil {
		t.Fatal("a file in the way must be an error")
	}
}

func TestCommitAllMovesEveryFileAndCreatesDirectories(t *testing.T) {
	root := t.TempDir()
	stage := filepath.Join(root, "stage")
	var moves []Move
	for i, dest := range []string{"a/1", "a/2", "b/c/3"} {
		tmp, _, err := Stage(stage, filepath.Base(dest), strings.NewReader(fmt.Sprint(i)), Options{Mode: 0o600, DirMode: 0o700, UID: -1, GID: -1})
		if err != nil {
			t.Fatal(err)
		}
		moves = append(moves, Move{Staged: tmp, Path: filepath.Join(root, dest), DirMode: 0o700})
	}
	if err := CommitAll(moves); err != nil {
		t.Fatal(err)
	}
	for i, dest := range []string{"a/1", "a/2", "b/c/3"} {
		b, err := os.ReadFile(filepath.Join(root, dest))
		if err != nil || string(b) != fmt.Sprint(i) {
			t.Fatalf("%s: %q %v", dest, b, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "b/c")); fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v", fi.Mode().Perm())
	}
	if left, _ := os.ReadDir(stage); len(left) != 0 {
		t.Fatalf("left in the stage: %v", left)
	}
	// A staged file that is gone fails with the path named.
	if err := CommitAll([]Move{{Staged: filepath.Join(stage, "missing"), Path: filepath.Join(root, "x"), DirMode: 0o700}}); err == nil || !strings.Contains(err.Error(), filepath.Join(root, "x")) {
		t.Fatalf("missing staged file: %v", err)
	}
}

package atomicfile

import (
	"bytes"
	"path/filepath"
	"testing"
)

// BenchmarkWrite5MiB is the fetch's hot path for the largest object: hash while writing,
// fsync, rename.
func BenchmarkWrite5MiB(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 5<<16)
	p := filepath.Join(b.TempDir(), "license.rli")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Write(p, bytes.NewReader(data), Secret); err != nil {
			b.Fatal(err)
		}
	}
}

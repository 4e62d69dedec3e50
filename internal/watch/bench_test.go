package watch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

type nopSink struct{}

func (nopSink) Line(string, string, time.Time) {}

// BenchmarkPump forwards 1,000 framed log lines (Docker's multiplexed stream with timestamps),
// the work a chatty frontend costs haagent per 1,000 lines.
func BenchmarkPump(b *testing.B) {
	var stream bytes.Buffer
	t0 := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 1000; i++ {
		payload := fmt.Sprintf("%s frontend request %d handled in 12ms status=200 path=/api/v1/project\n", t0.Add(time.Duration(i)*time.Millisecond).Format(time.RFC3339Nano), i)
		hdr := [8]byte{1}
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(payload)))
		stream.Write(hdr[:])
		stream.WriteString(payload)
	}
	w := &Watcher{o: Options{Sink: nopSink{}}}
	b.SetBytes(int64(stream.Len()))
	b.ReportAllocs()
	for b.Loop() {
		w.pump(bytes.NewReader(stream.Bytes()), time.Time{}, 0)
	}
}

package watch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
)

// DefaultMarkEvery is how often the mark is saved while lines flow. It is also saved when
// Follow ends; a haagent killed outright forwards at most this much again after its restart.
const DefaultMarkEvery = 10 * time.Second

// MaxReplay bounds how far back a mark may send the next haagent: a mark older than this
// before the run started (haagent disabled for days, say) would replay a flood of old lines.
const MaxReplay = time.Hour

const markVersion = 1

// Mark is how far the forwarding got: the last line's timestamp and how many lines carried
// that exact timestamp (Docker's since= includes them, so they are skipped, not repeated).
type Mark struct {
	Version   int       `json:"version"`
	Container string    `json:"container"`
	Until     time.Time `json:"until"`
	AtUntil   int       `json:"lines_at_until"`
}

// start decides where Follow begins: at the mark the previous haagent left, so the lines
// printed while none ran (a reboot: dockerd starts the frontend before haagent's watch) are
// forwarded and none twice; else at from.
func (w *Watcher) start(from time.Time) (time.Time, int) {
	if w.o.MarkPath == "" {
		return from, 0
	}
	data, err := os.ReadFile(w.o.MarkPath)
	if errors.Is(err, fs.ErrNotExist) {
		return from, 0
	}
	var m Mark
	if err == nil {
		err = json.Unmarshal(data, &m)
	}
	if err == nil && (m.Version != markVersion || m.Until.IsZero()) {
		err = fmt.Errorf("version %d, until %s: not a mark this haagent wrote", m.Version, m.Until)
	}
	if err != nil {
		w.o.Log.Warn("cannot read where the log forwarding stopped; forwarding the frontend's lines from this run's start (earlier ones may be missing from the journal)",
			"path", w.o.MarkPath, "error", err.Error())
		return from, 0
	}
	if m.Container != w.o.Name {
		return from, 0
	}
	if !from.IsZero() && m.Until.Before(from.Add(-MaxReplay)) {
		w.o.Log.Warn(fmt.Sprintf("the log forwarding stopped long before this run; forwarding the %s lines from one hour before it; the rest: docker logs --since %s --until %s %s",
			w.o.Name, m.Until.Format(time.RFC3339Nano), from.Add(-MaxReplay).Format(time.RFC3339Nano), w.o.Name),
			"container", w.o.Name, "forwarded_until", m.Until.Format(time.RFC3339Nano))
		return from.Add(-MaxReplay), 0
	}
	return m.Until, m.AtUntil
}

// advance records the last forwarded line (called by the stream reader for every line).
func (w *Watcher) advance(last time.Time, dup int) {
	w.markMu.Lock()
	w.mark.Until, w.mark.AtUntil = last, dup
	w.markMu.Unlock()
}

// saveMark writes the mark if it moved since the last save.
func (w *Watcher) saveMark() {
	if w.o.MarkPath == "" {
		return
	}
	w.markMu.Lock()
	m := w.mark
	w.markMu.Unlock()
	if m.Until.IsZero() || m == w.saved {
		return
	}
	m.Version, m.Container = markVersion, w.o.Name
	data, _ := json.Marshal(m)
	if _, err := atomicfile.WriteFile(w.o.MarkPath, append(data, '\n'), atomicfile.Secret); err != nil {
		w.o.Log.Warn("cannot save where the log forwarding got; after a restart some frontend lines may be forwarded twice or missed",
			"path", w.o.MarkPath, "error", err.Error())
		return
	}
	w.saved = m
}

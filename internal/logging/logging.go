// Package logging builds haagent's slog logger: native journald entries with HAAGENT_* fields
// when systemd runs it (so `journalctl -u haagent HAAGENT_FINDING=PG_AUTH_FAILED` works), text
// on stderr otherwise.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// New returns the logger for this process. Journal output is used when stderr is connected to
// the journal (JOURNAL_STREAM, set by systemd) and the journal socket answers.
func New(w io.Writer, level slog.Level) *slog.Logger {
	if os.Getenv("JOURNAL_STREAM") != "" && journal.Enabled() {
		return slog.New(&JournalHandler{level: level, send: journal.Send})
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// JournalHandler sends each record as one journal entry; attributes become fields named
// HAAGENT_<KEY> (step -> HAAGENT_STEP, finding -> HAAGENT_FINDING).
type JournalHandler struct {
	level  slog.Level
	attrs  []slog.Attr
	groups []string
	send   func(string, journal.Priority, map[string]string) error
	mu     sync.Mutex
}

// Enabled implements slog.Handler.
func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

// Handle implements slog.Handler.
func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	vars := map[string]string{}
	var text strings.Builder
	text.WriteString(r.Message)
	add := func(a slog.Attr) {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return
		}
		key := FieldName(strings.Join(append(append([]string{}, h.groups...), a.Key), "_"))
		val := a.Value.String()
		vars[key] = val
		// Keep the message readable in plain `journalctl` too, where fields are not shown.
		fmt.Fprintf(&text, " %s=%s", a.Key, quoteIfNeeded(val))
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.send(text.String(), priority(r.Level), vars)
}

// WithAttrs implements slog.Handler.
func (h *JournalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &JournalHandler{level: h.level, send: h.send, groups: h.groups}
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return n
}

// WithGroup implements slog.Handler.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	return &JournalHandler{level: h.level, send: h.send, attrs: h.attrs, groups: append(append([]string{}, h.groups...), name)}
}

// FieldName maps an attribute key to a journal field name: upper case, [A-Z0-9_], prefixed.
func FieldName(key string) string {
	var b strings.Builder
	b.WriteString("HAAGENT_")
	for _, c := range strings.ToUpper(key) {
		if ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\"=") {
		return fmt.Sprintf("%q", s)
	}
	return s
}

// ContainerSink forwards a container's log lines: to the journal as entries of their own
// (CONTAINER_NAME=, stderr at warning priority) when under systemd, through the logger
// otherwise.
type ContainerSink struct {
	Name string
	Log  *slog.Logger
	send func(string, journal.Priority, map[string]string) error
}

// NewContainerSink picks the journal when stderr goes to it.
func NewContainerSink(name string, log *slog.Logger) *ContainerSink {
	s := &ContainerSink{Name: name, Log: log}
	if os.Getenv("JOURNAL_STREAM") != "" && journal.Enabled() {
		s.send = journal.Send
	}
	return s
}

// Line forwards one line.
func (s *ContainerSink) Line(stream, text string, ts time.Time) {
	if s.send != nil {
		pri := journal.PriInfo
		if stream == "stderr" {
			pri = journal.PriWarning
		}
		s.send(text, pri, map[string]string{"CONTAINER_NAME": s.Name, "HAAGENT_STREAM": stream,
			"HAAGENT_CONTAINER_TIME": ts.UTC().Format(time.RFC3339Nano)})
		return
	}
	level := slog.LevelInfo
	if stream == "stderr" {
		level = slog.LevelWarn
	}
	s.Log.Log(context.Background(), level, text, "container", s.Name, "stream", stream)
}

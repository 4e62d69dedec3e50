package logging

import (
	"log/slog"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/haagent/haagent/internal/findings"
)

func TestJournalHandlerFields(t *testing.T) {
	type entry struct {
		msg  string
		pri  journal.Priority
		vars map[string]string
	}
	var got []entry
	h := &JournalHandler{level: slog.LevelInfo, send: func(m string, p journal.Priority, v map[string]string) error {
		got = append(got, entry{m, p, v})
		return nil
	}}
	log := slog.New(h).With("step", "fetch")
	log.Error("S3_ACCESS_DENIED: cannot list", "finding", findings.S3AccessDenied, "target", "s3://b/k")
	log.Debug("dropped")
	log.Warn("w", "some-key.x", 1)
	if len(got) != 2 {
		t.Fatalf("%d entries, want 2 (debug is below the level)", len(got))
	}
	e := got[0]
	if e.pri != journal.PriErr || e.vars["HAAGENT_STEP"] != "fetch" || e.vars["HAAGENT_FINDING"] != findings.S3AccessDenied.String() || e.vars["HAAGENT_TARGET"] != "s3://b/k" {
		t.Fatalf("entry %+v", e)
	}
	if e.msg != "S3_ACCESS_DENIED: cannot list step=fetch finding=S3_ACCESS_DENIED target=s3://b/k" {
		t.Fatalf("message %q", e.msg)
	}
	if got[1].pri != journal.PriWarning || got[1].vars["HAAGENT_SOME_KEY_X"] != "1" {
		t.Fatalf("entry %+v", got[1])
	}
}

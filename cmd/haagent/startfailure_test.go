package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/lock"
)

// A start that fails before it can record a run (the lock held by another haagent, with a
// valid config or an invalid one) is shown by `status --wait`, which otherwise shows nothing;
// an unreadable record ends the wait at once with what is wrong with it.
func TestStatusWaitSaysWhyHaagentCouldNotStart(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"lock held", "", "another haagent is running"},
		{"invalid config, lock held", "bogus_field: 1\n", "bogus_field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "i-0startfail000000")
			if tc.extra != "" {
				w.writeConfig(w.s3.URL, tc.extra)
			}
			l, err := lock.Acquire(filepath.Join(w.root, layout.LockFile))
			if err != nil {
				t.Fatal(err)
			}
			r := w.run("run")
			l.Release()
			if r.code == 0 {
				t.Fatalf("run with the lock held: exit 0\n%s", r.stderr)
			}
			st := w.run("status", "--wait", "--timeout", "1500ms")
			if st.code != 1 || !strings.Contains(st.stderr, "haagent could not start") || !strings.Contains(st.stderr, tc.want) {
				t.Fatalf("status --wait must say why haagent could not start: exit %d\n%s%s", st.code, st.stdout, st.stderr)
			}
		})
	}
	t.Run("corrupt record", func(t *testing.T) {
		w := newWorld(t, "i-0startfail000001")
		if err := os.MkdirAll(filepath.Dir(filepath.Join(w.root, layout.StateFile)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(w.root, layout.StateFile), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := w.run("run"); r.code == 0 {
			t.Fatalf("run over a corrupt record: exit 0\n%s", r.stderr)
		}
		st := w.run("status", "--wait")
		if st.code != 1 || !strings.Contains(st.stderr, "is corrupt") {
			t.Fatalf("status --wait over a corrupt record: exit %d\n%s%s", st.code, st.stdout, st.stderr)
		}
	})
}

package replicated

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/layout"
)

// The install marker is read in one place: which instance installed here, and with which
// settings.conf, decide every step's question (evidence of a deployment, drift, once per
// instance).
func TestInstallIsTheOneReadingOfTheMarker(t *testing.T) {
	root := t.TempDir()
	none := ReadInstall(root)
	if none.On("i-1") || none.Evidence() != "" || none.SettingsDrift("i-1", "abc") {
		t.Fatalf("no marker reads as an install: %+v", none)
	}
	p := filepath.Join(root, layout.InstallMarker)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(`{"instance_id":"i-1","installer_sha256":"x","exit_code":0,"time":"2026-01-01T00:00:00Z","settings_sha256":"abc"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	in := ReadInstall(root)
	for _, tc := range []struct {
		name string
		got  bool
		want bool
	}{
		{"installed on this instance", in.On("i-1"), true},
		{"not on another instance", in.On("i-2"), false},
		{"the same settings are no drift", in.SettingsDrift("i-1", "abc"), false},
		{"other settings drift on this instance", in.SettingsDrift("i-1", "def"), true},
		{"another instance's install is no drift of this one", in.SettingsDrift("i-2", "def"), false},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v", tc.name, tc.got)
		}
	}
	if ev := in.Evidence(); !strings.Contains(ev, "i-1") || !strings.Contains(ev, layout.InstallMarker) {
		t.Errorf("evidence %q names neither the instance nor the marker", ev)
	}
	if err := os.WriteFile(p, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ReadInstall(root).On("i-1") {
		t.Error("an unreadable marker reads as an install")
	}
}

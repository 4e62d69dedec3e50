package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// machineDirs are the top-level directories of a machine's own files: a string that starts
// with one of them names a file of the machine, and only this package may declare one.
var machineDirs = []string{"etc", "var", "usr", "data", "opt", "run", "srv", "bin", "sbin", "lib", "home", "root", "tmp", "mnt"}

// exempt are the packages allowed to name machine paths, and why.
var exempt = map[string]string{
	"internal/layout": "the layout itself",
	// Test harness: the paths of the machine the tests run on (Debian's PostgreSQL binaries,
	// the peers' cache, /tmp), never of a Services machine.
	"internal/peertest": "the test harness's own machine",
}

// machinePath reports whether s names a file of the machine: absolute, or relative to a root
// in the form filepath.Join(root, "etc/group") takes (a top directory and more). /proc is not
// one: it is the kernel's interface (the boot id, a process's state), the same on every machine.
func machinePath(s string) bool {
	rest, abs := strings.CutPrefix(s, "/")
	top, below, sub := strings.Cut(rest, "/")
	if !abs && (!sub || below == "" || strings.ContainsAny(s, " %")) {
		return false
	}
	for _, d := range machineDirs {
		if top == d {
			return true
		}
	}
	return false
}

// Every machine path is the layout's: no package under internal/ (nor cmd/) other than this
// one declares or writes a string literal naming one, in a constant, a variable or an
// expression, so a file cannot move in one package and stay behind in another. Tests may
// (they build trees under t.TempDir()).
func TestNoMachinePathOutsideTheLayout(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var scanned int
	for _, top := range []string{"internal", "cmd"} {
		err := filepath.WalkDir(filepath.Join(repo, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(repo, p)
			if d.IsDir() {
				if _, ok := exempt[filepath.ToSlash(rel)]; ok || d.Name() == "testdata" {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			scanned++
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err == nil && machinePath(s) {
					t.Errorf("%s: %q is a machine path: declare it in internal/layout (a fixed path) or take it from the config's layout (a fetched file's destination)",
						fset.Position(lit.Pos()), s)
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if scanned < 50 {
		t.Fatalf("scanned only %d files: is the test run from internal/layout?", scanned)
	}
}

// The scan's own rule, on the cases it must tell apart.
func TestMachinePath(t *testing.T) {
	for s, want := range map[string]bool{
		"/etc/settings.conf": true, "/var/lib/haagent/state.json": true, "/etc": true, "/usr/local/bin/replicatedctl": true,
		"/proc/sys/kernel/random/boot_id": false, "/": false, "circleconfig/shared": false, "ca-certificates/db/ca.pem": false,
		"/latest/meta-data/public-ipv4": false, "/v1/sys/health": false, "/host/etc": false,
		"etc/group": true, "usr/local/share/ca-certificates": true, "data/": false, "etc": false, "run/%s": false,
	} {
		if machinePath(s) != want {
			t.Errorf("machinePath(%q) = %v, want %v", s, !want, want)
		}
	}
}

// Each default entry that another program reads at one path says why it cannot move, and
// each that must stay in a directory says where: config validation enforces both.
func TestDefaultsSayWhatIsFixed(t *testing.T) {
	for _, e := range Defaults() {
		switch e.Name {
		case Replicated, CircleConfig, InstallationCustomizations:
			if e.Fixed == "" {
				t.Errorf("%s: CircleCI or Replicated reads it at %s only, but the entry is not Fixed", e.Name, e.Dest)
			}
		case Settings, License:
			if e.Within != ReplicatedHostMount || e.WithinWhy == "" {
				t.Errorf("%s: the Replicated daemon sees only %s, but the entry may leave it", e.Name, ReplicatedHostMount)
			}
		}
		if !strings.HasPrefix(e.Dest, "/") || (e.Recursive != strings.HasSuffix(e.Dest, "/")) {
			t.Errorf("%s: dest %q must be absolute, with a trailing slash exactly when it is a directory", e.Name, e.Dest)
		}
	}
	l := New(t.TempDir(), nil)
	if l.SharedDir() != "/etc/circleconfig/shared" || l.InstallationCustomizations() != "/etc/circle-installation-customizations" || l.ReplicatedConf() != "/etc/replicated.conf" {
		t.Fatalf("the default layout moved a path CircleCI or Replicated fixes: %s %s %s", l.SharedDir(), l.InstallationCustomizations(), l.ReplicatedConf())
	}
	if got := l.Path(l.SettingsConf()); got != filepath.Join(l.Root, "etc/settings.conf") {
		t.Fatalf("Path = %s", got)
	}
}

package replicated

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// The finding's fix follows the question the script gave up at, as its last lines name it
// (the messages of docker.sh's _dockerProceedAnyway and checkDockerStorageDriver).
func TestNothingInstalledFix(t *testing.T) {
	for _, tc := range []struct{ tail, want string }{
		{"The installed version of Docker (20.10.24) may not be compatible with this installer. | The recommended version is 18.09.9 | Do you want to proceed anyway? (y/N)",
			"install the Docker it recommends (18.09.9)"},
		{"The running Docker daemon is configured to use the 'devicemapper' storage driver in loopback mode. | Do you want to proceed anyway? (y/N)",
			"overlay2 storage driver"},
		{"something else", findings.InstallerNothingInstalled.Entry().Fix},
	} {
		err := Options{URL: "https://get.replicated.com/docker"}.nothingInstalled(&errNotInstalled{what: "not installed: replicated.service"}, tc.tail)
		var fail *findings.Failure
		if !errors.As(err, &fail) || fail.Findings[0].Code != findings.InstallerNothingInstalled || !strings.Contains(fail.Findings[0].Fix, tc.want) ||
			!strings.Contains(fail.Findings[0].Evidence, tc.tail) || !fail.Findings[0].Blocking {
			t.Errorf("tail %q: %+v", tc.tail, err)
		}
	}
}

// fakeSystemd answers `systemctl show -p LoadState -p ActiveState UNIT` the way systemctl
// prints it, from a table: units absent from it are not-found (no systemd runs outside the
// nspawn boot test). It returns the fake's argv.
func fakeSystemd(t *testing.T, units map[string]string) []string {
	t.Helper()
	var arms strings.Builder
	for u, active := range units {
		fmt.Fprintf(&arms, "    *' %s') printf 'LoadState=loaded\\nActiveState=%s\\nResult=success\\nExecMainStatus=0\\n' ;;\n", u, active)
	}
	script := "#!/bin/sh\ncase \" $*\" in\n" + arms.String() + "    *) printf 'LoadState=not-found\\nActiveState=inactive\\nResult=success\\nExecMainStatus=0\\n' ;;\nesac\n"
	p := filepath.Join(t.TempDir(), "systemctl")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{p}
}

// replicatedctlAnswering puts a replicatedctl under root that prints out (and exits code).
func replicatedctlAnswering(t *testing.T, out string, code int) string {
	t.Helper()
	root := t.TempDir()
	p := filepath.Join(root, layout.Replicatedctl)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' '%s'\nexit %d\n", out, code)), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func withCommands(t *testing.T, systemctl []string) {
	oldS, oldJ, oldE := Systemctl, Journalctl, verifyEvery
	Systemctl, Journalctl, verifyEvery = systemctl, []string{"true"}, 10*time.Millisecond
	t.Cleanup(func() { Systemctl, Journalctl, verifyEvery = oldS, oldJ, oldE })
}

// The real script writes no replicated-ui.service with disable-replicated-ui
// (write_systemd_services) and installs no operator with no-operator: verify expects the units
// the arguments leave, and a Replicated installed that way is installed.
func TestVerifyExpectsTheUnitsOfTheArguments(t *testing.T) {
	withCommands(t, fakeSystemd(t, map[string]string{"replicated": "active"}))
	root := replicatedctlAnswering(t, `[{"AppID":"a","State":"stopped","DesiredState":"started","IsTransitioning":true}]`, 0)
	o := Options{Root: root, Systemd: true, VerifyTimeout: time.Second, Log: slog.Default()}
	for _, args := range [][]string{{"disable-replicated-ui", "no-operator"}, {"disable_replicated_ui", "no_operator", "release-sequence=3"}} {
		o.ExtraArgs = args
		if state, err := verify(context.Background(), o); err != nil || state != "stopped (transitioning)" {
			t.Errorf("%v: state %q, %v", args, state, err)
		}
	}
	o.ExtraArgs = []string{"no-operator"}
	if _, err := verify(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not installed: replicated-ui.service") {
		t.Errorf("without disable-replicated-ui the -ui unit is required: %v", err)
	}
	if got := strings.Join(ExpectedServices(nil), ","); got != "replicated,replicated-ui,replicated-operator" {
		t.Errorf("default units: %s", got)
	}
	// A script get.replicated.com rendered for ?disable_replicated_ui (its default set to "1")
	// writes no -ui unit whatever the arguments.
	script := filepath.Join(root, layout.InstallerScript)
	os.MkdirAll(filepath.Dir(script), 0o700)
	os.WriteFile(script, []byte("#!/bin/bash\nAIRGAP=0\nDISABLE_REPLICATED_UI=\"1\"\n"), 0o700)
	o.ExtraArgs = nil
	if _, err := verify(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not installed: replicated-operator.service") ||
		strings.Contains(err.Error(), "replicated-ui") {
		t.Errorf("a script rendered with the UI disabled: %v", err)
	}
}

// The daemon lists the app only once it has activated the licence (over the network): an
// empty list is an answering Replicated, left to the watch step.
func TestVerifyTakesAnEmptyAppList(t *testing.T) {
	root := replicatedctlAnswering(t, "[]", 0)
	state, err := verify(context.Background(), Options{Root: root, VerifyTimeout: time.Second, Log: slog.Default()})
	if err != nil || state != NoAppState {
		t.Fatalf("state %q, %v", state, err)
	}
	if _, err := ParseAppStatus([]byte("[]")); !errors.Is(err, ErrNoApp) {
		t.Fatalf("an empty list is ErrNoApp, got %v", err)
	}
}

// An installer that exited 0 and left Replicated's units, with a daemon slow to answer, is not
// run again (it would stop that Replicated each attempt): the recorded exit is kept and the
// next attempt only verifies again. The URL leads nowhere: a rerun would fail to download.
func TestEnsureDoesNotRerunOverInstalledUnits(t *testing.T) {
	withCommands(t, fakeSystemd(t, map[string]string{"replicated": "active", "replicated-ui": "active", "replicated-operator": "active"}))
	root := replicatedctlAnswering(t, "Error: dial unix /var/run/replicated/replicated-cli.sock: connect: no such file", 1)
	exit := filepath.Join(root, layout.InstallerExit)
	os.MkdirAll(filepath.Dir(exit), 0o700)
	if err := os.WriteFile(exit, []byte("0 i-0slow\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{Root: root, URL: "https://127.0.0.1:1/install.sh", SHA256: strings.Repeat("a", 64), Systemd: true, VerifyTimeout: 50 * time.Millisecond,
		InstanceID: "i-0slow", Log: slog.Default(), Timeout: time.Minute}
	for attempt := 1; attempt <= 2; attempt++ {
		res, err := Ensure(context.Background(), o)
		var fail *findings.Failure
		if !errors.As(err, &fail) || fail.Findings[0].Code != findings.InstallerNothingInstalled || res.Ran ||
			!strings.Contains(fail.Findings[0].Summary, "installed Replicated's units, but replicatedctl did not answer") ||
			!strings.Contains(fail.Findings[0].Fix, "without re-running the installer") {
			t.Fatalf("attempt %d: ran %v, %v", attempt, res.Ran, err)
		}
		if _, err := os.Stat(exit); err != nil {
			t.Fatalf("attempt %d: the installer's recorded exit was dropped, so the next attempt reruns it", attempt)
		}
	}
}

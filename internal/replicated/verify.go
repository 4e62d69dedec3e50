package replicated

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// replicatedctl is the installer's wrapper (cli-script.sh) that runs `docker exec replicated
// replicatedctl ...`, so it answers only while the daemon's container runs; it lives at
// layout.Replicatedctl.

// DefaultVerifyTimeout bounds the wait for the daemon to answer once the installer exited 0:
// its container starts within seconds, not the application (that is what the watch waits for).
const DefaultVerifyTimeout = 3 * time.Minute

// verifyEvery is how often verify asks again while the daemon starts.
var verifyEvery = 2 * time.Second

// NoAppState is the state verify reports when Replicated answers but lists no app yet.
const NoAppState = "no application yet (licence not activated yet)"

// errNotInstalled is what verify found missing. unitsPresent is true when Replicated's
// units and replicatedctl are there but the daemon did not answer in time: the installer did
// install, so it is not run again (see Ensure).
type errNotInstalled struct {
	what         string
	unitsPresent bool
}

func (e *errNotInstalled) Error() string { return e.what }

// verify checks that the installer really installed Replicated: the units it writes for
// these arguments are active (under systemd; --root runs have none to ask) and `replicatedctl
// app status inspect` answers with JSON. Answering is enough, an empty list too: the daemon
// lists the app only once it has activated the licence, and the app itself takes many
// minutes to reach "started"; that is what the watch step waits for. A unit that does not exist or no replicatedctl
// fails at once (nothing will appear later); a unit still starting or a daemon not yet
// answering is asked again until VerifyTimeout. It returns the app's state as reported.
func verify(ctx context.Context, o Options) (string, error) {
	timeout := o.VerifyTimeout
	if timeout <= 0 {
		timeout = DefaultVerifyTimeout
	}
	deadline := time.Now().Add(timeout)
	ctl := filepath.Join(o.Root, layout.Replicatedctl)
	for {
		var missing []string
		inactive := ""
		if o.Systemd {
			for _, svc := range o.services() {
				p, err := showUnit(ctx, svc)
				if err != nil {
					return "", err
				}
				switch {
				case p["LoadState"] == "not-found":
					missing = append(missing, svc+".service")
				case p["ActiveState"] != "active" && inactive == "":
					inactive = fmt.Sprintf("%s.service is %s", svc, p["ActiveState"])
				}
			}
		}
		if _, err := os.Stat(ctl); err != nil {
			missing = append(missing, layout.Replicatedctl)
		}
		if len(missing) > 0 {
			return "", &errNotInstalled{what: "not installed: " + strings.Join(missing, ", ")}
		}
		why := inactive
		if why == "" {
			state, err := appStatus(ctx, o.Root)
			if err == nil {
				return state, nil
			}
			why = err.Error()
		}
		if time.Now().After(deadline) {
			return "", &errNotInstalled{what: fmt.Sprintf("after %s: %s", timeout, why), unitsPresent: true}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(verifyEvery):
		}
	}
}

// services are the units the installer kept under root leaves for o's arguments.
func (o Options) services() []string {
	script, _ := os.ReadFile(filepath.Join(o.Root, layout.InstallerScript))
	return ServicesFor(script, o.ExtraArgs)
}

// appStatus is the app's state in words, from ReadAppStatus.
func appStatus(ctx context.Context, root string) (string, error) {
	app, err := ReadAppStatus(ctx, root, 30*time.Second)
	if errors.Is(err, ErrNoApp) {
		return NoAppState, nil
	}
	if err != nil {
		return "", err
	}
	if app.State == "" {
		return "", fmt.Errorf("%s app status inspect answered no State, not an app status", layout.Replicatedctl)
	}
	state := app.State
	if app.IsTransitioning {
		state += " (transitioning)"
	}
	return state, nil
}

// showUnit reads a unit's properties (systemctl show -p ...), by default LoadState and
// ActiveState.
func showUnit(ctx context.Context, unit string, props ...string) (map[string]string, error) {
	if len(props) == 0 {
		props = []string{"LoadState", "ActiveState"}
	}
	argv := append(append([]string{}, Systemctl...), "show")
	for _, p := range props {
		argv = append(argv, "-p", p)
	}
	argv = append(argv, unit)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	got := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			got[k] = v
		}
	}
	return got, nil
}

// What the real script prints before its exits 0 that install nothing (docker.sh).
var (
	recommendedDockerRE = regexp.MustCompile(`The recommended version is (\S+)`)
	loopbackRE          = regexp.MustCompile(`'devicemapper' storage driver\s*in loopback mode`)
)

// nothingInstalled is the finding for an installer that exited 0 without a running
// Replicated, with the fix its last lines point to.
func (o Options) nothingInstalled(err error, tail string) error {
	var ni *errNotInstalled
	if !errors.As(err, &ni) {
		return fmt.Errorf("verifying the Replicated install: %w", err)
	}
	f := findings.New(findings.InstallerNothingInstalled, redactLine(o.URL, ""),
		"the Replicated installer exited 0 but Replicated is not running ("+ni.what+"); the install-complete marker was not written",
		"last lines: "+tail)
	switch m := recommendedDockerRE.FindStringSubmatch(tail); {
	case ni.unitsPresent:
		f.Summary = "the Replicated installer exited 0 and installed Replicated's units, but replicatedctl did not answer (" + ni.what + "); the install-complete marker was not written"
		f = f.WithFix("read the daemon's log (journalctl -u replicated; docker logs replicated): haagent checks again on its next attempt without re-running the installer (haagent run --reinstall reruns it)")
	case m != nil:
		f = f.WithFix(fmt.Sprintf("the installer stopped at its Docker version question (\"Do you want to proceed anyway?\", answered no without a terminal): "+
			"install the Docker it recommends (%s) and hold it (apt-mark hold), or bake a pinned Docker into the AMI (packer variable docker_version) so haagent passes no-docker", m[1]))
	case loopbackRE.MatchString(tail):
		f = f.WithFix("the installer stopped at its devicemapper-in-loopback question: configure Docker with the overlay2 storage driver (/etc/docker/daemon.json) and bake it into the AMI, so haagent passes no-docker")
	}
	return &findings.Failure{Findings: []findings.Finding{f}}
}

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
)

// ReplicatedctlPath is where the installer writes replicatedctl (cli-script.sh: a wrapper
// that runs `docker exec replicated replicatedctl ...`, so it answers only while the daemon's
// container runs).
const ReplicatedctlPath = "/usr/local/bin/replicatedctl"

// DefaultVerifyTimeout bounds the wait for the daemon to answer once the installer exited 0:
// its container starts within seconds, not the application (that is what the watch waits for).
const DefaultVerifyTimeout = 3 * time.Minute

// verifyEvery is how often verify asks again while the daemon starts.
var verifyEvery = 2 * time.Second

// errNotInstalled is what verify found missing.
type errNotInstalled struct{ what string }

func (e *errNotInstalled) Error() string { return e.what }

// verify checks that the installer really installed Replicated: its three units are active
// (under systemd; --root runs have none to ask) and `replicatedctl app status inspect`
// answers. Answering is enough: the app itself takes many minutes to reach "started", and
// that is what the watch step waits for. A unit that does not exist or no replicatedctl
// fails at once (nothing will appear later); a unit still starting or a daemon not yet
// answering is asked again until VerifyTimeout. It returns the app's state as reported.
func verify(ctx context.Context, o Options) (string, error) {
	timeout := o.VerifyTimeout
	if timeout <= 0 {
		timeout = DefaultVerifyTimeout
	}
	deadline := time.Now().Add(timeout)
	ctl := filepath.Join(o.Root, ReplicatedctlPath)
	for {
		var missing []string
		inactive := ""
		if o.Systemd {
			for _, svc := range Services {
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
			missing = append(missing, ReplicatedctlPath)
		}
		if len(missing) > 0 {
			return "", &errNotInstalled{"not installed: " + strings.Join(missing, ", ")}
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
			return "", &errNotInstalled{fmt.Sprintf("after %s: %s", timeout, why)}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(verifyEvery):
		}
	}
}

// appStatus is the app's state in words, from ReadAppStatus.
func appStatus(ctx context.Context, root string) (string, error) {
	app, err := ReadAppStatus(ctx, root, 30*time.Second)
	if err != nil {
		return "", err
	}
	if app.State == "" {
		return "", fmt.Errorf("%s app status inspect answered no State, not an app status", ReplicatedctlPath)
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
	f := findings.New("INSTALLER_NOTHING_INSTALLED", redactLine(o.URL, ""),
		"the Replicated installer exited 0 but Replicated is not running ("+ni.what+"); the install-complete marker was not written",
		"last lines: "+tail)
	switch m := recommendedDockerRE.FindStringSubmatch(tail); {
	case m != nil:
		f = f.WithFix(fmt.Sprintf("the installer stopped at its Docker version question (\"Do you want to proceed anyway?\", answered no without a terminal): "+
			"install the Docker it recommends (%s) and hold it (apt-mark hold), or bake a pinned Docker into the AMI (packer variable docker_version) so haagent passes no-docker", m[1]))
	case loopbackRE.MatchString(tail):
		f = f.WithFix("the installer stopped at its devicemapper-in-loopback question: configure Docker with the overlay2 storage driver (/etc/docker/daemon.json) and bake it into the AMI, so haagent passes no-docker")
	}
	return &findings.Failure{Findings: []findings.Finding{f}}
}

package replicated

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/haagent/haagent/internal/layout"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// AppStatus is the part of `replicatedctl app status inspect` haagent reads. Its answer is a
// JSON array with one object per app (CircleCI Server 2.x docs, "updating the Replicated
// version": AppID, Sequence, State, DesiredState, Error, IsCancellable, IsTransitioning,
// LastModifiedAt).
type AppStatus struct {
	State           string `json:"State"`
	DesiredState    string `json:"DesiredState"`
	IsTransitioning bool   `json:"IsTransitioning"`
}

// ReadAppStatus runs layout.Replicatedctl (under root) app status inspect, bounded by timeout (the
// daemon may be wedged too).
func ReadAppStatus(ctx context.Context, root string, timeout time.Duration) (AppStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, layout.Replicatedctl), "app", "status", "inspect")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return AppStatus{}, fmt.Errorf("%s app status inspect: %w: %s", layout.Replicatedctl, err, lastChars(stderr.String(), 300))
	}
	app, err := ParseAppStatus(out.Bytes())
	if err != nil {
		return AppStatus{}, fmt.Errorf("%s answered %q: %w", layout.Replicatedctl, lastChars(out.String(), 300), err)
	}
	return app, nil
}

// ErrNoApp is an answer with no application in it: the daemon runs, and lists the app only
// once it has imported and activated the licence (over the network, which can take a while).
var ErrNoApp = errors.New("replicatedctl app status inspect lists no application (the licence is not imported and activated yet)")

// ParseAppStatus reads the command's answer; an empty list is ErrNoApp.
func ParseAppStatus(out []byte) (AppStatus, error) {
	var apps []AppStatus
	if err := json.Unmarshal(out, &apps); err != nil {
		return AppStatus{}, fmt.Errorf("reading the answer of replicatedctl app status inspect: %w", err)
	}
	if len(apps) == 0 {
		return AppStatus{}, ErrNoApp
	}
	return apps[0], nil
}

// HoldReason says why Replicated itself means the app to be down, or "": a stop an operator
// asked for (replicatedctl app stop) or a transition under way (an upgrade, a restart).
func (a AppStatus) HoldReason() string {
	switch {
	case a.IsTransitioning:
		return fmt.Sprintf("Replicated is moving the app from %q to %q (an upgrade or a restart under way)", a.State, a.DesiredState)
	case a.DesiredState != "" && a.DesiredState != "started":
		return fmt.Sprintf("Replicated's desired state for the app is %q (someone ran replicatedctl app stop; replicatedctl app start brings it back)", a.DesiredState)
	}
	return ""
}

func lastChars(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

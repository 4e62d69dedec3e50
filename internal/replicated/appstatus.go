package replicated

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// AppStatusCommand asks the Replicated daemon for the application's state. Its answer is a JSON
// array with one object per app (CircleCI Server 2.x docs, "updating the Replicated version":
// AppID, Sequence, State, DesiredState, Error, IsCancellable, IsTransitioning, LastModifiedAt).
var AppStatusCommand = []string{"replicatedctl", "app", "status", "inspect"}

// AppStatus is the part of `replicatedctl app status inspect` haagent reads.
type AppStatus struct {
	State           string `json:"State"`
	DesiredState    string `json:"DesiredState"`
	IsTransitioning bool   `json:"IsTransitioning"`
}

// ReadAppStatus runs AppStatusCommand, bounded by timeout (the daemon may be wedged too).
func ReadAppStatus(ctx context.Context, timeout time.Duration) (AppStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, AppStatusCommand[0], AppStatusCommand[1:]...)
	out, err := cmd.Output()
	if err != nil {
		detail := ""
		if ee, ok := err.(*exec.ExitError); ok {
			detail = ": " + lastChars(string(ee.Stderr), 300)
		}
		return AppStatus{}, fmt.Errorf("running %s: %w%s", strings.Join(AppStatusCommand, " "), err, detail)
	}
	return ParseAppStatus(out)
}

// ParseAppStatus reads the command's answer.
func ParseAppStatus(out []byte) (AppStatus, error) {
	var apps []AppStatus
	if err := json.Unmarshal(out, &apps); err != nil {
		return AppStatus{}, fmt.Errorf("reading the answer of %s: %w", strings.Join(AppStatusCommand, " "), err)
	}
	if len(apps) == 0 {
		return AppStatus{}, fmt.Errorf("%s lists no application (no licence loaded yet?)", strings.Join(AppStatusCommand, " "))
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

package replicated

import (
	"strings"
	"testing"
)

// The shape is the one CircleCI's Server 2.x docs show for `replicatedctl app status inspect`.
func TestAppStatusHold(t *testing.T) {
	cases := []struct {
		name, out, hold string
	}{
		{"started", `[{"AppID":"edd9","Sequence":2439,"State":"started","DesiredState":"started","Error":"","IsCancellable":false,"IsTransitioning":false}]`, ""},
		{"stopped by an operator", `[{"AppID":"edd9","State":"stopped","DesiredState":"stopped","IsTransitioning":false}]`, `desired state for the app is "stopped"`},
		{"starting", `[{"AppID":"edd9","State":"stopped","DesiredState":"started","IsTransitioning":true}]`, "upgrade or a restart"},
		// Up but unhealthy, or crashed: Replicated means it to run, so this is no hold.
		{"meant to run", `[{"AppID":"edd9","State":"stopped","DesiredState":"started","IsTransitioning":false}]`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := ParseAppStatus([]byte(c.out))
			if err != nil {
				t.Fatal(err)
			}
			if got := a.HoldReason(); c.hold == "" && got != "" || !strings.Contains(got, c.hold) {
				t.Fatalf("hold %q, want %q", got, c.hold)
			}
		})
	}
	if _, err := ParseAppStatus([]byte("[]")); err == nil {
		t.Fatal("an empty list is not an app status")
	}
}

package replicated

import (
	"errors"
	"strings"
	"testing"

	"github.com/haagent/haagent/internal/findings"
)

// The finding's fix follows the question the script gave up at, as its last lines name it
// (the messages of docker.sh's _dockerProceedAnyway and checkDockerStorageDriver).
func TestNothingInstalledFix(t *testing.T) {
	for _, tc := range []struct{ tail, want string }{
		{"The installed version of Docker (20.10.24) may not be compatible with this installer. | The recommended version is 18.09.9 | Do you want to proceed anyway? (y/N)",
			"install the Docker it recommends (18.09.9)"},
		{"The running Docker daemon is configured to use the 'devicemapper' storage driver in loopback mode. | Do you want to proceed anyway? (y/N)",
			"overlay2 storage driver"},
		{"something else", findings.Lookup("INSTALLER_NOTHING_INSTALLED").Fix},
	} {
		err := Options{URL: "https://get.replicated.com/docker"}.nothingInstalled(&errNotInstalled{"not installed: replicated.service"}, tc.tail)
		var fail *findings.Failure
		if !errors.As(err, &fail) || fail.Findings[0].Code != "INSTALLER_NOTHING_INSTALLED" || !strings.Contains(fail.Findings[0].Fix, tc.want) ||
			!strings.Contains(fail.Findings[0].Evidence, tc.tail) || !fail.Findings[0].Blocking {
			t.Errorf("tail %q: %+v", tc.tail, err)
		}
	}
}

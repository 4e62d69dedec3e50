package replicated

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// DocumentedArgs are the parameters the installer script (template replicated-2.0.sh) accepts,
// in their `-` spelling. Each is also accepted with `_` for `-`, except those in oneSpelling.
// The list changes between installer versions: the downloaded script's own `case` arms are
// the truth (ScriptArgs); this list is for offline checks and scripts whose arms cannot be read.
var DocumentedArgs = []string{
	"http-proxy", "local-address", "private-address", "public-address", "no-public-address",
	"no-operator", "is-migration", "no-docker", "install-docker-only", "no-proxy", "airgap",
	"no-auto", "daemon-token", "tags", "docker-version", "ui-bind-port",
	"registry-advertise-address", "release-sequence", "release-patch-sequence", "skip-pull",
	"bypass-storagedriver-warnings", "log-level", "selinux-replicated-domain", "fast-timeouts",
	"force-replicated-downgrade", "skip-preflights", "prompt-on-preflight-warnings",
	"ignore-preflights", "no-ce-on-ee", "hard-fail-on-loopback", "bypass-firewalld-warning",
	"hard-fail-on-firewalld", "additional-no-proxy", "artifactory-address",
	"artifactory-access-method", "artifactory-docker-repo-key", "artifactory-quay-repo-key",
	"artifactory-auth", "registry-address-override", "registry-path-prefix",
	"disable-replicated-ui", "disable-replicated-host-networking",
}

// oneSpelling are the documented parameters the script has no `_` arm for.
var oneSpelling = []string{"artifactory-auth"}

// Reserved are the parameters haagent sets itself, in every spelling the script takes: the
// local address comes from IMDSv2, the proxy from haagent's environment (never on the
// installer's argv), and no-docker from whether Docker is installed. Configured extra_args
// may not set them. public-address and no-public-address are not here: an Elastic IP or a
// DNS name is the operator's to give, and then haagent adds no address of its own.
var Reserved = []string{
	"local-address", "local_address", "private-address", "private_address",
	"http-proxy", "http_proxy", "no-proxy", "no_proxy", "no-docker", "no_docker",
}

// Unusable are the parameters the script accepts that turn a CircleCI Services boot into
// something else (replicated-2.0.sh): install-docker-only exits 0 after Docker, before
// Replicated; is-migration skips the operator; airgap needs a package this boot does not
// bring. haagent refuses them offline and before the script runs.
var Unusable = []string{"install-docker-only", "install_docker_only", "is-migration", "is_migration", "airgap"}

// publicArgs are the spellings that settle the public address.
var publicArgs = []string{"public-address", "public_address", "no-public-address", "no_public_address"}

// ArgName is the parameter part of an installer argument, cut where the script cuts it
// (`cut -d= -f1`).
func ArgName(arg string) string {
	name, _, _ := strings.Cut(arg, "=")
	return name
}

// DocumentedSet returns every documented spelling.
func DocumentedSet() map[string]bool {
	set := map[string]bool{}
	for _, a := range DocumentedArgs {
		set[a] = true
		if !slices.Contains(oneSpelling, a) {
			set[strings.ReplaceAll(a, "-", "_")] = true
		}
	}
	return set
}

var (
	// The script parses its arguments in `case $_param in` (replicated-2.0.sh).
	caseStartRE = regexp.MustCompile(`^\s*case\s+"?\$\{?_param\}?"?\s+in\s*$`)
	// An arm: `http-proxy|http_proxy)` alone on its line.
	armRE  = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+(?:\|[A-Za-z0-9_-]+)*)\)\s*$`)
	esacRE = regexp.MustCompile(`^\s*esac\b`)
)

// ScriptArgs reads the parameters a downloaded installer script accepts from the arms of its
// argument `case`. It returns nil when the script has no such block (another shape, or not
// the Replicated installer), and the caller falls back to DocumentedArgs.
func ScriptArgs(script []byte) map[string]bool {
	sc := bufio.NewScanner(bytes.NewReader(script))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	in := false
	set := map[string]bool{}
	for sc.Scan() {
		line := sc.Text()
		if !in {
			in = caseStartRE.MatchString(line)
			continue
		}
		if esacRE.MatchString(line) {
			break
		}
		if m := armRE.FindStringSubmatch(line); m != nil {
			for _, a := range strings.Split(m[1], "|") {
				set[a] = true
			}
		}
	}
	if len(set) == 0 {
		return nil
	}
	return set
}

// CheckExtraArgs returns one problem per configured argument the installer would refuse (it
// exits 1 on an unknown parameter, mid-boot) or that haagent sets itself. known is the set
// of accepted spellings.
func CheckExtraArgs(args []string, known map[string]bool) []string {
	var probs []string
	for _, a := range args {
		name := ArgName(a)
		switch {
		case slices.Contains(Reserved, name):
			probs = append(probs, fmt.Sprintf("%s is set by haagent (local address from IMDSv2, proxy from its environment, no-docker when Docker is installed) and cannot be overridden", name))
		case slices.Contains(Unusable, name):
			probs = append(probs, fmt.Sprintf("%s makes the installer install something other than a CircleCI Services machine (install-docker-only stops after Docker, is-migration skips the operator, airgap needs a package haagent does not bring): remove it", name))
		case !known[name]:
			probs = append(probs, fmt.Sprintf("%q is not an argument the installer accepts (it would exit 1): see the installer's parameters, e.g. release-sequence=N", name))
		case strings.IndexFunc(a, badArgRune) >= 0:
			// The script reads each value with echo | cut: a newline splits it, and a value
			// with a space is no address, port or tag the installer takes.
			probs = append(probs, fmt.Sprintf("the value of %s has whitespace or a control character (a newline breaks the script's parsing): remove it", name))
		}
	}
	return probs
}

func badArgRune(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

// ExpectedServices are the systemd units the script leaves running for these arguments: it
// writes no replicated-ui.service with disable-replicated-ui (write_systemd_services), and
// runs no operator install with no-operator.
func ExpectedServices(args []string) []string {
	svcs := []string{"replicated"}
	names := make([]string, 0, len(args))
	for _, a := range args {
		names = append(names, ArgName(a))
	}
	if !slices.Contains(names, "disable-replicated-ui") && !slices.Contains(names, "disable_replicated_ui") {
		svcs = append(svcs, "replicated-ui")
	}
	if !slices.Contains(names, "no-operator") && !slices.Contains(names, "no_operator") {
		svcs = append(svcs, "replicated-operator")
	}
	return svcs
}

// uiDisabledRE is the script's own default for disable-replicated-ui, which get.replicated.com
// renders as "1" when the URL's query has disable_replicated_ui (helpers.py): such a script
// writes no replicated-ui.service whatever its arguments.
var uiDisabledRE = regexp.MustCompile(`(?m)^\s*DISABLE_REPLICATED_UI="1"\s*$`)

// ServicesFor are the units the kept script leaves for these arguments: ExpectedServices,
// without replicated-ui when the script was rendered with the UI disabled.
func ServicesFor(script []byte, args []string) []string {
	svcs := ExpectedServices(args)
	if uiDisabledRE.Match(script) {
		svcs = slices.DeleteFunc(svcs, func(s string) bool { return s == "replicated-ui" })
	}
	return svcs
}

// SetsPublicAddress reports whether the configured arguments settle the public address.
func SetsPublicAddress(args []string) bool {
	for _, a := range args {
		if slices.Contains(publicArgs, ArgName(a)) {
			return true
		}
	}
	return false
}

package replicated

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/layout"
)

// The files the installer writes its address into (replicated-2.0.sh's
// write_replicated_configuration and replicated-operator.sh's): PRIVATE_ADDRESS in both,
// DAEMON_ENDPOINT=ADDR:9879 and DAEMON_HOST=ADDR in the operator's (the operator dials the
// daemon on the same machine). The units read them only when they start (EnvironmentFile=,
// passed as -e LOCAL_ADDRESS=${PRIVATE_ADDRESS} and -e PRIVATE_ADDRESS=${PRIVATE_ADDRESS}).
const (
	DefaultReplicated = layout.ReplicatedDefault
	DefaultOperator   = layout.ReplicatedOperatorDefault
)

// AddressUnits are the units that read the address, restarted after a rewrite: replicated-ui
// reads /etc/default/replicated too, but only REPLICATED_UI_OPTS.
var AddressUnits = []string{"replicated", "replicated-operator"}

// InstalledAddress is PRIVATE_ADDRESS in /etc/default/replicated, "" when the file or the line
// is absent (Replicated not installed here).
func InstalledAddress(root string) string {
	b, err := os.ReadFile(filepath.Join(root, DefaultReplicated))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PRIVATE_ADDRESS="); ok {
			return strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return ""
}

// RewriteAddress puts addr in place of the installed address in the installer's files,
// keeping every other line, the files' modes and owners; it returns the files it changed
// (none when the address is already addr or Replicated is not installed). The old address
// is replaced where the installer wrote it: PRIVATE_ADDRESS, the operator's DAEMON_HOST and
// DAEMON_ENDPOINT when they name it, and an entry of NO_PROXY= lists (getNoProxyAddresses
// puts the private address there when a proxy is set).
func RewriteAddress(root, addr string) ([]string, error) {
	old := InstalledAddress(root)
	if old == "" || old == addr {
		return nil, nil
	}
	var changed []string
	for _, f := range []string{DefaultReplicated, DefaultOperator} {
		path := filepath.Join(root, f)
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // no operator (no-operator)
		}
		if err != nil {
			return changed, fmt.Errorf("reading %s: %w", f, err)
		}
		out := rewriteLines(b, old, addr)
		if bytes.Equal(out, b) {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			return changed, fmt.Errorf("reading the mode of %s: %w", f, err)
		}
		o := atomicfile.Options{Mode: fi.Mode().Perm(), DirMode: 0o755, UID: -1, GID: -1}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			o.UID, o.GID = int(st.Uid), int(st.Gid)
		}
		if _, err := atomicfile.WriteFile(path, out, o); err != nil {
			return changed, fmt.Errorf("rewriting the address %s to %s in %s: %w", old, addr, f, err)
		}
		changed = append(changed, f)
	}
	return changed, nil
}

func rewriteLines(b []byte, old, addr string) []byte {
	lines := strings.SplitAfter(string(b), "\n")
	for i, line := range lines {
		body := strings.TrimRight(line, "\n")
		nl := line[len(body):]
		name, val, ok := strings.Cut(body, "=")
		if !ok {
			continue
		}
		switch name {
		case "PRIVATE_ADDRESS", "DAEMON_HOST":
			if strings.Trim(val, `"'`) == old {
				lines[i] = name + "=" + addr + nl
			}
		case "DAEMON_ENDPOINT":
			if host, port, err := net.SplitHostPort(strings.Trim(val, `"'`)); err == nil && strings.Trim(host, "[]") == old {
				lines[i] = name + "=" + net.JoinHostPort(addr, port) + nl
			}
		default:
			lines[i] = rewriteNoProxy(body, old, addr) + nl
		}
	}
	return []byte(strings.Join(lines, ""))
}

// rewriteNoProxy replaces old as a whole entry of any NO_PROXY=a,b,c in line.
func rewriteNoProxy(line, old, addr string) string {
	const key = "NO_PROXY="
	var out strings.Builder
	for {
		i := strings.Index(line, key)
		if i < 0 {
			out.WriteString(line)
			return out.String()
		}
		out.WriteString(line[:i+len(key)])
		line = line[i+len(key):]
		end := strings.IndexAny(line, " \t\"'")
		if end < 0 {
			end = len(line)
		}
		entries := strings.Split(line[:end], ",")
		for j, e := range entries {
			if e == old {
				entries[j] = addr
			}
		}
		out.WriteString(strings.Join(entries, ","))
		line = line[end:]
	}
}

// RestartForAddress restarts the units that read the address, if they run (try-restart: a
// stopped unit reads the new file when it starts). The real units are safe to restart: their
// ExecStartPre removes the old container, ExecStart runs a new one with the file's variables,
// and KillMode=none with ExecStop=docker stop stops only the daemon's own container: the
// application's containers are started by the daemon, not by the unit (whether a daemon
// restart leaves them running is Replicated's, not read here; ADDRESS_REWRITTEN asks for an
// application restart anyway, for their address).
func RestartForAddress(ctx context.Context) error {
	argv := append(append(append([]string(nil), Systemctl...), "try-restart"), AddressUnits...)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

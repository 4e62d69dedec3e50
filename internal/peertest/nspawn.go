package peertest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Machine is a bookworm root booted by systemd-nspawn: a real systemd as PID 1, sharing the
// host's network (the peers on loopback stay reachable).
type Machine struct {
	Root string
	// Env is added to the environment of every command Exec runs in the box (GOCOVERDIR for
	// a haagent built with -cover).
	Env   []string
	pid   int // the container's init, as seen from the host
	cmd   *exec.Cmd
	done  chan struct{}
	boots int
	// netns is the network namespace the box runs in ("" shares the host's network).
	netns string
}

// NspawnRoot copies the cached debootstrapped root into a fresh directory.
func NspawnRoot(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		Missing(t, "systemd-nspawn is not installed (apt-get install systemd-container)")
	}
	base := os.Getenv("HAAGENT_PEERS")
	if base == "" {
		base = "/tmp/haagent-peers"
	}
	cached := filepath.Join(base, "nspawn", "root")
	if _, err := os.Stat(filepath.Join(cached, "lib/systemd/systemd")); err != nil {
		Missing(t, "no debootstrapped root at "+cached+": run scripts/peers.sh build nspawnroot")
	}
	dir, err := os.MkdirTemp("/tmp", "hn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "root")
	if out, err := exec.Command("cp", "-a", cached, root).CombinedOutput(); err != nil {
		t.Fatalf("copying the root: %v\n%s", err, out)
	}
	return root
}

// Boot starts systemd in root and waits until it reached multi-user.
func Boot(t testing.TB, root string) *Machine {
	t.Helper()
	return boot(t, &Machine{Root: root})
}

// BootIn boots root inside the network namespace ns instead of the host's network, so that
// what haagent does to the box's interfaces stays there (systemd-nspawn
// --network-namespace-path=).
func BootIn(t testing.TB, root string, ns *Netns) *Machine {
	t.Helper()
	return boot(t, &Machine{Root: root, netns: ns.Path})
}

func boot(t testing.TB, m *Machine) *Machine {
	t.Helper()
	t.Cleanup(func() {
		if m.cmd == nil {
			return
		}
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(20 * time.Second):
			m.cmd.Process.Kill()
			<-m.done
		}
	})
	m.boot(t)
	return m
}

// Reboot has the container's systemd reboot, and boots the root again as
// systemd-nspawn@.service does when nspawn exits with 133 (the container asked to reboot):
// a new boot id, units started by their enablement, the journal kept on disk.
func (m *Machine) Reboot(t testing.TB) {
	t.Helper()
	m.Exec("systemctl", "reboot") // its connection may end with the box
	select {
	case <-m.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the container did not shut down within 90 s of systemctl reboot; see %s", m.logPath())
	}
	if code := m.cmd.ProcessState.ExitCode(); code != 133 {
		t.Fatalf("systemd-nspawn exited %d after systemctl reboot, want 133 (reboot requested); see %s", code, m.logPath())
	}
	m.cmd, m.pid = nil, 0
	m.boot(t)
}

// Stop powers the box off (the instance is gone) and waits for systemd-nspawn to exit.
func (m *Machine) Stop(t testing.TB) {
	t.Helper()
	m.Exec("systemctl", "poweroff") // its connection may end with the box
	select {
	case <-m.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the container did not power off within 90 s; see %s", m.logPath())
	}
	m.cmd, m.pid = nil, 0
}

func (m *Machine) logPath() string {
	return filepath.Join(filepath.Dir(m.Root), fmt.Sprintf("nspawn-%d.log", m.boots))
}

func (m *Machine) boot(t testing.TB) {
	t.Helper()
	m.boots++
	logf := m.logPath()
	f, _ := os.Create(logf)
	args := []string{"-D", m.Root, "--boot", "--register=no", "--keep-unit", "--capability=all",
		"--system-call-filter=@keyring bpf", "--console=pipe", "--machine=haagent-boot-test"}
	if m.netns != "" {
		args = append(args, "--network-namespace-path="+m.netns)
	}
	cmd := exec.Command("systemd-nspawn", args...)
	cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	m.cmd, m.done = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m.pid == 0 {
			m.pid = childInit(cmd.Process.Pid)
		}
		if m.pid != 0 {
			if out, err := m.Exec("systemctl", "is-system-running", "--wait"); err == nil || strings.Contains(out, "degraded") {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf)
			t.Fatalf("the container did not boot:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// childInit finds the container's systemd: the child of systemd-nspawn.
func childInit(nspawnPID int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawnPID, nspawnPID))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			return pid
		}
	}
	return 0
}

// Exec runs a command inside the container (all its namespaces) and returns its output.
func (m *Machine) Exec(argv ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(m.pid), "-a", "--"}, argv...)...)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}, m.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// MustExec fails the test when the command fails.
func (m *Machine) MustExec(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := m.Exec(argv...)
	if err != nil {
		t.Fatalf("%s in the container: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return out
}

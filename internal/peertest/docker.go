package peertest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"syscall"

	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Docker is a running dockerd (Debian's docker.io) with its own data root and socket, no
// bridge and no iptables: containers use --network none.
type Docker struct {
	Host string // DOCKER_HOST
	dir  string
	bin  string
	args []string
	cmd  *exec.Cmd
}

// StartDocker starts a private dockerd.
func StartDocker(t testing.TB) *Docker {
	t.Helper()
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		Missing(t, "dockerd is not installed (apt-get install docker.io)")
	}
	if os.Geteuid() != 0 {
		Missing(t, "dockerd needs root")
	}
	// Unix socket paths are short: keep the directory near /.
	dir, err := os.MkdirTemp("/tmp", "hd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Docker{Host: "unix://" + filepath.Join(dir, "d.sock"), dir: dir, bin: bin}
	d.args = []string{"--data-root", filepath.Join(dir, "root"), "--exec-root", filepath.Join(dir, "x"),
		"-H", d.Host, "--pidfile", filepath.Join(dir, "d.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none"}
	d.start(t)
	t.Cleanup(func() { d.Run("rm", "-f", "frontend") })
	return d
}

func (d *Docker) start(t testing.TB) {
	t.Helper()
	d.cmd = exec.Command(d.bin, d.args...)
	logf := filepath.Join(d.dir, fmt.Sprintf("dockerd-%d.log", time.Now().UnixNano()))
	start(t, d.cmd, logf)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if out, err := d.Run("version", "--format", "{{.Server.Version}}"); err == nil && strings.TrimSpace(out) != "" {
			return
		}
		if time.Now().After(deadline) || exited(d.cmd) {
			log, _ := os.ReadFile(logf)
			t.Fatalf("dockerd never answered:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Freeze stops dockerd with SIGSTOP: its socket accepts connections and nothing answers, as a
// wedged engine does. Thaw resumes it. The test's cleanup thaws it, so it can be killed.
func (d *Docker) Freeze(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
	// The stop is delivered asynchronously: wait until the kernel shows it stopped (state T),
	// or a request sent meanwhile is still answered.
	stat := fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(stat)
		if err == nil {
			if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "T" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd did not stop after SIGSTOP: %s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Thaw resumes a frozen dockerd.
func (d *Docker) Thaw(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

// Restart stops dockerd (SIGTERM, as systemctl restart docker does) and starts it again on the
// same socket and data root: every API stream a client holds ends.
func (d *Docker) Restart(t testing.TB) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	if v, ok := running.Load(d.cmd); ok {
		select {
		case <-v.(chan struct{}):
		case <-time.After(60 * time.Second):
			t.Fatal("dockerd did not stop within 60 s of SIGTERM")
		}
	}
	d.start(t)
}

// Run runs the docker CLI against this daemon.
func (d *Docker) Run(args ...string) (string, error) {
	cmd := exec.Command("docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+d.Host, "DOCKER_BUILDKIT=0", "HOME="+d.dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustRun fails the test when the command fails.
func (d *Docker) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.Run(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var busyboxOnce sync.Map

// BusyboxImage builds (once per daemon) a scratch image holding Debian's busybox-static with
// its applets linked, tagged haagent-busybox:test. No registry is reachable here.
func (d *Docker) BusyboxImage(t testing.TB) string {
	t.Helper()
	const tag = "haagent-busybox:test"
	if _, done := busyboxOnce.Load(d.Host); done {
		return tag
	}
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		Missing(t, "busybox-static is not installed (apt-get install busybox-static)")
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	ctxDir := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data, _ := os.ReadFile(bb)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777})
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(data))})
	tw.Write(data)
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	tw.Close()
	os.WriteFile(filepath.Join(ctxDir, "rootfs.tar"), buf.Bytes(), 0o644)
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nADD rootfs.tar /\nENV PATH=/bin\nCMD [\"sh\"]\n"), 0o644)
	d.MustRun(t, "build", "-q", "-t", tag, ctxDir)
	busyboxOnce.Store(d.Host, true)
	return tag
}

// Frontend runs a container named frontend with the busybox image and a shell script.
func (d *Docker) Frontend(t testing.TB, extra []string, script string) string {
	t.Helper()
	args := append([]string{"run", "-d", "--name", "frontend", "--network", "none"}, extra...)
	args = append(args, d.BusyboxImage(t), "sh", "-c", script)
	return strings.TrimSpace(d.MustRun(t, args...))
}

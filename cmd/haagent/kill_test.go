package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/peertest"
)

// kill -9 in the middle of a download leaves no partial file at any final path, and the next
// run converges.
func TestKill9MidFetchLeavesNoPartialFile(t *testing.T) {
	w := newWorld(t, "i-0kill9000000000")
	big := make([]byte, 4<<20)
	rand.Read(big)
	w.objs["license.rli"] = big
	fake := peertest.StartFakeS3(t, bkt, w.objs)

	// A previous good boot left files in place; the interrupted run must not damage them.
	w.writeConfig(fake.URL, "")
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("first run: exit %d\n%s", r.code, r.stderr)
	}
	before := snapshot(t, w.root)

	newLicense := make([]byte, 4<<20)
	rand.Read(newLicense)
	fake.Put(t, "license.rli", newLicense)
	fake.Put(t, "circleconfig/shared/vault", append(append([]byte{}, w.objs["circleconfig/shared/vault"]...), "# rotated\n"...))
	halfway := make(chan struct{})
	fake.SetFault(func(rw http.ResponseWriter, r *http.Request, real http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/license.rli") {
			return false
		}
		rw.Header().Set("Content-Length", fmt.Sprint(len(newLicense)))
		rw.WriteHeader(200)
		rw.Write(newLicense[:len(newLicense)/2])
		rw.(http.Flusher).Flush()
		close(halfway)
		<-r.Context().Done()
		return true
	})
	cmd := exec.Command(haagentBin, "--root", w.root, "run", "--once")
	cmd.Env = w.env(w.imds.URL)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-halfway:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the download never started; log:\n%s", stderr.String())
	}
	cmd.Process.Signal(os.Kill)
	cmd.Wait()

	after := snapshot(t, w.root)
	for p, content := range after {
		if strings.Contains(p, ".haagent-") {
			continue // temp files in the staging directory are not final paths
		}
		if old, ok := before[p]; ok && !bytes.Equal(old, content) && p != "/var/lib/haagent/state.json" && p != "/run/haagent.lock" && p != layout.BootRuns {
			t.Errorf("%s changed although the run was killed before the bundle completed", p)
		}
	}
	if !bytes.Equal(after["/etc/license.rli"], big) {
		t.Fatal("/etc/license.rli is not the previous complete file")
	}

	fake.SetFault(nil)
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("run after kill: exit %d\n%s", r.code, r.stderr)
	}
	final := snapshot(t, w.root)
	if !bytes.Equal(final["/etc/license.rli"], newLicense) {
		t.Fatal("the next run did not converge on the bucket's licence")
	}
	for p := range final {
		if strings.Contains(p, ".haagent-") {
			t.Errorf("leftover from the killed run: %s", p)
		}
	}
}

func snapshot(t *testing.T, root string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(root, p)
			out["/"+rel] = b
		}
		return nil
	})
	return out
}

// kill -9 while the installer runs: the record on disk says so (the step is Durable: its
// start is written before the script runs, though most steps' records are written behind the
// boot), with every earlier step finished and the fetched files known; the next run finds the
// run that was killed and boots to complete.
func TestKill9DuringTheInstallerLeavesTheRecordRight(t *testing.T) {
	w := newWorld(t, "i-0kill9install000")
	fifo := filepath.Join(t.TempDir(), "installer")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The script tells the test it runs, then waits for the test (not for a time).
	w.installer.setScript(strings.Replace(standin(t), "sleep STANDIN_DELAY", "echo started > "+fifo+"\ncat "+fifo+" >/dev/null", 1))
	cmd := exec.Command(haagentBin, "--root", w.root, "run", "--once")
	cmd.Env = w.env(w.imds.URL)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() {
		f, err := os.Open(fifo) // blocks until the script opens it to write
		if err == nil {
			_, err = io.ReadAll(f)
			f.Close()
		}
		started <- err
	}()
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the installer never started; log:\n%s", stderr.String())
	}
	cmd.Process.Signal(os.Kill)
	cmd.Wait()
	// Let the orphaned script go on and end (it runs the rest of the stand-in's install).
	if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
		f.Close()
	}

	run := w.record().Last()
	if run == nil || run.Status != "running" || run.End != nil {
		t.Fatalf("the killed run is not in the record as running: %+v", run)
	}
	var names []string
	for _, s := range run.Steps {
		names = append(names, s.Name+"="+s.Status)
	}
	want := "imds=ok config=ok asg=ok fetch=ok cookie-key=ok validate-files=ok ca-certs=ok probe=ok address=ok replicated-install=running"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("steps in the record after kill -9 during the installer:\n got %s\nwant %s", got, want)
	}
	if len(run.Files) == 0 || len(w.record().Known) == 0 {
		t.Fatalf("the fetched files are not in the record: %d files, %d known", len(run.Files), len(w.record().Known))
	}

	w.installer.setScript(standin(t))
	if r := w.run("run", "--once"); r.code != 0 {
		t.Fatalf("run after kill: exit %d\n%s", r.code, r.stderr)
	}
	if st := w.record().Last().Status; st != "complete" {
		t.Fatalf("the run after the kill ended %s", st)
	}
}

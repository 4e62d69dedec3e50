//go:build bench

// Package bench measures haagent next to what it replaces, in one run on one machine, and
// prints the table `make bench` shows (and README records). It is a test file behind the
// `bench` build tag so it can start the same real peers as the tests (versitygw, dockerd)
// without being part of `go test ./...`: these are measurements, not assertions.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/peertest"
)

// Row is one line of the table.
type Row struct {
	Section  string  `json:"section"`
	Metric   string  `json:"metric"`
	Haagent  string  `json:"haagent"`
	Baseline string  `json:"baseline"`
	Against  string  `json:"against"`
	Ratio    string  `json:"ratio"`
	Goal     string  `json:"goal"`
	Met      *bool   `json:"met,omitempty"`
	Value    float64 `json:"value"`
	BaseVal  float64 `json:"baseline_value,omitempty"`
}

type report struct {
	mu   sync.Mutex
	Rows []Row `json:"rows"`
}

func (r *report) add(row Row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Rows = append(r.Rows, row)
}

func TestTable(t *testing.T) {
	bin := buildHaagent(t)
	var rep report
	sections := strings.Split(envOr("HAAGENT_BENCH_ONLY", "fetch,boot,diagnosis,watch,startup"), ",")
	// Each section is a subtest: one that fails (a peer that would not start) leaves the
	// others' rows in the table, and its peers are stopped before the next section measures.
	run := map[string]func(t *testing.T){
		"fetch":     func(t *testing.T) { benchFetch(t, &rep) },
		"boot":      func(t *testing.T) { benchBoot(t, bin, &rep) },
		"diagnosis": func(t *testing.T) { benchDiagnosis(t, bin, &rep) },
		"watch":     func(t *testing.T) { benchWatch(t, bin, &rep) },
		"startup":   func(t *testing.T) { benchStartup(t, bin, &rep) },
	}
	for _, s := range sections {
		if f, ok := run[s]; ok {
			t.Run(s, f)
		} else {
			t.Errorf("HAAGENT_BENCH_ONLY names no section %q", s)
		}
	}
	host, _ := os.Hostname()
	meta := map[string]any{
		"date": time.Now().UTC().Format(time.RFC3339), "host": host, "cpus": runtime.NumCPU(),
		"go": runtime.Version(), "os": osRelease(), "rows": rep.Rows,
	}
	data, _ := json.MarshalIndent(meta, "", "  ")
	out := envOr("HAAGENT_BENCH_OUT", "bench.json")
	if err := os.WriteFile(out, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\nhaagent benchmarks, %s, %d CPUs, %s (JSON: %s)\n\n", osRelease(), runtime.NumCPU(), time.Now().UTC().Format("2006-01-02"), out)
	fmt.Println("| section | metric | haagent | baseline | baseline / haagent | goal | met |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range rep.Rows {
		met := ""
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*r.Met]
		}
		base := r.Baseline
		if r.Against != "" {
			base = r.Against + ": " + r.Baseline
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", r.Section, r.Metric, r.Haagent, base, r.Ratio, r.Goal, met)
	}
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func osRelease() string {
	b, _ := os.ReadFile("/etc/os-release")
	m := regexp.MustCompile(`(?m)^PRETTY_NAME="?([^"\n]*)`).FindSubmatch(b)
	if m == nil {
		return runtime.GOOS
	}
	return string(m[1])
}

func buildHaagent(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "haagent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "../../cmd/haagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building haagent: %v\n%s", err, out)
	}
	return bin
}

func ptr(b bool) *bool { return &b }

// ratio is baseline / haagent: above 1, haagent is faster (or smaller); below 1, it is not.
func ratio(baseline, haagent float64) string { return fmt.Sprintf("%.2f", baseline/haagent) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// --- 1. fetch ---------------------------------------------------------------------------

const (
	region = "us-east-1"
	delay  = 20 * time.Millisecond
)

// runs per tool and bundle, interleaved; HAAGENT_BENCH_RUNS lowers it for a trial of the
// bench itself (the table's figures are medians of 7).
var runs = func() int {
	if n, err := strconv.Atoi(os.Getenv("HAAGENT_BENCH_RUNS")); err == nil && n > 0 {
		return n
	}
	return 7
}()

// The bundle: the three files (the licence is the big object), 200 key files, 50 circleconfig
// files.
func seedBundle(t *testing.T, s *peertest.S3, bucket string, licence int) (files int, bytes int64) {
	s.MakeBucket(t, bucket)
	put := func(key string, data []byte) {
		// Through the S3 API: each object gets its ETag, as in S3 (haagent checks it).
		s.Upload(t, bucket, key, data)
		files++
		bytes += int64(len(data))
	}
	settingsConf, _ := os.ReadFile("../../examples/bucket/settings.conf")
	replicatedConf, _ := os.ReadFile("../../examples/bucket/replicated.conf")
	put("settings.conf", settingsConf)
	put("replicated.conf", replicatedConf)
	put("license.rli", random(licence))
	for i := 0; i < 200; i++ {
		put(fmt.Sprintf("circleci-encryption-keys/key-%03d", i), random(64))
	}
	for i := 0; i < 50; i++ {
		put(fmt.Sprintf("circleconfig/shared/conf-%02d", i), []byte(fmt.Sprintf("export SETTING_%02d=\"%x\"\n", i, random(512))))
	}
	return files, bytes
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// latencyProxy forwards TCP to upstream, delivering every chunk d later in each direction
// (a round trip costs 2d, as between an instance and a distant S3), and holding a new
// connection's first bytes for one extra round trip (the TCP handshake). It never limits
// throughput: chunks queue, they do not wait for each other.
func latencyProxy(t *testing.T, upstream string, d time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				u, err := net.Dial("tcp", upstream)
				if err != nil {
					c.Close()
					return
				}
				start := time.Now().Add(2 * d)
				go delayPipe(u, c, d, start)
				delayPipe(c, u, d, time.Time{})
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

func delayPipe(dst, src net.Conn, d time.Duration, notBefore time.Time) {
	type chunk struct {
		b   []byte
		due time.Time
	}
	ch := make(chan chunk, 4096)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				due := time.Now().Add(d)
				if due.Before(notBefore) {
					due = notBefore
				}
				ch <- chunk{buf[:n], due}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.due)) // the injected latency itself
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

type fetcher struct {
	name string
	run  func(t *testing.T, bucket, dest string) error
}

func benchFetch(t *testing.T, rep *report) {
	aws, s5cmd := "/usr/bin/aws", peertest.Bin(t, "s5cmd")
	if _, err := os.Stat(aws); err != nil {
		t.Fatalf("%s is missing: run scripts/peers.sh benchdeps", aws)
	}
	s := peertest.StartS3(t)
	proxy := latencyProxy(t, strings.TrimPrefix(s.URL, "http://"), delay)
	bundles := []struct {
		name, bucket string
		licence      int
	}{{"5 MiB licence", "bundle-big", 5 << 20}, {"16 KiB licence", "bundle-small", 16 << 10}}
	cfg, err := config.Parse([]byte("version: 1\nsource:\n  bucket: bench\n"), "bench")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+s.AccessKey, "AWS_SECRET_ACCESS_KEY="+s.SecretKey,
		"AWS_REGION="+region, "AWS_DEFAULT_REGION="+region, "AWS_EC2_METADATA_DISABLED=true", "HOME="+t.TempDir())
	fetchers := []fetcher{
		{"haagent", func(t *testing.T, bucket, dest string) error {
			b := peertest.OpenBucket(t, proxy, s.AccessKey, s.SecretKey, bucket, 6, 2*time.Minute)
			bd, err := fetch.Fetch(context.Background(), b, fetch.Options{Root: dest, Layout: cfg.Layout, Concurrency: cfg.Fetch.Concurrency})
			if err != nil {
				return err
			}
			return bd.Commit()
		}},
		// The replaced userdata's five commands, as written (without its pip install).
		{"awscli (5 x aws s3 cp)", func(t *testing.T, bucket, dest string) error {
			for _, a := range [][]string{
				{"settings.conf", "/etc/settings.conf"}, {"replicated.conf", "/etc/replicated.conf"}, {"license.rli", "/etc/license.rli"},
				{"circleci-encryption-keys", "/data/circle/circleci-encryption-keys/", "--recursive"},
				{"circleconfig/shared", "/etc/circleconfig/shared", "--recursive"},
			} {
				args := append([]string{"--endpoint-url", proxy, "s3", "cp", "--only-show-errors", "s3://" + bucket + "/" + a[0], dest + a[1]}, a[2:]...)
				if out, err := command(env, aws, args...); err != nil {
					return fmt.Errorf("aws %v: %v\n%s", args, err, out)
				}
			}
			return nil
		}},
		// s5cmd at its best: the five copies in one process, in parallel.
		{"s5cmd (one run, 5 cp)", func(t *testing.T, bucket, dest string) error {
			list := filepath.Join(t.TempDir(), "cmds")
			cmds := fmt.Sprintf("cp s3://%[1]s/settings.conf %[2]s/etc/settings.conf\ncp s3://%[1]s/replicated.conf %[2]s/etc/replicated.conf\n"+
				"cp s3://%[1]s/license.rli %[2]s/etc/license.rli\ncp 's3://%[1]s/circleci-encryption-keys/*' %[2]s/data/circle/circleci-encryption-keys/\n"+
				"cp 's3://%[1]s/circleconfig/shared/*' %[2]s/etc/circleconfig/shared/\n", bucket, dest)
			os.WriteFile(list, []byte(cmds), 0o644)
			if out, err := command(env, s5cmd, "--endpoint-url", proxy, "run", list); err != nil {
				return fmt.Errorf("s5cmd: %v\n%s", err, out)
			}
			return nil
		}},
	}
	for _, bd := range bundles {
		files, size := seedBundle(t, s, bd.bucket, bd.licence)
		times := map[string][]time.Duration{}
		for i := 0; i < runs; i++ {
			for _, f := range fetchers { // interleaved, so drift on the machine hits all alike
				dest := t.TempDir()
				start := time.Now()
				if err := f.run(t, bd.bucket, dest); err != nil {
					t.Fatalf("%s: %v", f.name, err)
				}
				times[f.name] = append(times[f.name], time.Since(start))
				if n, b := countTree(dest); n != files || b != size {
					t.Fatalf("%s fetched %d files, %d bytes; the bundle has %d, %d", f.name, n, b, files, size)
				}
			}
		}
		ha := median(times["haagent"])
		for _, f := range fetchers[1:] {
			base := median(times[f.name])
			goal, met := "", (*bool)(nil)
			switch {
			case strings.HasPrefix(f.name, "awscli"):
				goal, met = ">= 10x faster", ptr(float64(base)/float64(ha) >= 10)
			case strings.HasPrefix(f.name, "s5cmd"):
				goal, met = "not slower", ptr(ha <= base)
			}
			rep.add(Row{Section: "fetch", Metric: fmt.Sprintf("bundle, %s, %d files, 20 ms each way, median of %d", bd.name, files, runs),
				Haagent: secs(ha), Against: f.name, Baseline: secs(base), Ratio: ratio(base.Seconds(), ha.Seconds()),
				Goal: goal, Met: met, Value: ha.Seconds(), BaseVal: base.Seconds()})
		}
	}
}

func command(env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	return cmd.CombinedOutput()
}

func countTree(root string) (n int, size int64) {
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		// The root's etc/group is the machine's, not the bundle's: haagent adds the docker
		// group there (the licence and settings belong to it from the first byte).
		if rel, _ := filepath.Rel(root, p); rel == "etc/group" {
			return nil
		}
		if err == nil && fi.Mode().IsRegular() {
			n++
			size += fi.Size()
		}
		return nil
	})
	return n, size
}

// --- 2. time to diagnosis ----------------------------------------------------------------

// blackHole listens and never accepts: connections complete in the kernel's backlog and then
// hear nothing, as behind a stuck proxy or a server that hangs.
func blackHole(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// mongoSettings is the customization file for the five MongoDB URIs CircleCI reads.
func mongoSettings(port int) string {
	ms := fmt.Sprintf("export MONGO_BASE_URI=\"mongodb://circle:x@127.0.0.1:%d\"\n", port)
	for _, v := range []string{"MAIN", "ACTION_LOGS", "BUILD_STATE", "CONTAINERS", "REMOTE_CONTAINERS"} {
		ms += fmt.Sprintf("export CIRCLE_SECRETS_MONGODB_%s_URI=\"$MONGO_BASE_URI/circle_ghe?authSource=admin\"\n", v)
	}
	return ms
}

func benchDiagnosis(t *testing.T, bin string, rep *report) {
	const cap = 75 * time.Second
	pg, mg, vt := blackHole(t), blackHole(t), blackHole(t)
	root := t.TempDir()
	shared := filepath.Join(root, "etc/circleconfig/shared")
	os.MkdirAll(shared, 0o700)
	os.WriteFile(filepath.Join(shared, "postgresql"), []byte(fmt.Sprintf("export POSTGRES_HOST=\"127.0.0.1\"\nexport POSTGRES_PORT=\"%d\"\nexport POSTGRES_USER=\"circle\"\nexport POSTGRES_PASSWORD=\"x\"\n", pg)), 0o600)
	mongoURI := fmt.Sprintf("mongodb://circle:x@127.0.0.1:%d/circle_ghe?authSource=admin", mg)
	os.WriteFile(filepath.Join(shared, "mongodb"), []byte(mongoSettings(mg)), 0o600)
	os.WriteFile(filepath.Join(shared, "vault"), []byte(fmt.Sprintf("export VAULT__SCHEME=\"https\"\nexport VAULT__HOST=\"127.0.0.1\"\nexport VAULT__PORT=\"%d\"\nexport VAULT__CLIENT_TOKEN=\"x\"\nexport VAULT__TRANSIT_MOUNT=\"transit\"\n", vt)), 0o600)

	type result struct {
		name string
		d    time.Duration
		over bool
	}
	var wg sync.WaitGroup
	results := make(chan result, 8)
	order := []string{"psql (default settings)", "mongo-driver (default server selection)", "vault status"}
	timed := func(name string, f func(ctx context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), cap)
			defer cancel()
			start := time.Now()
			f(ctx)
			d := time.Since(start)
			results <- result{name, d, ctx.Err() != nil}
		}()
	}
	// The stock clients with their defaults, all at once (they only wait).
	timed("psql (default settings)", func(ctx context.Context) {
		cmd := exec.CommandContext(ctx, "psql", fmt.Sprintf("host=127.0.0.1 port=%d user=circle dbname=circle", pg), "-c", "select 1")
		cmd.Env = append(os.Environ(), "PGPASSWORD=x")
		cmd.Run()
	})
	timed("mongo-driver (default server selection)", func(ctx context.Context) {
		c, err := mongo.Connect(ctx, options.Client().ApplyURI(mongoURI))
		if err == nil {
			c.Ping(ctx, nil)
			c.Disconnect(context.Background())
		}
	})
	timed("vault status", func(ctx context.Context) {
		cmd := exec.CommandContext(ctx, peertest.Bin(t, "vault"), "status")
		cmd.Env = append(os.Environ(), fmt.Sprintf("VAULT_ADDR=https://127.0.0.1:%d", vt))
		cmd.Run()
	})
	// haagent meanwhile, three times.
	var ha []time.Duration
	var last string
	for i := 0; i < 3; i++ {
		start := time.Now()
		out, _ := exec.Command(bin, "--root", root, "check", "--format", "json").Output()
		ha = append(ha, time.Since(start))
		last = string(out)
	}
	wg.Wait()
	close(results)
	var rs []result
	for r := range results {
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return slices.Index(order, rs[i].name) < slices.Index(order, rs[j].name) })
	var list []string
	for _, m := range regexp.MustCompile(`"code": "([A-Z_]+)"`).FindAllStringSubmatch(last, -1) {
		if !slices.Contains(list, m[1]) {
			list = append(list, m[1])
		}
	}
	codes := strings.Join(list, " ")
	h := median(ha)
	for _, r := range rs {
		base := secs(r.d)
		ratio := ratio(r.d.Seconds(), h.Seconds())
		if r.over {
			base, ratio = "> "+secs(cap)+" (gave up)", "> "+ratio
		}
		rep.add(Row{Section: "diagnosis", Metric: "black-holed PostgreSQL, MongoDB and Vault: time to a diagnosis (" + codes + ")",
			Haagent: secs(h) + " (median of 3)", Against: r.name, Baseline: base, Ratio: ratio,
			Goal: "<= probe timeout + 1 s (6 s)", Met: ptr(h <= 6*time.Second), Value: h.Seconds(), BaseVal: r.d.Seconds()})
	}
}

// --- 3. watch footprint ------------------------------------------------------------------

func benchWatch(t *testing.T, bin string, rep *report) {
	window := 60 * time.Second
	if v := os.Getenv("HAAGENT_BENCH_WATCH"); v != "" {
		window, _ = time.ParseDuration(v)
	}
	d := peertest.StartDocker(t)
	image := d.BusyboxImage(t)
	s := peertest.StartS3(t)
	s.MakeBucket(t, "bench")
	filepath.WalkDir("../../examples/bucket", func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			rel, _ := filepath.Rel("../../examples/bucket", p)
			b, _ := os.ReadFile(p)
			s.Put(t, "bench", filepath.ToSlash(rel), b)
		}
		return nil
	})
	// Every database points at a closed port; the watch is what is measured here.
	closed := closedPort(t)
	s.Put(t, "bench", "circleconfig/shared/postgresql", []byte(fmt.Sprintf("export POSTGRES_HOST=\"127.0.0.1\"\nexport POSTGRES_PORT=\"%d\"\nexport POSTGRES_USER=\"c\"\nexport POSTGRES_PASSWORD=\"x\"\n", closed)))
	s.Put(t, "bench", "circleconfig/shared/mongodb", []byte(mongoSettings(closed)))
	s.Put(t, "bench", "circleconfig/shared/vault", []byte(fmt.Sprintf("export VAULT__SCHEME=\"http\"\nexport VAULT__HOST=\"127.0.0.1\"\nexport VAULT__PORT=\"%d\"\nexport VAULT__CLIENT_TOKEN=\"x\"\nexport VAULT__TRANSIT_MOUNT=\"transit\"\n", closed)))
	// The installer stand-in of the boot rows: haagent's check of the install passes at once.
	script := []byte(bootInstaller)
	s.Put(t, "bench", "replicated-install.sh", script)
	imds := peertest.StartIMDS(t, peertest.Instance{ID: "i-0bench0000000001", LocalIPv4: "10.0.1.23", Region: region})
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/haagent"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/haagent/haagent.yaml"), []byte(fmt.Sprintf(`version: 1
source: {bucket: bench, region: %s, endpoint: %s, path_style: true}
probes:
  overrides:
    TCP_REFUSED: {severity: warning, blocking: false}
replicated: {installer_url: "s3://bench/replicated-install.sh", sha256: %s}
watch: {stuck_after: 1h}
`, region, s.URL, sha256hex(script))), 0o644)

	cmd := exec.Command(bin, "--root", root, "run")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "DOCKER_HOST=" + d.Host,
		"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey, "AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imds.URL}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var mu sync.Mutex
	var other []string // haagent's own lines, for a failure message
	seen := map[int]bool{}
	watching := make(chan struct{})
	lineRE := regexp.MustCompile(`msg="line (\d+)"`)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			l := sc.Text()
			if m := lineRE.FindStringSubmatch(l); m != nil {
				n, _ := strconv.Atoi(m[1])
				mu.Lock()
				seen[n] = true
				mu.Unlock()
			} else {
				mu.Lock()
				other = append(other, l)
				mu.Unlock()
				if strings.Contains(l, "[started] watch") {
					once.Do(func() { close(watching) })
				}
			}
		}
	}()
	select {
	case <-watching:
	case <-time.After(2 * time.Minute):
		mu.Lock()
		t.Fatalf("haagent did not reach the watch step:\n%s", strings.Join(other, "\n"))
	}
	// 1,000 lines a second: 100 lines, then a tenth of a second.
	d.MustRun(t, "run", "-d", "--name", "frontend", "--network", "none", image, "sh", "-c",
		`i=0; while :; do j=0; while [ $j -lt 100 ]; do i=$((i+1)); j=$((j+1)); echo "line $i"; done; usleep 100000; done`)
	// The runbook's way, measured alongside: docker logs -f.
	follower := exec.Command("docker", "logs", "-f", "frontend")
	follower.Env = append(os.Environ(), "DOCKER_HOST="+d.Host)
	follower.Stdout, follower.Stderr = io.Discard, io.Discard
	follower.Start()
	t.Cleanup(func() { follower.Process.Kill(); follower.Wait() })

	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("bench: %s", what)
			}
			time.Sleep(100 * time.Millisecond) // polling a child's progress
		}
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	waitFor("no frontend line forwarded", func() bool { return count() > 1000 })
	cpu0, fcpu0 := cpuSeconds(cmd.Process.Pid), cpuSeconds(follower.Process.Pid)
	n0 := count()
	time.Sleep(window) // the measurement window itself
	cpu1, fcpu1 := cpuSeconds(cmd.Process.Pid), cpuSeconds(follower.Process.Pid)
	n1 := count()
	rss, frss := peakRSS(cmd.Process.Pid), peakRSS(follower.Process.Pid)
	d.MustRun(t, "kill", "frontend")
	logs, _ := exec.Command("bash", "-c", "DOCKER_HOST="+d.Host+" docker logs frontend 2>&1 | wc -l").Output()
	printed, _ := strconv.Atoi(strings.TrimSpace(string(logs)))
	waitFor("haagent did not catch up with the last line", func() bool { return count() >= printed })
	lost := printed - count()
	rss = max(rss, peakRSS(cmd.Process.Pid))
	lines := float64(n1 - n0)
	perK := (cpu1 - cpu0) / (lines / 1000)
	fperK := (fcpu1 - fcpu0) / (lines / 1000)
	metric := fmt.Sprintf("%s at %.0f lines/s from a real dockerd", window, lines/window.Seconds())
	rep.add(Row{Section: "watch", Metric: "peak RSS, " + metric, Haagent: fmt.Sprintf("%.1f MiB", rss), Against: "docker logs -f", Baseline: fmt.Sprintf("%.1f MiB", frss),
		Ratio: ratio(frss, rss), Goal: "< 30 MiB", Met: ptr(rss < 30), Value: rss, BaseVal: frss})
	rep.add(Row{Section: "watch", Metric: "CPU seconds per 1,000 lines", Haagent: fmt.Sprintf("%.4f s", perK), Against: "docker logs -f", Baseline: fmt.Sprintf("%.4f s", fperK),
		Ratio: ratio(fperK, perK), Value: perK, BaseVal: fperK})
	rep.add(Row{Section: "watch", Metric: "lines lost on haagent's side (forwarded vs printed)", Haagent: fmt.Sprintf("%d of %d", lost, printed),
		Goal: "0", Met: ptr(lost == 0), Value: float64(lost)})
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return p
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// cpuSeconds is utime+stime of a process, from /proc/PID/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// peakRSS is VmHWM in MiB.
func peakRSS(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	kb, _ := strconv.ParseFloat(string(m[1]), 64)
	return kb / 1024
}

// --- 4. start-up ----------------------------------------------------------------------------

func benchStartup(t *testing.T, bin string, rep *report) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/haagent"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/haagent/haagent.yaml"), []byte("version: 1\nsource: {bucket: bench, region: us-east-1}\n"), 0o644)
	var ds []time.Duration
	for i := 0; i < 10; i++ {
		cmd := exec.Command(bin, "--root", root, "run", "--once")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9"}
		pipe, _ := cmd.StderrPipe()
		start := time.Now()
		cmd.Start()
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "[started] imds") {
				ds = append(ds, time.Since(start))
				break
			}
		}
		cmd.Process.Kill()
		io.Copy(io.Discard, pipe)
		cmd.Wait()
	}
	var aws []time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		exec.Command("/usr/bin/aws", "--version").Run()
		aws = append(aws, time.Since(start))
	}
	h, a := median(ds), median(aws)
	rep.add(Row{Section: "start-up", Metric: "exec to the first step started, median of 10", Haagent: fmt.Sprintf("%.1f ms", float64(h.Microseconds())/1000),
		Against: "aws --version (each of the userdata's 5 commands pays it)", Baseline: fmt.Sprintf("%.1f ms", float64(a.Microseconds())/1000),
		Ratio: ratio(a.Seconds(), h.Seconds()), Value: h.Seconds(), BaseVal: a.Seconds()})
	fi, _ := os.Stat(bin)
	rep.add(Row{Section: "start-up", Metric: "binary size (-trimpath -s -w)", Haagent: fmt.Sprintf("%.1f MiB", float64(fi.Size())/(1<<20)), Value: float64(fi.Size())})
}

// --- 5. the whole boot --------------------------------------------------------------------

// bootDelay is issue 17's proxy: every chunk held 10 ms each way.
const bootDelay = 10 * time.Millisecond

// bootInstaller stands in for the Replicated installer: it does at once what haagent's check
// of an install looks for (replicatedctl under the root, answering an empty app list, as a
// daemon whose licence is not yet active), so its own run time is ~0 and the row measures
// haagent. The root comes from its own path (haagent runs ROOT/var/lib/haagent/
// replicated-install.sh), so one pinned script serves every run's root.
const bootInstaller = `#!/bin/bash
root=${0%/var/lib/haagent/replicated-install.sh}
mkdir -p "$root/usr/local/bin"
printf '#!/bin/sh\necho "[]"\n' > "$root/usr/local/bin/replicatedctl"
chmod 755 "$root/usr/local/bin/replicatedctl"
echo "installed (bench stand-in)"
`

// bootBundle seeds the runbook's Services bundle: settings.conf, replicated.conf and the
// licence, 200 encryption keys, 49 circleconfig files (the PostgreSQL and Vault settings
// among them) and circle-installation-customizations with the MongoDB URIs and the session
// cookie key (the HA page's layout), plus what a replacement's bucket also holds and only
// haagent reads: the session-cookie-key object and the pinned installer. It returns the count
// and bytes of the objects the baselines copy (the bundle without those two).
func bootBundle(t *testing.T, s *peertest.S3, bucket string, licence int, pg, mongo, vault []byte) (files int, size int64) {
	s.MakeBucket(t, bucket)
	// Through the S3 API, so that each object has its ETag as in S3: a file written straight
	// into versitygw's directory has none, and backup-keys, finding no ETag to match what the
	// fetch recorded, would compare all 200 keys again (a cost no real bucket causes).
	put := func(key string, data []byte) {
		s.Upload(t, bucket, key, data)
		files++
		size += int64(len(data))
	}
	settingsConf, _ := os.ReadFile("../../examples/bucket/settings.conf")
	replicatedConf, _ := os.ReadFile("../../examples/bucket/replicated.conf")
	put("settings.conf", settingsConf)
	put("replicated.conf", replicatedConf)
	put("license.rli", random(licence))
	for i := 0; i < 200; i++ {
		put(fmt.Sprintf("circleci-encryption-keys/key-%03d", i), random(64))
	}
	put("circleconfig/shared/postgresql", pg)
	put("circleconfig/shared/vault", vault)
	for i := 0; i < 47; i++ {
		put(fmt.Sprintf("circleconfig/shared/conf-%02d", i), []byte(fmt.Sprintf("export SETTING_%02d=\"%x\"\n", i, random(512))))
	}
	const cookieKey = "bench0cookie0key"
	put("circle-installation-customizations", append(append([]byte(nil), mongo...), "export CIRCLE_SECRETS_SESSION_COOKIE_KEY=\""+cookieKey+"\"\n"...))
	s.Upload(t, bucket, "session-cookie-key", []byte(cookieKey))
	s.Upload(t, bucket, "replicated-install.sh", []byte(bootInstaller))
	return files, size
}

var finishedRE = regexp.MustCompile(`\[finished\] ([a-z-]+) \(([^)]+)\)`)

func benchBoot(t *testing.T, bin string, rep *report) {
	aws, s5cmd := "/usr/bin/aws", peertest.Bin(t, "s5cmd")
	if _, err := os.Stat(aws); err != nil {
		t.Fatalf("%s is missing: run scripts/peers.sh benchdeps", aws)
	}
	s := peertest.StartS3(t)
	proxy := latencyProxy(t, strings.TrimPrefix(s.URL, "http://"), bootDelay)

	// The databases and Vault as the tests start them, with TLS; their CAs are baked into the
	// image (the root's /usr/local/share/ca-certificates), so the bucket's ca-certificates/
	// is empty and the bundle is the baselines' bundle.
	const pgPass, mongoPass = "bench-pg-pw", "bench-mongo-pw"
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{HBA: []string{"hostssl all circle 127.0.0.0/8 scram-sha-256"}})
	stmts := []string{"CREATE ROLE circle LOGIN PASSWORD '" + pgPass + "'"}
	for _, db := range []string{"vms", "conductor_production", "contexts_service_production", "cron_service_production", "circle"} {
		stmts = append(stmts, "CREATE DATABASE "+db+" OWNER circle")
	}
	pg.Exec(t, "postgres", stmts...)
	pg.Exec(t, "conductor_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "contexts_service_production", `CREATE EXTENSION "uuid-ossp"`)
	pg.Exec(t, "circle", `CREATE EXTENSION "uuid-ossp"`, `CREATE EXTENSION pgcrypto`)
	fdb := peertest.StartFerretDB(t, peertest.FerretDBOptions{ReplSet: "rs0", TLS: true})
	fdb.CreateUser(t, "admin", "circle", mongoPass)
	vault := peertest.StartVault(t, true)
	vault.Do(t, "POST", "sys/mounts/transit", map[string]any{"type": "transit"})
	vault.Do(t, "PUT", "sys/policies/acl/circle", map[string]any{"policy": `path "transit/*" { capabilities = ["create", "read", "update"] }`})
	token := vault.Token(t, map[string]any{"policies": []string{"circle"}, "period": "24h"})
	pgSettings := []byte(fmt.Sprintf("export POSTGRES_HOST=\"localhost\"\nexport POSTGRES_PORT=\"%d\"\nexport POSTGRES_USER=\"circle\"\nexport POSTGRES_PASSWORD=%q\n", pg.Port, pgPass))
	mongo := "MONGO_BASE_URI=mongodb://circle:" + mongoPass + "@" + fdb.TLSAddr + "\n"
	for v, db := range map[string]string{"MAIN": "circle_ghe", "ACTION_LOGS": "circle_ghe", "BUILD_STATE": "build_state_dev_ghe",
		"CONTAINERS": "containers_dev_ghe", "REMOTE_CONTAINERS": "remote_containers_dev_ghe"} {
		mongo += "export CIRCLE_SECRETS_MONGODB_" + v + "_URI=\"$MONGO_BASE_URI/" + db + "?ssl=true&authSource=admin&replicaSet=rs0\"\n"
	}
	vhost, vport, _ := strings.Cut(vault.Addr, ":")
	vaultSettings := []byte("export VAULT__SCHEME=https\nexport VAULT__HOST=" + vhost + "\nexport VAULT__PORT=" + vport +
		"\nexport VAULT__CLIENT_TOKEN=" + token + "\nexport VAULT__TRANSIT_MOUNT=transit\n")
	cas := map[string][]byte{"bench-pg.crt": pg.CA.CertPEM, "bench-mongo.crt": fdb.CA.CertPEM, "bench-vault.crt": vault.CAPEM}
	imds := peertest.StartIMDS(t, peertest.Instance{ID: "i-0benchboot000001", LocalIPv4: "10.0.1.23", Region: region})
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+s.AccessKey, "AWS_SECRET_ACCESS_KEY="+s.SecretKey,
		"AWS_REGION="+region, "AWS_DEFAULT_REGION="+region, "AWS_EC2_METADATA_DISABLED=true", "HOME="+t.TempDir())
	sum := sha256hex([]byte(bootInstaller))

	type boot struct{ total, fetch time.Duration }
	runBoot := func(bucket string) (boot, map[string]time.Duration) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "etc/haagent"), 0o755)
		os.WriteFile(filepath.Join(root, "etc/haagent/haagent.yaml"), []byte(fmt.Sprintf(`version: 1
source: {bucket: %s, region: %s, endpoint: %s, path_style: true}
probes:
  overrides:
    MONGO_PRIVILEGE_MISSING: {blocking: false}
replicated: {installer_url: "s3://%s/replicated-install.sh", sha256: %s}
watch: {enabled: false}
`, bucket, region, proxy, bucket, sum)), 0o644)
		caDir := filepath.Join(root, "usr/local/share/ca-certificates")
		os.MkdirAll(caDir, 0o755)
		for name, pem := range cas {
			os.WriteFile(filepath.Join(caDir, name), pem, 0o644)
		}
		args := []string{"--root", root, "run", "--once"}
		if os.Getenv("HAAGENT_BENCH_BOOTLOG") != "" {
			args = append(args, "--debug") // to see where a boot's time goes; not for the figures
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "AWS_ACCESS_KEY_ID=" + s.AccessKey,
			"AWS_SECRET_ACCESS_KEY=" + s.SecretKey, "AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imds.URL}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		err := cmd.Run()
		total := time.Since(start)
		if err != nil || !strings.Contains(stderr.String(), "boot complete") {
			t.Fatalf("haagent run --once: %v\n%s", err, stderr.String())
		}
		if _, err := os.Stat(filepath.Join(root, "usr/local/bin/replicatedctl")); err != nil {
			t.Fatalf("the installer did not run:\n%s", stderr.String())
		}
		if os.Getenv("HAAGENT_BENCH_BOOTLOG") != "" {
			t.Logf("haagent's log:\n%s", stderr.String())
		}
		steps := map[string]time.Duration{}
		for _, m := range finishedRE.FindAllStringSubmatch(stderr.String(), -1) {
			d, err := time.ParseDuration(m[2])
			if err != nil {
				t.Fatalf("step %s finished in %q: %v", m[1], m[2], err)
			}
			steps[m[1]] += d
		}
		if _, ok := steps["fetch"]; !ok {
			t.Fatalf("no [finished] fetch line:\n%s", stderr.String())
		}
		return boot{total, steps["fetch"]}, steps
	}
	copies := []fetcher{
		// The replaced userdata's five commands (without its pip install), and the HA page's
		// circle-installation-customizations.
		{"awscli (6 x aws s3 cp)", func(t *testing.T, bucket, dest string) error {
			for _, a := range [][]string{
				{"settings.conf", "/etc/settings.conf"}, {"replicated.conf", "/etc/replicated.conf"}, {"license.rli", "/etc/license.rli"},
				{"circleci-encryption-keys", "/data/circle/circleci-encryption-keys/", "--recursive"},
				{"circleconfig/shared", "/etc/circleconfig/shared", "--recursive"},
				{"circle-installation-customizations", "/etc/circle-installation-customizations"},
			} {
				args := append([]string{"--endpoint-url", proxy, "s3", "cp", "--only-show-errors", "s3://" + bucket + "/" + a[0], dest + a[1]}, a[2:]...)
				if out, err := command(env, aws, args...); err != nil {
					return fmt.Errorf("aws %v: %v\n%s", args, err, out)
				}
			}
			return nil
		}},
		// s5cmd at its best: the six copies in one process, in parallel.
		{"s5cmd (one run, 6 cp)", func(t *testing.T, bucket, dest string) error {
			list := filepath.Join(t.TempDir(), "cmds")
			cmds := fmt.Sprintf("cp s3://%[1]s/settings.conf %[2]s/etc/settings.conf\ncp s3://%[1]s/replicated.conf %[2]s/etc/replicated.conf\n"+
				"cp s3://%[1]s/license.rli %[2]s/etc/license.rli\ncp 's3://%[1]s/circleci-encryption-keys/*' %[2]s/data/circle/circleci-encryption-keys/\n"+
				"cp 's3://%[1]s/circleconfig/shared/*' %[2]s/etc/circleconfig/shared/\n"+
				"cp s3://%[1]s/circle-installation-customizations %[2]s/etc/circle-installation-customizations\n", bucket, dest)
			os.WriteFile(list, []byte(cmds), 0o644)
			if out, err := command(env, s5cmd, "--endpoint-url", proxy, "run", list); err != nil {
				return fmt.Errorf("s5cmd: %v\n%s", err, out)
			}
			return nil
		}},
	}
	bundles := []struct {
		name, bucket string
		licence      int
	}{{"16 KiB licence", "boot-small", 16 << 10}, {"5 MiB licence", "boot-big", 5 << 20}}
	for _, bd := range bundles {
		files, size := bootBundle(t, s, bd.bucket, bd.licence, pgSettings, []byte(mongo), vaultSettings)
		var totals, beyond, fetches []time.Duration
		stepTimes := map[string][]time.Duration{}
		times := map[string][]time.Duration{}
		for i := 0; i < runs; i++ { // interleaved, so drift on the machine hits all alike
			b, steps := runBoot(bd.bucket)
			totals, fetches, beyond = append(totals, b.total), append(fetches, b.fetch), append(beyond, b.total-b.fetch)
			for name, d := range steps {
				stepTimes[name] = append(stepTimes[name], d)
			}
			for _, f := range copies {
				dest := t.TempDir()
				start := time.Now()
				if err := f.run(t, bd.bucket, dest); err != nil {
					t.Fatalf("%s: %v", f.name, err)
				}
				times[f.name] = append(times[f.name], time.Since(start))
				if n, b := countTree(dest); n != files || b != size {
					t.Fatalf("%s copied %d files, %d bytes; the bundle has %d, %d", f.name, n, b, files, size)
				}
			}
		}
		var stepList []string
		for name, ds := range stepTimes {
			stepList = append(stepList, fmt.Sprintf("%s %s", name, median(ds).Round(time.Millisecond)))
		}
		sort.Strings(stepList)
		t.Logf("boot, %s: step medians: %s", bd.name, strings.Join(stepList, ", "))
		ha, fe, be := median(totals), median(fetches), median(beyond)
		metric := fmt.Sprintf("whole `run --once`, bundle with a %s (%d files), 10 ms each way, median of %d", bd.name, files, runs)
		for _, f := range copies {
			base := median(times[f.name])
			goal, met := "", (*bool)(nil)
			switch {
			case strings.HasPrefix(f.name, "awscli"):
				goal, met = ">= 10", ptr(float64(base)/float64(ha) >= 10)
			case strings.HasPrefix(f.name, "s5cmd"):
				goal, met = ">= 1 (haagent/s5cmd <= 1.0)", ptr(ha <= base)
			}
			rep.add(Row{Section: "boot", Metric: metric, Haagent: secs(ha), Against: f.name, Baseline: secs(base),
				Ratio: ratio(base.Seconds(), ha.Seconds()), Goal: goal, Met: met, Value: ha.Seconds(), BaseVal: base.Seconds()})
		}
		rep.add(Row{Section: "boot", Metric: fmt.Sprintf("the boot minus its fetch step (%s licence), median of %d", strings.TrimSuffix(bd.name, " licence"), runs),
			Haagent: secs(be), Against: "the fetch step itself", Baseline: secs(fe), Ratio: ratio(fe.Seconds(), be.Seconds()),
			Goal: ">= 5 (adds <= 20 %)", Met: ptr(be*5 <= fe), Value: be.Seconds(), BaseVal: fe.Seconds()})
	}
}

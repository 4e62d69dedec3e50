package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/asg"
	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/certs"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/cookie"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/imds"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/logging"
	"github.com/haagent/haagent/internal/probes"
	"github.com/haagent/haagent/internal/replicated"
	"github.com/haagent/haagent/internal/validate"
	"github.com/haagent/haagent/internal/watch"
)

// Step is one boot step. Steps never log their own start and end: the runner does.
type Step struct {
	Name string
	Run  func(ctx context.Context, env *Env) error
	// RetryFrom names an earlier step the service goes back to when this one fails.
	RetryFrom string
	// Timeout bounds one attempt (its context ends then); nil is unbounded. A step still
	// running a minute past its timeout ignores its context: the runner stops feeding the
	// watchdog, so systemd restarts haagent instead of leaving a hung boot looking alive.
	Timeout func(env *Env) time.Duration
}

// fixed is a Timeout that does not depend on the config.
func fixed(d time.Duration) func(*Env) time.Duration { return func(*Env) time.Duration { return d } }

// Steps is the whole boot, in order. IMDS comes first because the config may live in the
// instance's user-data.
//
// Timeouts are backstops well above a healthy run (each network call inside is bounded
// already); the installer's is its own replicated.timeout plus time to verify. watch has none:
// a first install pulls CircleCI's images for as long as it takes, and the watch's own calls
// are bounded.
var Steps = []Step{
	{Name: "imds", Run: stepIMDS, Timeout: fixed(5 * time.Minute)},
	{Name: "config", Run: stepConfig, Timeout: fixed(5 * time.Minute)},
	{Name: "asg", Run: stepASG, Timeout: fixed(10 * time.Minute)},
	{Name: "fetch", Run: stepFetch, Timeout: fixed(30 * time.Minute)},
	// The cookie key is merged into the bundle's installation customizations before they are
	// validated and committed with the rest (a retry refetches: the merge starts from the
	// bucket's copy, never from its own output).
	{Name: "cookie-key", Run: stepCookieKey, RetryFrom: "fetch", Timeout: fixed(10 * time.Minute)},
	{Name: "validate-files", Run: stepValidateFiles, RetryFrom: "fetch", Timeout: fixed(10 * time.Minute)},
	// A CA or a setting fixed in the bucket must be fetched again before it can help, so these
	// go back to fetch rather than retrying what is already on disk.
	{Name: "ca-certs", Run: stepCACerts, RetryFrom: "fetch", Timeout: fixed(10 * time.Minute)},
	{Name: "probe", Run: stepProbe, RetryFrom: "fetch", Timeout: fixed(10 * time.Minute)},
	{Name: "replicated-install", Run: stepReplicatedInstall, Timeout: func(env *Env) time.Duration {
		return env.Config.Replicated.Timeout.D() + 10*time.Minute
	}},
	{Name: "watch", Run: stepWatch},
	{Name: "lifecycle-complete", Run: stepLifecycleComplete, Timeout: fixed(10 * time.Minute)},
	{Name: "backup-keys", Run: StepBackupKeys, Timeout: fixed(30 * time.Minute)},
}

func stepIMDS(ctx context.Context, env *Env) error {
	if env.IMDS == nil {
		env.IMDS = imds.New(env.IMDSTimeout)
	}
	info, err := env.IMDS.Identity(ctx)
	if err != nil {
		return imdsFailure(err)
	}
	env.Instance = info
	env.Run.InstanceID = info.InstanceID
	env.Log.Info("instance identity", "instance_id", info.InstanceID, "local_ipv4", info.LocalIPv4, "region", info.Region,
		"replacement", !env.Record.CompletedOn(info.InstanceID))
	if env.Config == nil {
		ud, err := env.IMDS.UserData(ctx)
		if err != nil {
			return imdsFailure(err)
		}
		env.UserData = ud
	}
	return nil
}

func imdsFailure(err error) error {
	var ie *imds.Error
	if errors.As(err, &ie) {
		f := findings.New(ie.Code, ie.Endpoint, "cannot read the instance identity from IMDSv2", err.Error())
		return &findings.Failure{Findings: []findings.Finding{f}}
	}
	return err
}

func stepConfig(ctx context.Context, env *Env) error {
	if env.Config == nil {
		if !config.IsUserDataConfig(env.UserData) {
			what := "the instance has no user-data"
			if len(env.UserData) > 0 {
				what = "the user-data does not start with " + config.UserDataMarker
			}
			f := findings.New(findings.ConfigMissing, env.ConfigPath, "no haagent config: "+env.ConfigPath+" does not exist and "+what, "")
			return &findings.Failure{Findings: []findings.Finding{f}}
		}
		cfg, err := config.Parse(env.UserData, "user-data")
		if err != nil {
			f := findings.New(findings.ConfigInvalid, "user-data", "the haagent config in the user-data is invalid", err.Error())
			return &findings.Failure{Findings: []findings.Finding{f}}
		}
		env.Config = cfg
	}
	c := env.Config
	b, err := env.openBucket(ctx, c.Source.Bucket, c.Source.Prefix)
	if err != nil {
		return fmt.Errorf("setting up S3 access to bucket %s: %w", c.Source.Bucket, err)
	}
	env.Bucket = b
	env.Log.Info("config loaded", "origin", c.Origin, "bucket", c.Source.Bucket, "prefix", c.Source.Prefix, "region", b.Region())
	return nil
}

// openBucket is the one constructor of every bucket client haagent uses (the source, an
// installer at s3://): the same endpoint, CA, region fallback, retries and timeout for all.
func (env *Env) openBucket(ctx context.Context, name, prefix string) (*bucket.Bucket, error) {
	c := env.Config
	caFile := ""
	if c.Source.CAFile != "" {
		caFile = env.Path(c.Source.CAFile)
	}
	return bucket.New(ctx, bucket.Options{
		Name: name, Prefix: prefix, Region: c.Source.Region,
		Endpoint: c.Source.Endpoint, PathStyle: c.Source.PathStyle, CAFile: caFile,
		FallbackRegion: env.Instance.Region, Attempts: c.Fetch.Attempts, Timeout: c.Fetch.Timeout.D(), Log: env.Log,
		// Every object haagent writes (keys, cookie key, replacement ledger) gets the same SSE.
		Encryption: bucket.Encryption{SSE: c.Backup.SSE, KMSKeyID: c.Backup.KMSKeyID},
	})
}

func stepFetch(ctx context.Context, env *Env) error {
	env.Bundle = nil
	bd, err := fetch.Fetch(ctx, env.Bucket, fetch.Options{
		Root: env.Root, Layout: env.Config.Layout, Concurrency: env.Config.Fetch.Concurrency,
		Known: env.Record.Known, Log: env.Log, Existing: func(ctx context.Context) (fetch.Existed, error) { return deploymentExisted(ctx, env) },
	})
	if bd != nil {
		env.ReportAll(bd.Findings)
	}
	if err != nil {
		if offlineOK(env, err) {
			env.Report(findings.New(findings.S3OfflineLastGood, env.Bucket.URI(""),
				"S3 is unreachable on a reboot of an instance whose earlier boot completed; using the files already in place", err.Error()))
			return nil
		}
		return err
	}
	env.Bundle = bd
	changed := 0
	for _, f := range bd.Files {
		if f.Changed {
			changed++
		}
	}
	env.Log.Info("files staged", "files", len(bd.Files), "changed", changed, "unchanged", len(bd.Files)-changed)
	return nil
}

// stepValidateFiles checks the staged files and only then moves them into place, so nothing
// valid is overwritten by something invalid.
func stepValidateFiles(ctx context.Context, env *Env) error {
	files := validate.InPlace(env.layout())
	bd := env.Bundle
	if bd != nil {
		files.Read = bd.PathOf
		inPlace := files.Exists
		files.Exists = func(p string) bool { return bd.Has(p) || inPlace(p) }
	}
	fs := validate.Check(files)
	if m := replicated.ReadMarker(env.Root); m != nil && m.InstanceID == env.Instance.InstanceID && m.SettingsSHA256 != "" && bd != nil {
		if f := bd.File(env.layout().SettingsConf()); f != nil && f.SHA256 != m.SettingsSHA256 {
			fs = append(fs, findings.New(findings.SettingsDrift, env.layout().SettingsConf(),
				"settings.conf in the bucket differs from the one Replicated was installed with; Replicated does not read it again", ""))
		}
	}
	if bd != nil {
		fs = append(fs, fetch.ShellSyntax(bd, env.Bucket.URI)...)
	}
	fs = env.adjust(fs...)
	env.ReportAll(fs)
	var blocking []findings.Finding
	for _, f := range fs {
		if f.Blocking {
			blocking = append(blocking, f)
		}
	}
	if bd != nil {
		// The fetch compared every key on both sides: this is the current list of conflicts.
		env.setKeyConflicts(bd.Conflicts)
		if len(bd.Conflicts) > 0 && !installedHere(env) {
			// Before the installer, a conflict stops the boot: CircleCI must not start on a
			// key a person has not chosen. Once it runs here, the boot goes on with the local
			// key (the one CircleCI has been using) and the finding stays until resolved.
			for _, c := range bd.Conflicts {
				f := c.Finding()
				f.Blocking = true
				blocking = append(blocking, f)
			}
		}
	}
	if len(blocking) > 0 {
		if bd != nil {
			bd.Discard()
			env.Bundle = nil
		}
		return &findings.Failure{Findings: blocking}
	}
	if bd == nil {
		// Offline reboot: the files in place were validated; their modes and owners still
		// converge, as a commit would have made them.
		fs, err := fetch.ConvergeInPlace(ctx, env.Root, env.Config.Layout, env.Record.Known, env.Log)
		env.ReportAll(fs)
		if err != nil {
			return fmt.Errorf("setting the modes and owners of the files in place: %w", err)
		}
		return checkReadable(env)
	}
	if err := bd.Commit(); err != nil {
		return fmt.Errorf("moving fetched files into place: %w", err)
	}
	env.ReportAll(bd.CommitFindings)
	// A key that appeared during the fetch was kept by the commit: a conflict if it differs.
	env.setKeyConflicts(bd.Conflicts)
	for _, c := range bd.Conflicts {
		env.Report(c.Finding())
	}
	if env.Record.Known == nil {
		env.Record.Known = map[string]fetch.Known{}
	}
	changed := 0
	env.Run.Files = env.Run.Files[:0]
	for _, f := range bd.Files {
		env.Run.Files = append(env.Run.Files, *f)
		env.Record.Known[f.Dest] = fetch.Known{Key: f.Key, ETag: f.ETag, Size: f.Size, SHA256: f.SHA256}
		if f.Changed {
			changed++
		}
	}
	sort.Slice(env.Run.Files, func(i, j int) bool { return env.Run.Files[i].Dest < env.Run.Files[j].Dest })
	// What left the bucket leaves the record (the file itself stays on the machine, reported
	// as LOCAL_ONLY_FILES): an offline reboot must not take it for part of the bundle.
	for dest := range env.Record.Known {
		if !bd.Has(dest) && underRecursive(env.Config.Layout, dest) {
			delete(env.Record.Known, dest)
		}
	}
	env.Log.Info("files in place", "files", len(bd.Files), "changed", changed, "unchanged", len(bd.Files)-changed)
	return checkReadable(env)
}

// checkReadable judges, in place, whether the Replicated daemon can read the files
// replicated.conf names: after Commit has converged modes and owners, so it sees what the
// daemon will meet, not what the stage holds.
func checkReadable(env *Env) error {
	fs := env.adjust(validate.Readable(env.layout())...)
	env.ReportAll(fs)
	var blocking []findings.Finding
	for _, f := range fs {
		if f.Blocking {
			blocking = append(blocking, f)
		}
	}
	if len(blocking) > 0 {
		return &findings.Failure{Findings: blocking}
	}
	return nil
}

func underRecursive(layout []config.Entry, dest string) bool {
	for _, e := range layout {
		if e.Recursive && strings.HasPrefix(dest, e.Dest) {
			return true
		}
	}
	return false
}

// offlineOK allows a reboot to go on with the last good files when S3 gave no answer at all;
// never on a first boot, where there are no good files.
func offlineOK(env *Env, err error) bool {
	var fail *findings.Failure
	if !errors.As(err, &fail) || !env.Record.CompletedOn(env.Instance.InstanceID) {
		return false
	}
	for _, f := range fail.Findings {
		if f.Code != findings.S3Unreachable {
			return false
		}
	}
	return len(fail.Findings) > 0
}

// stepCookieKey decides the session cookie key and stages the installation customizations:
// the bucket's copy (or, without one, the file in place) with exactly one line for the key. It
// stages into the bundle so that a failed validation leaves the old file; on a reboot that goes
// on without S3's files there is no bundle, and the file in place is merged and written.
func stepCookieKey(ctx context.Context, env *Env) error {
	e := env.layoutEntry(layout.InstallationCustomizations)
	inPlace, err := os.ReadFile(env.Path(e.Dest))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading %s: %w", e.Dest, err)
	}
	bd := env.Bundle
	if bd == nil {
		res, changed, err := cookie.Ensure(ctx, env.Bucket, env.Root, e)
		env.ReportAll(res.Findings)
		if err != nil {
			return err
		}
		env.noteCookieSource(res.Source)
		env.Log.Info("session cookie key in place", "source", res.Source, "changed", changed, "file", e.Dest)
		return nil
	}
	in := cookie.Input{InPlace: inPlace}
	if bd.Has(e.Dest) {
		// The bucket's copy: staged when it differs from the file in place, else that file.
		if in.Bucket, err = os.ReadFile(bd.PathOf(e.Dest)); err != nil {
			return fmt.Errorf("reading the fetched %s: %w", e.Dest, err)
		}
		in.FromBucket = true
	}
	res, err := cookie.Merge(ctx, env.Bucket, in)
	env.ReportAll(res.Findings)
	if err != nil {
		return err
	}
	env.noteCookieSource(res.Source)
	changed, err := bd.Stage(e, res.Content)
	if err != nil {
		return err
	}
	env.Log.Info("session cookie key staged", "source", res.Source, "changed", changed, "file", e.Dest, "from_bucket", in.FromBucket)
	return nil
}

// noteCookieSource records, in the run record, that this instance created the bucket's session
// cookie key (any source but "s3": the key was this instance's candidate). Only then is that
// object no evidence of an earlier deployment when this instance boots again.
func (env *Env) noteCookieSource(source string) {
	if source != "s3" && source != "" {
		env.Record.CookieCreatedBy = env.Instance.InstanceID
	}
}

// layout is where this boot's files live: the config's layout under --root.
func (env *Env) layout() layout.Layout { return layout.New(env.Root, env.Config.Layout) }

// layoutEntry returns the config's layout entry of that name.
func (env *Env) layoutEntry(name string) config.Entry { return env.layout().Entry(name) }

// stepProbe checks the databases and Vault with the settings just fetched. Only findings that
// would certainly make the install fail block it; the runner retries them with backoff, as a
// database may still be starting.
func stepProbe(ctx context.Context, env *Env) error {
	rep := runProbes(ctx, env)
	env.ReportAll(rep.Findings)
	for _, c := range rep.Checked {
		env.Log.Info("probed", "service", c.Service, "target", c.Target, "ok", c.OK, "detail", c.Detail)
	}
	if b := rep.Blocking(); len(b) > 0 {
		if env.Config.Probes.ProceedAnyway {
			env.Log.Warn("blocking findings, but probes.proceed_anyway is set: going on to the installer", "blocking", len(b))
			return nil
		}
		return &findings.Failure{Findings: b}
	}
	env.Log.Info("probes passed", "checked", len(rep.Checked), "findings", len(rep.Findings), "duration", rep.Duration.Round(time.Millisecond).String())
	return nil
}

// stepCACerts installs the bucket's (and the config's) CA certificates before the probes, so
// the probes and the services trust the same store.
func stepCACerts(ctx context.Context, env *Env) error {
	var sources []certs.Source
	for _, e := range env.Config.Layout {
		if e.Name != layout.CACertificates {
			continue
		}
		// From the bundle's listing, not the staging directory: a CA removed from the bucket
		// stays there (fetch never deletes) but must no longer be trusted. Offline (a reboot
		// with S3 down), the record of the last fetch says what the bucket held.
		if env.Bundle != nil {
			for _, f := range env.Bundle.Files {
				if f.Entry == e.Name {
					sources = append(sources, certs.Source{Path: f.Dest, Name: f.Key})
				}
			}
			continue
		}
		for dest, k := range env.Record.Known {
			if strings.HasPrefix(dest, e.Dest) && strings.HasPrefix(k.Key, e.Key) {
				sources = append(sources, certs.Source{Path: dest, Name: k.Key})
			}
		}
		sort.Slice(sources, func(i, j int) bool { return sources[i].Path < sources[j].Path })
	}
	sources = append(sources, certs.Paths(env.Config.CACertificates...)...)
	res, err := certs.Install(env.layout(), sources, time.Now())
	env.ReportAll(res.Findings)
	if err != nil {
		return err
	}
	env.Log.Info("CA certificates in place", "installed", len(res.Installed), "removed", len(res.Removed), "store_refreshed", res.Refreshed)
	return nil
}

// stepReplicatedInstall runs the installer once per instance, with the arguments that keep
// the real script from asking (public address, no-docker), and verifies that it installed.
func stepReplicatedInstall(ctx context.Context, env *Env) error {
	c := env.Config
	settingsSHA := ""
	if r, err := atomicfile.HashFile(env.Path(env.layout().SettingsConf())); err == nil {
		settingsSHA = r.SHA256
	}
	// haagent's proxy, as its own clients take it (HTTPS first); HTTP_PROXY alone is a proxy
	// too: the script reads it first.
	proxy, noProxy := "", ""
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		if proxy = os.Getenv(k); proxy != "" {
			break
		}
	}
	for _, k := range []string{"NO_PROXY", "no_proxy"} {
		if noProxy = os.Getenv(k); noProxy != "" {
			break
		}
	}
	// The script's discoverProxy takes replicated.conf's HttpProxy before its environment: with
	// one there it must not get no-proxy, and a different proxy of haagent's would not be used.
	conf := env.layout().ReplicatedConf()
	if b, err := os.ReadFile(env.Path(conf)); err == nil {
		switch confProxy := replicated.ConfHTTPProxy(b); {
		case confProxy == "":
		case proxy == "":
			proxy = confProxy
		case confProxy != proxy:
			return &findings.Failure{Findings: []findings.Finding{findings.New(findings.FileInvalid, conf,
				fmt.Sprintf("%s sets HttpProxy %s but haagent's proxy is %s: the installer would use %s's, not the one haagent checked its connections through; it was not run",
					conf, replicated.Redact(confProxy), replicated.Redact(proxy), conf), "").
				WithFix(fmt.Sprintf("set the same proxy in both (HttpProxy in the bucket's replicated.conf and HTTPS_PROXY in haagent's environment), or remove HttpProxy from %s", conf))}}
		}
	}
	// The script's own public-address discovery is a plain IMDSv1 request, which fails on an
	// instance that requires IMDSv2, and then it prompts: haagent asks IMDSv2 instead.
	public := ""
	if !replicated.SetsPublicAddress(c.Replicated.ExtraArgs) {
		var err error
		if public, err = env.IMDS.PublicIPv4(ctx); err != nil {
			return imdsFailure(err)
		}
	}
	res, err := replicated.Ensure(ctx, replicated.Options{
		Root: env.Root, URL: c.Replicated.InstallerURL, SHA256: c.Replicated.SHA256, ExtraArgs: c.Replicated.ExtraArgs,
		Version: c.Replicated.Version, Timeout: c.Replicated.Timeout.D(), LocalAddress: env.Instance.LocalIPv4,
		PublicAddress: public, DockerInstalled: replicated.DockerInstalled(env.Root), InstanceID: env.Instance.InstanceID,
		SettingsSHA256: settingsSHA, Proxy: proxy, NoProxy: noProxy, Reinstall: env.Reinstall, RootCAs: probes.TrustPool(env.layout()),
		Systemd: env.Root == "/" && replicated.UnderSystemd(), Log: env.Log.With("step", "replicated-install"),
		// Report logs a finding once per run, however often the step is retried.
		Report:     env.Report,
		OpenBucket: func(ctx context.Context, name string) (*bucket.Bucket, error) { return env.openBucket(ctx, name, "") },
	})
	if err != nil {
		return err
	}
	// AppState is set whenever an install was verified: one run here, or one an earlier
	// haagent started and this one waited for.
	if res.AppState != "" {
		env.Log.Info("Replicated installed and answering", "installer_sha256", res.SHA256, "app_state", res.AppState)
	}
	return nil
}

// stepWatch waits for the frontend container to run (and be healthy), and starts what goes on
// after the boot: its logs into the journal and crash-loop detection.
func stepWatch(ctx context.Context, env *Env) error {
	c := env.Config.Watch
	if !c.On() {
		env.Log.Info("the frontend watch is disabled in the config (watch.enabled: false)")
		return nil
	}
	if env.Watcher == nil {
		w, err := watch.New(watch.Options{
			Name: c.Container, StuckAfter: c.StuckAfter.D(), ReprobeEvery: c.ReprobeEvery.D(),
			CrashRestarts: c.CrashRestarts, CrashWindow: c.CrashWindow.D(), Log: env.Log,
			Sink:     logging.NewContainerSink(c.Container, env.Log),
			Status:   func(s string) { Notify("STATUS=" + s) },
			MarkPath: env.Path(layout.FrontendMark),
			// A wedged engine is a state the journal and status show, not a hang: every Docker
			// call is bounded, and the guard sees the frontend as down meanwhile.
			Engine: func(err error) {
				if err != nil {
					env.LateFinding(findings.New(findings.DockerNotAnswering, "dockerd", "the Docker engine does not answer; the frontend cannot be watched", findings.Redact(err.Error())))
					return
				}
				env.Log.Info("the Docker engine answers again")
				env.clearLate(findings.DockerNotAnswering, "dockerd")
			},
			Probe: func(ctx context.Context) []findings.Finding {
				return runProbes(ctx, env).Findings
			},
		})
		if err != nil {
			return err
		}
		env.Watcher = w
		// On an instance whose frontend was up before, a frontend that never comes back is a
		// failure the guard judges; on a first boot it is the install still running.
		if env.Record.CompletedOn(env.Instance.InstanceID) {
			startGuard(ctx, env)
		}
		// The haagent before this one left a mark of how far it forwarded; without one,
		// lines from before this run are taken as forwarded by an older haagent.
		env.background.Add(1)
		mctx := env.monitorCtx()
		go func() { defer env.background.Done(); w.Follow(mctx, env.Run.Start) }()
		// CircleCI creates its keys on its first start, while the watch waits for it: the scan
		// backs them up as soon as they are written, not only after the boot.
		startKeyScan(env)
		go w.CrashLoops(mctx, func(dies int, window time.Duration) {
			probed := runProbes(mctx, env).Findings
			last := strings.Join(w.LastLines(), " | ")
			if len(last) > 2000 {
				last = "..." + last[len(last)-2000:]
			}
			f := findings.New(findings.FrontendCrashLoop, c.Container,
				fmt.Sprintf("%s died %d times within %s; probes now: %s", c.Container, dies, window, findings.Codes(probed)),
				"last lines: "+last)
			env.LateFinding(f)
		})
	}
	if err := env.Watcher.WaitReady(ctx); err != nil {
		return fmt.Errorf("waiting for %s: %w", c.Container, err)
	}
	env.Log.Info("frontend is up", "container", c.Container)
	startGuard(ctx, env)
	return nil
}

// StepBackupKeys copies encryption keys that exist only on this machine to the bucket, after
// the boot (CircleCI creates its keys on first start). It fails while any key is not in S3,
// so the service keeps trying and the run is not reported complete with keys at risk.
func StepBackupKeys(ctx context.Context, env *Env) error {
	e := env.keysEntry()
	res, err := backup.Keys(ctx, env.Bucket, env.keysOptions())
	var be *bucket.Error
	if err != nil && errors.As(err, &be) && be.Code() == findings.S3Unreachable {
		if env.Record.CompletedOn(env.Instance.InstanceID) {
			// A reboot with S3 down (the fetch went on with the last good files): the keys were
			// backed up by an earlier boot; the scan compares them once S3 answers.
			env.Report(findings.New(findings.KeysBackupSkipped, env.Bucket.URI(e.Key), "S3 is unreachable: the encryption keys were not compared with the bucket", err.Error()))
			startKeyScan(env)
			return nil
		}
		// A first boot: the keys CircleCI just made exist only here. Not complete until they
		// are in S3; the service retries.
		f := findings.New(findings.KeysNotBackedUp, env.Bucket.URI(e.Key),
			"S3 is unreachable on this instance's first boot: its encryption keys exist only on this machine", err.Error()).
			WithFix(be.Fix() + "; haagent retries the backup until it succeeds")
		return &findings.Failure{Findings: []findings.Finding{f}}
	}
	if err != nil {
		return err
	}
	env.setKeyConflicts(res.Details)
	startKeyScan(env)
	env.ReportAll(res.Findings)
	env.Log.Info("encryption keys backed up", "uploaded", len(res.Uploaded), "in_sync", len(res.InSync),
		"conflicts", len(res.Conflicts), "not_backed_up", len(res.NotBackedUp))
	var errs []findings.Finding
	for _, f := range res.Findings {
		if f.Severity == findings.Error {
			errs = append(errs, f)
		}
	}
	if len(errs) > 0 {
		return &findings.Failure{Findings: errs}
	}
	return nil
}

// BackupKeysNow is the step of `haagent backup keys`: the backup on demand. Unlike the boot's
// step it never skips: a person asked whether the keys are in S3, and S3 being unreachable is
// a failure, not a warning. The outcome is left in *res for the command to print.
func BackupKeysNow(res *backup.Result) Step {
	return Step{Name: "backup-keys", Run: func(ctx context.Context, env *Env) error {
		r, err := backup.Keys(ctx, env.Bucket, env.keysOptions())
		*res = r
		if err != nil {
			return err
		}
		env.ReportAll(r.Findings)
		var errs []findings.Finding
		for _, f := range r.Findings {
			if f.Severity == findings.Error {
				errs = append(errs, f)
			}
		}
		if len(errs) > 0 {
			return &findings.Failure{Findings: errs}
		}
		return nil
	}}
}

// keysOptions is where the keys are, for the backup.
func (env *Env) keysOptions() backup.Options {
	e := env.keysEntry()
	known := map[string]fetch.Known{}
	for _, k := range env.Record.Known {
		if strings.HasPrefix(k.Key, e.Key) {
			known[k.Key] = k
		}
	}
	return backup.Options{Root: env.Root, LocalDir: e.Dest, Prefix: e.Key, Known: known}
}

// installedHere reports whether CircleCI was installed on this instance (the installer's
// marker, or a completed boot): what already runs here must not be stopped.
func installedHere(env *Env) bool {
	if m := replicated.ReadMarker(env.Root); m != nil && m.InstanceID == env.Instance.InstanceID {
		return true
	}
	return env.Record.CompletedOn(env.Instance.InstanceID)
}

// deploymentExisted returns evidence that this CircleCI deployment existed before this boot:
// this machine's record or installer marker, or objects only an earlier instance writes (the
// replacement ledger; the session cookie key, unless the record says this very instance created
// it, on an earlier, unfinished attempt of its first boot). An empty Why means a brand-new
// install. An earlier run of this instance alone is no such proof: a run stopped by KEYS_MISSING
// at the fetch never reached the cookie-key step, and a restart must stop again.
func deploymentExisted(ctx context.Context, env *Env) (fetch.Existed, error) {
	here := installedHere(env)
	if why := env.Record.InstalledBefore(); why != "" {
		return fetch.Existed{Why: why, Here: here}, nil
	}
	if m := replicated.ReadMarker(env.Root); m != nil {
		return fetch.Existed{Why: fmt.Sprintf("Replicated was installed on this machine (instance %s, %s)", m.InstanceID, layout.InstallMarker), Here: here}, nil
	}
	keys := []string{asg.LedgerKey}
	if env.Record.CookieCreatedBy == "" || env.Record.CookieCreatedBy != env.Instance.InstanceID {
		keys = append(keys, cookie.Object)
	}
	for _, key := range keys {
		objs, err := env.Bucket.List(ctx, key)
		if err != nil {
			return fetch.Existed{}, err
		}
		for _, o := range objs {
			if o.Rel == "" {
				return fetch.Existed{Why: fmt.Sprintf("the bucket holds %s, which only an earlier instance writes", env.Bucket.URI(key)), Here: here}, nil
			}
		}
	}
	return fetch.Existed{}, nil
}

// startKeyScan starts, once, the periodic keys backup that runs for as long as haagent does.
// Each scan that writes takes the run lock (lockForWrite): while the boot steps run this
// process holds it already; afterwards an on-demand command may hold it, and the scan waits.
func startKeyScan(env *Env) {
	ctx := env.monitorCtx()
	env.keyScan.Do(func() {
		env.background.Add(1)
		go func() {
			defer env.background.Done()
			scanKeys(ctx, env, env.Config.Backup.ScanEvery.D())
		}()
	})
}

// scanKeys looks at the keys directory every period and backs it up again when it changed, or
// while the last backup left a key out (a conflict, a failed upload, a key still being
// written). Its findings are late findings: they join the run record and the journal.
func scanKeys(ctx context.Context, env *Env, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var sc keyScanner
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sc.scan(ctx, env, every)
	}
}

// keyScanner is the periodic scan's memory between two scans.
type keyScanner struct {
	last       string // the local fingerprint at the last full comparison
	lastRemote string // the bucket side's (names and sizes) then; "" when unknown
	settled    bool   // that comparison left nothing out
}

// scan is one scan; it reports whether it ran a full comparison (backup.Keys). Both sides are
// looked at every time: the local directory, and the keys prefix with one ListObjectsV2, so a
// backup copy deleted (or replaced) in the bucket is put back (or reported) at the next scan,
// not at the next boot.
func (sc *keyScanner) scan(ctx context.Context, env *Env, every time.Duration) bool {
	o := env.keysOptions()
	fp := backup.Fingerprint(o)
	objs, err := env.Bucket.List(ctx, o.Prefix)
	if err != nil {
		if ctx.Err() == nil {
			env.Log.Warn("the periodic keys backup could not list the keys in the bucket; trying again at the next scan",
				"every", every.String(), "prefix", env.Bucket.URI(o.Prefix), "error", err.Error())
		}
		sc.settled = false
		return false
	}
	var rb strings.Builder
	for _, obj := range objs {
		fmt.Fprintf(&rb, "%q %d %s\n", obj.Rel, obj.Size, obj.ETag)
	}
	remote := rb.String()
	if sc.settled && fp == sc.last && remote == sc.lastRemote {
		return false
	}
	release, err := env.lockForWrite()
	if err != nil {
		env.Log.Info("the periodic keys backup waits for the next scan: another haagent command holds the lock", "error", err.Error())
		sc.settled = false
		return false
	}
	res, err := backup.Keys(ctx, env.Bucket, o)
	release()
	if err != nil {
		if ctx.Err() == nil {
			env.Log.Warn("the periodic keys backup could not compare the keys with the bucket; trying again at the next scan",
				"every", every.String(), "error", err.Error())
		}
		sc.settled = false
		return true
	}
	// An upload changed the bucket's side after the listing: the next scan lists it anew and
	// compares once more; with nothing uploaded the listing is what was compared against.
	sc.lastRemote = remote
	if len(res.Uploaded) > 0 {
		sc.lastRemote = ""
	}
	env.setKeyConflicts(res.Details)
	env.lateKeys(res.Findings)
	if len(res.Uploaded) > 0 {
		env.Log.Info("encryption keys backed up by the periodic scan", "uploaded", strings.Join(res.Uploaded, ","), "in_sync", len(res.InSync))
	}
	sc.last, sc.settled = fp, len(res.NotBackedUp)+len(res.Conflicts) == 0
	return true
}

func (env *Env) keysEntry() config.Entry { return env.layoutEntry(layout.EncryptionKeys) }

// runProbes checks the databases and Vault with the settings in place: the probe step, the
// stuck frontend and a crash loop all ask the same question.
func runProbes(ctx context.Context, env *Env) *probes.Report {
	return probes.Run(ctx, env.layout(), probes.OptionsFrom(env.Config))
}

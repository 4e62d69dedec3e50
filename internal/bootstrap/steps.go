package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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

// Step is one row of the boot table. Steps never log their own start and end, record
// findings, write the run record or send STATUS=: the runner does.
type Step struct {
	Name string
	// Retry is where the service goes back to when this step fails: the step itself, or an
	// earlier one (From).
	Retry Retry
	// Timeout bounds one attempt (its context ends then); nil is unbounded. A step still
	// running a minute past its timeout ignores its context: the runner stops feeding the
	// watchdog, so systemd restarts haagent instead of leaving a hung boot looking alive.
	Timeout func(*State) time.Duration
	// Do is the step with its wiring (Wire): it reads the step's input from the boot, and
	// returns the attempt, whose result the runner writes back.
	Do Do
	// Durable: the run record is on disk before the step starts and when it ends, before the
	// next one (what a boot after a crash decides from: the installer ran or not, the group
	// was told). Other steps' records are written behind the boot (saver).
	Durable bool
}

// Retry is a step's retry scope.
type Retry struct{ from string }

// From retries from the named earlier step (a fix in the bucket must be fetched again before it
// can help). A name that is not an earlier step is refused before anything runs (CheckSteps).
func From(step string) Retry { return Retry{from: step} }

// Exec is what the runner gives every step besides its input.
type Exec struct {
	// Log is the step's logger: HAAGENT_STEP (step=) is on every line it logs.
	Log *slog.Logger
	// Report files a finding with the runner at once, for one the journal needs before the
	// step ends (an unpinned installer, before it runs as root); otherwise a step returns its
	// findings. Either way the runner records and logs them.
	Report func(findings.Finding)
	// Status sets systemd's STATUS= line (the watch's progress while the frontend comes up).
	Status func(string)
}

// Do starts one attempt of a step: it takes the step's input from the boot now, on the
// runner's goroutine, and returns the attempt to run on the step's own.
type Do func(e *Env, x Exec) Attempt

// Attempt runs the step. Its apply writes the step's output back into the boot; the runner
// calls it on its own goroutine once the attempt returned, failed or not (an output says what
// holds after the attempt), and never for an attempt it gave up on as hung.
type Attempt func(ctx context.Context) (apply func(*Env), fs []findings.Finding, err error)

// Wire makes a step of a function of In to Out and its wiring: in builds the input from the
// boot, out writes the output back (nil: the step produces nothing the boot keeps).
func Wire[In, Out any](in func(*Env) In, step func(context.Context, Exec, In) (Out, []findings.Finding, error), out func(*Env, Out)) Do {
	return func(e *Env, x Exec) Attempt {
		input := in(e)
		return func(ctx context.Context) (func(*Env), []findings.Finding, error) {
			o, fs, err := step(ctx, x, input)
			return func(e *Env) {
				if out != nil {
					out(e, o)
				}
			}, fs, err
		}
	}
}

// fixed is a Timeout that does not depend on the config.
func fixed(d time.Duration) func(*State) time.Duration {
	return func(*State) time.Duration { return d }
}

// Steps is the whole boot, in order, with the wiring of each step: what it reads of the boot
// (Inputs, State, the run record) and what of its output the boot keeps. IMDS comes first
// because the config may live in the instance's user-data.
//
// Timeouts are backstops well above a healthy run (each network call inside is bounded
// already); the installer's is its own replicated.timeout plus time to verify. watch has none:
// a first install pulls CircleCI's images for as long as it takes, and the watch's own calls
// are bounded.
var Steps = []Step{
	{Name: "imds", Timeout: fixed(5 * time.Minute), Do: Wire(
		func(e *Env) imdsIn {
			return imdsIn{Client: e.IMDS, Timeout: e.IMDSTimeout, WantUserData: e.FileConfig == nil, CompletedOn: e.Record.CompletedOn}
		},
		stepIMDS,
		func(e *Env, o imdsOut) {
			e.IMDS, e.UserData = o.Client, o.UserData
			if o.Instance.InstanceID != "" {
				e.Instance, e.Run.InstanceID = o.Instance, o.Instance.InstanceID
			}
		})},
	{Name: "config", Timeout: fixed(5 * time.Minute), Do: Wire(
		func(e *Env) configIn {
			return configIn{File: e.FileConfig, Path: e.ConfigPath, UserData: e.UserData, Root: e.Root, Region: e.Instance.Region, Log: e.Log}
		},
		stepConfig,
		func(e *Env, o configOut) { e.Config, e.Bucket = o.Config, o.Bucket })},
	{Name: "asg", Timeout: fixed(10 * time.Minute), Do: Wire(
		func(e *Env) asgIn {
			return asgIn{Config: e.Config.ASG, Instance: e.Instance, IMDS: e.IMDS, Auto: e.autoScaling()}
		},
		stepASG, nil)}, // its state and monitors are the Auto Scaling part's own (asg.go)
	{Name: "fetch", Timeout: fixed(30 * time.Minute), Do: Wire(
		func(e *Env) fetchIn {
			return fetchIn{Root: e.Root, Config: e.Config, Bucket: e.Bucket, Instance: e.Instance.InstanceID, Known: e.Record.Known,
				Completed: e.Record.CompletedOn(e.Instance.InstanceID), InstalledBefore: e.Record.InstalledBefore(),
				CookieCreatedBy: e.Record.CookieCreatedBy, Reinstall: e.Reinstall}
		},
		stepFetch,
		func(e *Env, o fetchOut) { e.Bundle = o.Bundle })},
	// The cookie key is merged into the bundle's installation customizations before they are
	// validated and committed with the rest (a retry refetches: the merge starts from the
	// bucket's copy, never from its own output).
	{Name: "cookie-key", Retry: From("fetch"), Timeout: fixed(10 * time.Minute), Do: Wire(
		func(e *Env) cookieIn {
			return cookieIn{Root: e.Root, Bucket: e.Bucket, Bundle: e.Bundle, Entry: layoutEntry(e.Config, layout.InstallationCustomizations)}
		},
		stepCookieKey,
		func(e *Env, o cookieOut) {
			// Only a key this instance created is no evidence of an earlier deployment when it
			// boots again.
			if o.CreatedHere {
				e.Record.CookieCreatedBy = e.Instance.InstanceID
			}
		})},
	{Name: "validate-files", Retry: From("fetch"), Timeout: fixed(10 * time.Minute), Do: Wire(
		func(e *Env) validateIn {
			return validateIn{Root: e.Root, Config: e.Config, Bundle: e.Bundle, Bucket: e.Bucket, Instance: e.Instance.InstanceID,
				Known: e.Record.Known, Completed: e.Record.CompletedOn(e.Instance.InstanceID)}
		},
		stepValidateFiles,
		func(e *Env, o validateOut) {
			e.Bundle = o.Bundle
			if o.ConflictsKnown {
				e.setKeyConflicts(o.Conflicts)
			}
			if o.Known != nil {
				e.Record.Known, e.Run.Files = o.Known, o.Files
			}
		})},
	// A CA or a setting fixed in the bucket must be fetched again before it can help, so these
	// go back to fetch rather than retrying what is already on disk.
	{Name: "ca-certs", Retry: From("fetch"), Timeout: fixed(10 * time.Minute), Do: Wire(
		func(e *Env) caIn {
			return caIn{Root: e.Root, Config: e.Config, Bundle: e.Bundle, Known: e.Record.Known}
		},
		stepCACerts, nil)},
	{Name: "probe", Retry: From("fetch"), Timeout: fixed(10 * time.Minute), Do: Wire(
		func(e *Env) probeIn { return probeIn{Root: e.Root, Config: e.Config} },
		stepProbe, nil)},
	// The address the builders know, before the installer takes it as its local address. A
	// held address is waited for inside the step (address.retry_every); the timeout only ends
	// a wait that would outlast a replacement, and the step starts over.
	{Name: "address", Timeout: fixed(30 * time.Minute), Do: Wire(
		func(e *Env) addressIn {
			return addressIn{Root: e.Root, Config: e.Config.Address, Instance: e.Instance, IMDS: e.IMDS, ASG: e.autoScaling().Client(),
				Systemd: e.Root == "/" && replicated.UnderSystemd()}
		},
		stepAddress, nil)},
	{Name: "replicated-install", Durable: true, Timeout: func(s *State) time.Duration { return s.Config.Replicated.Timeout.D() + 10*time.Minute }, Do: Wire(
		func(e *Env) installIn {
			return installIn{Root: e.Root, Config: e.Config, Instance: e.Instance, IMDS: e.IMDS, Reinstall: e.Reinstall, Open: e.bucketOpener(), Bundle: e.Bundle}
		},
		stepReplicatedInstall, nil)},
	// The frontend's log forwarding and crash-loop detection start before the wait for it,
	// which may last as long as a first install pulls images.
	{Name: "watch-start", Timeout: fixed(5 * time.Minute), Do: Wire(
		func(e *Env) watchStartIn {
			return watchStartIn{Root: e.Root, Config: e.Config, Watcher: e.Watcher, Since: e.Run.Start, Log: e.Log,
				Completed: e.Record.CompletedOn(e.Instance.InstanceID),
				KeysScan:  keyScanMonitor(e), Guard: guardMonitor(e),
				CrashLoops: func(w *watch.Watcher) Monitor { return crashLoopMonitor(e, w, e.Config.Watch.Container) }}
		},
		stepWatchStart,
		func(e *Env, o watchStartOut) {
			e.Watcher = o.Watcher
			e.supervise(o.Monitors...)
		})},
	{Name: "watch", Do: Wire(
		func(e *Env) watchIn {
			return watchIn{Config: e.Config.Watch, Watcher: e.Watcher, Guard: guardMonitor(e)}
		},
		stepWatch,
		func(e *Env, o watchOut) { e.supervise(o.Monitors...) })},
	{Name: "lifecycle-complete", Durable: true, Timeout: fixed(10 * time.Minute), Do: Wire(
		func(e *Env) lifecycleIn { return lifecycleIn{Enabled: e.Config.ASG.Enabled, Auto: e.autoScaling()} },
		stepLifecycleComplete, nil)},
	{Name: "backup-keys", Timeout: fixed(30 * time.Minute), Do: Wire(
		func(e *Env) backupIn {
			return backupIn{Bucket: e.Bucket, Keys: e.keysOptions(), Entry: layoutEntry(e.Config, layout.EncryptionKeys),
				Completed: e.Record.CompletedOn(e.Instance.InstanceID), KeysScan: keyScanMonitor(e), KeysMu: &e.keysMu}
		},
		StepBackupKeys,
		func(e *Env, o backupOut) {
			if o.ConflictsKnown {
				e.setKeyConflicts(o.Conflicts)
			}
			if len(o.Verified) > 0 {
				e.Record.Known = recordVerified(e.Record.Known, layoutEntry(e.Config, layout.EncryptionKeys), o.Verified)
			}
			e.supervise(o.Monitors...)
		})},
	// After the keys are safe: the builders' ports answer on the stable address.
	{Name: "address-check", Timeout: fixed(5 * time.Minute), Do: Wire(
		func(e *Env) addressCheckIn {
			return addressCheckIn{Config: e.Config.Address, Instance: e.Instance, IMDS: e.IMDS}
		},
		stepAddressCheck, func(e *Env, o addressCheckOut) { e.supervise(o.Monitors...) })},
}

type imdsIn struct {
	Client       *imds.Client // nil: a client of Timeout
	Timeout      time.Duration
	WantUserData bool // no config file: the config may be in the user-data
	CompletedOn  func(instanceID string) bool
}

type imdsOut struct {
	Client   *imds.Client
	Instance imds.Info
	UserData []byte
}

func stepIMDS(ctx context.Context, x Exec, in imdsIn) (imdsOut, []findings.Finding, error) {
	out := imdsOut{Client: in.Client}
	if out.Client == nil {
		out.Client = imds.New(in.Timeout)
	}
	info, err := out.Client.Identity(ctx)
	if err != nil {
		return out, nil, imdsFailure(err)
	}
	out.Instance = info
	x.Log.Info("instance identity", "instance_id", info.InstanceID, "local_ipv4", info.LocalIPv4, "region", info.Region,
		"replacement", !in.CompletedOn(info.InstanceID))
	if in.WantUserData {
		ud, err := out.Client.UserData(ctx)
		if err != nil {
			return out, nil, imdsFailure(err)
		}
		out.UserData = ud
	}
	return out, nil, nil
}

func imdsFailure(err error) error {
	var ie *imds.Error
	if errors.As(err, &ie) {
		f := findings.New(ie.Code, ie.Endpoint, "cannot read the instance identity from IMDSv2", err.Error())
		return &findings.Failure{Findings: []findings.Finding{f}}
	}
	return err
}

type configIn struct {
	File     *config.Config // the config file's, nil when there is none
	Path     string
	UserData []byte
	Root     string
	Region   string // the instance's, the bucket's last fallback
	// Log is the bucket client's: the run's, not this step's, since every later step and
	// monitor uses the same client.
	Log *slog.Logger
}

type configOut struct {
	Config *config.Config
	Bucket *bucket.Bucket
}

func stepConfig(ctx context.Context, x Exec, in configIn) (configOut, []findings.Finding, error) {
	c := in.File
	if c == nil {
		if !config.IsUserDataConfig(in.UserData) {
			what := "the instance has no user-data"
			if len(in.UserData) > 0 {
				what = "the user-data does not start with " + config.UserDataMarker
			}
			f := findings.New(findings.ConfigMissing, in.Path, "no haagent config: "+in.Path+" does not exist and "+what, "")
			return configOut{}, nil, &findings.Failure{Findings: []findings.Finding{f}}
		}
		cfg, err := config.Parse(in.UserData, "user-data")
		if err != nil {
			f := findings.New(findings.ConfigInvalid, "user-data", "the haagent config in the user-data is invalid", err.Error())
			return configOut{}, nil, &findings.Failure{Findings: []findings.Finding{f}}
		}
		c = cfg
	}
	open := buckets{root: in.Root, cfg: c, region: in.Region, log: in.Log}
	b, err := open.open(ctx, c.Source.Bucket, c.Source.Prefix)
	if err != nil {
		return configOut{Config: c}, nil, fmt.Errorf("setting up S3 access to bucket %s: %w", c.Source.Bucket, err)
	}
	x.Log.Info("config loaded", "origin", c.Origin, "bucket", c.Source.Bucket, "prefix", c.Source.Prefix, "region", b.Region())
	return configOut{Config: c, Bucket: b}, nil, nil
}

// buckets is the one constructor of every bucket client haagent uses (the source, an installer
// at s3://): the same endpoint, CA, region fallback, retries and timeout for all.
type buckets struct {
	root   string
	cfg    *config.Config
	region string
	log    *slog.Logger
}

func (e *Env) bucketOpener() buckets {
	return buckets{root: e.Root, cfg: e.Config, region: e.Instance.Region, log: e.Log}
}

func (o buckets) open(ctx context.Context, name, prefix string) (*bucket.Bucket, error) {
	c := o.cfg
	caFile := ""
	if c.Source.CAFile != "" {
		caFile = filepath.Join(o.root, c.Source.CAFile)
	}
	return bucket.New(ctx, bucket.Options{
		Name: name, Prefix: prefix, Region: c.Source.Region,
		Endpoint: c.Source.Endpoint, PathStyle: c.Source.PathStyle, CAFile: caFile,
		FallbackRegion: o.region, Attempts: c.Fetch.Attempts, Timeout: c.Fetch.Timeout.D(), Log: o.log,
		// Every object haagent writes (keys, cookie key, replacement ledger) gets the same SSE.
		Encryption: bucket.Encryption{SSE: c.Backup.SSE, KMSKeyID: c.Backup.KMSKeyID},
	})
}

type fetchIn struct {
	Root   string
	Config *config.Config
	Bucket *bucket.Bucket
	// Instance and what the run record knows of it and of the files.
	Instance        string
	Known           map[string]fetch.Known
	Completed       bool   // an earlier boot of this instance completed
	InstalledBefore string // the record's evidence of an earlier deployment
	CookieCreatedBy string
	Reinstall       bool // haagent run --reinstall: the installer runs again
}

type fetchOut struct {
	Bundle *fetch.Bundle // nil on failure, and offline
}

func stepFetch(ctx context.Context, x Exec, in fetchIn) (fetchOut, []findings.Finding, error) {
	bd, err := fetch.Fetch(ctx, in.Bucket, fetch.Options{
		Root: in.Root, Layout: in.Config.Layout, Concurrency: in.Config.Fetch.Concurrency,
		Known: in.Known, Log: x.Log, Existing: func(ctx context.Context) (fetch.Existed, error) { return deploymentExisted(ctx, in) },
		Objects: passObjects(in.Root, in.Config, in.Instance, in.Reinstall),
	})
	var fs []findings.Finding
	if bd != nil {
		fs = bd.Findings
	}
	if err != nil {
		if offlineOK(in.Completed, err) {
			fs = append(fs, findings.New(findings.S3OfflineLastGood, in.Bucket.URI(""),
				"S3 is unreachable on a reboot of an instance whose earlier boot completed; using the files already in place", err.Error()))
			return fetchOut{}, fs, nil
		}
		return fetchOut{}, fs, err
	}
	changed := 0
	for _, f := range bd.Files {
		if f.Changed {
			changed++
		}
	}
	x.Log.Info("files staged", "files", len(bd.Files), "changed", changed, "unchanged", len(bd.Files)-changed)
	return fetchOut{Bundle: bd}, fs, nil
}

// passObjects are the objects later steps read, fetched in the fetch's concurrent pass instead
// of one round trip each after it: the session cookie key, and the installer when it is kept
// in the source bucket and will run (an installer in another bucket is the install step's own
// request).
func passObjects(root string, c *config.Config, instance string, reinstall bool) []fetch.Object {
	objs := []fetch.Object{{Key: cookie.Object, Max: cookie.MaxObject}}
	if k := installerKey(c); k != "" && willInstall(root, instance, reinstall) {
		objs = append(objs, fetch.Object{Key: k, Max: replicated.MaxScript})
	}
	return objs
}

// installerKey is the key, under the source prefix, of an installer kept in the source bucket
// itself; "" for one at https:// or elsewhere.
func installerKey(c *config.Config) string {
	rest, ok := strings.CutPrefix(c.Replicated.InstallerURL, "s3://")
	name, key, _ := strings.Cut(rest, "/")
	if !ok || name != c.Source.Bucket || !strings.HasPrefix(key, c.Source.Prefix) {
		return ""
	}
	return strings.TrimPrefix(key, c.Source.Prefix)
}

// willInstall reports whether the install step will run the installer (this instance has not
// installed, or --reinstall): only then does the boot need the script, or the public address.
func willInstall(root, instance string, reinstall bool) bool {
	return reinstall || !replicated.ReadInstall(root).On(instance)
}

// offlineOK allows a reboot to go on with the last good files when S3 gave no answer at all;
// never on a first boot, where there are no good files.
func offlineOK(completed bool, err error) bool {
	var fail *findings.Failure
	if !errors.As(err, &fail) || !completed {
		return false
	}
	for _, f := range fail.Findings {
		if f.Code != findings.S3Unreachable {
			return false
		}
	}
	return len(fail.Findings) > 0
}

// deploymentExisted returns evidence that this CircleCI deployment existed before this boot:
// this machine's record or installer marker, or objects only an earlier instance writes (the
// replacement ledger; the session cookie key, unless the record says this very instance created
// it, on an earlier, unfinished attempt of its first boot). An empty Why means a brand-new
// install. An earlier run of this instance alone is no such proof: a run stopped by KEYS_MISSING
// at the fetch never reached the cookie-key step, and a restart must stop again.
func deploymentExisted(ctx context.Context, in fetchIn) (fetch.Existed, error) {
	inst := replicated.ReadInstall(in.Root)
	here := inst.On(in.Instance) || in.Completed
	if in.InstalledBefore != "" {
		return fetch.Existed{Why: in.InstalledBefore, Here: here}, nil
	}
	if why := inst.Evidence(); why != "" {
		return fetch.Existed{Why: why, Here: here}, nil
	}
	keys := []string{asg.LedgerKey}
	if in.CookieCreatedBy == "" || in.CookieCreatedBy != in.Instance {
		keys = append(keys, cookie.Object)
	}
	for _, key := range keys {
		objs, err := in.Bucket.List(ctx, key)
		if err != nil {
			return fetch.Existed{}, err
		}
		for _, o := range objs {
			if o.Rel == "" {
				return fetch.Existed{Why: fmt.Sprintf("the bucket holds %s, which only an earlier instance writes", in.Bucket.URI(key)), Here: here}, nil
			}
		}
	}
	return fetch.Existed{}, nil
}

type cookieIn struct {
	Root   string
	Bucket *bucket.Bucket
	Bundle *fetch.Bundle // nil offline: the file in place is merged and written
	Entry  config.Entry
}

type cookieOut struct {
	// CreatedHere: the bucket's key was this instance's candidate (any source but "s3").
	CreatedHere bool
}

// stepCookieKey decides the session cookie key and stages the installation customizations:
// the bucket's copy (or, without one, the file in place) with exactly one line for the key. It
// stages into the bundle so that a failed validation leaves the old file; on a reboot that goes
// on without S3's files there is no bundle, and the file in place is merged and written.
func stepCookieKey(ctx context.Context, x Exec, in cookieIn) (cookieOut, []findings.Finding, error) {
	file := in.Entry.Dest
	inPlace, err := os.ReadFile(filepath.Join(in.Root, file))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return cookieOut{}, nil, fmt.Errorf("reading %s: %w", file, err)
	}
	created := func(source string) cookieOut { return cookieOut{CreatedHere: source != "s3" && source != ""} }
	bd := in.Bundle
	if bd == nil {
		res, changed, err := cookie.Ensure(ctx, in.Bucket, in.Root, in.Entry)
		if err != nil {
			return created(res.Source), res.Findings, err
		}
		x.Log.Info("session cookie key in place", "source", res.Source, "changed", changed, "file", file)
		return created(res.Source), res.Findings, nil
	}
	ci := cookie.Input{InPlace: inPlace}
	if r, ok := bd.Take(cookie.Object); ok {
		ci.Remote = &r // the fetch's pass read it
	}
	if bd.Has(file) {
		// The bucket's copy: staged when it differs from the file in place, else that file.
		if ci.Bucket, err = os.ReadFile(bd.PathOf(file)); err != nil {
			return cookieOut{}, nil, fmt.Errorf("reading the fetched %s: %w", file, err)
		}
		ci.FromBucket = true
	}
	res, err := cookie.Merge(ctx, in.Bucket, ci)
	if err != nil {
		return created(res.Source), res.Findings, err
	}
	changed, err := bd.Stage(in.Entry, res.Content)
	if err != nil {
		return created(res.Source), res.Findings, err
	}
	x.Log.Info("session cookie key staged", "source", res.Source, "changed", changed, "file", file, "from_bucket", ci.FromBucket)
	return created(res.Source), res.Findings, nil
}

// layoutEntry returns the layout's entry of that name (the config's, else the default).
func layoutEntry(c *config.Config, name string) config.Entry {
	return layout.New("", c.Layout).Entry(name)
}

// layout is where this boot's files live: the config's layout under --root.
func (e *Env) layout() layout.Layout { return layout.New(e.Root, e.Config.Layout) }

type validateIn struct {
	Root      string
	Config    *config.Config
	Bundle    *fetch.Bundle // nil offline
	Bucket    *bucket.Bucket
	Instance  string
	Known     map[string]fetch.Known
	Completed bool
}

type validateOut struct {
	Bundle *fetch.Bundle // the committed bundle; nil when it was discarded (or offline)
	// Conflicts is the fetch's current list of key conflicts, when ConflictsKnown.
	Conflicts      []fetch.KeyConflict
	ConflictsKnown bool
	// Known and Files are the record's files after a commit; nil without one.
	Known map[string]fetch.Known
	Files []fetch.File
}

// stepValidateFiles checks the staged files and only then moves them into place, so nothing
// valid is overwritten by something invalid.
func stepValidateFiles(ctx context.Context, x Exec, in validateIn) (validateOut, []findings.Finding, error) {
	l := layout.New(in.Root, in.Config.Layout)
	files := validate.InPlace(l)
	bd := in.Bundle
	out := validateOut{Bundle: bd}
	if bd != nil {
		files.Read = bd.PathOf
		inPlace := files.Exists
		files.Exists = func(p string) bool { return bd.Has(p) || inPlace(p) }
	}
	fs := validate.Check(files)
	inst := replicated.ReadInstall(in.Root)
	if bd != nil {
		if f := bd.File(l.SettingsConf()); f != nil && inst.SettingsDrift(in.Instance, f.SHA256) {
			fs = append(fs, findings.New(findings.SettingsDrift, l.SettingsConf(),
				"settings.conf in the bucket differs from the one Replicated was installed with; Replicated does not read it again", ""))
		}
		fs = append(fs, fetch.ShellSyntax(bd, in.Bucket.URI)...)
	}
	fs = adjust(in.Config, fs)
	blocking := blockingOf(fs)
	if bd != nil {
		// The fetch compared every key on both sides: this is the current list of conflicts.
		out.Conflicts, out.ConflictsKnown = bd.Conflicts, true
		if len(bd.Conflicts) > 0 && !inst.On(in.Instance) && !in.Completed {
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
			out.Bundle = nil
		}
		return out, fs, &findings.Failure{Findings: blocking}
	}
	if bd == nil {
		// Offline reboot: the files in place were validated; their modes and owners still
		// converge, as a commit would have made them.
		cfs, err := fetch.ConvergeInPlace(ctx, in.Root, in.Config.Layout, in.Known, x.Log)
		fs = append(fs, cfs...)
		if err != nil {
			return out, fs, fmt.Errorf("setting the modes and owners of the files in place: %w", err)
		}
		rfs, err := checkReadable(l, in.Config)
		return out, append(fs, rfs...), err
	}
	if err := bd.Commit(); err != nil {
		return out, fs, fmt.Errorf("moving fetched files into place: %w", err)
	}
	fs = append(fs, bd.CommitFindings...)
	// A key that appeared during the fetch was kept by the commit: a conflict if it differs.
	out.Conflicts = bd.Conflicts
	for _, c := range bd.Conflicts {
		fs = append(fs, c.Finding())
	}
	out.Known = maps.Clone(in.Known)
	if out.Known == nil {
		out.Known = map[string]fetch.Known{}
	}
	changed := 0
	for _, f := range bd.Files {
		out.Files = append(out.Files, *f)
		out.Known[f.Dest] = fetch.Known{Key: f.Key, ETag: f.ETag, Size: f.Size, SHA256: f.SHA256}
		if f.Changed {
			changed++
		}
	}
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Dest < out.Files[j].Dest })
	// What left the bucket leaves the record (the file itself stays on the machine, reported
	// as LOCAL_ONLY_FILES): an offline reboot must not take it for part of the bundle.
	for dest := range out.Known {
		if !bd.Has(dest) && underRecursive(in.Config.Layout, dest) {
			delete(out.Known, dest)
		}
	}
	x.Log.Info("files in place", "files", len(bd.Files), "changed", changed, "unchanged", len(bd.Files)-changed)
	rfs, err := checkReadable(l, in.Config)
	return out, append(fs, rfs...), err
}

// checkReadable judges, in place, whether the Replicated daemon can read the files
// replicated.conf names: after Commit has converged modes and owners, so it sees what the
// daemon will meet, not what the stage holds.
func checkReadable(l layout.Layout, cfg *config.Config) ([]findings.Finding, error) {
	fs := adjust(cfg, validate.Readable(l))
	if b := blockingOf(fs); len(b) > 0 {
		return fs, &findings.Failure{Findings: b}
	}
	return fs, nil
}

// blockingOf is the blocking findings of fs.
func blockingOf(fs []findings.Finding) []findings.Finding {
	var out []findings.Finding
	for _, f := range fs {
		if f.Blocking {
			out = append(out, f)
		}
	}
	return out
}

func underRecursive(layout []config.Entry, dest string) bool {
	for _, e := range layout {
		if e.Recursive && strings.HasPrefix(dest, e.Dest) {
			return true
		}
	}
	return false
}

type caIn struct {
	Root   string
	Config *config.Config
	Bundle *fetch.Bundle
	Known  map[string]fetch.Known
}

// stepCACerts installs the bucket's (and the config's) CA certificates before the probes, so
// the probes and the services trust the same store.
func stepCACerts(ctx context.Context, x Exec, in caIn) (struct{}, []findings.Finding, error) {
	var sources []certs.Source
	for _, e := range in.Config.Layout {
		if e.Name != layout.CACertificates {
			continue
		}
		// From the bundle's listing, not the staging directory: a CA removed from the bucket
		// stays there (fetch never deletes) but must no longer be trusted. Offline (a reboot
		// with S3 down), the record of the last fetch says what the bucket held.
		if in.Bundle != nil {
			for _, f := range in.Bundle.Files {
				if f.Entry == e.Name {
					sources = append(sources, certs.Source{Path: f.Dest, Name: f.Key})
				}
			}
			continue
		}
		for dest, k := range in.Known {
			if strings.HasPrefix(dest, e.Dest) && strings.HasPrefix(k.Key, e.Key) {
				sources = append(sources, certs.Source{Path: dest, Name: k.Key})
			}
		}
		sort.Slice(sources, func(i, j int) bool { return sources[i].Path < sources[j].Path })
	}
	sources = append(sources, certs.Paths(in.Config.CACertificates...)...)
	res, err := certs.Install(layout.New(in.Root, in.Config.Layout), sources, time.Now())
	if err != nil {
		return struct{}{}, res.Findings, err
	}
	x.Log.Info("CA certificates in place", "installed", len(res.Installed), "removed", len(res.Removed), "store_refreshed", res.Refreshed)
	return struct{}{}, res.Findings, nil
}

type probeIn struct {
	Root   string
	Config *config.Config
}

// stepProbe checks the databases and Vault with the settings just fetched. Only findings that
// would certainly make the install fail block it; the runner retries them with backoff, as a
// database may still be starting.
func stepProbe(ctx context.Context, x Exec, in probeIn) (struct{}, []findings.Finding, error) {
	rep := probes.Run(ctx, layout.New(in.Root, in.Config.Layout), probes.OptionsFrom(in.Config))
	for _, c := range rep.Checked {
		x.Log.Info("probed", "service", c.Service, "target", c.Target, "ok", c.OK, "detail", c.Detail)
	}
	if b := rep.Blocking(); len(b) > 0 {
		if in.Config.Probes.ProceedAnyway {
			x.Log.Warn("blocking findings, but probes.proceed_anyway is set: going on to the installer", "blocking", len(b))
			return struct{}{}, rep.Findings, nil
		}
		return struct{}{}, rep.Findings, &findings.Failure{Findings: b}
	}
	x.Log.Info("probes passed", "checked", len(rep.Checked), "findings", len(rep.Findings), "duration", rep.Duration.Round(time.Millisecond).String())
	return struct{}{}, rep.Findings, nil
}

type installIn struct {
	Root      string
	Config    *config.Config
	Instance  imds.Info
	IMDS      *imds.Client
	Reinstall bool
	Open      buckets // for an installer at s3://
	// Bundle holds what the fetch's pass read of an installer in the source bucket (taken
	// once: a retry reads the script itself).
	Bundle *fetch.Bundle
}

// stepReplicatedInstall runs the installer once per instance, with the arguments that keep
// the real script from asking (public address, no-docker), and verifies that it installed.
func stepReplicatedInstall(ctx context.Context, x Exec, in installIn) (struct{}, []findings.Finding, error) {
	c := in.Config
	l := layout.New(in.Root, c.Layout)
	settingsSHA := ""
	if r, err := atomicfile.HashFile(l.Path(l.SettingsConf())); err == nil {
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
	conf := l.ReplicatedConf()
	if b, err := os.ReadFile(l.Path(conf)); err == nil {
		switch confProxy := replicated.ConfHTTPProxy(b); {
		case confProxy == "":
		case proxy == "":
			proxy = confProxy
		case confProxy != proxy:
			return struct{}{}, nil, &findings.Failure{Findings: []findings.Finding{findings.New(findings.FileInvalid, conf,
				fmt.Sprintf("%s sets HttpProxy %s but haagent's proxy is %s: the installer would use %s's, not the one haagent checked its connections through; it was not run",
					conf, replicated.Redact(confProxy), replicated.Redact(proxy), conf), "").
				WithFix(fmt.Sprintf("set the same proxy in both (HttpProxy in the bucket's replicated.conf and HTTPS_PROXY in haagent's environment), or remove HttpProxy from %s", conf))}}
		}
	}
	// The script's own public-address discovery is a plain IMDSv1 request, which fails on an
	// instance that requires IMDSv2, and then it prompts: haagent asks IMDSv2 instead.
	public := ""
	if willInstall(in.Root, in.Instance.InstanceID, in.Reinstall) && !replicated.SetsPublicAddress(c.Replicated.ExtraArgs) {
		var err error
		if public, err = in.IMDS.PublicIPv4(ctx); err != nil {
			return struct{}{}, nil, imdsFailure(err)
		}
	}
	var fetched *replicated.Prefetched
	if k := installerKey(c); k != "" {
		if r, ok := in.Bundle.Take(k); ok {
			fetched = &replicated.Prefetched{Body: r.Data, Err: r.Err}
		}
	}
	res, err := replicated.Ensure(ctx, replicated.Options{
		Root: in.Root, URL: c.Replicated.InstallerURL, SHA256: c.Replicated.SHA256, ExtraArgs: c.Replicated.ExtraArgs,
		Version: c.Replicated.Version, Timeout: c.Replicated.Timeout.D(), LocalAddress: localAddress(planOf(c.Address), in.Instance.LocalIPv4),
		PublicAddress: public, DockerInstalled: replicated.DockerInstalled(in.Root), InstanceID: in.Instance.InstanceID,
		SettingsSHA256: settingsSHA, Proxy: proxy, NoProxy: noProxy, Reinstall: in.Reinstall, RootCAs: probes.TrustPool(l),
		Systemd: in.Root == "/" && replicated.UnderSystemd(), Log: x.Log,
		// An unpinned installer is in the journal before the script runs as root.
		Report:     x.Report,
		OpenBucket: func(ctx context.Context, name string) (*bucket.Bucket, error) { return in.Open.open(ctx, name, "") },
		Fetched:    fetched,
	})
	if err != nil {
		return struct{}{}, nil, err
	}
	// AppState is set whenever an install was verified: one run here, or one an earlier
	// haagent started and this one waited for.
	if res.AppState != "" {
		x.Log.Info("Replicated installed and answering", "installer_sha256", res.SHA256, "app_state", res.AppState)
	}
	return struct{}{}, nil, nil
}

type watchStartIn struct {
	Root    string
	Config  *config.Config
	Watcher *watch.Watcher // an earlier attempt's, nil before
	Since   time.Time      // this run's start: the log forwarding's first line without a mark
	// Log is the watcher's: the run's, not this step's, since the monitors and the watch step
	// use the same watcher, and the frontend's own lines are entries of their own.
	Log *slog.Logger
	// Completed: the frontend was up on this instance before, so a frontend that never comes
	// back is a failure for the guard to judge; on a first boot it is the install still running.
	Completed bool
	// The monitors this step may start.
	KeysScan   Monitor
	Guard      Monitor
	CrashLoops func(*watch.Watcher) Monitor
}

type watchStartOut struct {
	Watcher  *watch.Watcher
	Monitors []Monitor
}

// stepWatchStart connects to the Docker engine and starts what watches the frontend while it
// comes up and afterwards: its logs into the journal, crash-loop detection, and the keys scan
// (CircleCI creates its keys on its first start, while the watch waits for it: the scan backs
// them up as soon as they are written, not only after the boot).
func stepWatchStart(ctx context.Context, x Exec, in watchStartIn) (watchStartOut, []findings.Finding, error) {
	c := in.Config.Watch
	if !c.On() {
		x.Log.Info("the frontend watch is disabled in the config (watch.enabled: false)")
		return watchStartOut{}, nil, nil
	}
	if in.Watcher != nil {
		return watchStartOut{Watcher: in.Watcher}, nil, nil
	}
	w, err := watch.New(watch.Options{
		Name: c.Container, StuckAfter: c.StuckAfter.D(), ReprobeEvery: c.ReprobeEvery.D(),
		CrashRestarts: c.CrashRestarts, CrashWindow: c.CrashWindow.D(), Log: in.Log,
		Sink:     logging.NewContainerSink(c.Container, in.Log),
		Status:   x.Status,
		MarkPath: filepath.Join(in.Root, layout.FrontendMark),
		// A wedged engine is a state the journal and status show, not a hang: every Docker
		// call is bounded, the docker-engine monitor reports it, and the guard sees the
		// frontend as down meanwhile.
		Probe: func(ctx context.Context) []findings.Finding {
			return probes.Run(ctx, layout.New(in.Root, in.Config.Layout), probes.OptionsFrom(in.Config)).Findings
		},
	})
	if err != nil {
		return watchStartOut{}, nil, err
	}
	out := watchStartOut{Watcher: w, Monitors: []Monitor{followMonitor(w, in.Since), in.KeysScan, in.CrashLoops(w), engineMonitor(w)}}
	if in.Completed {
		out.Monitors = append(out.Monitors, in.Guard)
	}
	return out, nil, nil
}

type watchIn struct {
	Config  config.Watch
	Watcher *watch.Watcher // nil with the watch disabled
	Guard   Monitor
}

type watchOut struct {
	Monitors []Monitor
}

// stepWatch waits for the frontend container to run (and be healthy); then the guard watches
// it.
func stepWatch(ctx context.Context, x Exec, in watchIn) (watchOut, []findings.Finding, error) {
	if in.Watcher == nil {
		x.Log.Info("the frontend watch is disabled in the config (watch.enabled: false): not waiting for it")
		return watchOut{}, nil, nil
	}
	if err := in.Watcher.WaitReady(ctx, x.Log); err != nil {
		return watchOut{}, nil, fmt.Errorf("waiting for %s: %w", in.Config.Container, err)
	}
	x.Log.Info("frontend is up", "container", in.Config.Container)
	return watchOut{Monitors: []Monitor{in.Guard}}, nil, nil
}

type backupIn struct {
	Bucket    *bucket.Bucket
	Keys      backup.Options
	Entry     config.Entry
	Completed bool
	KeysScan  Monitor
	// KeysMu keeps the step apart from a keys scan or guard backup of this process.
	KeysMu *sync.Mutex
}

type backupOut struct {
	Conflicts      []fetch.KeyConflict
	ConflictsKnown bool
	Monitors       []Monitor
	// Verified are the keys found in the bucket as they are here, for the run record.
	Verified []fetch.Known
}

// StepBackupKeys copies encryption keys that exist only on this machine to the bucket, after
// the boot (CircleCI creates its keys on first start). It fails while any key is not in S3,
// so the service keeps trying and the run is not reported complete with keys at risk.
func StepBackupKeys(ctx context.Context, x Exec, in backupIn) (backupOut, []findings.Finding, error) {
	if in.KeysMu != nil {
		in.KeysMu.Lock()
	}
	res, err := backup.Keys(ctx, in.Bucket, in.Keys)
	if in.KeysMu != nil {
		in.KeysMu.Unlock()
	}
	var be *bucket.Error
	if err != nil && errors.As(err, &be) && be.Code() == findings.S3Unreachable {
		if in.Completed {
			// A reboot with S3 down (the fetch went on with the last good files): the keys were
			// backed up by an earlier boot; the scan compares them once S3 answers.
			return backupOut{Monitors: []Monitor{in.KeysScan}}, []findings.Finding{findings.New(findings.KeysBackupSkipped, in.Bucket.URI(in.Entry.Key),
				"S3 is unreachable: the encryption keys were not compared with the bucket", err.Error())}, nil
		}
		// A first boot: the keys CircleCI just made exist only here. Not complete until they
		// are in S3; the service retries.
		f := findings.New(findings.KeysNotBackedUp, in.Bucket.URI(in.Entry.Key),
			"S3 is unreachable on this instance's first boot: its encryption keys exist only on this machine", err.Error()).
			WithFix(be.Fix() + "; haagent retries the backup until it succeeds")
		return backupOut{}, nil, &findings.Failure{Findings: []findings.Finding{f}}
	}
	if err != nil {
		return backupOut{}, nil, err
	}
	out := backupOut{Conflicts: res.Details, ConflictsKnown: true, Monitors: []Monitor{in.KeysScan}, Verified: res.Verified}
	x.Log.Info("encryption keys backed up", "uploaded", len(res.Uploaded), "in_sync", len(res.InSync),
		"conflicts", len(res.Conflicts), "not_backed_up", len(res.NotBackedUp))
	if errs := errorsOf(res.Findings); len(errs) > 0 {
		return out, res.Findings, &findings.Failure{Findings: errs}
	}
	return out, res.Findings, nil
}

// errorsOf is the error findings of fs.
func errorsOf(fs []findings.Finding) []findings.Finding {
	var out []findings.Finding
	for _, f := range fs {
		if f.Severity == findings.Error {
			out = append(out, f)
		}
	}
	return out
}

// BackupKeysNow is the step of `haagent backup keys`: the backup on demand. Unlike the boot's
// step it never skips: a person asked whether the keys are in S3, and S3 being unreachable is
// a failure, not a warning. The outcome is left in *res for the command to print.
func BackupKeysNow(res *backup.Result) Step {
	return Step{Name: "backup-keys", Do: Wire(
		func(e *Env) backupIn { return backupIn{Bucket: e.Bucket, Keys: e.keysOptions(), KeysMu: &e.keysMu} },
		func(ctx context.Context, x Exec, in backupIn) (backup.Result, []findings.Finding, error) {
			r, err := backup.Keys(ctx, in.Bucket, in.Keys)
			if err != nil {
				return r, nil, err
			}
			if errs := errorsOf(r.Findings); len(errs) > 0 {
				return r, r.Findings, &findings.Failure{Findings: errs}
			}
			return r, r.Findings, nil
		},
		func(e *Env, r backup.Result) { *res = r })}
}

// keysOptions is where the keys are, for the backup: the layout's entry and what the run
// record knows of the bucket's copies. The record is read under ledger.mu: a monitor (the keys
// scan, the guard) asks while the runner may be writing it.
func (e *Env) keysOptions() backup.Options {
	k := layoutEntry(e.Config, layout.EncryptionKeys)
	e.ledger.mu.Lock()
	defer e.ledger.mu.Unlock()
	known := map[string]fetch.Known{}
	for _, kn := range e.Record.Known {
		if strings.HasPrefix(kn.Key, k.Key) {
			known[kn.Key] = kn
		}
	}
	return backup.Options{Root: e.Root, LocalDir: k.Dest, Prefix: k.Key, Known: known, Concurrency: e.Config.Fetch.Concurrency}
}

// recordVerified returns the record's files with the keys the backup found identical in the
// bucket, recorded as a fetch records what it installed: the next boot's fetch then lists them
// unchanged instead of downloading each to compare (a new install's keys were uploaded, never
// fetched). The map is copied, not changed: a step's input may still hold the old one.
func recordVerified(known map[string]fetch.Known, keys config.Entry, vs []fetch.Known) map[string]fetch.Known {
	out := maps.Clone(known)
	if out == nil {
		out = map[string]fetch.Known{}
	}
	for _, v := range vs {
		out[keys.Dest+strings.TrimPrefix(v.Key, keys.Key)] = v
	}
	return out
}

// runProbes checks the databases and Vault with the settings in place: the stuck frontend, a
// crash loop and the guard ask what the probe step asked.
func runProbes(ctx context.Context, env *Env) *probes.Report {
	return probes.Run(ctx, env.layout(), probes.OptionsFrom(env.Config))
}

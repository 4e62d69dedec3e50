package bootstrap

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/supervisor"
	"github.com/haagent/haagent/internal/watch"
)

// What outlives the boot steps runs as monitors under one supervisor (internal/supervisor,
// wired in supervise.go): the frontend's log forwarding, crash-loop detection, the Docker
// engine's state and the periodic keys backup here, returned by the steps that start them; the
// Auto Scaling lookup, heartbeats and the replacement guard in asg.go. Each files its findings
// under its name; the supervisor restarts one that fails and feeds systemd's watchdog only while
// every one of them iterates.

// Monitor names (HAAGENT_MONITOR in the journal, the run record's monitors).
const (
	monitorLogs    = "frontend-logs"
	monitorCrashes = "crash-loops"
	monitorEngine  = "docker-engine"
	monitorKeys    = "keys-scan"
	monitorAddress = "address-here"
)

// watchWithin bounds the loops that only call the Docker engine: every call is bounded by the
// watch's CallTimeout (15 s), a round makes at most a few, and their waits wake every Poll.
const watchWithin = 2 * time.Minute

// probeWithin bounds a round of probes run from a monitor, as the probe step's timeout does.
const probeWithin = 10 * time.Minute

// aliveWhile runs fn, calling alive every period until it returns: work bounded by its own
// timeouts (the probes) but not by the monitor's Within is no stall.
func aliveWhile(alive func(), every time.Duration, fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			alive()
		}
	}
}

// followMonitor forwards the frontend's log lines into the journal for as long as haagent
// runs. The haagent before this one left a mark of how far it forwarded; without one, lines
// from before since (this run's start) are taken as forwarded by an older haagent.
func followMonitor(w *watch.Watcher, since time.Time) Monitor {
	return Monitor{Name: monitorLogs, Within: watchWithin, Run: func(ctx context.Context, h *Handle) error {
		w.Follow(ctx, since, h.Alive)
		return nil
	}}
}

// crashLoopMonitor reports the frontend dying again and again, with what the probes say now.
func crashLoopMonitor(env *Env, w *watch.Watcher, container string) Monitor {
	return Monitor{Name: monitorCrashes, Within: watchWithin, Run: func(ctx context.Context, h *Handle) error {
		w.CrashLoops(ctx, h.Alive, func(dies int, window time.Duration) {
			// The probes take up to probes.timeout each (config caps it); the loop stays alive
			// meanwhile, so a slow database never reads as a stalled monitor and stops the
			// watchdog's pings. probeWithin still bounds a probe that hangs past its timeout.
			var probed []findings.Finding
			pctx, cancel := context.WithTimeout(ctx, probeWithin)
			aliveWhile(h.Alive, w.Poll(), func() { probed = runProbes(pctx, env).Findings })
			cancel()
			last := strings.Join(w.LastLines(), " | ")
			if len(last) > 2000 {
				last = "..." + last[len(last)-2000:]
			}
			h.Set(findings.New(findings.FrontendCrashLoop, container,
				fmt.Sprintf("%s died %d times within %s; probes now: %s", container, dies, window, findings.Codes(probed)),
				"last lines: "+last))
		})
		return nil
	}}
}

// engineMonitor turns the watcher's view of the engine into a finding: a wedged dockerd is a
// state the journal and status show (DOCKER_NOT_ANSWERING), withdrawn when it answers again;
// never a reason to stop feeding the watchdog, which would only restart haagent in a loop.
func engineMonitor(w *watch.Watcher) Monitor {
	return Monitor{Name: monitorEngine, Within: watchWithin, Run: func(ctx context.Context, h *Handle) error {
		t := time.NewTicker(w.Poll())
		defer t.Stop()
		var was error
		for {
			h.Alive()
			err := w.EngineErr()
			switch {
			case err != nil && was == nil:
				h.Set(findings.New(findings.DockerNotAnswering, "dockerd", "the Docker engine does not answer; the frontend cannot be watched", findings.Redact(err.Error())))
			case err == nil && was != nil:
				h.Log().Info("the Docker engine answers again")
				h.Set()
			}
			was = err
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	}}
}

// keyScanMonitor is the periodic keys backup that runs for as long as haagent does. Each scan
// that writes takes the run lock (lockForWrite): while the boot steps run this process holds it
// already; afterwards an on-demand command may hold it, and the scan waits.
func keyScanMonitor(env *Env) Monitor {
	return Monitor{
		Name: monitorKeys,
		// A scan lists the keys and may upload them all, each request bounded by the fetch's
		// timeout and attempts; it is alive after the listing and after each key's upload or
		// comparison (keyScanner.alive), so only one request may take this long.
		Within: 30 * time.Minute,
		Run: func(ctx context.Context, h *Handle) error {
			scanKeys(ctx, env, h, env.Config.Backup.ScanEvery.D())
			return nil
		},
	}
}

// scanKeys looks at the keys directory every period and backs it up again when it changed, or
// while the last backup left a key out (a conflict, a failed upload, a key still being
// written). Its findings are the monitor's: each scan's replace the last's in the run record.
func scanKeys(ctx context.Context, env *Env, h *supervisor.Handle, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	wake := time.NewTicker(min(every, time.Minute))
	defer wake.Stop()
	sc := keyScanner{alive: h.Alive}
	for {
		h.Alive()
		select {
		case <-ctx.Done():
			return
		case <-wake.C:
			continue
		case <-t.C:
		}
		sc.scan(ctx, env, h.Set, every)
	}
}

// keyScanner is the periodic scan's memory between two scans.
type keyScanner struct {
	last       string // the local fingerprint at the last full comparison
	lastRemote string // the bucket side's (names and sizes) then; "" when unknown
	settled    bool   // that comparison left nothing out
	// verified is what the last full comparison found in the bucket as it is here (its
	// uploads included): known to the next one, so a scan that runs because one new key
	// appeared asks nothing about the keys it already backed up.
	verified []fetch.Known
	// alive tells the supervisor the scan moves (nil: nobody to tell).
	alive func()
}

// scan is one scan; it reports whether it ran a full comparison (backup.Keys). Both sides are
// looked at every time: the local directory, and the keys prefix with one ListObjectsV2, so a
// backup copy deleted (or replaced) in the bucket is put back (or reported) at the next scan,
// not at the next boot.
func (sc *keyScanner) scan(ctx context.Context, env *Env, set func(...findings.Finding), every time.Duration) bool {
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
	for _, v := range sc.verified {
		o.Known[v.Key] = v
	}
	// The listing just taken is the one to compare against (an empty prefix included).
	o.Listing = append([]bucket.Object{}, objs...)
	if sc.alive != nil {
		sc.alive()
		o.Progress = sc.alive
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
	sc.verified = res.Verified
	env.setKeyConflicts(res.Details)
	set(res.Findings...) // the latest scan's: a key backed up since, or a conflict resolved, leaves the record
	if len(res.Uploaded) > 0 {
		env.Log.Info("encryption keys backed up by the periodic scan", "uploaded", strings.Join(res.Uploaded, ","), "in_sync", len(res.InSync))
	}
	sc.last, sc.settled = fp, len(res.NotBackedUp)+len(res.Conflicts) == 0
	return true
}

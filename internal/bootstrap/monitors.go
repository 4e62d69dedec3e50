package bootstrap

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/backup"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/watch"
)

// What outlives the boot steps, as monitors: the frontend's log forwarding, crash-loop
// detection and the periodic keys backup (the ASG heartbeats and the replacement guard are in
// asg.go). A step returns them; the runner starts each once, by name.

// followMonitor forwards the frontend's log lines into the journal for as long as haagent
// runs. The haagent before this one left a mark of how far it forwarded; without one, lines
// from before since (this run's start) are taken as forwarded by an older haagent.
func followMonitor(w *watch.Watcher, since time.Time) Monitor {
	return Monitor{Name: "frontend-logs", Run: func(ctx context.Context, h *Handle) error {
		w.Follow(ctx, since)
		return nil
	}}
}

// crashLoopMonitor reports the frontend dying again and again, with what the probes say now.
func crashLoopMonitor(env *Env, w *watch.Watcher, container string) Monitor {
	return Monitor{Name: "crash-loops", Run: func(ctx context.Context, h *Handle) error {
		w.CrashLoops(ctx, func(dies int, window time.Duration) {
			probed := runProbes(ctx, env).Findings
			last := strings.Join(w.LastLines(), " | ")
			if len(last) > 2000 {
				last = "..." + last[len(last)-2000:]
			}
			f := findings.New(findings.FrontendCrashLoop, container,
				fmt.Sprintf("%s died %d times within %s; probes now: %s", container, dies, window, findings.Codes(probed)),
				"last lines: "+last)
			h.Set(f)
		})
		return nil
	}}
}

// keyScanMonitor is the periodic keys backup that runs for as long as haagent does. Each scan
// that writes takes the run lock (lockForWrite): while the boot steps run this process holds it
// already; afterwards an on-demand command may hold it, and the scan waits.
func keyScanMonitor(env *Env) Monitor {
	return Monitor{Name: "keys-scan", Run: func(ctx context.Context, h *Handle) error {
		scanKeys(ctx, env, h, env.Config.Backup.ScanEvery.D())
		return nil
	}}
}

// scanKeys looks at the keys directory every period and backs it up again when it changed, or
// while the last backup left a key out (a conflict, a failed upload, a key still being
// written). Its findings are the monitor's: each scan's replace the last's in the run record.
func scanKeys(ctx context.Context, env *Env, h *Handle, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var sc keyScanner
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sc.scan(ctx, env, h, every)
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
func (sc *keyScanner) scan(ctx context.Context, env *Env, h *Handle, every time.Duration) bool {
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
	h.Set(res.Findings...)
	if len(res.Uploaded) > 0 {
		env.Log.Info("encryption keys backed up by the periodic scan", "uploaded", strings.Join(res.Uploaded, ","), "in_sync", len(res.InSync))
	}
	sc.last, sc.settled = fp, len(res.NotBackedUp)+len(res.Conflicts) == 0
	return true
}

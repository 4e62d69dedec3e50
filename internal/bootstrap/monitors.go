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

// What outlives the boot steps: the frontend's log forwarding, crash-loop detection and the
// periodic keys backup (the ASG heartbeats and the replacement guard are in asg.go).

// startFollow forwards the frontend's log lines into the journal for as long as haagent runs.
// The haagent before this one left a mark of how far it forwarded; without one, lines from
// before this run are taken as forwarded by an older haagent.
func startFollow(env *Env, w *watch.Watcher) {
	env.background.Add(1)
	mctx := env.monitorCtx()
	go func() { defer env.background.Done(); w.Follow(mctx, env.Run.Start) }()
}

// startCrashLoops reports the frontend dying again and again, with what the probes say now.
func startCrashLoops(env *Env, w *watch.Watcher, container string) {
	mctx := env.monitorCtx()
	go w.CrashLoops(mctx, func(dies int, window time.Duration) {
		probed := runProbes(mctx, env).Findings
		last := strings.Join(w.LastLines(), " | ")
		if len(last) > 2000 {
			last = "..." + last[len(last)-2000:]
		}
		f := findings.New("FRONTEND_CRASH_LOOP", container,
			fmt.Sprintf("%s died %d times within %s; probes now: %s", container, dies, window, findings.Codes(probed)),
			"last lines: "+last)
		env.LateFinding(f)
	})
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

// Package state is the run record, /var/lib/haagent/state.json: every run's steps, files and
// findings, so that `haagent status` and the next boot know what happened. It never holds file
// contents or secrets, only sizes and hashes.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// Version of the record's format.
const Version = 1

// MaxRuns bounds the history kept. Trimming never drops the running run nor the newest
// complete run of the latest MaxRuns/2 instances (CompletedOn, InstalledBefore): a restart loop
// on a broken config must not make the next boot of this instance look like a replacement's
// first.
const MaxRuns = 20

// Run statuses.
const (
	Running  = "running"  // steps are executing
	Retrying = "retrying" // a step failed; the service retries it
	Complete = "complete" // every boot step passed
	Failed   = "failed"   // a step failed and nothing will retry it (run --once)
)

// Record is the whole file.
type Record struct {
	Version int   `json:"version"`
	Runs    []Run `json:"runs"`
	// Known maps each destination to what was last written there, so re-runs skip
	// unchanged objects.
	Known map[string]fetch.Known `json:"known_files,omitempty"`
	// KeyConflicts are the encryption keys whose local and bucket copies differ, as of the
	// last comparison (fetch or backup). They stay here, shown by `haagent status` and
	// `haagent check`, until a comparison finds the copies equal: only a person resolves one.
	KeyConflicts []fetch.KeyConflict `json:"key_conflicts,omitempty"`
	// CookieCreatedBy is the instance that created the bucket's session cookie key, when one
	// on this machine did: for that instance alone the object is no evidence that the
	// deployment existed before (its own first boot, retried).
	CookieCreatedBy string `json:"cookie_created_by,omitempty"`
}

// InstalledBefore returns why this machine's record says the deployment existed before (a
// completed boot), or "".
func (r *Record) InstalledBefore() string {
	for _, run := range r.Runs {
		if run.Status == Complete {
			return fmt.Sprintf("the run record %s shows a completed boot of instance %s at %s", layout.StateFile, run.InstanceID, run.Start.UTC().Format(time.RFC3339))
		}
	}
	return ""
}

// Run is one invocation of the boot.
type Run struct {
	ID         string       `json:"id"`
	InstanceID string       `json:"instance_id,omitempty"`
	BootID     string       `json:"boot_id,omitempty"`
	Mode       string       `json:"mode"`
	PID        int          `json:"pid"`
	Start      time.Time    `json:"start"`
	End        *time.Time   `json:"end,omitempty"`
	Status     string       `json:"status"`
	Error      string       `json:"error,omitempty"`
	Steps      []Step       `json:"steps"`
	Files      []fetch.File `json:"files,omitempty"`
	// Findings are the steps' findings; Monitors the findings of what runs beside and after
	// the steps, each under the monitor's name (a step's retry never deletes them).
	Findings []findings.Finding `json:"findings,omitempty"`
	Monitors []Monitor          `json:"monitors,omitempty"`
	// Starts is how many starts this run stands for when the same failure repeated (systemd
	// restarting haagent on an invalid config): one run from the first (Start) to the last
	// (End), so the loop neither floods the history nor trims the boots out of it. 0 is one.
	Starts int `json:"starts,omitempty"`
}

// Monitor is one monitor of a run as of the last save: its state under the supervisor
// (running, restarting, stalled, done, stopped), how often it was restarted and why last, and
// its current findings.
type Monitor struct {
	Name      string             `json:"name"`
	State     string             `json:"state,omitempty"`
	Restarts  int                `json:"restarts,omitempty"`
	LastError string             `json:"last_error,omitempty"`
	Findings  []findings.Finding `json:"findings"`
}

// Step is one step's latest outcome in a run.
type Step struct {
	Name     string    `json:"name"`
	Status   string    `json:"status"` // running, ok, failed
	Attempts int       `json:"attempts"`
	Start    time.Time `json:"start"`
	Duration string    `json:"duration,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// Load reads the record; a missing file is an empty record.
func Load(path string) (*Record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Record{Version: Version}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading run record %s: %w", path, err)
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("run record %s is corrupt (%v); move it aside and run again", path, err)
	}
	if r.Version != Version {
		return nil, fmt.Errorf("run record %s has version %d; this haagent reads %d", path, r.Version, Version)
	}
	return &r, nil
}

// Save writes the record atomically.
func (r *Record) Save(path string) error {
	data, err := r.Encode()
	if err != nil {
		return err
	}
	return WriteEncoded(path, data)
}

// Encode is the record as Save writes it (the history trimmed: trim): a snapshot that a
// writer may put on disk later, while the record goes on changing.
func (r *Record) Encode() ([]byte, error) {
	r.Runs = trim(r.Runs)
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the run record: %w", err)
	}
	return append(data, '\n'), nil
}

// WriteEncoded writes what Encode returned, atomically (and durably) at path.
func WriteEncoded(path string, data []byte) error {
	if _, err := atomicfile.WriteFile(path, data, atomicfile.Secret); err != nil {
		return fmt.Errorf("saving run record: %w", err)
	}
	return nil
}

// RemoveStaleTemps removes what a write of the record at path left when its process was
// killed in the middle (atomicfile's temp file beside it). Only the record's writer calls it,
// under the run lock, before its first write.
func RemoveStaleTemps(path string) {
	temps, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".haagent-*"))
	for _, p := range temps {
		os.Remove(p)
	}
}

// trim keeps at most MaxRuns runs, in their order: the newest (the one being written), the
// newest complete run of each of the latest MaxRuns/2 instances, then the newest of the rest.
func trim(runs []Run) []Run {
	if len(runs) <= MaxRuns {
		return runs
	}
	keep := make([]bool, len(runs))
	// The newest run is the one being written (a boot adds its run, then saves): dropping it
	// would make the runner write into an older run.
	keep[len(runs)-1] = true
	kept := 1
	// Then the newest complete run of each instance, newest instances first, for at most half
	// the history: CompletedOn needs this instance's, InstalledBefore any one, and a record
	// carried across many machines (an image of a live box) must not grow without bound.
	completed := map[string]bool{}
	for i := len(runs) - 1; i >= 0 && len(completed) < MaxRuns/2; i-- {
		if runs[i].Status == Complete && !completed[runs[i].InstanceID] {
			completed[runs[i].InstanceID] = true
			if !keep[i] {
				keep[i] = true
				kept++
			}
		}
	}
	for i := len(runs) - 1; i >= 0 && kept < MaxRuns; i-- {
		if !keep[i] {
			keep[i] = true
			kept++
		}
	}
	out := make([]Run, 0, kept)
	for i, run := range runs {
		if keep[i] {
			out = append(out, run)
		}
	}
	return out
}

// Last returns the newest run, or nil.
func (r *Record) Last() *Run {
	if len(r.Runs) == 0 {
		return nil
	}
	return &r.Runs[len(r.Runs)-1]
}

// CompletedOn reports whether a run on this instance ever completed: a reboot, not a
// replacement.
func (r *Record) CompletedOn(instanceID string) bool {
	for _, run := range r.Runs {
		if run.InstanceID == instanceID && run.Status == Complete {
			return true
		}
	}
	return false
}

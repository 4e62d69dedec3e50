// Package fetch brings the Services machine's files down from the bucket: listed with
// pagination, downloaded concurrently with retries, verified, staged next to their destination
// and moved into place only when the whole bundle arrived.
package fetch

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
)

// stageDirName is the staging directory created beside each destination, on its filesystem so
// that the final rename is atomic.
const stageDirName = ".haagent-stage"

// Known is what the last run wrote at a destination, to skip unchanged downloads.
type Known struct {
	Key    string `json:"key"`
	ETag   string `json:"etag"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Options for one fetch.
type Options struct {
	Root        string
	Layout      []config.Entry
	Concurrency int
	// Known maps destination paths (as seen inside root) to what was written there last time.
	Known map[string]Known
	Log   *slog.Logger
	// Existing, when set, says whether this deployment existed before this boot. With it, an
	// empty keys prefix on a machine without keys is KEYS_MISSING, not a new install's
	// KEYS_PREFIX_EMPTY: CircleCI would mint new keys and the data encrypted with the old ones
	// would be lost.
	Existing func(ctx context.Context) (Existed, error)
	// Objects are more objects of the bucket that later steps need whole (the session cookie
	// key, an installer script kept in the bucket): read by the same workers, in the same
	// concurrent pass as the layout, so no step waits for a round trip of its own after the
	// fetch. They are no files of the layout: what S3 answered is handed over as it is
	// (Bundle.Take), and the step that reads it decides what an error means.
	Objects []Object
}

// Object is one more object for the fetch's pass to read into memory.
type Object struct {
	Key string // relative to the bucket's prefix
	Max int64  // the largest body accepted (bucket.GetBytes)
}

// Read is what S3 answered for an Object: its body, or the error bucket.GetBytes returned
// (errors.Is(err, bucket.ErrNotFound) when S3 said the key does not exist).
type Read struct {
	Data []byte
	Err  error
}

// Existed is the evidence that a deployment existed before this boot.
type Existed struct {
	// Why is the evidence for the message; "" means a brand-new install.
	Why string
	// Here is true when CircleCI was installed on this very instance: what runs is not
	// stopped (the finding does not block), only reported.
	Here bool
}

// File is one object and its destination.
type File struct {
	Entry   string `json:"entry"`
	Key     string `json:"key"`
	Dest    string `json:"path"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	ETag    string `json:"etag,omitempty"`
	Changed bool   `json:"changed"`
	// Conflict is set for a key whose local copy differs from the bucket's: the local one is
	// kept, nothing is staged.
	Conflict *KeyConflict `json:"conflict,omitempty"`

	staged  string
	stage   string
	purpose string
	object  string // the s3:// URI, for a key conflict found at commit
	mode    os.FileMode
	dirMode os.FileMode
	uid     int
	gid     int
	// top is the directory of a directory entry (as seen inside root), "" for a single file:
	// the directories from top down get dirMode and the owner, those above it 0755 root.
	top string
	// knownSHA is set when the local file already matches the last run's record, so an
	// unchanged object can be skipped.
	knownSHA string
	knownTag string
	// optional single objects (the installation customizations) may be absent from the
	// bucket; absent marks one that is, so it leaves the bundle instead of failing it.
	optional bool
	absent   bool
	// listed is the size ListObjectsV2 gave, -1 for an object that was not listed: the body
	// must have it. A response without Content-Length (chunked, through a proxy) whose ETag is
	// no MD5 (SSE-KMS, multipart) has nothing else to say it arrived whole.
	listed int64
	// notFile marks a key path that holds a link or device: left alone, not converged (opening
	// a FIFO would hang).
	notFile bool
}

// Bundle is a completed fetch waiting to be committed.
type Bundle struct {
	Root     string
	Files    []*File
	Findings []findings.Finding
	// Conflicts are the keys kept on this machine although the bucket's copy differs.
	Conflicts []KeyConflict
	// CommitFindings are what Commit found while converging modes and owners (a symlink at
	// a final path, left alone).
	CommitFindings []findings.Finding
	stages         []string
	log            *slog.Logger
	// layout is the fetch's layout with owners resolved, for files staged later (Stage).
	layout []config.Entry
	// objects are the Options.Objects as read, until a step takes them.
	objMu   sync.Mutex
	objects map[string]Read
}

// Take hands over what the fetch's pass read for an Options.Objects key, once: a retried step
// that asks again gets ok false and reads the object itself, so an object fixed in the bucket
// since (a corrected installer script) is not served from this pass forever.
func (bd *Bundle) Take(key string) (r Read, ok bool) {
	if bd == nil {
		return Read{}, false
	}
	bd.objMu.Lock()
	defer bd.objMu.Unlock()
	r, ok = bd.objects[key]
	delete(bd.objects, key)
	return r, ok
}

// Fetch downloads the layout into staging. It returns the bundle and, when any error finding
// was raised, a *findings.Failure; the bundle is then already discarded.
func Fetch(ctx context.Context, b *bucket.Bucket, o Options) (*Bundle, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Concurrency < 1 {
		o.Concurrency = 1
	}
	o.Known = Prepare(o.Root, o.Known)
	bd := &Bundle{Root: o.Root, log: o.Log}
	// Owners are resolved at write time, in the root's own databases: the docker group may
	// have appeared (or been created here) since the config was read.
	layout, _, owners := ResolveOwners(ctx, o.Root, o.Layout, true, o.Log)
	if len(owners) > 0 {
		bd.Findings = owners
		return bd, &findings.Failure{Findings: owners}
	}
	o.Layout = layout
	bd.layout = layout
	stages := map[string]bool{}
	for _, e := range o.Layout {
		stages[stageDir(o.Root, e)] = true
	}
	for d := range stages {
		// A stage left by a killed run holds only temp files; nothing there is final.
		if err := os.RemoveAll(d); err != nil {
			return nil, fmt.Errorf("removing stale staging directory %s: %w", d, err)
		}
		bd.stages = append(bd.stages, d)
	}
	sort.Strings(bd.stages)

	var mu sync.Mutex
	report := func(f findings.Finding) {
		mu.Lock()
		bd.Findings = append(bd.Findings, f)
		mu.Unlock()
	}

	// Downloads start while the prefixes are still being listed, and the prefixes are listed
	// at once: with S3 tens of milliseconds away, round trips, not bytes, make up a boot's fetch.
	jobs := make(chan *File, 256)
	objects := make(chan Object, len(o.Objects))
	for _, obj := range o.Objects {
		objects <- obj
	}
	close(objects)
	bd.objects = map[string]Read{}
	var wg sync.WaitGroup
	for i := 0; i < o.Concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The extra objects first: they are few, and nothing lists them.
			for obj := range objects {
				data, err := b.GetBytes(ctx, obj.Key, obj.Max)
				bd.objMu.Lock()
				bd.objects[obj.Key] = Read{Data: data, Err: err}
				bd.objMu.Unlock()
			}
			for f := range jobs {
				err := download(ctx, b, o.Root, f)
				switch {
				case err == nil:
					if f.Conflict != nil {
						report(f.Conflict.Finding())
					}
				case f.optional && errors.Is(err, bucket.ErrNotFound):
					f.absent = true
				default:
					report(fileFinding(b, err, f))
				}
			}
		}()
	}
	enqueue := func(f *File) {
		if f.knownSHA != "" && f.ETag != "" && f.ETag == f.knownTag {
			// Listed with the same ETag as last time and the local file still matches.
			f.SHA256 = f.knownSHA
			return
		}
		select {
		case jobs <- f:
		case <-ctx.Done():
		}
	}
	perEntry := make([][]*File, len(o.Layout))
	var listing sync.WaitGroup
	for i, e := range o.Layout {
		if !e.Recursive {
			f := newFile(o.Root, e, e.Key, e.Dest, o.Known)
			perEntry[i] = []*File{f}
			enqueue(f)
			continue
		}
		listing.Add(1)
		go func() {
			defer listing.Done()
			perEntry[i] = listEntry(ctx, b, o, e, report, enqueue)
		}()
	}
	listing.Wait()
	close(jobs)
	wg.Wait()
	for _, fs := range perEntry {
		for _, f := range fs {
			if !f.absent {
				bd.Files = append(bd.Files, f)
			}
		}
	}
	for _, f := range bd.Files {
		if f.Conflict != nil {
			bd.Conflicts = append(bd.Conflicts, *f.Conflict)
		}
	}
	if ctx.Err() != nil {
		bd.Discard()
		return bd, fmt.Errorf("fetch interrupted: %w", ctx.Err())
	}
	findings.Sort(bd.Findings)
	var blocking []findings.Finding
	for _, f := range bd.Findings {
		// A key conflict is not the fetch's failure: the bundle is good and the local key is
		// kept. Whether it stops the boot depends on whether CircleCI already runs here, which
		// the caller knows.
		if f.Severity == findings.Error && f.Blocking {
			blocking = append(blocking, f)
		}
	}
	if len(blocking) > 0 {
		bd.Discard()
		return bd, &findings.Failure{Findings: blocking}
	}
	return bd, nil
}

// listEntry lists a recursive entry's prefix, hands each file to enqueue as it is found, and
// returns them in listing order.
func listEntry(ctx context.Context, b *bucket.Bucket, o Options, e config.Entry, report func(findings.Finding), enqueue func(*File)) []*File {
	objs, err := b.List(ctx, e.Key)
	if err != nil {
		report(bucketFinding(err, e))
		return nil
	}
	var files []*File
	seen := map[string]bool{}
	for _, obj := range objs {
		if obj.Rel == "" || strings.HasSuffix(obj.Rel, "/") && obj.Size == 0 {
			continue // a console-made "folder" marker
		}
		if err := SafeRel(obj.Rel); err != nil {
			o.Log.Error("refusing S3 key", "object", b.URI(e.Key+obj.Rel), "reason", err.Error(), "finding", findings.S3KeyRefused.String())
			report(findings.New(findings.S3KeyRefused, b.URI(e.Key+obj.Rel),
				fmt.Sprintf("key would be written outside %s: %v", e.Dest, err), "key "+quoteKey(obj.Key)))
			continue
		}
		seen[obj.Rel] = true
		f := newFile(o.Root, e, e.Key+obj.Rel, e.Dest+obj.Rel, o.Known)
		f.ETag = obj.ETag
		f.Size, f.listed = obj.Size, obj.Size
		files = append(files, f)
		enqueue(f)
	}
	if len(files) == 0 {
		switch {
		case e.Required:
			report(findings.New(findings.S3PrefixEmpty, b.URI(e.Key),
				fmt.Sprintf("no objects under %s (%s)", b.URI(e.Key), e.Purpose), "ListObjectsV2 returned no keys").
				WithFix(fmt.Sprintf("upload the directory: aws s3 cp DIR %s --recursive", b.URI(e.Key))))
		case e.WarnEmpty:
			report(emptyKeysFinding(ctx, b, o, e))
		}
	}
	if local := localOnly(filepath.Join(o.Root, e.Dest), seen); len(local) > 0 {
		ev := strings.Join(local, ", ")
		if len(local) > 20 {
			ev = strings.Join(local[:20], ", ") + fmt.Sprintf(" and %d more", len(local)-20)
		}
		report(findings.New(findings.LocalOnlyFiles, e.Dest,
			fmt.Sprintf("%d file(s) in %s are not in %s", len(local), e.Dest, b.URI(e.Key)), ev))
	}
	return files
}

func newFile(root string, e config.Entry, key, dest string, known map[string]Known) *File {
	f := &File{Entry: e.Name, Key: key, Dest: dest, listed: -1, mode: e.Mode, dirMode: e.DirMode, uid: e.UID, gid: e.GID,
		stage: stageDir(root, e), purpose: e.Purpose, optional: !e.Recursive && !e.Required}
	if e.Recursive {
		f.top = strings.TrimSuffix(e.Dest, "/")
	}
	if k, ok := known[dest]; ok && k.Key == key && k.SHA256 != "" {
		f.knownSHA, f.knownTag = k.SHA256, k.ETag
	}
	return f
}

// verifyKnown drops the record of the last write when the local file no longer matches it
// (edited or deleted by hand): the object must then be downloaded again.
func (f *File) verifyKnown(root string) {
	if f.knownSHA == "" {
		return
	}
	r, err := atomicfile.HashFile(filepath.Join(root, f.Dest))
	if err != nil || r.SHA256 != f.knownSHA {
		f.knownSHA, f.knownTag = "", ""
	}
}

func download(ctx context.Context, b *bucket.Bucket, root string, f *File) error {
	final := filepath.Join(root, f.Dest)
	stage := f.stage
	// The stage's parents are the directories above the entry (/etc, /data/circle): 0755 when
	// haagent has to create them. The stage itself is 0700: it is haagent's alone.
	if err := atomicfile.MkdirAll(filepath.Dir(stage), 0o755); err != nil {
		return err
	}
	opts := atomicfile.Options{Mode: f.mode, DirMode: 0o700, UID: f.uid, GID: f.gid}
	err := b.Get(ctx, f.Key, f.knownTag, func(body io.Reader, m bucket.Meta) error {
		md := md5.New()
		src := &readSide{r: body}
		tmp, res, err := atomicfile.Stage(stage, filepath.Base(final), io.TeeReader(src, md), opts)
		if err != nil {
			if src.err != nil {
				return err // the body failed: S3's side, classified and retried as a transfer error
			}
			return &bucket.LocalError{Path: f.Dest, Err: err}
		}
		fail := func(err error) error { os.Remove(tmp); return err }
		if m.Size >= 0 && res.Size != m.Size {
			return fail(&bucket.TruncatedError{Expected: m.Size, Got: res.Size})
		}
		if f.listed >= 0 && res.Size != f.listed {
			return fail(&bucket.TruncatedError{Expected: f.listed, Got: res.Size, From: "ListObjectsV2"})
		}
		if f.Entry == KeysEntry && m.Size < 0 && f.listed < 0 {
			// A key is installed only when some size vouches for it: a half key is lost data.
			return fail(&bucket.TruncatedError{Expected: -1, Got: res.Size, From: "nothing (no Content-Length, not listed)"})
		}
		if m.PlainMD5 {
			if got := hex.EncodeToString(md.Sum(nil)); got != m.ETag {
				return fail(&bucket.HashMismatchError{Object: b.URI(f.Key), Algorithm: "md5", Expected: m.ETag, Actual: got})
			}
		}
		f.staged, f.Size, f.SHA256, f.ETag = tmp, res.Size, res.SHA256, m.ETag
		return nil
	})
	if errors.Is(err, bucket.ErrNotModified) {
		f.SHA256 = f.knownSHA
		return nil
	}
	if err != nil {
		return err
	}
	if f.Entry == KeysEntry {
		if err := keepLocalKey(b, final, f); err != nil || f.Conflict != nil {
			return err
		}
	}
	if cur, err := atomicfile.HashFile(final); err == nil && cur.SHA256 == f.SHA256 {
		// Same content: keep the file and its mtime; Commit converges its mode and owner.
		os.Remove(f.staged)
		f.staged = ""
		return nil
	}
	f.Changed = true
	return nil
}

// readSide remembers an error from reading the body, so that a failed Stage can be told apart:
// the network's fault (retry) or this machine's disk (never retry, never "S3 unreachable").
type readSide struct {
	r   io.Reader
	err error
}

func (s *readSide) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Commit moves every changed file into place and converges the mode and owner of every file
// of the bundle, changed or not, and of the directories inside each directory entry: a
// tightened files.*.mode, or a key someone chmod'ed by hand, is put right on the next run
// even when S3 has nothing new. Each file appears whole; a crash between two renames leaves
// some files new and some old, every one of them complete, and the next run converges.
//
// A key is moved in only where no file is: one that appeared since the fetch looked (CircleCI
// creating its keys on an installed machine) is kept, and reported as a conflict when it
// differs.
func (bd *Bundle) Commit() error {
	bd.CommitFindings = nil
	if bd.log == nil {
		bd.log = slog.New(slog.DiscardHandler)
	}
	if err := bd.prepareDirs(); err != nil {
		return err
	}
	var moves []atomicfile.Move
	var keyDirs []string
	for _, f := range bd.Files {
		if f.staged == "" {
			continue
		}
		if f.Entry == KeysEntry {
			dir, err := bd.commitKey(f)
			if err != nil {
				return err
			}
			if dir != "" && !slices.Contains(keyDirs, dir) {
				keyDirs = append(keyDirs, dir)
			}
			continue
		}
		// A changed file's temp already has its mode and owner; the rename replaces
		// whatever is at the final path (a symlink included) without following it.
		moves = append(moves, atomicfile.Move{Staged: f.staged, Path: filepath.Join(bd.Root, f.Dest), DirMode: 0o755})
	}
	// The keys' renames are durable before anything else moves in, as they were one by one.
	for _, dir := range keyDirs {
		if err := syncDir(dir); err != nil {
			return err
		}
	}
	if err := atomicfile.CommitAll(moves); err != nil {
		return err
	}
	var unchanged []*File
	for _, f := range bd.Files {
		if f.staged == "" && !f.notFile {
			unchanged = append(unchanged, f)
		}
		f.staged = ""
	}
	if err := bd.convergeFiles(unchanged); err != nil {
		return err
	}
	bd.Discard()
	return nil
}

// syncDir is atomicfile.SyncDir; a test counts the key directories' syncs through it.
var syncDir = atomicfile.SyncDir

// Discard removes the staging directories.
func (bd *Bundle) Discard() {
	for _, d := range bd.stages {
		os.RemoveAll(d)
	}
}

// Prepare checks the local side of the known-files records before a fetch.
func Prepare(root string, known map[string]Known) map[string]Known {
	out := make(map[string]Known, len(known))
	for dest, k := range known {
		f := &File{Dest: dest, knownSHA: k.SHA256, knownTag: k.ETag}
		f.verifyKnown(root)
		if f.knownSHA != "" {
			out[dest] = k
		}
	}
	return out
}

func stageDir(root string, e config.Entry) string {
	dest := filepath.Join(root, strings.TrimSuffix(e.Dest, "/"))
	if e.Recursive {
		// A directory that is a symlink (the keys on a data volume) is staged beside its
		// target: the final rename must not cross filesystems.
		if real, err := filepath.EvalSymlinks(dest); err == nil {
			dest = real
		}
	}
	return filepath.Join(filepath.Dir(dest), stageDirName)
}

// SafeRel refuses a key (relative to its prefix) that could name anything outside the
// destination directory.
func SafeRel(rel string) error {
	switch {
	case strings.ContainsRune(rel, 0):
		return errors.New("contains a NUL byte")
	case strings.HasPrefix(rel, "/"):
		return errors.New("is absolute")
	}
	for _, seg := range strings.Split(rel, "/") {
		switch seg {
		case "":
			return errors.New("has an empty path segment")
		case ".", "..":
			return fmt.Errorf("has a %q segment", seg)
		}
	}
	if path.Clean(rel) != rel {
		return errors.New("is not a clean path")
	}
	return nil
}

func localOnly(dir string, seen map[string]bool) []string {
	var out []string
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real // WalkDir does not follow a symlinked root
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if d.Name() == stageDirName {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if !seen[filepath.ToSlash(rel)] && !IsHaagentTemp(d.Name()) {
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func quoteKey(k string) string { return fmt.Sprintf("%q", k) }

// PathOf returns where the new content of a machine path is: its staged copy when the bundle
// changes it, the path itself otherwise.
func (bd *Bundle) PathOf(machinePath string) string {
	for _, f := range bd.Files {
		if f.Dest == machinePath && f.staged != "" {
			return f.staged
		}
	}
	return filepath.Join(bd.Root, machinePath)
}

// Has reports whether the bundle brings a file to machinePath.
func (bd *Bundle) Has(machinePath string) bool {
	for _, f := range bd.Files {
		if f.Dest == machinePath {
			return true
		}
	}
	return false
}

// File returns the bundle's record for a machine path, or nil.
func (bd *Bundle) File(machinePath string) *File {
	for _, f := range bd.Files {
		if f.Dest == machinePath {
			return f
		}
	}
	return nil
}

// Stage puts content in the bundle as the new file for entry e (a single-object entry), in
// place of what was fetched for it or as a file of its own when the bucket has none, so that it
// is committed, or discarded, with the rest of the bundle. Content equal to the file in place is
// not staged. A fetched object keeps its ETag and hash in the record: the file in place then
// differs from the object, so the object is fetched again at the next boot and the merge is made
// from the bucket's current copy, never from an earlier merge.
func (bd *Bundle) Stage(e config.Entry, content []byte) (changed bool, err error) {
	for _, r := range bd.layout {
		if r.Name == e.Name {
			e = r // its owners as the fetch resolved them
		}
	}
	f := bd.File(e.Dest)
	if f == nil {
		f = newFile(bd.Root, e, e.Key, e.Dest, nil)
		bd.Files = append(bd.Files, f)
	}
	if f.staged != "" {
		os.Remove(f.staged)
		f.staged = ""
	}
	f.Changed = false
	final := filepath.Join(bd.Root, e.Dest)
	if cur, err := os.ReadFile(final); err == nil && bytes.Equal(cur, content) {
		// Unchanged: Commit converges its mode and owner with the other unchanged files.
		if f.ETag == "" {
			sum := sha256.Sum256(content)
			f.Size, f.SHA256 = int64(len(content)), hex.EncodeToString(sum[:])
		}
		return false, nil
	}
	tmp, res, err := atomicfile.Stage(f.stage, filepath.Base(final), bytes.NewReader(content),
		atomicfile.Options{Mode: f.mode, DirMode: 0o700, UID: f.uid, GID: f.gid})
	if err != nil {
		return false, fmt.Errorf("staging %s: %w", e.Dest, err)
	}
	f.staged, f.Changed = tmp, true
	if f.ETag == "" {
		f.Size, f.SHA256 = res.Size, res.SHA256
	}
	return true, nil
}

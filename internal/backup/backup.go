// Package backup copies CircleCI's encryption keys to the bucket. On a new install CircleCI
// creates its keys on the machine; until they are in S3, a replacement instance loses them
// ("Losing the encryption keys may lead to the unrecoverable data inconsistency"). Nothing is
// ever overwritten or deleted, on either side.
package backup

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/fetch"
	"github.com/haagent/haagent/internal/findings"
	"golang.org/x/sys/unix"
)

// DefaultSettle is how long a key file must keep its size and mtime before it is uploaded: the
// upload is conditional (If-None-Match), so a copy taken while CircleCI is still writing the
// file would become the permanent backup.
const DefaultSettle = 10 * time.Second

// Options say where the keys are and when a file counts as finished.
type Options struct {
	Root     string // --root
	LocalDir string // the machine path of the keys directory
	Prefix   string // the keys prefix in the bucket, under the source prefix
	// Settle is how long a file must have been unchanged (size and mtime); 0 is DefaultSettle.
	Settle time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
	// Known maps an object's key (under the source prefix) to what the fetch verified it held:
	// a local key whose sha256 is the recorded one, of an object whose ETag has not changed
	// since, is in sync without downloading it again (the boot fetched those very objects).
	Known map[string]fetch.Known
	// Concurrency is how many keys are uploaded or compared at once (the fetch's setting):
	// with S3 tens of milliseconds away, a boot that backs up 200 keys one after another
	// spends seconds waiting. 0 is one at a time.
	Concurrency int
	// Listing, when not nil, is a listing of the prefix the caller has just taken (the
	// periodic scan lists it to see whether the bucket's side changed): used as it is instead
	// of listing again.
	Listing []bucket.Object
	// Progress, when not nil, is called after each key's upload or comparison, from the
	// workers' goroutines: a monitor's backup of hundreds of keys, each request bounded but
	// the whole not, shows the supervisor it moves.
	Progress func()
}

// Result says what happened to each local key.
type Result struct {
	Uploaded, InSync, Conflicts, NotBackedUp []string
	// Details of each conflict, with both hashes (never contents).
	Details  []fetch.KeyConflict
	Findings []findings.Finding
	// Verified are the keys the bucket holds exactly as this machine does (uploaded, the put's
	// answer echoing their SHA-256 or a read-back showing it, or compared equal), each with the
	// object's ETag: what a fetch records for a file it installed. Recorded, they spare the next
	// boot's fetch a download of each to compare (a new install's keys were never fetched).
	Verified []fetch.Known
}

// Keys compares the local keys directory with the bucket prefix and uploads what is missing,
// reading each upload back. Every entry of the directory is accounted for: a file that is not
// a regular file, empty, or still changing counts as not backed up.
func Keys(ctx context.Context, b *bucket.Bucket, o Options) (Result, error) {
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var res Result
	remote := map[string]bucket.Object{}
	objs := o.Listing
	if objs == nil {
		var err error
		if objs, err = b.List(ctx, o.Prefix); err != nil {
			return res, fmt.Errorf("listing %s: %w", b.URI(o.Prefix), err)
		}
	}
	for _, obj := range objs {
		remote[obj.Rel] = obj
	}
	// The root is resolved once: WalkDir does not follow a symlinked root, and a keys directory
	// that is a link (to a data volume, say) would look empty, so "every local key is in S3"
	// would hold while fetch and CircleCI write through the link.
	notBackedUp := func(rel, summary, evidence, fix string) {
		res.NotBackedUp = append(res.NotBackedUp, rel)
		f := findings.New(findings.KeysNotBackedUp, filepath.Join(o.LocalDir, rel), summary, evidence)
		if fix != "" {
			f = f.WithFix(fix)
		}
		res.Findings = append(res.Findings, f)
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(o.Root, o.LocalDir))
	if errors.Is(err, fs.ErrNotExist) {
		// No keys directory: nothing to back up (CircleCI has not started yet). But a link
		// whose target is missing (a data volume not mounted) is where the keys are meant to
		// be: "nothing to back up" would let the run complete with the keys unaccounted for.
		link := filepath.Join(o.Root, o.LocalDir)
		if fi, lerr := os.Lstat(link); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(link)
			notBackedUp(".", fmt.Sprintf("the keys directory %s is a symlink to %s, which does not exist; no key there can be backed up", o.LocalDir, target), err.Error(),
				fmt.Sprintf("mount or restore %s (the volume that holds CircleCI's encryption keys), then haagent backup keys", target))
			return res, nil
		}
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("resolving the keys directory %s: %w", o.LocalDir, err)
	}
	emptyKey := func(rel string) {
		res.NotBackedUp = append(res.NotBackedUp, rel)
		res.Findings = append(res.Findings, findings.New(findings.KeysEmpty, filepath.Join(o.LocalDir, rel),
			fmt.Sprintf("encryption key %s on this machine is empty (0 bytes); an empty copy is never uploaded (it would become the permanent backup)", rel), "").
			WithFix(fmt.Sprintf("restore %s from the machine or backup that holds the real key; if CircleCI is still creating it, haagent backs it up once it is written", filepath.Join(o.LocalDir, rel))))
	}
	type localKey struct {
		rel  string
		info fs.FileInfo
	}
	var local []localKey
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		if fetch.IsHaagentTemp(d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil // haagent's own staging and temp files: not keys yet
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			// A link or a device is not a key haagent can vouch for: it counts as missing, so
			// a replacement is never requested on its account.
			notBackedUp(rel, fmt.Sprintf("%s in the keys directory is not a regular file (%s); it is not backed up", rel, d.Type()), "",
				fmt.Sprintf("replace %s with the key file itself (cp --remove-destination \"$(readlink -f %s)\" %s), then haagent backup keys",
					filepath.Join(o.LocalDir, rel), filepath.Join(o.LocalDir, rel), filepath.Join(o.LocalDir, rel)))
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !fetch.IsKeyFile(d.Name(), info) {
			emptyKey(rel) // regular and not haagent's: only an empty file is left
			return nil
		}
		local = append(local, localKey{rel, info})
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("reading the keys directory %s: %w", o.LocalDir, err)
	}
	sort.Slice(local, func(i, j int) bool { return local[i].rel < local[j].rel })
	// Each key is looked at here, on this machine, first; what needs S3 (an upload, a
	// comparison) becomes a job for the worker pool below. Outcomes land in the
	// key's own slot, so the result keeps the keys' order whatever finishes first.
	out := make([]outcome, len(local))
	shas := make([]string, len(local))
	var jobs []job
	for i, lk := range local {
		rel, key := lk.rel, o.Prefix+lk.rel
		oc := &out[i]
		path := filepath.Join(dir, rel)
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the walk (moved aside by a person): nothing to back up
		}
		if err != nil {
			return res, fmt.Errorf("reading key %s: %w", rel, err)
		}
		// Read it whole, then check it did not change meanwhile: a writer that started after
		// the listing must not get its half-written bytes uploaded.
		if after, err := os.Lstat(path); err != nil || after.Size() != lk.info.Size() || !after.ModTime().Equal(lk.info.ModTime()) || int64(len(data)) != lk.info.Size() {
			oc.notBackedUp(findings.New(findings.KeysNotBackedUp, filepath.Join(o.LocalDir, rel), fmt.Sprintf("encryption key %s changed while it was read; it is backed up once unchanged for %s", rel, o.Settle), "").
				WithFix("nothing to do: haagent retries"))
			continue
		}
		j := job{i: i, rel: rel, key: key, data: data, sha: sha(data)}
		shas[i] = j.sha
		obj, there := remote[rel]
		if !there {
			// A file that changed within the settle time may still be being written: it is not
			// uploaded until it has kept its size and mtime that long (it can be found equal to
			// the bucket's copy meanwhile: the fetch just wrote it).
			age := o.Now().Sub(lk.info.ModTime())
			if age < o.Settle {
				// The age goes in the evidence: a summary that changed at every scan would make
				// a new finding (and a journal entry) each time.
				oc.notBackedUp(findings.New(findings.KeysNotBackedUp, filepath.Join(o.LocalDir, rel), fmt.Sprintf("encryption key %s is still being written; it is backed up once unchanged for %s", rel, o.Settle),
					fmt.Sprintf("last changed %s ago", age.Round(time.Second))).WithFix("nothing to do: haagent retries; or run haagent backup keys in a minute"))
				continue
			}
			// A writer that paused longer than the settle time (a copy from a slow source)
			// still holds the file open for writing: the lease says so where mtime cannot.
			if open, err := openForWriting(path); errors.Is(err, fs.ErrNotExist) {
				continue // moved aside since it was read: nothing to back up
			} else if err != nil {
				oc.notBackedUp(findings.New(findings.KeysNotBackedUp, filepath.Join(o.LocalDir, rel), fmt.Sprintf("cannot tell whether encryption key %s is still being written; it is not uploaded", rel), err.Error()).
					WithFix("check that haagent can open the file (it runs as root); haagent retries at the next scan"))
				continue
			} else if open {
				oc.notBackedUp(findings.New(findings.KeysNotBackedUp, filepath.Join(o.LocalDir, rel), fmt.Sprintf("encryption key %s is still being written; it is backed up once unchanged for %s", rel, o.Settle),
					"another process holds it open for writing").WithFix("nothing to do: haagent retries once the writer closes it; or run haagent backup keys then"))
				continue
			}
			j.upload = true
			jobs = append(jobs, j)
			continue
		}
		// What the fetch verified: the same object (its ETag unchanged since) holding this
		// very content. No request tells more.
		if k, ok := o.Known[key]; ok && k.ETag != "" && k.ETag == obj.ETag && k.SHA256 == j.sha {
			oc.inSync, oc.etag = true, obj.ETag
			continue
		}
		jobs = append(jobs, j)
	}
	n := o.Concurrency
	if n < 1 {
		n = 1
	}
	work := make(chan job)
	var wg sync.WaitGroup
	for w := 0; w < min(n, len(jobs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				out[j.i] = o.run(ctx, b, j)
				if o.Progress != nil {
					o.Progress()
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	for i, oc := range out {
		rel := local[i].rel
		switch {
		case oc.uploaded:
			res.Uploaded = append(res.Uploaded, rel)
		case oc.inSync:
			res.InSync = append(res.InSync, rel)
		case oc.conflict != nil:
			res.Conflicts = append(res.Conflicts, rel)
			res.Details = append(res.Details, *oc.conflict)
		case oc.notBacked:
			res.NotBackedUp = append(res.NotBackedUp, rel)
		}
		res.Findings = append(res.Findings, oc.findings...)
		if (oc.uploaded || oc.inSync) && oc.etag != "" {
			res.Verified = append(res.Verified, fetch.Known{Key: o.Prefix + rel, ETag: oc.etag, Size: local[i].info.Size(), SHA256: shas[i]})
		}
	}
	return res, nil
}

// job is one key's work that needs S3.
type job struct {
	i        int
	rel, key string
	data     []byte
	sha      string
	upload   bool // not in the listing: put it (If-None-Match), read back only when the answer echoes no checksum
}

// outcome is what became of one local key.
type outcome struct {
	uploaded, inSync, notBacked bool
	etag                        string // the bucket's object, found equal to the local key
	conflict                    *fetch.KeyConflict
	findings                    []findings.Finding
}

func (o *outcome) notBackedUp(f findings.Finding) {
	o.notBacked = true
	o.findings = append(o.findings, f)
}

// run uploads or compares one key.
func (opt Options) run(ctx context.Context, b *bucket.Bucket, j job) outcome {
	var o outcome
	if j.upload {
		st, perr := b.Create(ctx, j.key, j.data)
		if perr != nil && !errors.Is(perr, bucket.ErrExists) {
			f := findings.New(findings.KeysNotBackedUp, b.URI(j.key), fmt.Sprintf("encryption key %s exists only on this machine: uploading it failed", j.rel), perr.Error())
			var be *bucket.Error
			if errors.As(perr, &be) && be.Code() == findings.S3AccessDenied {
				f = f.WithFix(fmt.Sprintf("grant the instance role s3:PutObject on arn:aws:s3:::%s/%s%s* (and kms:GenerateDataKey with SSE-KMS); until then a replacement instance cannot decrypt CircleCI's data", b.Name, b.Prefix, opt.Prefix))
			}
			o.notBackedUp(f)
			return o
		}
		if perr == nil {
			// S3 stores a put only when its body matches the SHA-256 it carries, and echoes
			// that checksum: an answer that echoes this key's SHA-256 is the proof a read-back
			// would give, for no request. An answer that echoes another one is not backed up;
			// a store that echoes none (some S3-compatible ones) is read back instead.
			if st.SHA256 != "" {
				if st.SHA256 != j.sha {
					o.notBackedUp(findings.New(findings.KeysNotBackedUp, b.URI(j.key),
						fmt.Sprintf("encryption key %s was uploaded but the bucket's answer names other contents; the next backup compares the bucket's copy with it", j.rel),
						fmt.Sprintf("the put's answer has x-amz-checksum-sha256 of sha256 %s; the key's sha256 is %s", st.SHA256, j.sha)))
					return o
				}
				// Without an ETag it is backed up all the same, only not recorded as verified.
				o.uploaded, o.etag = true, st.ETag
				return o
			}
			got, etag, err := remoteSHA(ctx, b, j.key)
			if err != nil || got != j.sha {
				o.notBackedUp(findings.New(findings.KeysNotBackedUp, b.URI(j.key),
					fmt.Sprintf("encryption key %s was uploaded but does not read back the same", j.rel), fmt.Sprint(err)))
				return o
			}
			o.uploaded, o.etag = true, etag
			return o
		}
		// Another writer created it meanwhile: compare like any existing object.
	}
	got, etag, err := opt.compare(ctx, b, j)
	switch {
	case err != nil:
		o.notBackedUp(findings.New(findings.KeysNotBackedUp, b.URI(j.key), fmt.Sprintf("cannot compare encryption key %s with the bucket's copy", j.rel), err.Error()))
	case got == j.sha:
		o.inSync, o.etag = true, etag
	default:
		// Reported even while the file may still change: nothing is written either way,
		// and the next comparison says whether it lasts.
		c := fetch.KeyConflict{Path: filepath.Join(opt.LocalDir, j.rel), Object: b.URI(j.key), LocalSHA256: j.sha, BucketSHA256: got}
		o.conflict = &c
		o.findings = append(o.findings, c.Finding())
	}
	return o
}

// compare returns the sha256 of the bucket's copy of a key whose state the run does not know,
// asking as little as tells: HeadObject in checksum mode gives the SHA-256 S3 stores (every
// key haagent uploads has one); without it, an ETag that is the content's MD5 (single part,
// no SSE-KMS or SSE-C: HeadObject says which, a listing does not) shows the copies equal;
// only when neither can tell, or they differ (a conflict names the bucket's sha256), is the
// object downloaded.
func (opt Options) compare(ctx context.Context, b *bucket.Bucket, j job) (sum, etag string, err error) {
	m, err := b.Head(ctx, j.key)
	if err != nil {
		return "", "", err
	}
	if m.SHA256 != "" {
		return m.SHA256, m.ETag, nil
	}
	if m.PlainMD5 && m.Size == int64(len(j.data)) {
		if sum := md5.Sum(j.data); hex.EncodeToString(sum[:]) == m.ETag {
			return j.sha, m.ETag, nil
		}
	}
	return remoteSHA(ctx, b, j.key)
}

// Fingerprint is a cheap summary of the keys directory (names, types, sizes, mtimes): the
// periodic scan backs up again only when it changes, or while keys are left out.
func Fingerprint(o Options) string {
	dir, err := filepath.EvalSymlinks(filepath.Join(o.Root, o.LocalDir))
	if err != nil {
		return "unreadable: " + err.Error()
	}
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(&b, "%s error %v\n", p, err)
			return nil
		}
		if info, err := d.Info(); err == nil {
			fmt.Fprintf(&b, "%s %s %d %d\n", p, info.Mode(), info.Size(), info.ModTime().UnixNano())
		}
		return nil
	})
	return b.String()
}

func sha(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// remoteSHA downloads key and returns its sha256 and ETag.
func remoteSHA(ctx context.Context, b *bucket.Bucket, key string) (sum, etag string, err error) {
	err = b.Get(ctx, key, "", func(body io.Reader, m bucket.Meta) error {
		h := sha256.New()
		if _, err := io.Copy(h, body); err != nil {
			return err
		}
		sum, etag = hex.EncodeToString(h.Sum(nil)), m.ETag
		return nil
	})
	return sum, etag, err
}

// openForWriting reports whether any process holds path open for writing. It asks the kernel
// for a read lease (fcntl F_SETLEASE F_RDLCK), which is refused with EAGAIN exactly while the
// file is open for writing, and releases it at once: held, it would make the next writer's
// open wait for haagent. Where leases are unavailable (haagent neither the file's owner nor
// holding CAP_LEASE: EACCES/EPERM; a filesystem without them such as NFS, or
// fs.leases-enable=0: EINVAL) the settle time alone decides: false, nil.
func openForWriting(path string) (bool, error) {
	// O_NONBLOCK: a FIFO swapped in since the walk must not hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, fmt.Errorf("opening %s to check for writers: %w", path, err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("checking %s for writers: %w", path, err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		if _, lerr = unix.FcntlInt(fd, unix.F_SETLEASE, unix.F_RDLCK); lerr == nil {
			_, lerr = unix.FcntlInt(fd, unix.F_SETLEASE, unix.F_UNLCK)
		}
	}); err != nil {
		return false, fmt.Errorf("checking %s for writers: %w", path, err)
	}
	switch {
	case lerr == nil:
		return false, nil
	case errors.Is(lerr, unix.EAGAIN):
		return true, nil
	case errors.Is(lerr, unix.EACCES), errors.Is(lerr, unix.EPERM), errors.Is(lerr, unix.EINVAL), errors.Is(lerr, unix.ENOSYS), errors.Is(lerr, unix.ENOTSUP):
		return false, nil
	}
	return false, fmt.Errorf("taking a read lease on %s to check for writers (F_SETLEASE): %w", path, lerr)
}

package fetch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/bucket"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"golang.org/x/sys/unix"
)

// KeysEntry is the layout entry of CircleCI's encryption keys. Its files are never replaced:
// a local key that differs from the bucket's is kept and reported, because the data may be
// encrypted with either one and only a person can tell which.
const KeysEntry = layout.EncryptionKeys

// KeyConflict is a key whose copy on this machine and copy in the bucket differ. It is kept
// in the run record until a comparison finds them equal again, so `haagent status` and
// `haagent check` show it while it lasts.
type KeyConflict struct {
	Path         string `json:"path"`   // machine path
	Object       string `json:"object"` // s3:// URI
	LocalSHA256  string `json:"local_sha256"`
	BucketSHA256 string `json:"bucket_sha256"`
}

// Finding is the KEYS_CONFLICT finding for c: both hashes, never the contents.
func (c KeyConflict) Finding() findings.Finding {
	return findings.New(findings.KeysConflict, c.Path,
		fmt.Sprintf("encryption key %s differs from %s; neither is replaced", c.Path, c.Object),
		fmt.Sprintf("sha256 on this machine %s, in the bucket %s", c.LocalSHA256, c.BucketSHA256)).
		WithFix(fmt.Sprintf("decide which copy CircleCI's data was encrypted with. To keep this machine's: aws s3 mv %s %s; to keep the bucket's: mv %s /root/%s.conflict. haagent then copies the kept one across; nothing is replaced without you",
			c.Object, conflictsURI(c.Object), c.Path, path.Base(c.Path)))
}

// conflictsURI is where a person parks the bucket's losing copy: beside the keys prefix, not
// inside it (a copy inside would be fetched as one more key).
func conflictsURI(object string) string {
	const p = "circleci-encryption-keys/"
	if i := strings.LastIndex(object, p); i >= 0 {
		return object[:i] + "circleci-encryption-keys-conflicts/" + object[i+len(p):]
	}
	// A keys prefix of another name: a sibling directory of the key's own.
	dir, base := path.Split(object)
	return strings.TrimSuffix(dir, "/") + "-conflicts/" + base
}

// ErrEmptyKey is a key object of 0 bytes: installing it would hand CircleCI an empty key
// (and the backup would then keep it as the permanent copy).
var ErrEmptyKey = errors.New("the key object is empty (0 bytes)")

// keepLocalKey applies the keys rule after a download: a key already on the machine is never
// replaced. Same content: nothing to do. Different content (an empty bucket object included):
// the staged copy is dropped and f.Conflict says so. No local file: an empty object is refused.
func keepLocalKey(b *bucket.Bucket, final string, f *File) error {
	f.object = b.URI(f.Key)
	// Lstat, not the hash's stat: a link (dangling or not) or a device at a key path is
	// neither "no key here" (stage the bucket's, which the no-replace commit then trips over)
	// nor a key to compare. It is left alone and reported; the rest of the bundle goes on.
	if fi, err := os.Lstat(final); err == nil && !fi.Mode().IsRegular() {
		os.Remove(f.staged)
		f.staged, f.notFile = "", true
		target, _ := os.Readlink(final)
		return &notFileError{path: f.Dest, mode: fi.Mode(), target: target}
	}
	cur, err := atomicfile.HashFile(final)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if f.Size == 0 {
			os.Remove(f.staged)
			f.staged = ""
			return ErrEmptyKey
		}
		return nil
	case err != nil:
		os.Remove(f.staged)
		f.staged = ""
		return &bucket.LocalError{Path: f.Dest, Err: err}
	case cur.SHA256 == f.SHA256:
		return nil
	}
	os.Remove(f.staged)
	f.staged = ""
	f.Conflict = &KeyConflict{Path: f.Dest, Object: b.URI(f.Key), LocalSHA256: cur.SHA256, BucketSHA256: f.SHA256}
	return nil
}

// notFileError is a key path that holds something other than a regular file.
type notFileError struct {
	path   string
	mode   fs.FileMode
	target string // a link's
}

func (e *notFileError) Error() string {
	return fmt.Sprintf("%s is not a regular file (%s)", e.path, e.mode.Type())
}

// notFileFinding is KEYS_PATH_NOT_FILE for e: an error for a person, but no Commit failure and
// no blocking finding, so the other files of the bundle are still committed.
func notFileFinding(object string, e *notFileError) findings.Finding {
	what := e.mode.Type().String()
	if e.mode&fs.ModeSymlink != 0 {
		what = "a symbolic link to " + e.target
	}
	return findings.New(findings.KeysPathNotFile, e.path,
		fmt.Sprintf("encryption key %s is %s, not a file; the bucket's copy %s is not installed there and nothing replaces it", e.path, what, object), e.Error()).
		WithFix(fmt.Sprintf("if the link points at the real key, replace it with the file (cp --remove-destination \"$(readlink -f %s)\" %s); if it is stray, move it aside (mv %s /root/) so haagent installs %s", e.path, e.path, e.path, object))
}

// emptyKeysFinding is the finding for an empty keys prefix: a new install's warning, or, when
// this deployment existed before and the machine holds no keys either, KEYS_MISSING.
func emptyKeysFinding(ctx context.Context, b *bucket.Bucket, o Options, e config.Entry) findings.Finding {
	newInstall := findings.New(findings.KeysPrefixEmpty, b.URI(e.Key),
		fmt.Sprintf("no objects under %s (%s)", b.URI(e.Key), e.Purpose), "ListObjectsV2 returned no keys")
	if o.Existing == nil || hasFiles(filepath.Join(o.Root, e.Dest)) {
		// Keys on the machine: the backup puts them in the bucket (LOCAL_ONLY_FILES meanwhile).
		return newInstall
	}
	ex, err := o.Existing(ctx)
	if err != nil {
		return bucketFinding(err, e)
	}
	if ex.Why == "" {
		return newInstall
	}
	f := findings.New(findings.KeysMissing, b.URI(e.Key),
		fmt.Sprintf("no encryption keys under %s nor on this machine, but this deployment existed before: CircleCI would create new keys and its data would be unreadable", b.URI(e.Key)),
		ex.Why).WithFix(fmt.Sprintf("copy the keys of the old Services machine (or their backup) to %s (aws s3 cp DIR %s --recursive); haagent stops before the installer until they are there. If this deployment never completed an install, there are no old keys: delete the object named in the evidence and boot again",
		b.URI(e.Key), b.URI(e.Key)))
	if ex.Here {
		// Installed on this instance: stopping its boot would not bring keys back.
		f.Blocking = false
	}
	return f
}

// hasFiles reports whether dir holds a key the backup would upload (IsKeyFile): an empty
// file, a dangling link or a placeholder such as .keep is no key, and must not turn an
// existing deployment's KEYS_MISSING into a new install's warning.
func hasFiles(dir string) bool {
	found := false
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real // WalkDir does not follow a symlinked root
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found {
			return filepath.SkipDir
		}
		if d.IsDir() {
			if d.Name() == stageDirName {
				return filepath.SkipDir
			}
			return nil
		}
		if info, err := d.Info(); err == nil && IsKeyFile(d.Name(), info) {
			found = true
		}
		return nil
	})
	return found
}

// tempName is atomicfile's temp file name (os.CreateTemp of ".NAME.haagent-*": digits).
var tempName = regexp.MustCompile(`^\..+\.haagent-[0-9]+$`)

// IsHaagentTemp reports whether name is one of haagent's own temp files or its staging
// directory: exactly those, so that a key whose name merely contains ".haagent-"
// (contexts.haagent-v2.key) is still a key.
func IsHaagentTemp(name string) bool {
	return name == stageDirName || tempName.MatchString(name)
}

// IsKeyFile is the one rule, shared by the fetch and the backup, for what in the keys
// directory is a key the machine holds: a regular, non-empty file that is not haagent's own
// temp file. It is what the backup uploads; anything else there is reported, never counted
// as a key.
func IsKeyFile(name string, info fs.FileInfo) bool {
	return !IsHaagentTemp(name) && info.Mode().IsRegular() && info.Size() > 0
}

// commitKey moves a staged key into place without ever replacing a file there (renameat2
// RENAME_NOREPLACE, or a hard link where the filesystem lacks it). It returns the directory
// that took a new name ("" when none did): Commit syncs each such directory once after all the
// keys, as CommitAll does for the other files; one sync per key was 200 directory fsyncs, most
// of the validate-files step's time on a replacement's first boot.
func (bd *Bundle) commitKey(f *File) (synced string, err error) {
	final := filepath.Join(bd.Root, f.Dest)
	dir := filepath.Dir(final)
	if err := atomicfile.MkdirAll(dir, f.dirMode); err != nil {
		return "", err
	}
	err = renameNoReplace(f.staged, final)
	if errors.Is(err, fs.ErrExist) {
		os.Remove(f.staged)
		f.staged = ""
		if fi, lerr := os.Lstat(final); lerr == nil && !fi.Mode().IsRegular() {
			// A link or device that appeared since the fetch looked: reported, left alone.
			f.notFile, f.Changed = true, false
			target, _ := os.Readlink(final)
			bd.CommitFindings = append(bd.CommitFindings, notFileFinding(f.object, &notFileError{path: f.Dest, mode: fi.Mode(), target: target}))
			return "", nil
		}
		cur, herr := atomicfile.HashFile(final)
		if herr != nil {
			return "", fmt.Errorf("reading the key %s that appeared during the fetch: %w", f.Dest, herr)
		}
		if cur.SHA256 != f.SHA256 {
			c := KeyConflict{Path: f.Dest, Object: f.object, LocalSHA256: cur.SHA256, BucketSHA256: f.SHA256}
			f.Conflict, f.Changed = &c, false
			bd.Conflicts = append(bd.Conflicts, c)
			bd.Findings = append(bd.Findings, c.Finding())
		}
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("moving key %s into place: %w", f.Dest, err)
	}
	return dir, nil
}

func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		if err != nil {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
		}
		return nil
	}
	// No renameat2 on this filesystem: a hard link fails on an existing name just the same.
	if err := os.Link(from, to); err != nil {
		return err
	}
	return os.Remove(from)
}

// Package atomicfile is haagent's one write primitive: a file appears at its final path
// complete, with its final mode and owner, or not at all.
package atomicfile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Options says how the file must look at its final path.
type Options struct {
	Mode os.FileMode
	// DirMode is used for parent directories haagent has to create. It never widens an
	// existing directory.
	DirMode os.FileMode
	// UID and GID are applied to the temp file before any byte is written; -1 keeps the
	// process's own.
	UID, GID int
}

// Secret is the mode set for keys, licences and settings: 0600 files in 0700 directories.
var Secret = Options{Mode: 0o600, DirMode: 0o700, UID: -1, GID: -1}

// Result describes what was written.
type Result struct {
	Size   int64
	SHA256 string
}

// Write streams r into path. The temp file lives in path's directory (so the rename is atomic),
// gets its mode and owner before the first byte, is fsynced, renamed over path, and the
// directory is fsynced. On any error the temp file is removed and path is untouched.
func Write(path string, r io.Reader, o Options) (Result, error) {
	dir := filepath.Dir(path)
	if err := MkdirAll(dir, o.DirMode); err != nil {
		return Result{}, err
	}
	tmp, res, err := writeTemp(dir, filepath.Base(path), r, o)
	if err != nil {
		return Result{}, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return Result{}, fmt.Errorf("renaming %s into place: %w", path, err)
	}
	if err := SyncDir(dir); err != nil {
		return Result{}, err
	}
	return res, nil
}

// WriteFile is Write for a byte slice.
func WriteFile(path string, data []byte, o Options) (Result, error) {
	return Write(path, bytesReader(data), o)
}

// Stage writes r into a temp file in dir (which must be on the destination's filesystem) and
// returns its path; Commit later renames it. Used by fetch so nothing reaches a final path
// before the whole bundle arrived.
func Stage(dir, name string, r io.Reader, o Options) (string, Result, error) {
	if err := MkdirAll(dir, o.DirMode); err != nil {
		return "", Result{}, err
	}
	tmp, res, err := writeTemp(dir, name, r, o)
	return tmp, res, err
}

// Commit renames a staged file over path, creating path's parents with dirMode, and fsyncs
// path's directory.
func Commit(staged, path string, dirMode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := MkdirAll(dir, dirMode); err != nil {
		return err
	}
	if err := os.Rename(staged, path); err != nil {
		return fmt.Errorf("moving %s into place: %w", path, err)
	}
	return SyncDir(dir)
}

// Move is one staged file and its final path.
type Move struct {
	Staged, Path string
	DirMode      os.FileMode
}

// CommitAll moves several staged files into place, then syncs each directory once: a bundle of
// hundreds of files in a few directories pays a few directory syncs, not one per file. Each
// rename is atomic on its own; the bundle is durable when CommitAll returns.
func CommitAll(moves []Move) error {
	var dirs []string
	seen := map[string]bool{}
	for _, m := range moves {
		dir := filepath.Dir(m.Path)
		if !seen[dir] {
			if err := MkdirAll(dir, m.DirMode); err != nil {
				return err
			}
			seen[dir] = true
			dirs = append(dirs, dir)
		}
		if err := os.Rename(m.Staged, m.Path); err != nil {
			return fmt.Errorf("moving %s into place: %w", m.Path, err)
		}
	}
	for _, dir := range dirs {
		if err := SyncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

func writeTemp(dir, base string, r io.Reader, o Options) (string, Result, error) {
	f, err := os.CreateTemp(dir, "."+base+".haagent-*")
	if err != nil {
		return "", Result{}, fmt.Errorf("creating temp file for %s in %s: %w", base, dir, err)
	}
	tmp := f.Name()
	fail := func(err error) (string, Result, error) {
		f.Close()
		os.Remove(tmp)
		return "", Result{}, err
	}
	// CreateTemp makes the file 0600; set the final mode and owner before writing so the
	// content is never readable by anyone it is not meant for, not even for a moment.
	if err := f.Chmod(o.Mode.Perm()); err != nil {
		return fail(fmt.Errorf("setting mode %#o on temp file for %s: %w", o.Mode.Perm(), base, err))
	}
	if o.UID >= 0 || o.GID >= 0 {
		if err := f.Chown(o.UID, o.GID); err != nil {
			return fail(fmt.Errorf("setting owner %d:%d on temp file for %s: %w", o.UID, o.GID, base, err))
		}
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		return fail(fmt.Errorf("writing %s: %w", base, err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("syncing %s: %w", base, err))
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", Result{}, fmt.Errorf("closing %s: %w", base, err)
	}
	return tmp, Result{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// MkdirAll creates dir and its missing parents with mode (0700 when zero). Existing
// directories keep their mode: widening /etc because a secret lives there would be wrong.
func MkdirAll(dir string, mode os.FileMode) error {
	if mode == 0 {
		mode = 0o700
	}
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("creating directory %s: a file is in the way", dir)
		}
		return nil
	}
	if err := MkdirAll(filepath.Dir(dir), mode); err != nil {
		return err
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating directory %s: %w", dir, err)
	}
	// Mkdir applies the umask; the directory must have exactly the mode asked for.
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("setting mode %#o on %s: %w", mode, dir, err)
	}
	return nil
}

// SyncDir fsyncs a directory, so a rename into it survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// HashFile returns the size and sha256 of the file at path.
func HashFile(path string) (Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Result{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return Result{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

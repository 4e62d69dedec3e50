package fetch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
)

// convergeFiles gives each file the mode and owner of its entry, through a descriptor opened
// without following a symlink at the final path. A symlink there is left alone and reported
// (FILE_SYMLINK_NOT_FOLLOWED in CommitFindings).
func (bd *Bundle) convergeFiles(files []*File) error {
	for _, f := range files {
		final := filepath.Join(bd.Root, f.Dest)
		changed, err := atomicfile.Converge(final, f.mode, f.uid, f.gid, false)
		if errors.Is(err, atomicfile.ErrSymlink) {
			target, _ := os.Readlink(final)
			bd.CommitFindings = append(bd.CommitFindings, findings.New(findings.FileSymlinkNotFollowed, f.Dest,
				fmt.Sprintf("%s is a symbolic link (to %s); haagent does not follow it, so the target keeps its own mode and owner instead of %#o uid %d gid %d", f.Dest, target, f.mode.Perm(), f.uid, f.gid),
				err.Error()).WithFix(fmt.Sprintf("replace the link with the file: rm %s, then run haagent again (it writes the file itself)", f.Dest)))
			continue
		}
		if err != nil {
			return err
		}
		if changed {
			// Someone changed it by hand, or the config's mode or owner changed: say so, it
			// may be why something could not read it.
			bd.log.Info("mode and owner put back", "path", f.Dest, "mode", fmt.Sprintf("%#o", f.mode.Perm()), "uid", f.uid, "gid", f.gid)
		}
	}
	return nil
}

// ConvergeInPlace converges the mode and owner of the files the last run wrote (known), and of
// the directories inside their entries, when there is no bundle to commit: a reboot that goes
// on with the files in place because S3 is unreachable still puts a chmod'ed key right. Files
// that are gone are skipped (the checks that follow report the ones that matter). The findings
// are FILE_OWNER_UNRESOLVED (then nothing is changed, and the error is a *findings.Failure) and
// FILE_SYMLINK_NOT_FOLLOWED.
func ConvergeInPlace(ctx context.Context, root string, layout []config.Entry, known map[string]Known, log *slog.Logger) ([]findings.Finding, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	layout, _, owners := ResolveOwners(ctx, root, layout, true, log)
	if len(owners) > 0 {
		return owners, &findings.Failure{Findings: owners}
	}
	bd := &Bundle{Root: root, log: log}
	for dest, k := range known {
		e, ok := entryFor(layout, dest)
		if !ok {
			continue // the layout changed since: not haagent's file any more
		}
		if _, err := os.Lstat(filepath.Join(root, dest)); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		bd.Files = append(bd.Files, newFile(root, e, k.Key, dest, nil))
	}
	sort.Slice(bd.Files, func(i, j int) bool { return bd.Files[i].Dest < bd.Files[j].Dest })
	if err := bd.prepareDirs(); err != nil {
		return nil, err
	}
	if err := bd.convergeFiles(bd.Files); err != nil {
		return bd.CommitFindings, err
	}
	return bd.CommitFindings, nil
}

// entryFor finds the layout entry that writes dest.
func entryFor(layout []config.Entry, dest string) (config.Entry, bool) {
	for _, e := range layout {
		if (!e.Recursive && e.Dest == dest) || (e.Recursive && strings.HasPrefix(dest, e.Dest)) {
			return e, true
		}
	}
	return config.Entry{}, false
}

// prepareDirs creates the directories the bundle's files go into and converges the mode and
// owner of those inside directory entries. Directories above an entry are created 0755 (and
// never changed when they exist: /etc is not haagent's). A symlinked directory inside an
// entry (a keys directory moved to another volume, say) is used as it is and not changed.
func (bd *Bundle) prepareDirs() error {
	done := map[string]bool{}
	for _, f := range bd.Files {
		dir := filepath.Dir(filepath.Join(bd.Root, f.Dest))
		if done[dir] {
			continue
		}
		if f.top == "" {
			if err := atomicfile.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			done[dir] = true
			continue
		}
		top := filepath.Join(bd.Root, f.top)
		if err := atomicfile.MkdirAll(filepath.Dir(top), 0o755); err != nil {
			return err
		}
		// From the entry's directory down to the file's, each directory once.
		rel, err := filepath.Rel(top, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			return fmt.Errorf("%s is not inside its entry's directory %s", f.Dest, f.top)
		}
		d := top
		for _, seg := range append([]string{"."}, strings.Split(rel, string(filepath.Separator))...) {
			if seg != "." {
				d = filepath.Join(d, seg)
			}
			if done[d] {
				continue
			}
			done[d] = true
			if err := os.Mkdir(d, f.dirMode.Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating directory %s: %w", d, err)
			}
			if _, err := atomicfile.Converge(d, f.dirMode, f.uid, f.gid, true); err != nil && !errors.Is(err, atomicfile.ErrSymlink) {
				return err
			}
		}
	}
	return nil
}

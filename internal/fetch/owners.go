package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/config"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// ResolveOwners turns every entry's user and group names into ids from the root's own
// etc/passwd and etc/group, and -1 into haagent's own ids, so that each file gets an owner
// that can be compared with what is on disk. With create, a missing docker group is created
// as a system group (before Docker's packages would, which accept an existing one): the
// licence is then root:docker from its first byte on a first boot. Without create (haagent
// validate, no side effects) a missing docker group is a note. Any other name that does not
// resolve is a FILE_OWNER_UNRESOLVED finding.
func ResolveOwners(ctx context.Context, root string, entries []config.Entry, create bool, log *slog.Logger) ([]config.Entry, []string, []findings.Finding) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	out := make([]config.Entry, len(entries))
	var notes []string
	var fs []findings.Finding
	gids := map[string]int{}
	uids := map[string]int{}
	for i, e := range entries {
		if e.User != "" {
			uid, ok := uids[e.User]
			if !ok {
				var err error
				uid, err = atomicfile.LookupUser(root, e.User)
				if err != nil {
					fs = append(fs, ownerFinding(root, e, "user", e.User, err))
				}
				uids[e.User] = uid
			}
			e.UID = uid
		}
		if e.Group != "" {
			gid, ok := gids[e.Group]
			if !ok {
				var err error
				gid, err = atomicfile.LookupGroup(root, e.Group)
				var unknown *atomicfile.UnknownNameError
				switch {
				case errors.As(err, &unknown) && e.Group == config.DockerGroup && create:
					var created bool
					gid, created, err = atomicfile.EnsureSystemGroup(ctx, root, e.Group)
					if err == nil && created {
						log.Info("created the docker group, so that the files the Replicated daemon reads belong to it from the first byte",
							"group", e.Group, "gid", gid, "db", filepath.Join(root, layout.GroupFile))
					}
				case errors.As(err, &unknown) && e.Group == config.DockerGroup:
					notes = append(notes, fmt.Sprintf("group %s does not exist yet in %s: the fetch creates it (%s %s)",
						e.Group, filepath.Join(root, layout.GroupFile), strings.Join(atomicfile.GroupAdd, " "), e.Group))
					err = nil
				}
				if err != nil {
					fs = append(fs, ownerFinding(root, e, "group", e.Group, err))
				}
				gids[e.Group] = gid
			}
			e.GID = gid
		}
		if e.UID < 0 {
			e.UID = os.Geteuid()
		}
		if e.GID < 0 {
			e.GID = os.Getegid()
		}
		out[i] = e
	}
	return out, notes, fs
}

func ownerFinding(root string, e config.Entry, kind, name string, err error) findings.Finding {
	field := "files." + e.Name + "." + kind
	db := filepath.Join(root, layout.GroupFile)
	summary := fmt.Sprintf("%s %q, the owner of %s (%s), does not exist in %s", kind, name, e.Dest, field, db)
	fix := fmt.Sprintf("create the group on the machine (groupadd %s) before haagent runs, or set %s (or gid) to a group that exists", name, field)
	var unknown *atomicfile.UnknownNameError
	var cmd *atomicfile.CommandError
	switch {
	case !errors.As(err, &unknown) && !errors.As(err, &cmd):
		// The database could not be read, or the entry's id is not a number: creating the name
		// would not help.
		summary = fmt.Sprintf("cannot resolve %s %q, the owner of %s (%s)", kind, name, e.Dest, field)
		fix = fmt.Sprintf("check the line for %s in the file named in the evidence (readable, with a numeric id), or set %s to a numeric id", name, field)
	case kind == "user":
		db = filepath.Join(root, layout.PasswdFile)
		summary = fmt.Sprintf("user %q, the owner of %s (%s), does not exist in %s", name, e.Dest, field, db)
		fix = fmt.Sprintf("create the user on the machine (useradd --system %s) before haagent runs, or set %s (or uid) to a user that exists", name, field)
	case name == config.DockerGroup && !errors.As(err, &unknown):
		// haagent's own groupadd failed (not root, a read-only or locked etc/group).
		summary = fmt.Sprintf("the %s group, which %s belongs to so the Replicated daemon can read it, could not be created in %s", name, e.Dest, db)
		fix = fmt.Sprintf("run haagent as root, or create the group yourself: %s %s", strings.Join(atomicfile.GroupAdd, " "), name)
	}
	return findings.New(findings.FileOwnerUnresolved, field, summary, err.Error()).WithFix(fix)
}

package validate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/haagent/haagent/internal/atomicfile"
	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
)

// The Replicated daemon (>= 2.5.0) runs as user replicated, group docker, in a container that
// sees the host's /etc read-only at /host/etc and nothing else of the host's files
// (replicated-installer, templates/systemd/replicated.service: -u ${REPLICATED_USER_ID}:${DOCKER_GROUP_ID},
// -v /etc:/host/etc:ro). So every file replicated.conf names must lie under /etc and be
// readable by that user through the kernel's usual rule: the owner's bits when it owns the
// file, else the group's bits when the file's group is docker, else the others' bits.
const (
	daemonUser  = "replicated"
	daemonGroup = layout.DockerGroup
	daemonMount = layout.ReplicatedHostMount
)

// namedFiles are the keys of replicated.conf that name a file the daemon reads (the airgap
// package too: an unattended airgap install reads it at the first start).
var namedFiles = []string{"LicenseFileLocation", "ImportSettingsFrom", "TlsBootstrapCert", "TlsBootstrapKey", "LicenseBootstrapAirgapPackagePath"}

// Readable checks, on the files in place under root, that each file replicated.conf names
// (LicenseFileLocation, ImportSettingsFrom, TlsBootstrapCert, TlsBootstrapKey and
// LicenseBootstrapAirgapPackagePath when set) lies
// under /etc, exists, and can be read by the Replicated daemon, the file itself and every
// directory from /etc down to it. Before the installer has run there is no replicated user:
// the mode bits and the group decide. A replicated.conf that cannot be read or parsed gives no
// finding here: Check reports it.
func Readable(l layout.Layout) []findings.Finding {
	root := l.Root
	data, err := os.ReadFile(l.Path(l.ReplicatedConf()))
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return nil
	}
	dockerGID, err := atomicfile.LookupGroup(root, daemonGroup)
	if err != nil {
		dockerGID = -1 // no docker group yet: only the others' bits can let the daemon in
	}
	daemonUID, err := atomicfile.LookupUser(root, daemonUser)
	if err != nil {
		daemonUID = -1 // created by the installer; until then nobody is that user
	}
	var out []findings.Finding
	for _, key := range namedFiles {
		p, ok := m[key].(string)
		if !ok || p == "" {
			continue
		}
		if f := readable(l, key, p, daemonUID, dockerGID); f != nil {
			out = append(out, *f)
		}
	}
	return out
}

func readable(l layout.Layout, key, p string, uid, gid int) *findings.Finding {
	clean := path.Clean(p)
	if !path.IsAbs(p) || !strings.HasPrefix(clean, daemonMount+"/") {
		return unreadable(key, p, "it is outside /etc, and only the host's /etc is mounted into the daemon's container (at /host/etc)",
			fmt.Sprintf("%s: %q", key, p),
			fmt.Sprintf("put the file under /etc (haagent writes %s and %s) and set %s in replicated.conf to that path", l.License(), l.SettingsConf(), key))
	}
	// A relative link that stays inside /etc resolves the same in the daemon's container and
	// is followed, a few hops at most.
	for hops := 0; ; hops++ {
		next, f := walk(l, key, p, clean, uid, gid, hops < 8)
		if next == "" {
			return f
		}
		clean = next
	}
}

func unreadable(key, p, summary, evidence, fix string) *findings.Finding {
	f := findings.New(findings.FileUnreadableByReplicated, p,
		fmt.Sprintf("the Replicated daemon (user %s, group %s) cannot read %s, which replicated.conf names as %s: %s", daemonUser, daemonGroup, p, key, summary),
		evidence)
	if fix != "" {
		f = f.WithFix(fix)
	}
	return &f
}

// walk checks clean from /etc down: each directory must let the daemon through (x), the file
// must let it read (r). It returns a finding, or nothing when the daemon can read the file, or
// the path to check instead when it meets a relative link that stays inside /etc (when follow).
func walk(l layout.Layout, key, p, clean string, uid, gid int, follow bool) (string, *findings.Finding) {
	root := l.Root
	segs := strings.Split(strings.TrimPrefix(clean, "/"), "/")
	cur := ""
	for i, seg := range segs {
		cur += "/" + seg
		last := i == len(segs)-1
		fi, err := os.Lstat(filepath.Join(root, cur))
		if errors.Is(err, fs.ErrNotExist) {
			fix := fmt.Sprintf("create %s, or correct %s in replicated.conf", cur, key)
			if name := l.EntryOf(path.Clean(p)); name != "" {
				fix = fmt.Sprintf("upload the file to the bucket (haagent writes it to %s, files.%s), or correct %s in replicated.conf", path.Clean(p), name, key)
			}
			return "", unreadable(key, p, cur+" does not exist", "", fix)
		}
		if err != nil {
			return "", unreadable(key, p, "haagent cannot inspect "+cur, err.Error(), "")
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			// An absolute target resolves against the container's own filesystem, where the
			// host's /etc is /host/etc.
			target, _ := os.Readlink(filepath.Join(root, cur))
			next := path.Join(append([]string{path.Dir(cur), target}, segs[i+1:]...)...)
			if follow && !path.IsAbs(target) && strings.HasPrefix(next, daemonMount+"/") {
				return next, nil
			}
			return "", unreadable(key, p, fmt.Sprintf("%s is a symbolic link (to %s), which the daemon resolves inside its container, where the host's /etc is /host/etc", cur, target),
				"", "replace the link with the file itself, or with a relative link that stays inside /etc")
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return "", nil
		}
		need, what := os.FileMode(0o1), "search (x) permission"
		if last {
			need, what = 0o4, "read permission"
			if !fi.Mode().IsRegular() {
				return "", unreadable(key, p, cur+" is not a regular file", fi.Mode().String(), "")
			}
		} else if !fi.IsDir() {
			return "", unreadable(key, p, cur+" is not a directory", fi.Mode().String(), "")
		}
		perm := fi.Mode().Perm()
		var class string
		var bits os.FileMode
		switch {
		case uid >= 0 && int(st.Uid) == uid:
			class, bits = "its owner "+daemonUser, perm>>6
		case gid >= 0 && int(st.Gid) == gid:
			class, bits = "group "+daemonGroup, perm>>3
		default:
			class, bits = "others", perm
		}
		if bits&need != 0 {
			continue
		}
		ev := fmt.Sprintf("the daemon falls under %s for %s", class, cur)
		if gid < 0 {
			ev += fmt.Sprintf("; there is no %s group in %s yet", daemonGroup, filepath.Join(root, layout.GroupFile))
		} else {
			ev += fmt.Sprintf(" (group %s is gid %d)", daemonGroup, gid)
		}
		fix := fmt.Sprintf("chgrp %s %s && chmod g+r %s", daemonGroup, cur, cur)
		if name := l.EntryOf(cur); name == layout.License || name == layout.Settings {
			fix += fmt.Sprintf("; haagent's default for it is 0640 root:%s (check files.%s in its config)", daemonGroup, name)
		}
		if !last {
			fix = fmt.Sprintf("chmod o+x %s (or chgrp %s %s && chmod g+x %s): the daemon must pass through every directory down to the file", cur, daemonGroup, cur, cur)
		}
		return "", unreadable(key, p, fmt.Sprintf("%s is %#o uid %d gid %d, which gives %s no %s", cur, perm, st.Uid, st.Gid, class, what), ev, fix)
	}
	return "", nil
}

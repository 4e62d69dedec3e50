// Package layout is the one place that says where files live on the machine: where each
// fetched file lands (the config's files.* entries over the defaults below) and haagent's own
// files (the run record, the install marker, the installer script, the maintenance marker,
// the log-forwarding mark, the CA store). Every path is a machine path ("/etc/settings.conf");
// Path puts it under --root. No other package declares a machine path of its own (a test in
// this package scans them), so moving a file is one edit here or one line of config.
//
// Some paths are not haagent's to choose. Replicated reads /etc/replicated.conf; the CircleCI
// services read /etc/circleconfig/ and /etc/circle-installation-customizations; the Replicated
// daemon sees only the host's /etc. Those facts are recorded in the project's REAL-SYSTEMS.md
// (from replicatedhq/replicated-installer's replicated.service and
// ensureReplicatedConfReadable, and circleci/circleci-docs' Server 2.x pages). They are still
// written down here, each entry saying why it cannot move (Fixed) or where it must stay
// (Within), and config validation refuses a files.*.dest that breaks that.
package layout

import (
	"os"
	"path/filepath"
	"strings"
)

// Entry is one line of the fetch layout: an S3 key (or key prefix, when Recursive) under the
// source prefix and where it lands under --root.
type Entry struct {
	Name      string
	Key       string
	Dest      string
	Recursive bool
	Required  bool
	// WarnEmpty makes an empty optional prefix a warning (the encryption keys on a new install).
	WarnEmpty bool
	Mode      os.FileMode
	// DirMode is for the directories inside a directory entry (Dest and below). Directories
	// above an entry that haagent has to create are always 0755 root: they are /etc, /data or
	// /var/lib, shared with everything else on the machine.
	DirMode os.FileMode
	// UID and GID are numeric owners (-1: haagent's own, root). User and Group are names
	// instead (the config takes one or the other), resolved into UID and GID in the root's
	// etc/passwd and etc/group when the files are written (fetch.ResolveOwners).
	UID, GID    int
	User, Group string
	Purpose     string
	// Fixed, when set, says why Dest cannot move: another program reads the file at that
	// path and no other. Config validation refuses a files.NAME.dest that differs.
	Fixed string
	// Within, when set, is a directory Dest must stay under, and WithinWhy the reason.
	Within, WithinWhy string
}

// Names of the layout's entries (the keys of the config's files: section).
const (
	Settings                   = "settings"
	Replicated                 = "replicated"
	License                    = "license"
	EncryptionKeys             = "encryption_keys"
	CircleConfig               = "circleconfig"
	InstallationCustomizations = "installation_customizations"
	CACertificates             = "ca_certificates"
)

// DockerGroup is the group the Replicated daemon runs in (its unit runs the container as
// replicated:docker); haagent creates it as a system group when it does not exist yet.
const DockerGroup = "docker"

// ReplicatedHostMount is the only host directory the Replicated daemon's container sees (at
// /host/etc, read-only): replicated-installer's replicated.service, `-v /etc:/host/etc:ro`
// (REAL-SYSTEMS.md). Every file replicated.conf names must lie under it.
const ReplicatedHostMount = "/etc"

// The fixed destinations of CircleCI and Replicated (REAL-SYSTEMS.md: "CircleCI Server 2.x
// files" and "The Replicated daemon").
const (
	// replicatedConf: the installer and the daemon read /etc/replicated.conf and nothing
	// else (the installer's ensureReplicatedConfReadable chmods that path).
	replicatedConf = "/etc/replicated.conf"
	// circleConfigDir: /etc/circleconfig is mounted into the CircleCI containers, which read
	// shared/ and <service>/customizations there.
	circleConfigDir = "/etc/circleconfig/"
	// installationCustomizations: every CircleCI service sources it first.
	installationCustomizations = "/etc/circle-installation-customizations"
)

// haagent's own files, under --root. They are not configurable: only haagent reads them.
const (
	// ConfigFile is where the AMI's haagent looks for its config.
	ConfigFile = "/etc/haagent/haagent.yaml"
	// Executable is where the AMI installs haagent (its unit's ExecStart).
	Executable = "/usr/local/bin/haagent"
	// StateDir holds haagent's persistent files; a new instance starts without them.
	StateDir = "/var/lib/haagent"
	// StateFile is the run record.
	StateFile = StateDir + "/state.json"
	// MaintenanceFile is the marker `haagent maintenance on` writes. It lives on the machine,
	// not in the bucket: it holds this instance's replacement while a person works on it.
	MaintenanceFile = StateDir + "/maintenance.json"
	// FrontendMark is how far the frontend's logs were forwarded.
	FrontendMark = StateDir + "/frontend-logs.json"
	// InstallMarker says Replicated was installed on this instance.
	InstallMarker = StateDir + "/replicated-installed.json"
	// InstallerScript is the downloaded installer, as verified.
	InstallerScript = StateDir + "/replicated-install.sh"
	// InstallerExit is written by the installer's unit itself when the script ends ("CODE
	// INSTANCE-ID"), so a haagent that was restarted meanwhile learns the outcome without
	// running the installer again.
	InstallerExit = StateDir + "/replicated-install.exit"
	// InstallerEnv is the installer's environment (0600), which may hold proxy credentials;
	// it exists only while haagent starts or runs the installer.
	InstallerEnv = StateDir + "/replicated-install.env"
	// LockFile serialises haagent's commands that change the machine. /run is per boot, so
	// a lock never outlives a reboot.
	LockFile = "/run/haagent.lock"
	// BootRuns lists, one per line, the runs started since the machine booted (/run is a
	// tmpfs every boot starts empty).
	BootRuns = "/run/haagent/runs"
	// StartFailure says why the last start of haagent in this boot failed before it could
	// record a run (the lock held, the run record unreadable, the config invalid while
	// another haagent held the lock): `status --wait` shows it while no run of this boot is
	// recorded.
	StartFailure = "/run/haagent/start-failure"
)

// The machine's own paths haagent uses: Debian's CA store, Replicated's command line, Docker
// and systemd.
const (
	// LocalCADir is the local CA store update-ca-certificates reads (the runbook: "saved in
	// /usr/local/share/ca-certificates with file extension .crt").
	LocalCADir = "/usr/local/share/ca-certificates"
	// CAInstallDir is haagent's own directory in it: everything in it is haagent's, so a CA
	// removed from the bucket can be removed here without touching anyone else's.
	CAInstallDir = LocalCADir + "/haagent"
	// Replicatedctl is where the installer writes replicatedctl (cli-script.sh: a wrapper
	// that runs `docker exec replicated replicatedctl ...`).
	Replicatedctl = "/usr/local/bin/replicatedctl"
	// Bash runs the installer script (systemd-run needs an absolute ExecStart).
	Bash = "/bin/bash"
	// SystemdRunDir exists when systemd is the init system (sd_booted(3)).
	SystemdRunDir = "/run/systemd/system"
	// NetifLinks holds systemd-networkd's state file per interface index, whose NETWORK_FILE=
	// names the .network file applied to it (what networkctl shows; systemd 237 and later).
	NetifLinks = "/run/systemd/netif/links"
	// NetworkDir is where the drop-in for that .network file goes (systemd.network(5): drop-in
	// directories are read from /etc/systemd/network whatever directory holds the file).
	NetworkDir = "/etc/systemd/network"
	// ReplicatedDefault and ReplicatedOperatorDefault are the environment files the installer
	// writes its address into (replicated-2.0.sh's write_replicated_configuration,
	// replicated-operator.sh's), which the units read as EnvironmentFile=.
	ReplicatedDefault         = "/etc/default/replicated"
	ReplicatedOperatorDefault = "/etc/default/replicated-operator"
)

// CAStore is the rest of Debian's ca-certificates layout, which update-ca-certificates is
// pointed at under a --root other than /.
var CAStore = struct {
	Conf, Share, Certs, Hooks string
}{
	Conf:  "/etc/ca-certificates.conf",
	Share: "/usr/share/ca-certificates",
	Certs: "/etc/ssl/certs",
	Hooks: "/etc/ca-certificates/update.d",
}

// The root's own user databases: owners are looked up in them under --root, never through
// the host's NSS.
const (
	GroupFile  = "/etc/group"
	PasswdFile = "/etc/passwd"
)

// Reserved are the files no layout entry may write over or hold in its directory: haagent's
// own (a keys directory of /var/lib/haagent/ would back the run record up as a key, a licence
// at the config's path would replace the config) and the root's user databases, which
// haagent reads to resolve owners.
func Reserved() []string {
	return []string{ConfigFile, StateFile, MaintenanceFile, FrontendMark, InstallMarker, InstallerScript,
		InstallerExit, InstallerEnv, LockFile, BootRuns, CAInstallDir + "/", GroupFile, PasswdFile}
}

// system are the machine's own paths, which no moved file entry may write or hold in its
// directory: an S3 object written over /etc/shadow, /etc/sudoers, /root/.ssh/authorized_keys or
// /usr/local/bin/haagent makes a typo in the config, or whoever can write the bucket and the
// config, root on the machine. One ending in "/" is a directory (itself and all below it); one
// without is a name prefix (/etc/shadow covers /etc/shadow-, /etc/cron covers /etc/cron.d/).
var system = []string{
	"/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh/", "/etc/pam.d/", "/etc/security/",
	"/etc/systemd/", "/etc/cron", "/etc/ld.so", "/etc/profile", "/etc/environment",
	"/root/", "/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/boot/",
	"/proc/", "/sys/", "/dev/", "/run/", "/var/lib/docker/", "/var/spool/cron/",
}

// SystemPath returns the system path (see system) that a file entry writing dest would write
// or hold below it (a directory entry, recursive, over /etc/ holds /etc/shadow), or "".
func SystemPath(dest string, recursive bool) string {
	for _, s := range system {
		dir := strings.HasSuffix(s, "/")
		switch {
		case dir && (strings.TrimSuffix(dest, "/") == strings.TrimSuffix(s, "/") || strings.HasPrefix(dest, s)):
			return strings.TrimSuffix(s, "/")
		case !dir && strings.HasPrefix(dest, s):
			return s
		case recursive && strings.HasPrefix(s, dest):
			return strings.TrimSuffix(s, "/")
		}
	}
	return ""
}

// DockerBinaries are where a docker command is found on a baked AMI.
var DockerBinaries = []string{"/usr/bin/docker", "/usr/local/bin/docker", "/bin/docker"}

// Defaults is the runbook's userdata, as a table. Modes and owners follow who reads each
// file: the Replicated daemon, running as user replicated in group docker with the host's /etc
// mounted read-only, reads the licence and settings.conf (0640 root:docker); the installer makes
// replicated.conf world-readable itself (chmod a+r), so haagent writes it 0644 and does not undo
// that at the next boot; CircleCI's containers source the customization files as a user no
// document names, and CircleCI's own userdata left them 0644 in 0755 directories, the setup
// known to work (files.circleconfig tightens it); the encryption keys are read by root only.
func Defaults() []Entry {
	// Settings and the licence may move because replicated.conf names them, but only within
	// what the daemon's container sees.
	within := func(key string) string {
		return "the Replicated daemon's container sees only the host's /etc (at /host/etc); replicated.conf names the file (" + key + "), so it may move within /etc"
	}
	return []Entry{
		{Name: Settings, Key: "settings.conf", Dest: "/etc/settings.conf", Required: true, Mode: 0o640, UID: -1, GID: -1, Group: DockerGroup,
			Purpose: "the Replicated application settings (ImportSettingsFrom)",
			Within:  ReplicatedHostMount, WithinWhy: within("ImportSettingsFrom")},
		{Name: Replicated, Key: "replicated.conf", Dest: replicatedConf, Required: true, Mode: 0o644, UID: -1, GID: -1,
			Purpose: "the Replicated daemon settings read by the installer",
			Fixed:   "the Replicated installer and daemon read " + replicatedConf + " and no other path"},
		{Name: License, Key: "license.rli", Dest: "/etc/license.rli", Required: true, Mode: 0o640, UID: -1, GID: -1, Group: DockerGroup,
			Purpose: "the CircleCI licence (LicenseFileLocation)",
			Within:  ReplicatedHostMount, WithinWhy: within("LicenseFileLocation")},
		// Movable: haagent fetches, checks and backs the keys up wherever they are; where
		// CircleCI's containers read them is their volume's business, not a path the shared
		// facts fix.
		{Name: EncryptionKeys, Key: "circleci-encryption-keys/", Dest: "/data/circle/circleci-encryption-keys/", Recursive: true, WarnEmpty: true, Mode: 0o600, DirMode: 0o700, UID: -1, GID: -1,
			Purpose: "CircleCI's encryption keys; losing them makes encrypted data unreadable"},
		// The whole circleconfig/ prefix: shared/ (PostgreSQL, Vault) and each service's own
		// <service>/customizations, besides files that are not shell (picard-dispatcher's
		// resource-definitions.edn), which are synced and never parsed.
		{Name: CircleConfig, Key: "circleconfig/", Dest: circleConfigDir, Recursive: true, Required: true, Mode: 0o644, DirMode: 0o755, UID: -1, GID: -1,
			Purpose: "the services' customization files (shared/ with the PostgreSQL and Vault settings, <service>/customizations)",
			Fixed:   "the CircleCI services read " + strings.TrimSuffix(circleConfigDir, "/") + ", which is mounted into their containers, and nothing else"},
		// Optional: CircleCI's HA page keeps the MongoDB URIs here. The file in place is this
		// object merged with the session cookie key line (the cookie-key step stages the merge).
		{Name: InstallationCustomizations, Key: "circle-installation-customizations", Dest: installationCustomizations, Mode: 0o644, UID: -1, GID: -1,
			Purpose: "the installation customizations (the HA page's MongoDB URIs), merged with the session cookie key",
			Fixed:   "the CircleCI services read " + installationCustomizations + " and nothing else"},
		// Movable: only haagent's CA step reads it (it installs what it finds into CAInstallDir).
		{Name: CACertificates, Key: "ca-certificates/", Dest: StateDir + "/ca-certificates/", Recursive: true, Mode: 0o644, DirMode: 0o755, UID: -1, GID: -1,
			Purpose: "CA certificates for the databases and Vault, installed by the ca-certs step"},
	}
}

// Layout is where everything lives on one machine: the fetched files' destinations (the
// config's layout) and haagent's own files, under Root.
type Layout struct {
	// Root is --root: every machine path is under it.
	Root string
	// Entries are the fetch layout; nil means Defaults.
	Entries []Entry
}

// New is the layout of the files under root, with the config's entries (nil: the defaults).
func New(root string, entries []Entry) Layout {
	if root == "" {
		root = "/"
	}
	return Layout{Root: root, Entries: entries}
}

// Path is a machine path under the root, for reading and writing.
func (l Layout) Path(machinePath string) string { return filepath.Join(l.Root, machinePath) }

// Entry returns the entry of that name: the layout's, else the default's (an entry the
// config never names keeps its default).
func (l Layout) Entry(name string) Entry {
	for _, e := range l.Entries {
		if e.Name == name {
			return e
		}
	}
	for _, e := range Defaults() {
		if e.Name == name {
			return e
		}
	}
	return Entry{}
}

// Dest is the machine path an entry's file (or directory, with a trailing slash) lands at.
func (l Layout) Dest(name string) string { return l.Entry(name).Dest }

// SettingsConf is where the Replicated application settings land.
func (l Layout) SettingsConf() string { return l.Dest(Settings) }

// ReplicatedConf is where replicated.conf lands (fixed: see its entry).
func (l Layout) ReplicatedConf() string { return l.Dest(Replicated) }

// License is where the CircleCI licence lands.
func (l Layout) License() string { return l.Dest(License) }

// CircleConfigDir is the services' customization directory, without a trailing slash.
func (l Layout) CircleConfigDir() string { return strings.TrimSuffix(l.Dest(CircleConfig), "/") }

// SharedDir is the customization directory every service reads (PostgreSQL, Vault).
func (l Layout) SharedDir() string { return l.CircleConfigDir() + "/shared" }

// InstallationCustomizations is the file every service sources first.
func (l Layout) InstallationCustomizations() string { return l.Dest(InstallationCustomizations) }

// EncryptionKeysDir is where CircleCI's encryption keys land, with a trailing slash.
func (l Layout) EncryptionKeysDir() string { return l.Dest(EncryptionKeys) }

// EntryOf names the entry whose destination is p (a file entry's path), or "".
func (l Layout) EntryOf(p string) string {
	for _, e := range Defaults() {
		if d := l.Dest(e.Name); !e.Recursive && filepath.Clean(d) == filepath.Clean(p) {
			return e.Name
		}
	}
	return ""
}

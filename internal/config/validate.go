package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/replicated"
)

// Entry is one entry of the fetch layout: the layout package declares it and its defaults
// (layout.Defaults), the config's files: section overrides it, Validate merges the two.
type Entry = layout.Entry

// DockerGroup is the group the Replicated daemon runs in (see layout.DockerGroup).
const DockerGroup = layout.DockerGroup

// Defaults for everything the minimal config leaves out.
const (
	DefaultConcurrency  = 128
	DefaultAttempts     = 6
	DefaultTimeout      = 2 * time.Minute
	DefaultIMDSTimeout  = 5 * time.Second
	DefaultProbeTimeout = 5 * time.Second
	// MaxProbeTimeout caps probes.timeout: the crash-loop monitor and the replacement guard
	// probe from their loops, and a service that takes longer than this to answer one probe
	// is down for CircleCI as well.
	MaxProbeTimeout         = 2 * time.Minute
	DefaultInstallerTimeout = 30 * time.Minute
	// DefaultInstallerURL is the runbook's installer.
	DefaultInstallerURL = "https://get.replicated.com/docker"
)

var (
	semverRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)
	bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	regionRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*[a-z0-9]$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// nameRE is what shadow's useradd and groupadd accept by default (no ':' or newline can
	// reach the root's etc/group through it).
	nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]*\$?$`)
)

// Validate checks every field, fills defaults and builds Layout. It reports all problems at
// once.
func (c *Config) Validate() error {
	var probs []Problem
	bad := func(p, format string, a ...any) {
		probs = append(probs, Problem{Path: p, Msg: fmt.Sprintf(format, a...)})
	}

	// An AWS service's region and endpoint, where the config lets them be set.
	checkAWS := func(section, region, endpoint string) {
		if region != "" && !regionRE.MatchString(region) {
			bad(section+".region", "%q is not a region name such as us-east-1", region)
		}
		if endpoint != "" {
			u, err := url.Parse(endpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(section+".endpoint", "%q must be an http:// or https:// URL", endpoint)
			}
		}
	}

	switch c.Version {
	case 0:
		bad("version", "required: this haagent reads version: 1")
	case 1:
	default:
		bad("version", "unsupported version %d: this haagent reads version: 1", c.Version)
	}

	s := &c.Source
	switch {
	case s.Bucket == "":
		bad("source.bucket", "required: the S3 bucket that holds settings.conf, replicated.conf, license.rli and the rest")
	case strings.HasPrefix(s.Bucket, "s3://"):
		bad("source.bucket", "give the bucket name alone, without s3:// (put any path in source.prefix)")
	case !bucketRE.MatchString(s.Bucket) || strings.Contains(s.Bucket, ".."):
		bad("source.bucket", "%q is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)", s.Bucket)
	}
	if s.Prefix != "" {
		p := strings.TrimSuffix(s.Prefix, "/")
		if strings.HasPrefix(p, "/") || hasBadSegment(p) {
			bad("source.prefix", "%q must be a relative key prefix without empty, '.' or '..' segments", s.Prefix)
		} else {
			s.Prefix = p + "/"
		}
	}
	checkAWS("source", s.Region, s.Endpoint)
	if s.CAFile != "" && !path.IsAbs(s.CAFile) {
		bad("source.ca_file", "%q must be an absolute path", s.CAFile)
	}

	if c.Fetch.Concurrency == 0 {
		c.Fetch.Concurrency = DefaultConcurrency
	} else if c.Fetch.Concurrency < 1 || c.Fetch.Concurrency > 128 {
		bad("fetch.concurrency", "%d is out of range 1-128", c.Fetch.Concurrency)
	}
	if c.Fetch.Attempts == 0 {
		c.Fetch.Attempts = DefaultAttempts
	} else if c.Fetch.Attempts < 1 || c.Fetch.Attempts > 50 {
		bad("fetch.attempts", "%d is out of range 1-50", c.Fetch.Attempts)
	}
	if c.Fetch.Timeout == 0 {
		c.Fetch.Timeout = Duration(DefaultTimeout)
	} else if c.Fetch.Timeout < 0 {
		bad("fetch.timeout", "must be positive")
	}
	if c.IMDS.Timeout == 0 {
		c.IMDS.Timeout = Duration(DefaultIMDSTimeout)
	} else if c.IMDS.Timeout < 0 {
		bad("imds.timeout", "must be positive")
	}

	if c.Probes.Timeout == 0 {
		c.Probes.Timeout = Duration(DefaultProbeTimeout)
	} else if c.Probes.Timeout < 0 {
		bad("probes.timeout", "must be positive")
	} else if c.Probes.Timeout.D() > MaxProbeTimeout {
		bad("probes.timeout", "%s is more than the %s haagent allows: a service that takes longer to answer one probe is down for CircleCI too, and the monitors that probe would wait on it; use at most %s (default %s)", c.Probes.Timeout.D(), MaxProbeTimeout, MaxProbeTimeout, DefaultProbeTimeout)
	}
	codes := make([]string, 0, len(c.Probes.Overrides))
	for code := range c.Probes.Overrides {
		codes = append(codes, code)
	}
	sort.Strings(codes)
	for _, code := range codes {
		o := c.Probes.Overrides[code]
		known, ok := findings.Lookup(code)
		if !ok {
			bad("probes.overrides."+code, "unknown finding code (the catalogue is in README.md)")
		}
		if why := findings.Safety[known]; why != "" {
			bad("probes.overrides."+code, "cannot be overridden: it guards against %s; fix its cause instead", why)
		}
		switch findings.Severity(o.Severity) {
		case "", findings.Info, findings.Warning, findings.Error:
		default:
			bad("probes.overrides."+code+".severity", "%q is not info, warning or error", o.Severity)
		}
	}
	pg := c.Probes.Postgres.Effective()
	pgDBs := map[string]bool{}
	for _, l := range []struct {
		field string
		dbs   []string
	}{{"databases", pg.Databases}, {"optional_databases", pg.OptionalDatabases}} {
		for _, db := range l.dbs {
			if db == "" {
				bad("probes.postgres."+l.field, "empty database name")
			}
			pgDBs[db] = true
		}
	}
	for _, field := range []string{"extensions", "optional_extensions"} {
		exts := pg.Extensions
		if field == "optional_extensions" {
			exts = pg.OptionalExtensions
		}
		dbs := make([]string, 0, len(exts))
		for db := range exts {
			dbs = append(dbs, db)
		}
		sort.Strings(dbs)
		for _, db := range dbs {
			if !pgDBs[db] {
				bad("probes.postgres."+field+"."+db, "not a database of probes.postgres.databases or optional_databases (their defaults included): the extensions would never be checked")
			}
			for _, e := range exts[db] {
				if e == "" {
					bad("probes.postgres."+field+"."+db, "empty extension name")
				}
			}
		}
	}

	r := &c.Replicated
	if r.InstallerURL == "" {
		r.InstallerURL = DefaultInstallerURL
	}
	if u, err := url.Parse(r.InstallerURL); err != nil || (u.Scheme != "https" && u.Scheme != "s3") || u.Host == "" {
		bad("replicated.installer_url", "%q must be an https:// or s3://bucket/key URL", r.InstallerURL)
	}
	if r.SHA256 != "" && !sha256RE.MatchString(strings.ToLower(r.SHA256)) {
		bad("replicated.sha256", "must be 64 hexadecimal characters")
	}
	if strings.HasPrefix(r.InstallerURL, "s3://") && r.SHA256 == "" {
		bad("replicated.sha256", "required with an s3:// installer: pin the script you uploaded")
	}
	// Offline, the documented parameters; before it runs, the downloaded script's own list.
	documented := replicated.DocumentedSet()
	for i, a := range r.ExtraArgs {
		for _, p := range replicated.CheckExtraArgs([]string{a}, documented) {
			bad(fmt.Sprintf("replicated.extra_args[%d]", i), "%s", p)
		}
	}
	switch {
	case r.Version == "":
	case !semverRE.MatchString(r.Version):
		bad("replicated.version", "%q is not a Replicated version such as 2.38.6 (get.replicated.com refuses anything else)", r.Version)
	case strings.HasPrefix(r.InstallerURL, "s3://"):
		bad("replicated.version", "a script kept in the bucket was rendered for one version already: download it with ?replicated_tag=%[1]s&replicated_ui_tag=%[1]s&replicated_operator_tag=%[1]s and drop replicated.version", r.Version)
	}
	if r.Timeout == 0 {
		r.Timeout = Duration(DefaultInstallerTimeout)
	} else if r.Timeout < 0 {
		bad("replicated.timeout", "must be positive")
	}
	for i, p := range c.CACertificates {
		if !path.IsAbs(p) {
			bad(fmt.Sprintf("ca_certificates[%d]", i), "%q must be an absolute path", p)
		}
	}

	switch c.Backup.SSE {
	case "", "AES256", "aws:kms":
	default:
		bad("backup.sse", "%q is not AES256 or aws:kms", c.Backup.SSE)
	}
	if c.Backup.ScanEvery == 0 {
		c.Backup.ScanEvery = Duration(DefaultKeysScanEvery)
	} else if c.Backup.ScanEvery < 0 {
		bad("backup.scan_every", "must be positive")
	}
	if c.Backup.KMSKeyID != "" && c.Backup.SSE != "aws:kms" {
		bad("backup.kms_key_id", "needs backup.sse: aws:kms")
	}
	wt := &c.Watch
	if wt.Container == "" {
		wt.Container = "frontend"
	}
	if wt.StuckAfter == 0 {
		wt.StuckAfter = Duration(15 * time.Minute)
	}
	if wt.ReprobeEvery == 0 {
		wt.ReprobeEvery = Duration(15 * time.Minute)
	}
	if wt.CrashRestarts == 0 {
		wt.CrashRestarts = 5
	} else if wt.CrashRestarts < 2 {
		bad("watch.crash_restarts", "must be at least 2")
	}
	if wt.CrashWindow == 0 {
		wt.CrashWindow = Duration(10 * time.Minute)
	}
	if wt.StuckAfter < 0 || wt.ReprobeEvery < 0 || wt.CrashWindow < 0 {
		bad("watch", "durations must be positive")
	}

	a := &c.ASG
	checkAWS("asg", a.Region, a.Endpoint)
	if a.HeartbeatEvery < 0 {
		bad("asg.heartbeat_every", "must be positive")
	}
	rp := &a.Replace
	if rp.Enabled && !a.Enabled {
		bad("asg.replace.enabled", "needs asg.enabled: true")
	}
	if rp.FailingFor == 0 {
		rp.FailingFor = Duration(15 * time.Minute)
	}
	if rp.RecheckEvery == 0 {
		rp.RecheckEvery = Duration(5 * time.Minute)
	}
	if rp.Window == 0 {
		rp.Window = Duration(time.Hour)
	}
	if rp.DailyBudget == 0 {
		rp.DailyBudget = 4
	} else if rp.DailyBudget < 1 || rp.DailyBudget > 24 {
		bad("asg.replace.daily_budget", "%d is out of range 1-24", rp.DailyBudget)
	}
	if rp.Budget == 0 {
		rp.Budget = 2
	} else if rp.Budget < 1 || rp.Budget > 10 {
		bad("asg.replace.budget", "%d is out of range 1-10", rp.Budget)
	}
	if rp.FailingFor < 0 || rp.RecheckEvery < 0 || rp.Window < 0 {
		bad("asg.replace", "durations must be positive")
	}

	c.validateAddress(bad, checkAWS)

	entries := layout.Defaults()
	known := map[string]int{}
	for i, e := range entries {
		known[e.Name] = i
	}
	names := make([]string, 0, len(c.Files))
	for n := range c.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := c.Files[n]
		p := "files." + n
		i, ok := known[n]
		if !ok {
			bad(p, "unknown file entry (known: settings, replicated, license, encryption_keys, circleconfig, installation_customizations, ca_certificates)")
			continue
		}
		if f == nil {
			continue
		}
		e := &entries[i]
		if f.Key != "" {
			k := f.Key
			if strings.HasPrefix(k, "/") || hasBadSegment(strings.TrimSuffix(k, "/")) {
				bad(p+".key", "%q must be a relative key without empty, '.' or '..' segments", k)
			}
			if e.Recursive && !strings.HasSuffix(k, "/") {
				k += "/"
			}
			e.Key = k
		}
		if f.Dest != "" {
			d := f.Dest
			if e.Recursive && !strings.HasSuffix(d, "/") {
				d += "/"
			}
			switch {
			case !path.IsAbs(f.Dest) || path.Clean(f.Dest) != strings.TrimSuffix(f.Dest, "/") || f.Dest == "/":
				bad(p+".dest", "%q must be a clean absolute path other than /", f.Dest)
			case e.Fixed != "" && d != e.Dest:
				// Another program reads the file at its one path: moving it would leave
				// that program reading an old file or none (REAL-SYSTEMS.md).
				bad(p+".dest", "%q cannot be used: %s; remove files.%s.dest", f.Dest, e.Fixed, n)
			case d != e.Dest && layout.SystemPath(d, e.Recursive) != "":
				bad(p+".dest", "%q is under %s, a system path: haagent never writes an S3 object there (it would make the bucket's writers root on the machine); choose a path of CircleCI's or your own, e.g. under /data or /opt", f.Dest, layout.SystemPath(d, e.Recursive))
			case e.Within != "" && !strings.HasPrefix(d, e.Within+"/"):
				bad(p+".dest", "%q must stay under %s/: %s", f.Dest, e.Within, e.WithinWhy)
			default:
				e.Dest = d
			}
		}
		if f.Mode != 0 {
			e.Mode = os.FileMode(f.Mode)
		}
		if f.DirMode != 0 {
			e.DirMode = os.FileMode(f.DirMode)
			switch {
			case !e.Recursive:
				bad(p+".dir_mode", "%s is a single file: it has no directory of its own, and the directories above it are created 0755", n)
			case e.DirMode&0o700 != 0o700:
				bad(p+".dir_mode", "%#o would lock haagent out of its own directory; keep the owner bits rwx", f.DirMode)
			}
		}
		// An id replaces the default's name and a name the default's id: the override says
		// who owns the file, whichever way it is written.
		switch {
		case f.UID != nil && f.User != "":
			bad(p+".user", "give the owner by name (user) or by id (uid), not both")
		case f.UID != nil:
			e.UID, e.User = *f.UID, ""
			if e.UID < -1 {
				bad(p+".uid", "%d is not a user id (-1 keeps root)", e.UID)
			}
		case f.User != "":
			e.UID, e.User = -1, f.User
			if !nameRE.MatchString(f.User) {
				bad(p+".user", "%q is not a user name", f.User)
			}
		}
		switch {
		case f.GID != nil && f.Group != "":
			bad(p+".group", "give the group by name (group) or by id (gid), not both")
		case f.GID != nil:
			e.GID, e.Group = *f.GID, ""
			if e.GID < -1 {
				bad(p+".gid", "%d is not a group id (-1 keeps root)", e.GID)
			}
		case f.Group != "":
			e.GID, e.Group = -1, f.Group
			if !nameRE.MatchString(f.Group) {
				bad(p+".group", "%q is not a group name", f.Group)
			}
		}
		if f.Required != nil {
			e.Required = *f.Required
		}
	}
	for _, pr := range overlaps(entries, c.Files) {
		bad(pr.Path, "%s", pr.Msg)
	}
	if len(probs) > 0 {
		return &InvalidError{Origin: c.Origin, Problems: probs}
	}
	c.Layout = entries
	return nil
}

// Defaults and bounds of the address section.
const (
	DefaultAddressRetryEvery = 30 * time.Second
	DefaultRoute53TTL        = 60
	// MaxRoute53TTL: past an hour a replacement's builders would keep the dead instance's
	// address for longer than the replacement itself takes.
	MaxRoute53TTL             = 3600
	DefaultRoute53SyncTimeout = 3 * time.Minute
)

var (
	// zoneIDRE is a Route 53 hosted zone id: Z and upper-case letters and digits.
	zoneIDRE = regexp.MustCompile(`^Z[A-Z0-9]{1,31}$`)
	// dnsLabelRE is one label of a record name: Route 53 takes letters, digits, hyphen and
	// underscore; haagent keeps to those (no wildcard: this record names one machine).
	dnsLabelRE = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$`)
)

// sharedSpace is RFC 6598's shared address space, which AWS accepts as a VPC's (secondary)
// CIDR beside RFC 1918's ranges.
var sharedSpace = netip.MustParsePrefix("100.64.0.0/10")

// vpcPrivate: the private ranges a VPC's CIDR may come from (RFC 1918 and RFC 6598). Publicly
// routable ranges, which AWS also allows a VPC, are refused here: a typo there more often names
// some public host than a VPC built on public space.
func vpcPrivate(ip netip.Addr) bool { return ip.IsPrivate() || sharedSpace.Contains(ip) }

func (c *Config) validateAddress(bad func(p, format string, a ...any), checkAWS func(section, region, endpoint string)) {
	a := &c.Address
	checkAWS("address", a.Region, a.Endpoint)
	if a.PrivateIP != "" {
		ip, err := netip.ParseAddr(a.PrivateIP)
		switch {
		case err != nil || !ip.Is4():
			bad("address.private_ip", "%q is not an IPv4 address such as 10.0.1.50 (give the address alone, without a prefix length)", a.PrivateIP)
		case !vpcPrivate(ip):
			bad("address.private_ip", "%s is not in a range a VPC subnet uses for private addresses (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10): it must be in the VPC subnet the group launches into", ip)
		default:
			a.PrivateIP = ip.String()
		}
		// Whether a holder still serves is read from the group (InService and Healthy):
		// without a group haagent could take the address from a live Services machine.
		if !c.ASG.Enabled {
			bad("address.private_ip", "needs asg.enabled: true: haagent reads from the Auto Scaling group whether the instance holding the address is still in service")
		}
	}
	if a.RetryEvery == 0 {
		a.RetryEvery = Duration(DefaultAddressRetryEvery)
	} else if a.RetryEvery < Duration(time.Second) {
		bad("address.retry_every", "must be at least 1s")
	}
	r := a.Route53
	if r == nil {
		return
	}
	r.ZoneID = strings.TrimPrefix(r.ZoneID, "/hostedzone/")
	switch {
	case r.ZoneID == "":
		bad("address.route53.zone_id", "required: the hosted zone's id (aws route53 list-hosted-zones-by-name --dns-name ZONE)")
	case !zoneIDRE.MatchString(r.ZoneID):
		bad("address.route53.zone_id", "%q is not a hosted zone id such as Z0123456789ABCDEFGHIJ", r.ZoneID)
	}
	if r.Name == "" {
		bad("address.route53.name", "required: the record name the builders use, such as services.circleci.internal")
	} else if n, ok := dnsName(r.Name); !ok {
		bad("address.route53.name", "%q is not a DNS name of two or more labels (letters, digits, '-' and '_', each label 1-63 characters, 253 in all)", r.Name)
	} else {
		r.Name = n
	}
	if r.TTL == 0 {
		r.TTL = DefaultRoute53TTL
	} else if r.TTL < 1 || r.TTL > MaxRoute53TTL {
		bad("address.route53.ttl", "%d is out of range 1-%d seconds", r.TTL, MaxRoute53TTL)
	}
	checkAWS("address.route53", "", r.Endpoint)
	if r.SyncTimeout == 0 {
		r.SyncTimeout = Duration(DefaultRoute53SyncTimeout)
	} else if r.SyncTimeout < 0 {
		bad("address.route53.sync_timeout", "must be positive")
	}
}

// dnsName returns name in lower case without its final dot, if it is a DNS name of at least
// two labels.
func dnsName(name string) (string, bool) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if len(n) > 253 {
		return "", false
	}
	labels := strings.Split(n, ".")
	if len(labels) < 2 {
		return "", false
	}
	for _, l := range labels {
		if !dnsLabelRE.MatchString(l) {
			return "", false
		}
	}
	return n, true
}

// overlaps refuses two entries writing the same path, or one inside another's directory: the
// fetch would sync one over the other, and a directory entry would report the other's files
// as its own local-only files. Only entries the config moved are named.
func overlaps(entries []Entry, moved map[string]*File) []Problem {
	var out []Problem
	for _, a := range entries {
		if f := moved[a.Name]; f == nil || f.Dest == "" {
			continue
		}
		for _, b := range entries {
			same := strings.TrimSuffix(a.Dest, "/") == strings.TrimSuffix(b.Dest, "/")
			if a.Name != b.Name && (same || (b.Recursive && strings.HasPrefix(a.Dest, b.Dest)) || (a.Recursive && strings.HasPrefix(b.Dest, a.Dest))) {
				out = append(out, Problem{Path: "files." + a.Name + ".dest",
					Msg: fmt.Sprintf("%q overlaps files.%s (%s): each entry needs a path of its own", a.Dest, b.Name, b.Dest)})
			}
		}
		for _, r := range layout.Reserved() {
			dir := strings.HasSuffix(r, "/")
			same := strings.TrimSuffix(a.Dest, "/") == strings.TrimSuffix(r, "/")
			if same || (a.Recursive && strings.HasPrefix(r, a.Dest)) || (dir && strings.HasPrefix(a.Dest, r)) {
				out = append(out, Problem{Path: "files." + a.Name + ".dest",
					Msg: fmt.Sprintf("%q overlaps %s, which haagent keeps for itself", a.Dest, strings.TrimSuffix(r, "/"))})
				break
			}
		}
	}
	return out
}

func hasBadSegment(p string) bool {
	if strings.ContainsRune(p, 0) {
		return true
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// FindingOverrides is probes.overrides keyed by code, as findings.Apply takes it. Validate
// refuses an unknown code; one in a config that skipped validation is left out.
func (p Probes) FindingOverrides() map[findings.Code]findings.Override {
	ov := make(map[findings.Code]findings.Override, len(p.Overrides))
	for name, o := range p.Overrides {
		if code, ok := findings.Lookup(name); ok {
			ov[code] = findings.Override{Severity: findings.Severity(o.Severity), Blocking: o.Blocking}
		}
	}
	return ov
}

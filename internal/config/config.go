// Package config loads haagent's one versioned YAML file, strictly (an unknown field is an
// error with its path), and validates all of it before any side effect.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/haagent/haagent/internal/layout"
)

// DefaultPath is where the AMI's haagent looks for its config.
const DefaultPath = layout.ConfigFile

// UserDataMarker is the first line that marks an EC2 user-data document as a haagent config.
// A dedicated marker (rather than "any YAML with version: 1") keeps haagent from mistaking a
// #cloud-config or a shell script for its own config, and cloud-init ignores a part it does
// not know.
const UserDataMarker = "#haagent-config"

// ErrNoConfig means there is no config at all, which is not the same as an invalid one.
var ErrNoConfig = errors.New("no haagent config")

// Config is the whole of haagent's settings.
type Config struct {
	Version int              `yaml:"version"`
	Source  Source           `yaml:"source"`
	Files   map[string]*File `yaml:"files"`
	Fetch   Fetch            `yaml:"fetch"`
	IMDS    IMDS             `yaml:"imds"`
	Probes  Probes           `yaml:"probes"`
	// CACertificates are extra PEM CA files on the machine to install besides the bucket's.
	CACertificates []string   `yaml:"ca_certificates"`
	Replicated     Replicated `yaml:"replicated"`
	Watch          Watch      `yaml:"watch"`
	Backup         Backup     `yaml:"backup"`
	ASG            ASG        `yaml:"asg"`
	// Address gives the Services machine an address that survives a replacement; off when
	// absent.
	Address Address `yaml:"address"`
	// Layout is Files merged over the default layout, in a fixed order; filled by Validate.
	Layout []Entry `yaml:"-"`
	// Origin says where the config came from (a path or "user-data"), for messages.
	Origin string `yaml:"-"`
}

// Source is the bucket everything is fetched from.
type Source struct {
	Bucket    string `yaml:"bucket"`
	Prefix    string `yaml:"prefix"`
	Region    string `yaml:"region"`
	Endpoint  string `yaml:"endpoint"`
	PathStyle bool   `yaml:"path_style"`
	// CAFile is an extra PEM bundle trusted for the S3 endpoint (an on-prem store, or a proxy
	// that inspects TLS).
	CAFile string `yaml:"ca_file"`
}

// File overrides one entry of the default layout.
type File struct {
	Key     string `yaml:"key"`
	Dest    string `yaml:"dest"`
	Mode    Mode   `yaml:"mode"`
	DirMode Mode   `yaml:"dir_mode"`
	// The owner, by id or by name (not both); a name is looked up in the root's etc/passwd
	// and etc/group when the files are written.
	UID      *int   `yaml:"uid"`
	GID      *int   `yaml:"gid"`
	User     string `yaml:"user"`
	Group    string `yaml:"group"`
	Required *bool  `yaml:"required"`
}

// Fetch tunes the S3 download.
type Fetch struct {
	Concurrency int      `yaml:"concurrency"`
	Attempts    int      `yaml:"attempts"`
	Timeout     Duration `yaml:"timeout"`
}

// IMDS tunes the instance metadata client.
type IMDS struct {
	Timeout Duration `yaml:"timeout"`
}

// Probes tunes the database and Vault checks.
type Probes struct {
	// Timeout bounds each service's probe.
	Timeout Duration `yaml:"timeout"`
	// Overrides change a finding code's severity and whether it blocks the install.
	Overrides map[string]Override `yaml:"overrides"`
	Postgres  PostgresProbe       `yaml:"postgres"`
	// ProceedAnyway lets the installer run despite blocking findings (logged as a warning).
	ProceedAnyway bool `yaml:"proceed_anyway"`
}

// Replicated configures the installer step.
type Replicated struct {
	// InstallerURL is https://... or s3://bucket/key (so a replacement instance does not
	// depend on the public download).
	InstallerURL string   `yaml:"installer_url"`
	SHA256       string   `yaml:"sha256"`
	ExtraArgs    []string `yaml:"extra_args"`
	// Version pins Replicated (e.g. "2.38.6") through the installer URL's query:
	// replicated_tag, replicated_ui_tag and replicated_operator_tag.
	Version string   `yaml:"version"`
	Timeout Duration `yaml:"timeout"`
}

// Override is one code's severity and blocking flag.
type Override struct {
	Severity string `yaml:"severity"`
	Blocking *bool  `yaml:"blocking"`
}

// PostgresProbe lists what CircleCI needs from PostgreSQL; an absent field keeps its default
// (DefaultPostgresProbe), an empty one ([] or {}) means none.
type PostgresProbe struct {
	// Databases and Extensions are required: a missing one blocks the install.
	Databases  []string            `yaml:"databases"`
	Extensions map[string][]string `yaml:"extensions"`
	// OptionalDatabases and OptionalExtensions are reported as warnings, with the CREATE to run.
	OptionalDatabases  []string            `yaml:"optional_databases"`
	OptionalExtensions map[string][]string `yaml:"optional_extensions"`
}

// DefaultPostgresProbe is what CircleCI Server 2.x needs from PostgreSQL. The runbook haagent
// was built from lists five databases and their extensions: those block. CircleCI's HA page, in
// its last revision, lists eight, each with uuid-ossp: the three it added in 2018 (domain,
// federations, permissions) and uuid-ossp where the runbook did not ask for it are warnings, as
// no source ties them to a release a given installation runs.
func DefaultPostgresProbe() PostgresProbe {
	return PostgresProbe{
		Databases: []string{"vms", "conductor_production", "contexts_service_production", "cron_service_production", "circle"},
		Extensions: map[string][]string{
			"conductor_production":        {"uuid-ossp"},
			"contexts_service_production": {"uuid-ossp"},
			"circle":                      {"pgcrypto", "uuid-ossp"},
		},
		OptionalDatabases: []string{"domain", "federations", "permissions"},
		OptionalExtensions: map[string][]string{
			"vms":                     {"uuid-ossp"},
			"cron_service_production": {"uuid-ossp"},
			"domain":                  {"uuid-ossp"},
			"federations":             {"uuid-ossp"},
			"permissions":             {"uuid-ossp"},
		},
	}
}

// Effective returns p with each absent field taken from DefaultPostgresProbe.
func (p PostgresProbe) Effective() PostgresProbe {
	d := DefaultPostgresProbe()
	if p.Databases != nil {
		d.Databases = p.Databases
	}
	if p.Extensions != nil {
		d.Extensions = p.Extensions
	}
	if p.OptionalDatabases != nil {
		d.OptionalDatabases = p.OptionalDatabases
	}
	if p.OptionalExtensions != nil {
		d.OptionalExtensions = p.OptionalExtensions
	}
	return d
}

// Backup configures the encryption keys backup.
type Backup struct {
	// SSE is the server-side encryption for uploaded keys: "" (the bucket's default),
	// AES256 or aws:kms.
	SSE      string `yaml:"sse"`
	KMSKeyID string `yaml:"kms_key_id"`
	// ScanEvery is how often the keys directory is looked at after the boot, for as long as
	// haagent runs: CircleCI may create or rotate a key at any time, and a key only on this
	// machine is lost with it. A changed directory (or one with keys not yet in S3) is backed
	// up again.
	ScanEvery Duration `yaml:"scan_every"`
}

// DefaultKeysScanEvery is the keys scan's default period.
const DefaultKeysScanEvery = 5 * time.Minute

// ASG configures the Auto Scaling group part: the launch lifecycle hook and the guarded
// replacement. Off unless enabled, so a machine outside a group needs no Auto Scaling access.
type ASG struct {
	Enabled bool `yaml:"enabled"`
	// Group is the Auto Scaling group; empty reads the instance's aws:autoscaling:groupName tag
	// from IMDS (instance metadata tags), then asks DescribeAutoScalingInstances.
	Group string `yaml:"group"`
	// LifecycleHook is the group's launch hook haagent completes; empty: no hook.
	LifecycleHook string `yaml:"lifecycle_hook"`
	// HeartbeatEvery defaults to a third of the hook's heartbeat timeout.
	HeartbeatEvery Duration `yaml:"heartbeat_every"`
	Region         string   `yaml:"region"`
	Endpoint       string   `yaml:"endpoint"`
	Replace        Replace  `yaml:"replace"`
}

// Replace configures when haagent asks the group for a new instance.
type Replace struct {
	Enabled bool `yaml:"enabled"`
	// FailingFor is how long the frontend must have been down (after it was once up on this
	// instance) before a replacement is considered; RecheckEvery is how often the decision is
	// taken again while it stays down.
	FailingFor   Duration `yaml:"failing_for"`
	RecheckEvery Duration `yaml:"recheck_every"`
	// At most Budget replacements within Window, across all instances (kept in the bucket).
	Budget int      `yaml:"budget"`
	Window Duration `yaml:"window"`
	// DailyBudget caps replacements within any 24 hours (default 4), across instances: a fault
	// that follows every new instance must not replace one per Window for days.
	DailyBudget int `yaml:"daily_budget"`
}

// Address is the stable address the builders (CircleCI's Nomad clients) are configured with:
// a secondary private IP moved to each new instance, a Route 53 A record pointed at it, or
// both. Without it a replacement comes back under a new private IP and every build queues until
// each builder is reconfigured.
type Address struct {
	// PrivateIP is moved to this instance's primary network interface
	// (ec2:AssignPrivateIpAddresses with AllowReassignment), unless an InService, healthy
	// instance of the same Auto Scaling group still holds it.
	PrivateIP string `yaml:"private_ip"`
	// Region and Endpoint are the EC2 API's; empty: the instance's region and AWS's endpoint.
	Region   string `yaml:"region"`
	Endpoint string `yaml:"endpoint"`
	// RetryEvery is how often a held address is asked for again (default 30s).
	RetryEvery Duration `yaml:"retry_every"`
	// Route53 is an A record kept pointing at this instance; nil when absent.
	Route53 *Route53 `yaml:"route53"`
}

// On reports whether the section asks for anything.
func (a Address) On() bool { return a.PrivateIP != "" || a.Route53 != nil }

// Route53 is the A record the builders resolve.
type Route53 struct {
	// ZoneID is the (private) hosted zone's id, Z..., with or without /hostedzone/.
	ZoneID string `yaml:"zone_id"`
	// Name is the record's name, a name in that zone (services.circleci.internal).
	Name string `yaml:"name"`
	// TTL is the record's time to live in seconds (default 60): how long a builder may keep
	// using the old instance's address after a replacement.
	TTL int `yaml:"ttl"`
	// Endpoint replaces Route 53's (tests, partitions with their own).
	Endpoint string `yaml:"endpoint"`
	// SyncTimeout bounds the wait for the change to reach INSYNC (default 3m).
	SyncTimeout Duration `yaml:"sync_timeout"`
}

// Watch configures the frontend watch.
type Watch struct {
	// Enabled defaults to true; false ends the boot after the installer (no Docker engine).
	Enabled       *bool    `yaml:"enabled"`
	Container     string   `yaml:"container"`
	StuckAfter    Duration `yaml:"stuck_after"`
	ReprobeEvery  Duration `yaml:"reprobe_every"`
	CrashRestarts int      `yaml:"crash_restarts"`
	CrashWindow   Duration `yaml:"crash_window"`
}

// On reports whether the watch runs.
func (w Watch) On() bool { return w.Enabled == nil || *w.Enabled }

// Mode is a file mode written in octal ("0600"); YAML's own octal rules differ between 1.1 and
// 1.2, so the text is parsed here.
type Mode uint32

// UnmarshalYAML parses the scalar as octal.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a mode is an octal number such as \"0600\"", n.Line)
	}
	s := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("line %d: mode %q is not an octal permission between 0000 and 0777", n.Line, n.Value)
	}
	*m = Mode(v)
	return nil
}

// Duration is a time.Duration written as "30s" or "5m".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as \"30s\" or \"5m\"", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Problem is one thing wrong with the config, keyed by field path.
type Problem struct {
	Path string
	Line int
	Msg  string
}

func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("%s: %s (line %d)", p.Path, p.Msg, p.Line)
	}
	return fmt.Sprintf("%s: %s", p.Path, p.Msg)
}

// InvalidError lists every problem found, so one edit fixes them all.
type InvalidError struct {
	Origin   string
	Problems []Problem
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid config %s:", e.Origin)
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Load reads and validates the config at path. A missing file is ErrNoConfig.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoConfig, path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	return Parse(data, path)
}

// IsUserDataConfig reports whether an EC2 user-data document is meant for haagent.
func IsUserDataConfig(data []byte) bool {
	first, _, _ := bytes.Cut(bytes.TrimLeft(data, " \t\r\n"), []byte("\n"))
	return strings.TrimSpace(string(first)) == UserDataMarker
}

// Parse decodes strictly and validates. origin names the source in errors.
func Parse(data []byte, origin string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &InvalidError{Origin: origin, Problems: []Problem{{Path: "(document)", Msg: yamlMsg(err)}}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &InvalidError{Origin: origin, Problems: []Problem{{Path: "(document)", Msg: "the config is empty; it needs at least version: 1 and source.bucket"}}}
	}
	doc := root.Content[0]
	// The version decides which schema the rest is read against: a file written for another
	// version says so, not "unknown field" for every key that version added.
	if p, ok := otherVersion(doc); ok {
		return nil, &InvalidError{Origin: origin, Problems: []Problem{p}}
	}
	var probs []Problem
	checkFields(doc, typeOfConfig, "", &probs)
	if len(probs) > 0 {
		return nil, &InvalidError{Origin: origin, Problems: probs}
	}
	cfg := &Config{}
	if err := doc.Decode(cfg); err != nil {
		return nil, &InvalidError{Origin: origin, Problems: []Problem{{Path: "(document)", Msg: yamlMsg(err)}}}
	}
	cfg.Origin = origin
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// otherVersion finds a top-level version: that is a whole number other than 1.
func otherVersion(doc *yaml.Node) (Problem, bool) {
	if doc.Kind != yaml.MappingNode {
		return Problem{}, false
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if k.Value != "version" || v.Kind != yaml.ScalarNode {
			continue
		}
		n, err := strconv.Atoi(v.Value)
		if err != nil || n == 1 || n == 0 {
			return Problem{}, false // not a number, or this version: the full check says more
		}
		return Problem{Path: "version", Line: v.Line, Msg: fmt.Sprintf("unsupported version %d: this haagent reads version: 1 (the other fields were not checked)", n)}, true
	}
	return Problem{}, false
}

func yamlMsg(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return strings.Join(te.Errors, "; ")
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

package findings

// Override changes a code's severity and whether it blocks the install (probes.overrides).
type Override struct {
	Severity Severity
	Blocking *bool
}

// Safety lists the codes no config can downgrade or unblock: each guards against losing data
// (an encryption key), writing where nothing may be written, running code nobody vetted, or an
// install that cannot work. An operator who needs past one fixes its cause.
var Safety = map[Code]string{
	KeysConflict:               "two different copies of an encryption key: going on could make the data unreadable",
	S3KeyRefused:               "an object whose key would write outside its destination",
	InstallerChecksumMismatch:  "an installer script that is not the one pinned by replicated.sha256",
	FileUnreadableByReplicated: "a file the Replicated daemon cannot read: the install cannot work",
}

// Apply applies overrides to fs in place and returns it; safety codes are left as catalogued.
func Apply(fs []Finding, ov map[Code]Override) []Finding {
	for i, f := range fs {
		o, ok := ov[f.Code]
		if !ok || Safety[f.Code] != "" {
			continue
		}
		if o.Severity != "" {
			fs[i].Severity = o.Severity
		}
		if o.Blocking != nil {
			fs[i].Blocking = *o.Blocking
		}
	}
	return fs
}

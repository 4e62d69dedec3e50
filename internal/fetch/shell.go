package fetch

import (
	"fmt"
	"os"
	"strings"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/layout"
	"github.com/haagent/haagent/internal/settings"
)

// IsShellFile reports whether a machine path is one of the customization files the CircleCI
// services source as shell, where the layout puts them: every file of circleconfig/shared/,
// each service's circleconfig/<service>/customizations, and the installation customizations.
// Other files there are not shell (picard-dispatcher/resource-definitions.edn is EDN) and are
// not parsed.
func IsShellFile(l layout.Layout, dest string) bool {
	if dest == l.InstallationCustomizations() {
		return true
	}
	// One rule for which files are shell: the probes read the same ones (settings.LoadViews).
	rel, ok := strings.CutPrefix(dest, l.CircleConfigDir()+"/")
	return ok && settings.IsShellFile(rel)
}

// ShellSyntax parses every staged shell customization file of the bundle, before anything is
// moved into place: a syntax error is CONFIG_SYNTAX against the bucket's key, and the caller
// keeps the files in place (a broken file in the bucket must not replace a working one on a
// reboot). Only syntax is judged here; what a file sets is the probes' business.
func ShellSyntax(bd *Bundle, uri func(key string) string) []findings.Finding {
	var out []findings.Finding
	l := layout.New(bd.Root, bd.layout)
	for _, f := range bd.Files {
		if f.staged == "" || !IsShellFile(l, f.Dest) {
			continue
		}
		data, err := os.ReadFile(f.staged)
		if err != nil {
			out = append(out, findings.New(findings.LocalWriteFailed, f.Dest, "cannot read back the staged copy of "+f.Dest, err.Error()))
			continue
		}
		// bash -n accepts Windows line endings, so the generic syntax fix below would not help.
		if cr, ok := settings.CarriageReturn(f.Dest, data); ok {
			out = append(out, findings.New(findings.ConfigSyntax, uri(f.Key)+strings.TrimPrefix(cr.Target, f.Dest),
				cr.Summary+"; the "+f.Dest+" in place is kept", "").
				WithFix(fmt.Sprintf("convert the file to LF line endings (dos2unix FILE, or save it with LF in your editor), then upload it: aws s3 cp FILE %s", uri(f.Key))))
			continue
		}
		_, fs := settings.Parse(f.Dest, data)
		for _, g := range fs {
			if g.Code != findings.ConfigSyntax {
				continue
			}
			// g.Target is DEST:LINE:COL; the operator fixes the bucket's copy.
			at := strings.TrimPrefix(g.Target, f.Dest)
			out = append(out, findings.New(findings.ConfigSyntax, uri(f.Key),
				fmt.Sprintf("%s is not a valid shell file (line:col %s); the %s in place is kept", uri(f.Key), strings.TrimPrefix(at, ":"), f.Dest), g.Evidence).
				WithFix(fmt.Sprintf("fix the shell syntax at %s in the bucket's copy (bash -n FILE checks it), then upload it: aws s3 cp FILE %s", strings.TrimPrefix(at, ":"), uri(f.Key))))
		}
	}
	return out
}

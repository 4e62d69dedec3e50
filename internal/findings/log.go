package findings

import (
	"context"
	"log/slog"
	"strings"
)

// Log writes f as one journal entry: its level from the severity, the summary as the message,
// and the code, target, evidence, fix and what it folded as fields (the journal handler makes
// `finding` HAAGENT_FINDING). The runner and the supervisor log every finding through it, so
// an operator's journalctl filter sees the same fields whoever raised it. extra comes first
// (the supervisor's monitor name).
func Log(log *slog.Logger, f Finding, extra ...any) {
	level := slog.LevelInfo
	switch f.Severity {
	case Error:
		level = slog.LevelError
	case Warning:
		level = slog.LevelWarn
	}
	// A copy: appending to extra could write into the caller's array.
	attrs := append(append(make([]any, 0, len(extra)+12), extra...), "finding", f.Code.String(), "severity", string(f.Severity), "blocking", f.Blocking)
	if f.Target != "" {
		attrs = append(attrs, "target", f.Target)
	}
	if f.Evidence != "" {
		attrs = append(attrs, "evidence", f.Evidence)
	}
	if f.Fix != "" {
		attrs = append(attrs, "fix", f.Fix)
	}
	if len(f.Suppressed) > 0 {
		attrs = append(attrs, "also_suppressed", strings.Join(f.Suppressed, "; "))
	}
	log.Log(context.Background(), level, f.Code.String()+": "+f.Summary, attrs...)
}

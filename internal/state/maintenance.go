package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/haagent/haagent/internal/atomicfile"
)

// Maintenance is a window in which the guard asks for no replacement.
type Maintenance struct {
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	// Reason is what the operator typed (--reason), for the next person reading status.
	Reason string `json:"reason,omitempty"`
}

// Active reports whether the window covers now.
func (m *Maintenance) Active(now time.Time) bool { return m != nil && now.Before(m.Until) }

// LoadMaintenance reads the marker; none is nil. A marker that cannot be read is an error:
// the guard must then hold (a person meant something by it).
func LoadMaintenance(path string) (*Maintenance, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the maintenance marker %s: %w", path, err)
	}
	var m Maintenance
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("the maintenance marker %s is corrupt (%v); `haagent maintenance off` removes it", path, err)
	}
	return &m, nil
}

// SaveMaintenance writes the marker atomically.
func SaveMaintenance(path string, m Maintenance) error {
	data, _ := json.MarshalIndent(m, "", "  ")
	if _, err := atomicfile.WriteFile(path, append(data, '\n'), atomicfile.Secret); err != nil {
		return fmt.Errorf("writing the maintenance marker: %w", err)
	}
	return nil
}

// ClearMaintenance removes the marker; none is not an error.
func ClearMaintenance(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the maintenance marker %s: %w", path, err)
	}
	return nil
}

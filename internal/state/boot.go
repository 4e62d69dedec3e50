package state

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// MarkThisBoot records that run id started during this boot, in the file at path
// (layout.BootRuns). /run is a tmpfs that every boot starts empty, which makes it the one
// reliable "this boot" on the machine: the kernel's boot id is virtualised by containers
// (systemd-nspawn hands its payload its own) and hidden or not by a unit's sandboxing, so the
// service and `haagent status` can disagree on it.
func MarkThisBoot(path, id string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("marking run %s as this boot's: %w", id, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("marking run %s as this boot's: %w", id, err)
	}
	if _, err := fmt.Fprintln(f, id); err != nil {
		f.Close()
		return fmt.Errorf("marking run %s as this boot's: %w", id, err)
	}
	return f.Close()
}

// RunsThisBoot returns the ids of the runs started during this boot.
func RunsThisBoot(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading this boot's runs %s: %w", path, err)
	}
	defer f.Close()
	ids := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ids[sc.Text()] = true
	}
	return ids, sc.Err()
}

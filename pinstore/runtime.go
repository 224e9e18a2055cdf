package pinstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A running supervisor's record (SupervisorRecord) changes with every start
// of its child; it is written to one file of the state directory,
// "supervisor.PID.json", rather than into the manifest of each of its
// objects, which a start of a thousand objects would otherwise rewrite on
// every restart of the child. The manifests keep the parts that change only
// with an install (pid, version, fd store, private pins, unit). The name
// cannot be an object's: object names have no dots.

// RuntimePath is where the supervisor of pid keeps its record.
func (s Store) RuntimePath(pid int) string {
	return filepath.Join(s.stateDir(), "supervisor."+strconv.Itoa(pid)+".json")
}

// WriteRuntime writes rec as the record of the supervisor rec.PID,
// replacing the file at once (a reader sees the old record or the new).
func (s Store) WriteRuntime(rec *SupervisorRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	path := s.RuntimePath(rec.PID)
	tmp := filepath.Join(s.stateDir(), ".supervisor."+strconv.Itoa(rec.PID)+".json.tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write supervisor record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write supervisor record: %w", err)
	}
	return nil
}

// ReadRuntime reads the record of the supervisor pid; nil when it has none.
func (s Store) ReadRuntime(pid int) *SupervisorRecord {
	data, err := os.ReadFile(s.RuntimePath(pid))
	if err != nil {
		return nil
	}
	var rec SupervisorRecord
	if json.Unmarshal(data, &rec) != nil || rec.PID != pid {
		return nil
	}
	return &rec
}

// RemoveRuntime removes the record of the supervisor pid, when it stops.
func (s Store) RemoveRuntime(pid int) {
	_ = os.Remove(s.RuntimePath(pid))
}

// RemoveDeadRuntimes removes the records of supervisors that no longer run
// (killed, so that they could not remove their own), and the temporary
// files of those that were killed while writing one. A record whose pid
// runs again, as another process, stays until that process is gone or is
// a supervisor that writes its own: status reads only the records of
// supervisors holding locks.
func (s Store) RemoveDeadRuntimes() {
	entries, err := os.ReadDir(s.stateDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		name := strings.TrimPrefix(e.Name(), ".")
		name = strings.TrimSuffix(name, ".tmp")
		rest, ok := strings.CutPrefix(name, "supervisor.")
		if !ok {
			continue
		}
		digits, ok := strings.CutSuffix(rest, ".json")
		pid, err := strconv.Atoi(digits)
		if !ok || err != nil || pid <= 0 || strconv.Itoa(pid) != digits {
			continue
		}
		if _, err := os.Stat("/proc/" + digits); errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(filepath.Join(s.stateDir(), e.Name()))
		}
	}
}

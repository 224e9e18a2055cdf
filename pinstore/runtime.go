package pinstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A running supervisor's record (SupervisorRecord) changes with every start
// of its child; it is written to one file of the state directory rather
// than into the manifest of each of its objects, which a start of a
// thousand objects would otherwise rewrite on every restart of the child.
// The manifests keep how an object is held (version, fd store, private
// pins, unit, statistics). The file is named by the supervisor's pid and
// its pid namespace, "supervisor.NS.PID.json": supervisors in containers
// share a state directory on the host and are all pid 1. The name cannot be
// an object's: object names have no dots.

// RuntimeKey names a supervisor across pid namespaces: the inode of its pid
// namespace and its pid there.
type RuntimeKey struct {
	NS  uint64
	PID int
}

// SelfRuntimeKey is this process's key.
func SelfRuntimeKey() RuntimeKey {
	return RuntimeKey{NS: pidNS("self"), PID: os.Getpid()}
}

// RuntimeKeyOf is the key of the process pid (of this pid namespace),
// false when it is not running or /proc does not say.
func RuntimeKeyOf(pid int) (RuntimeKey, bool) {
	p := strconv.Itoa(pid)
	ns := pidNS(p)
	data, err := os.ReadFile("/proc/" + p + "/status")
	if ns == 0 || err != nil {
		return RuntimeKey{}, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			// The last is its pid in its own namespace.
			own, err := strconv.Atoi(f[len(f)-1])
			return RuntimeKey{NS: ns, PID: own}, err == nil
		}
	}
	return RuntimeKey{NS: ns, PID: pid}, true // before Linux 4.1: no NSpid, one namespace
}

func pidNS(proc string) uint64 {
	fi, err := os.Stat("/proc/" + proc + "/ns/pid")
	if err != nil {
		return 0
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	return st.Ino
}

func (k RuntimeKey) name() string {
	return "supervisor." + strconv.FormatUint(k.NS, 10) + "." + strconv.Itoa(k.PID) + ".json"
}

// RuntimePath is where the supervisor k keeps its record.
func (s Store) RuntimePath(k RuntimeKey) string {
	return filepath.Join(s.stateDir(), k.name())
}

// WriteRuntime writes rec as the record of the supervisor k, replacing the
// file at once (a reader sees the old record or the new).
func (s Store) WriteRuntime(k RuntimeKey, rec *SupervisorRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.stateDir(), "."+k.name()+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write supervisor record: %w", err)
	}
	if err := os.Rename(tmp, s.RuntimePath(k)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write supervisor record: %w", err)
	}
	return nil
}

// ReadRuntime reads the record of the supervisor k; nil when it has none.
func (s Store) ReadRuntime(k RuntimeKey) *SupervisorRecord {
	data, err := os.ReadFile(s.RuntimePath(k))
	if err != nil {
		return nil
	}
	var rec SupervisorRecord
	if json.Unmarshal(data, &rec) != nil {
		return nil
	}
	return &rec
}

// RemoveRuntime removes the record of the supervisor k, when it stops.
func (s Store) RemoveRuntime(k RuntimeKey) {
	_ = os.Remove(s.RuntimePath(k))
}

// RemoveDeadRuntimes removes the records of supervisors of self's pid
// namespace that no longer run (killed, so that they could not remove
// their own), and the temporary files of those killed while writing one.
// Records of other pid namespaces are left alone: from here, whether
// their supervisor runs cannot be told. A record whose pid runs again, as
// another process, stays until that process is gone or is a supervisor
// that writes its own: status reads only the records of supervisors
// holding locks.
func (s Store) RemoveDeadRuntimes(self RuntimeKey) {
	entries, err := os.ReadDir(s.stateDir())
	if err != nil {
		return
	}
	prefix := "supervisor." + strconv.FormatUint(self.NS, 10) + "."
	for _, e := range entries {
		name := strings.TrimSuffix(strings.TrimPrefix(e.Name(), "."), ".tmp")
		rest, ok := strings.CutPrefix(name, prefix)
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

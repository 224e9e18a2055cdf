package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/fdstore"
	"github.com/bpfsup/bpfsup/handoff"
)

// The fd store (Options.FDStore): bpfsup keeps every map, program and link
// it has pinned in systemd's file descriptor store too (package fdstore),
// synced after every change of what is pinned: an install, a reload, a
// re-attachment. At start, the fds systemd hands back are split from the
// sockets meant for the application (they are bpfsup's and never reach the
// child), and what the manifests record but bpffs lacks is pinned again
// from them before the install adopts the pins (converge.Restore).

// fdStore is the supervisor's side of it.
type fdStore struct {
	n    *fdstore.Notifier
	keep *fdstore.Keeper
	// handedBack are the fds systemd handed back at start, until the first
	// sync; they keep their objects alive until the install adopted them.
	handedBack []handoff.NamedFile
}

// openFDStore splits the fds systemd handed back from opts.Inherited, and,
// when the fd store is on, opens the notify socket: an error when bpfsup
// does not run under systemd. With the store off, what systemd handed back
// is dropped from it after the install (a unit that had it on before).
func (s *supervisor) openFDStore() error {
	stored, rest := fdstore.Split(s.opts.Inherited)
	s.opts.Inherited = rest
	if !s.opts.FDStore && len(stored) == 0 {
		return nil
	}
	n, err := fdstore.Open()
	if err != nil {
		for _, f := range stored {
			f.File.Close()
		}
		if !s.opts.FDStore {
			s.log.Warn("fds handed back from a file descriptor store, but fd_store is off and there is no notify socket to drop them with; closed", "fds", len(stored))
			return nil
		}
		return fmt.Errorf("fd_store: %w", err)
	}
	var held []fdstore.Entry
	if s.up.resumed != nil && s.up.resumed.FDStore != nil {
		for name, id := range s.up.resumed.FDStore {
			e := fdstore.Entry{Name: name}
			e.Info.ID = id
			held = append(held, e)
		}
	} else {
		held = fdstore.Entries(stored)
	}
	s.fdStore = &fdStore{n: n, keep: fdstore.NewKeeper(n, held), handedBack: stored}
	s.unit = systemdUnit()
	if len(stored) > 0 {
		s.log.Info("systemd handed back fds from its store", "fds", len(stored))
	}
	return nil
}

// systemdUnit is the service bpfsup runs in, from its cgroup ("" when none):
// systemd puts every service in a cgroup named after it.
func systemdUnit() string {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			if unit := filepath.Base(path); strings.HasSuffix(unit, ".service") {
				return unit
			}
		}
	}
	return ""
}

// restoreFromStore pins again what the handed-back fds hold and bpffs lacks.
func (s *supervisor) restoreFromStore() error {
	if s.fdStore == nil || !s.opts.FDStore || len(s.fdStore.handedBack) == 0 {
		return nil
	}
	names := make([]string, len(s.opts.Objects))
	for i, c := range s.opts.Objects {
		names[i] = converge.ObjectName(c)
	}
	restored, err := converge.Restore(s.opts.Store, names, fdstore.Entries(s.fdStore.handedBack), s.log)
	if len(restored) > 0 {
		s.log.Info("pins made again from systemd's fd store", "pins", len(restored))
	}
	return err
}

// syncFDStore makes systemd's store hold what the objects have pinned now,
// and nothing else of bpfsup's; with the store off, nothing. The fds handed
// back at start are closed after the first sync.
func (s *supervisor) syncFDStore() error {
	st := s.fdStore
	if st == nil {
		return nil
	}
	defer func() {
		for _, f := range st.handedBack {
			f.File.Close()
		}
		st.handedBack = nil
	}()
	var want []fdstore.Entry
	if s.opts.FDStore {
		for _, in := range s.objects {
			es, closeFDs, err := in.StoreEntries()
			if err != nil {
				return fmt.Errorf("fd_store: object %s: %w", in.Name(), err)
			}
			defer closeFDs()
			want = append(want, es...)
		}
		if max, ok := fdstore.Max(); ok && len(want)+1 > max {
			return fmt.Errorf("fd_store: the unit's FileDescriptorStoreMax=%d is too small: bpfsup keeps %d fds there, and one more while it replaces one; set it to at least %d",
				max, len(want), len(want)+1)
		}
	}
	stored, removed, err := st.keep.Sync(want)
	if stored+removed > 0 {
		s.log.Info("systemd's fd store synced", "stored", stored, "removed", removed, "held", st.keep.Held())
	}
	if err != nil {
		return fmt.Errorf("fd_store: %w", err)
	}
	return nil
}

// logSyncFDStore syncs the store after a change at run time, when a failure
// is logged: the pins still hold everything.
func (s *supervisor) logSyncFDStore() {
	if err := s.syncFDStore(); err != nil {
		s.log.Error("cannot keep the objects in systemd's fd store", "err", err)
	}
}

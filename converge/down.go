package converge

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// ErrNotOurs means `bpfsup down` was asked by name for something bpfsup did not
// make: no manifest of bpfsup's in the state directory records it.
var ErrNotOurs = errors.New("not bpfsup's")

// DownReport is what Down did.
type DownReport struct {
	// Objects are the objects torn down, in name order.
	Objects []DownObject
	// Left lists what Down left alone under the pin root (and why): what
	// no manifest of bpfsup's records, whole or in part.
	Left []pinstore.Left
}

// DownObject is one object torn down.
type DownObject struct {
	Name string
	*pinstore.TeardownReport
	// FDStore names the systemd unit (or says "a systemd unit") whose fd
	// store the object was kept in too: its links stay attached while the
	// store holds them, which down cannot reach.
	FDStore string
}

// Down detaches and unpins what bpfsup installed for the objects named, or
// for every object under the pin root when none is: for each, what its
// manifest records and nothing else (pinstore.Object.Teardown). A pin root
// off bpffs is refused before anything is touched. An entry of the pin
// root that no manifest of bpfsup's in the state directory records is left
// alone, and an error when it was named. An object a supervisor holds is
// an error (stop it first).
func Down(store pinstore.Store, names []string) (*DownReport, error) {
	rep := &DownReport{}
	root := store.RootDir()
	if _, err := os.Stat(root); err == nil {
		if ok, err := pinstore.IsBPFFS(root); err != nil {
			return rep, err
		} else if !ok {
			return rep, fmt.Errorf("pin root %s: %w; bpfsup down removes nothing there", root, pinstore.ErrNotBPFFS)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return rep, fmt.Errorf("pin root %s: %w", root, err)
	}
	named := len(names) > 0
	if !named {
		var err error
		if names, err = downCandidates(store, rep); err != nil {
			return rep, err
		}
	}
	manifests := otherManifests(store)
	var errs []error
	for _, n := range names {
		if err := pinstore.CheckName("object", n); err != nil {
			errs = append(errs, err)
			continue
		}
		dir := store.ObjectDir(n)
		man, err := store.ReadManifest(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("object %s: %w; left alone", n, err))
			continue
		}
		if man == nil {
			if !pinstore.Exists(dir) {
				errs = append(errs, fmt.Errorf("object %s: nothing pinned at %s and no manifest in %s", n, dir, store.StateDirectory()))
				continue
			}
			why := "no manifest of bpfsup's in " + store.StateDirectory() + " records it (made by another tool, or its state directory is elsewhere: --state-dir)"
			if pid, ok := pinstore.LockHolder(dir); ok {
				why = fmt.Sprintf("no manifest of bpfsup's in %s records it, and its pins are held by pid %d (a supervisor with another state directory)", store.StateDirectory(), pid)
			}
			if named {
				errs = append(errs, fmt.Errorf("object %s: %w: %s; left alone", n, ErrNotOurs, why))
			} else {
				rep.Left = append(rep.Left, pinstore.Left{Path: dir, Why: why})
			}
			continue
		}
		obj, err := store.Lock(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w (stop that supervisor first)", err))
			continue
		}
		sharedWith := func(path string) string {
			for other, paths := range manifests {
				if other != n && paths[path] {
					return other
				}
			}
			return ""
		}
		tr, err := obj.Teardown(man, hooks.Unpin, sharedWith)
		do := DownObject{Name: n, TeardownReport: tr}
		if sup := man.Supervisor; sup != nil && sup.FDStore {
			do.FDStore = cmp.Or(sup.Unit, "a systemd unit")
		}
		rep.Objects = append(rep.Objects, do)
		if err != nil {
			errs = append(errs, fmt.Errorf("object %s: %w", n, err))
		}
	}
	return rep, errors.Join(errs...)
}

// downCandidates lists what Down looks at when no object is named: every
// entry of the pin root, and every object whose manifest in the state
// directory names this pin root. Entries that cannot be objects go to
// rep.Left.
func downCandidates(store pinstore.Store, rep *DownReport) ([]string, error) {
	seen := map[string]bool{}
	entries, err := os.ReadDir(store.RootDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list pin root: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(store.RootDir(), e.Name())
		switch {
		case !e.IsDir():
			rep.Left = append(rep.Left, pinstore.Left{Path: path, Why: "a pin, not an object directory of bpfsup's"})
		case pinstore.CheckName("object", e.Name()) != nil:
			rep.Left = append(rep.Left, pinstore.Left{Path: path, Why: "not a name bpfsup gives an object"})
		default:
			seen[e.Name()] = true
		}
	}
	for name := range otherManifests(store) {
		seen[name] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// otherManifests reads every manifest of the state directory that belongs
// to the store's pin root: the paths of each object's maps, by object.
func otherManifests(store pinstore.Store) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, name := range store.Manifested() {
		man, err := store.ReadManifest(name)
		if err != nil || man == nil {
			continue
		}
		paths := map[string]bool{}
		for _, rec := range man.Maps {
			if rec.Path != "" {
				paths[rec.Path] = true
			}
		}
		out[name] = paths
	}
	return out
}

// String says what Down did, a line per object and per thing left alone.
func (r *DownReport) String() string {
	var b strings.Builder
	for _, o := range r.Objects {
		if o.TeardownReport == nil {
			continue
		}
		fmt.Fprintf(&b, "removed %s: %d links, %d programs, %d maps", o.Name, o.Links, o.Programs, o.Maps)
		if !o.Gone {
			fmt.Fprintf(&b, " (its directory stays: it holds what bpfsup did not make)")
		}
		b.WriteString("\n")
		for _, l := range o.Left {
			fmt.Fprintf(&b, "left alone: %s\n", l)
		}
		if o.FDStore != "" {
			fmt.Fprintf(&b, "still attached: %s was kept in the fd store of %s too, which holds its links until the unit is stopped and its store dropped (systemctl stop UNIT; systemctl clean --what=fdstore UNIT on systemd 254 and later)\n",
				o.Name, o.FDStore)
		}
	}
	for _, l := range r.Left {
		fmt.Fprintf(&b, "left alone: %s\n", l)
	}
	return b.String()
}

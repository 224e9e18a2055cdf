package pinstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/bpfsup/bpfsup/internal/bpffs"

	"golang.org/x/sys/unix"
)

// TeardownReport says what Teardown removed and what it left alone.
type TeardownReport struct {
	// Links, Programs and Maps count the pins removed.
	Links, Programs, Maps int
	// Left lists what was left alone, and why.
	Left []Left
	// Gone says that the object's directory, manifest and lock file went
	// too: nothing of it is left.
	Gone bool
}

// Teardown detaches and unpins what the manifest man says bpfsup made for
// the object, and nothing else (see ownership.go): its links first (through
// unpinLink, which releases a link whose last reference is its pin, and
// removes a tc filter by its record), then its programs and maps, bpfsup's
// own staging debris, and maps pinned at paths of their own that bpfsup made
// and that no other object records (sharedWith names the other object that
// records a path, or ""). Whatever else is in the object's directory is
// left alone and reported. Directories go only when empty; the manifest and
// the lock file only once every pin the manifest records is gone. A nil
// manifest owns nothing. The object is closed afterwards.
func (o *Object) Teardown(man *Manifest, unpinLink func(path string) error, sharedWith func(path string) string) (_ *TeardownReport, err error) {
	defer o.Close()
	rep := &TeardownReport{}
	if err := o.CheckDir(); err != nil {
		return rep, err
	}
	var errs []error
	rep.Left = append(rep.Left, o.Strangers()...)
	for _, kind := range []Kind{Links, Programs, Maps} {
		dir := filepath.Join(o.Dir, string(kind))
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			if e.IsDir() {
				rep.Left = append(rep.Left, Left{path, "a directory bpfsup did not make"})
				continue
			}
			pi, err := bpffs.ReadPin(path)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				rep.Left = append(rep.Left, Left{path, err.Error()})
				continue
			}
			if !man.Owns(kind, e.Name(), pi) {
				rep.Left = append(rep.Left, Left{path, notOwned(man, kind, e.Name(), pi)})
				continue
			}
			remove := func(p string) error { return os.Remove(p) }
			if kind == Links {
				remove = unpinLink
			}
			if err := remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
				continue
			}
			switch kind {
			case Links:
				rep.Links++
			case Programs:
				rep.Programs++
			case Maps:
				rep.Maps++
			}
		}
	}
	if man != nil {
		for name, rec := range man.Maps {
			if rec.Path == "" || strings.HasPrefix(rec.Path, o.Dir+"/") {
				continue
			}
			pi, err := bpffs.ReadPin(rec.Path)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			switch {
			case err != nil:
				rep.Left = append(rep.Left, Left{rec.Path, err.Error()})
			case !man.Owns(Maps, name, pi):
				rep.Left = append(rep.Left, Left{rec.Path, notOwned(man, Maps, name, pi)})
			case !rec.Made:
				rep.Left = append(rep.Left, Left{rec.Path, "map " + name + " at its own pin path: bpfsup adopted it there, another tool made it"})
			case sharedWith(rec.Path) != "":
				rep.Left = append(rep.Left, Left{rec.Path, "map " + name + " at its own pin path: object " + sharedWith(rec.Path) + " uses it too"})
			default:
				if err := os.Remove(rec.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("unpin map %s at %s: %w", name, rec.Path, err))
					continue
				}
				rep.Maps++
			}
		}
	}
	left, err := o.ClearStaging(man, false)
	rep.Left = append(rep.Left, left...)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return rep, errors.Join(errs...)
	}
	gone := true
	for _, d := range []string{string(Links), string(Programs), string(Maps), stagingDir, ""} {
		err := unix.Rmdir(filepath.Join(o.Dir, d))
		if err != nil && !errors.Is(err, unix.ENOENT) {
			gone = false
		}
	}
	rep.Gone = gone
	// Every pin the manifest records is gone: so is the object, as far as
	// bpfsup knows it, whatever else stays in its directory.
	// Files only: a directory under one of these names is not bpfsup's
	// (os.Remove would take an empty one).
	for _, p := range append([]string{o.store.ManifestPath(o.Name), o.store.LockPath(o.Name)}, o.store.ManifestDebris(o.Name)...) {
		if err := unix.Unlink(p); err != nil && err != unix.ENOENT && err != unix.EISDIR {
			errs = append(errs, &fs.PathError{Op: "remove", Path: p, Err: err})
		}
	}
	return rep, errors.Join(errs...)
}

// Strangers lists what is in the object's directory besides the
// directories of the pin layout: bpfsup made none of it.
func (o *Object) Strangers() []Left {
	return o.store.Strangers(o.Name)
}

// Strangers lists what is in the directory of object name besides the
// directories of the pin layout: bpfsup made none of it.
func (s Store) Strangers(name string) []Left {
	entries, _ := os.ReadDir(s.ObjectDir(name))
	var left []Left
	for _, e := range entries {
		switch e.Name() {
		case string(Links), string(Programs), string(Maps), stagingDir:
			if e.IsDir() {
				continue
			}
		}
		left = append(left, Left{filepath.Join(s.ObjectDir(name), e.Name()), "not part of bpfsup's pin layout"})
	}
	return left
}

// notOwned says why the pin of kind and name holding pi is not bpfsup's.
func notOwned(man *Manifest, kind Kind, name string, pi bpffs.PinInfo) string {
	what := fmt.Sprintf("holds %s id %d", pi.Kind, pi.ID)
	if pi.Kind == bpffs.Link {
		what += fmt.Sprintf(" (program id %d)", pi.Program)
	}
	if man == nil {
		return what + "; there is no manifest of bpfsup's for it"
	}
	var ids []uint32
	switch kind {
	case Maps:
		ids = man.MapIDs(name)
	case Programs:
		ids = man.ProgramIDs(name)
	case Links:
		ids = man.LinkIDs(name)
	}
	if len(ids) == 0 {
		return what + "; the manifest records no " + strings.TrimSuffix(string(kind), "s") + " " + name
	}
	return fmt.Sprintf("%s; the manifest records id %v", what, ids)
}

// RemoveIfEmpty removes the object's directory when nothing is in it but
// its empty kind directories, so that a failed first start leaves nothing
// behind, and then its manifest and lock file. It reports whether it did.
func (o *Object) RemoveIfEmpty() bool {
	if o.CheckDir() != nil {
		return false
	}
	kinds := []string{string(Links), string(Programs), string(Maps), stagingDir}
	for _, d := range kinds {
		if entries, err := os.ReadDir(filepath.Join(o.Dir, d)); err == nil && len(entries) > 0 {
			return false
		}
	}
	for _, d := range append(kinds, "") {
		if err := unix.Rmdir(filepath.Join(o.Dir, d)); err != nil && !errors.Is(err, unix.ENOENT) {
			return false
		}
	}
	_ = os.Remove(o.store.ManifestPath(o.Name))
	_ = os.Remove(o.store.LockPath(o.Name))
	return true
}

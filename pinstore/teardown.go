package pinstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Remove detaches and unpins everything of the object: its links first (a
// link whose last reference is its pin is released, and its program detached,
// when the pin goes), then its programs and maps, its directory, its
// manifest and its lock file. Maps pinned outside the object's directory are
// removed when the manifest records them as the object's. The object is
// closed afterwards.
func (o *Object) Remove() error {
	defer o.Close()
	man, err := o.store.ReadManifest(o.Name)
	if err != nil {
		return err
	}
	var errs []error
	for _, kind := range []Kind{Links, Programs, Maps} {
		names, err := o.Pins(kind)
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range names {
			if err := os.Remove(o.Path(kind, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("unpin %s: %w", o.Path(kind, n), err))
			}
		}
	}
	if man != nil {
		for name, rec := range man.Maps {
			if rec.Path != "" && filepath.Dir(filepath.Dir(rec.Path)) != o.Dir {
				if err := os.Remove(rec.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("unpin map %s at %s: %w", name, rec.Path, err))
				}
			}
		}
	}
	if err := os.RemoveAll(o.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", o.Dir, err))
	}
	for _, p := range []string{o.store.ManifestPath(o.Name), o.store.LockPath(o.Name)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveIfEmpty removes the object's directory when nothing is pinned in it,
// so that a failed first start leaves nothing behind. It reports whether it did.
func (o *Object) RemoveIfEmpty() bool {
	for _, kind := range []Kind{Links, Programs, Maps} {
		if names, _ := o.Pins(kind); len(names) > 0 {
			return false
		}
	}
	if err := os.RemoveAll(o.Dir); err != nil {
		return false
	}
	_ = os.Remove(o.store.ManifestPath(o.Name))
	_ = os.Remove(o.store.LockPath(o.Name))
	return true
}

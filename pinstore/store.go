package pinstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/crash"
)

// Default locations.
const (
	DefaultPinRoot  = DefaultBPFFS + "/bpfsup"
	DefaultStateDir = "/run/bpfsup"
)

// Kind is one of the three kinds of pinned objects, and the name of the
// directory that holds them.
type Kind string

// The kinds of pins.
const (
	Maps     Kind = "maps"
	Programs Kind = "programs"
	Links    Kind = "links"
)

const stagingDir = "staging"

// Store is a pin root and the state directory that goes with it.
type Store struct {
	// Root is the pin root on bpffs; DefaultPinRoot when empty.
	Root string
	// StateDir holds the lock and the manifest of each object; DefaultStateDir
	// when empty.
	StateDir string
}

func (s Store) root() string {
	if s.Root == "" {
		return DefaultPinRoot
	}
	return filepath.Clean(s.Root)
}

func (s Store) stateDir() string {
	if s.StateDir == "" {
		return DefaultStateDir
	}
	return filepath.Clean(s.StateDir)
}

// RootDir is the pin root in use.
func (s Store) RootDir() string { return s.root() }

// StateDirectory is the state directory in use.
func (s Store) StateDirectory() string { return s.stateDir() }

// ObjectDir is where the pins of object name live.
func (s Store) ObjectDir(name string) string { return filepath.Join(s.root(), name) }

// LockPath is the lock file of object name.
func (s Store) LockPath(name string) string { return filepath.Join(s.stateDir(), name+".lock") }

// ManifestPath is the manifest of object name.
func (s Store) ManifestPath(name string) string { return filepath.Join(s.stateDir(), name+".json") }

// Objects lists the objects that have a directory under the pin root.
func (s Store) Objects() ([]string, error) {
	entries, err := os.ReadDir(s.root())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list pin root: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && CheckName("object", e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Object is an object's place in the store, locked for the caller.
type Object struct {
	Name  string
	Dir   string
	store Store
	lock  *os.File
	// pinLock is the flock on Dir itself (see lockDir).
	pinLock *os.File
}

// Open locks object name for this process and makes its directories. It
// fails with ErrLocked, naming the holder's pid, when another live process
// holds the object. Staging debris of an earlier crash is removed.
func (s Store) Open(name string) (_ *Object, err error) {
	if err := CheckName("object", name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.stateDir(), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	lock, err := lockFile(s.LockPath(name))
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", name, err)
	}
	o := &Object{Name: name, Dir: s.ObjectDir(name), store: s, lock: lock}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("object %s: create pin directory: %w", name, err)
	}
	if o.pinLock, err = lockDir(o.Dir); err != nil {
		return nil, fmt.Errorf("object %s: %w", name, err)
	}
	for _, d := range []string{string(Maps), string(Programs), string(Links), stagingDir} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("object %s: create pin directory: %w", name, err)
		}
	}
	if err := o.clearStaging(); err != nil {
		return nil, err
	}
	return o, nil
}

// Store is the store the object belongs to.
func (o *Object) Store() Store { return o.store }

// Path is the default pin path of the named map, program or link.
func (o *Object) Path(kind Kind, name string) string {
	return filepath.Join(o.Dir, string(kind), name)
}

// Close releases the object's locks. The pins stay.
func (o *Object) Close() error {
	var err error
	if o.pinLock != nil {
		err = o.pinLock.Close()
		o.pinLock = nil
	}
	if o.lock != nil {
		err = errors.Join(err, o.lock.Close())
		o.lock = nil
	}
	return err
}

func (o *Object) stagingPath(target string) string {
	dir, base := filepath.Split(target)
	// dir ends in '/': Dir of it is dir itself, so take Dir twice.
	if filepath.Dir(filepath.Clean(dir)) == o.Dir {
		// <obj>/<kind>/<name> -> <obj>/staging/<kind>-<name>
		return filepath.Join(o.Dir, stagingDir, filepath.Base(dir)+"-"+base)
	}
	// A pin outside the object's directory (a map with its own pin path) is
	// staged beside its target: a rename cannot cross bpffs instances.
	return filepath.Join(dir, "bpfsup-staging-"+base)
}

// RenamePin moves the pin of kind from one name to another in one rename,
// refusing to replace a pin already at the new name.
func (o *Object) RenamePin(kind Kind, from, to string) error {
	if err := CheckName(string(kind), to); err != nil {
		return err
	}
	return RenameNoReplace(o.Path(kind, from), o.Path(kind, to))
}

// RenameNoReplace moves the pin (or directory) at from to to in one rename,
// refusing to replace anything already at to.
func RenameNoReplace(from, to string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	return nil
}

// Pinner is anything that pins itself: *ebpf.Map, *ebpf.Program, link.Link.
type Pinner interface {
	Pin(string) error
}

// Pin pins p at target: first under a staging name, then moved into place with
// renameat2, which atomically replaces a pin already at target. A crash leaves
// either the old pin or the new one at target. p may be pinned again later;
// an object that cilium/ebpf knows as pinned elsewhere (loaded from a pin)
// has that pin moved to target rather than a second one made.
func (o *Object) Pin(kind Kind, target string, p Pinner) error {
	staging := o.stagingPath(target)
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return fmt.Errorf("pin %s: %w", target, err)
	}
	if err := os.Remove(staging); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pin %s: remove staging debris: %w", target, err)
	}
	if err := p.Pin(staging); err != nil {
		return fmt.Errorf("pin %s: %w", target, err)
	}
	// cilium/ebpf now records the staging name as the object's pin. Once the
	// pin has moved (or failed and been removed) that record is stale, and a
	// later Pin of the same object would "move" the pin from there, which is
	// a no-op when the staging name is the same. Unpin forgets the record,
	// and removes the staged pin only where it is still there.
	if u, ok := p.(interface{ Unpin() error }); ok {
		defer u.Unpin()
	}
	if err := os.Chmod(staging, 0o600); err != nil {
		os.Remove(staging)
		return fmt.Errorf("pin %s: %w", target, err)
	}
	crash.At(string(kind) + "/staged")
	if err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, target, 0); err != nil {
		os.Remove(staging)
		return fmt.Errorf("pin %s: move from staging: %w", target, err)
	}
	crash.At(string(kind) + "/moved")
	return nil
}

// HasStaged reports whether the object name has something in its staging
// directory: debris of a crash that opening the object clears, moving a
// staged link into place (finishStagedLink).
func (s Store) HasStaged(name string) bool {
	entries, err := os.ReadDir(filepath.Join(s.ObjectDir(name), stagingDir))
	return err == nil && len(entries) > 0
}

func (o *Object) clearStaging() error {
	dir := filepath.Join(o.Dir, stagingDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("object %s: read staging: %w", o.Name, err)
	}
	for _, e := range entries {
		if o.finishStagedLink(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("object %s: remove staging debris %s: %w", o.Name, e.Name(), err)
		}
	}
	return nil
}

// ClearStagingBeside removes the staging debris of a pin kept outside the
// object's directory.
func (o *Object) ClearStagingBeside(target string) error {
	staging := o.stagingPath(target)
	if !strings.HasPrefix(filepath.Base(staging), "bpfsup-staging-") {
		return nil
	}
	if err := os.Remove(staging); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove staging debris %s: %w", staging, err)
	}
	return nil
}

// Pins lists the names pinned under kind.
func (o *Object) Pins(kind Kind) ([]string, error) {
	return listPins(filepath.Join(o.Dir, string(kind)))
}

func listPins(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Exists reports whether something is pinned at path.
func Exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// finishStagedLink moves a link left in staging by a crash into its place and
// reports whether it did. Such a link is attached: removing it would leave
// its hook without a program until a new link is attached (and an XDP hook
// takes no second link while it lives), so the move the crash interrupted is
// completed instead. Reconciling the link afterwards corrects its program or
// target where the configuration differs.
func (o *Object) finishStagedLink(entry string) bool {
	name, ok := strings.CutPrefix(entry, string(Links)+"-")
	if !ok || CheckName("link", name) != nil {
		return false
	}
	staged := filepath.Join(o.Dir, stagingDir, entry)
	l, err := link.LoadPinnedLink(staged, nil)
	if err != nil {
		return false
	}
	l.Close()
	return unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, o.Path(Links, name), 0) == nil
}

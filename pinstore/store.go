package pinstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/bpfsup/bpfsup/internal/bpffs"

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

	// anyFS lets this package's tests lock objects under plain directories.
	anyFS bool
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

// Manifested lists the objects that have a manifest in the state directory.
func (s Store) Manifested() []string {
	files, _ := filepath.Glob(filepath.Join(s.stateDir(), "*.json"))
	var names []string
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".json"); CheckName("object", name) == nil {
			names = append(names, name)
		}
	}
	return names
}

// Object is an object's place in the store, locked for the caller.
type Object struct {
	Name  string
	Dir   string
	store Store
	lock  *os.File
	// pinLock is the flock on Dir itself (see lockDir), and dirID Dir's
	// device and inode when it was locked.
	pinLock *os.File
	dirID   fileID
}

// Open locks object name for this process and makes its directories. It
// fails with ErrLocked, naming the holder's pid, when another live process
// holds the object, and with ErrNotBPFFS when the pin root is not on bpffs:
// nothing is made there. Debris of an earlier crash that the manifest says
// is bpfsup's is removed (ClearStaging).
func (s Store) Open(name string) (*Object, error) {
	o, _, err := s.open(name, false)
	return o, err
}

// OpenRead is Open, and the object's manifest as ReadManifest reads it,
// read once under the lock: Open reads it anyway for the pin root it
// records. The manifest is nil when there is none, or when it cannot be
// read or decoded (ReadManifest says why).
func (s Store) OpenRead(name string) (*Object, *Manifest, error) {
	return s.open(name, true)
}

func (s Store) open(name string, read bool) (_ *Object, man *Manifest, err error) {
	if err := CheckName("object", name); err != nil {
		return nil, nil, err
	}
	if err := s.requireBPFFS(); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(s.stateDir(), 0o700); err != nil {
		return nil, nil, fmt.Errorf("create state directory: %w", err)
	}
	lock, err := lockFile(s.LockPath(name))
	if err != nil {
		return nil, nil, fmt.Errorf("object %s: %w", name, err)
	}
	o := &Object{Name: name, Dir: s.ObjectDir(name), store: s, lock: lock}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	other := ""
	if read {
		man, other = s.manifestUnderLock(name)
	} else {
		other = s.otherPinRoot(name)
	}
	if other != "" {
		return nil, nil, fmt.Errorf("object %s: %w: %s records it under pin root %s; give this pin root a state directory of its own (--state-dir), or run `bpfsup down --pin-root %s --state-dir %s` first",
			name, ErrOtherPinRoot, s.ManifestPath(name), other, other, s.stateDir())
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("object %s: create pin directory: %w", name, err)
	}
	if err := o.lockDir(); err != nil {
		return nil, nil, err
	}
	for _, d := range []string{string(Maps), string(Programs), string(Links), stagingDir} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, nil, fmt.Errorf("object %s: create pin directory: %w", name, err)
		}
	}
	o.removeManifestDebris()
	if s.HasStaged(name) { // the manifest is read only for debris
		debrisMan := man
		if !read {
			var rerr error
			if debrisMan, rerr = s.ReadManifest(name); rerr != nil {
				debrisMan = nil // unreadable: nothing in staging is known to be bpfsup's
			}
		}
		if _, err := o.ClearStaging(debrisMan, false); err != nil {
			return nil, nil, err
		}
	} else if err := o.CheckDir(); err != nil {
		return nil, nil, err
	}
	return o, man, nil
}

// otherPinRoot is the pin root that the manifest of object name in the
// state directory records, when that is not this store's; "" otherwise.
func (s Store) otherPinRoot(name string) string {
	var m struct {
		PinRoot string `json:"pin_root"`
	}
	if err, decodeErr := decodeFile(s.ManifestPath(name), &m); err != nil || decodeErr != nil || m.PinRoot == "" || filepath.Clean(m.PinRoot) == s.root() {
		return ""
	}
	return m.PinRoot
}

// manifestUnderLock reads the manifest of object name for OpenRead: the
// manifest, nil when there is none or it cannot be read; or the other pin
// root it records (otherPinRoot).
func (s Store) manifestUnderLock(name string) (*Manifest, string) {
	var m Manifest
	err, decodeErr := decodeFile(s.ManifestPath(name), &m)
	switch {
	case err != nil:
		return nil, ""
	case decodeErr != nil:
		// Not a manifest this bpfsup reads whole: still refused when it
		// names another pin root, as Open refuses it.
		return nil, s.otherPinRoot(name)
	case m.PinRoot != "" && filepath.Clean(m.PinRoot) != s.root():
		return nil, m.PinRoot
	case m.PinRoot != "" && m.PinRoot != s.root():
		return nil, "" // as ReadManifest: recorded under another spelling
	}
	return &m, ""
}

// Peek is object name's place in the store, neither locked nor made: to
// read what is pinned there (`bpfsup check`), never to change it. Close
// is a no-op.
func (s Store) Peek(name string) *Object {
	return &Object{Name: name, Dir: s.ObjectDir(name), store: s}
}

// Lock locks object name for this process without making anything: for
// teardown, which must not create what it is about to remove. The pin
// directory is locked when it exists.
func (s Store) Lock(name string) (_ *Object, err error) {
	if err := CheckName("object", name); err != nil {
		return nil, err
	}
	lock, err := lockFile(s.LockPath(name))
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", name, err)
	}
	o := &Object{Name: name, Dir: s.ObjectDir(name), store: s, lock: lock}
	if _, err := os.Lstat(o.Dir); err == nil {
		if err := o.lockDir(); err != nil {
			o.Close()
			return nil, err
		}
	}
	return o, nil
}

// lockDir takes the lock of the object's pin directory and remembers which
// directory it is.
func (o *Object) lockDir() error {
	f, err := lockDir(o.Dir)
	if err != nil {
		return fmt.Errorf("object %s: %w", o.Name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return fmt.Errorf("object %s: %w", o.Name, err)
	}
	o.pinLock, o.dirID = f, fileID{st.Dev, st.Ino}
	return nil
}

// Rehome takes up the object's pin directory anew once bpffs is mounted at
// the pin root again, after the directory this Object locked went with an
// unmount (CheckDir fails): it makes the directory and those of the layout,
// locks it, and lets the old one go. The caller pins again what it holds.
// It fails with ErrNotBPFFS while bpffs is not back.
func (o *Object) Rehome() error {
	if o.CheckDir() == nil {
		return nil
	}
	if err := o.store.requireBPFFS(); err != nil {
		return err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return fmt.Errorf("object %s: create pin directory: %w", o.Name, err)
	}
	old := o.pinLock
	if err := o.lockDir(); err != nil {
		return err
	}
	if old != nil {
		old.Close()
	}
	for _, d := range []string{string(Maps), string(Programs), string(Links), stagingDir} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return fmt.Errorf("object %s: create pin directory: %w", o.Name, err)
		}
	}
	return nil
}

// requireBPFFS makes sure the pin root, or the closest of its ancestors
// that exists, is on bpffs: what is made under it goes there, never onto
// the file system beneath a bpffs that was unmounted.
func (s Store) requireBPFFS() error {
	if s.anyFS {
		return nil
	}
	return requireBPFFS(s.root())
}

func requireBPFFS(path string) error {
	existing, err := existingAncestor(path)
	if err != nil {
		return err
	}
	ok, err := IsBPFFS(existing)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pin root %s: %s is %w (was bpffs unmounted?); bpfsup makes nothing there", path, existing, ErrNotBPFFS)
	}
	return nil
}

// CheckDir reports whether the object's pin directory is still the one
// this Object locked, on bpffs: after bpffs was unmounted (umount -l: bpfsup
// holds the directory open, so a plain umount is refused) or mounted again,
// the path names a directory of whatever lies beneath, where nothing may be
// made or removed. It fails with ErrNotBPFFS.
func (o *Object) CheckDir() error {
	if o.pinLock == nil {
		return nil
	}
	var st unix.Stat_t
	err := unix.Stat(o.Dir, &st)
	if err == nil && (fileID{st.Dev, st.Ino}) == o.dirID {
		return nil
	}
	why := "it is gone"
	if err == nil {
		why = "it is another directory now"
		if ok, _ := IsBPFFS(o.Dir); !ok {
			why = "it is not on bpffs any more"
		}
	}
	return fmt.Errorf("object %s: pin directory %s is no longer the one bpfsup holds: %s (was bpffs unmounted or mounted again?); nothing is pinned or removed there: %w",
		o.Name, o.Dir, why, ErrNotBPFFS)
}

// checkTarget makes sure a pin may be made at target: inside the object's
// directory, that it is still the one this Object locked; elsewhere (a
// map's own pin path), that the closest existing ancestor is on bpffs.
func (o *Object) checkTarget(target string) error {
	if o.store.anyFS {
		return nil
	}
	if strings.HasPrefix(target, o.Dir+"/") {
		return o.CheckDir()
	}
	return requireBPFFS(filepath.Dir(target))
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
		err = errors.Join(err, unlockFile(o.lock))
		o.lock = nil
	}
	return err
}

// stagingPath is the name under which a pin for target is made before it
// moves into place.
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
	if err := o.CheckDir(); err != nil {
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
	if err := o.checkTarget(target); err != nil {
		return fmt.Errorf("pin %s: %w", target, err)
	}
	staging := o.stagingPath(target)
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return fmt.Errorf("pin %s: %w", target, err)
	}
	if Exists(staging) {
		// Opening the object removed bpfsup's own debris (ClearStaging).
		return fmt.Errorf("pin %s: %s holds something bpfsup does not know as its own; remove it", target, staging)
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

// Left is something a cleanup left alone because bpfsup did not make it.
type Left struct {
	// Path of the thing, and Why it was left.
	Path, Why string
}

func (l Left) String() string { return l.Path + ": " + l.Why }

// ClearStaging removes the staging debris of a crash that the manifest man
// says is bpfsup's: maps and programs pinned under a staging name before
// the rename that would have moved them into place; a link there is moved
// into place instead (finishStagedLink). A foreign pin that a --force
// install moved aside (moveAside in the supervisor) and did not get to
// remove goes back to its place when that is free; it is removed when
// force is set and its place holds bpfsup's pin. Everything else is left
// alone and returned.
func (o *Object) ClearStaging(man *Manifest, force bool) ([]Left, error) {
	if err := o.CheckDir(); err != nil {
		return nil, err
	}
	dir := filepath.Join(o.Dir, stagingDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("object %s: read staging: %w", o.Name, err)
	}
	var left []Left
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if rest, ok := strings.CutPrefix(e.Name(), "foreign-"); ok {
			if l, err := o.restoreAside(path, rest, man, force); err != nil {
				return left, err
			} else if l != nil {
				left = append(left, *l)
			}
			continue
		}
		if e.IsDir() {
			left = append(left, Left{path, "a directory bpfsup did not make"})
			continue
		}
		pi, err := bpffs.ReadPin(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			left = append(left, Left{path, err.Error()})
			continue
		}
		if !man.OwnsAny(pi) {
			left = append(left, Left{path, fmt.Sprintf("holds %s id %d, which the manifest does not record", pi.Kind, pi.ID)})
			continue
		}
		if pi.Kind == bpffs.Link {
			if o.finishStagedLink(e.Name(), man) {
				continue
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return left, fmt.Errorf("object %s: remove staging debris %s: %w", o.Name, e.Name(), err)
		}
	}
	// Debris beside the maps pinned at paths of their own.
	if man != nil {
		for _, rec := range man.Maps {
			if rec.Path == "" || strings.HasPrefix(rec.Path, o.Dir+"/") {
				continue
			}
			staged := o.stagingPath(rec.Path)
			pi, err := bpffs.ReadPin(staged)
			if err != nil {
				continue
			}
			if !man.OwnsAny(pi) {
				left = append(left, Left{staged, fmt.Sprintf("holds %s id %d, which the manifest does not record", pi.Kind, pi.ID)})
				continue
			}
			if err := os.Remove(staged); err != nil && !errors.Is(err, os.ErrNotExist) {
				return left, fmt.Errorf("object %s: remove staging debris %s: %w", o.Name, staged, err)
			}
		}
	}
	return left, nil
}

// AsidePath is where a foreign pin at path is moved out of the way by an
// install with --force, until it is done: in the staging directory, under
// a name that says where it came from.
func (o *Object) AsidePath(path string) (string, error) {
	rel, err := filepath.Rel(o.Dir, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("%s is not in the pin directory of object %s", path, o.Name)
	}
	return filepath.Join(o.Dir, stagingDir, "foreign-"+strings.ReplaceAll(rel, "/", "-")), nil
}

// restoreAside handles a foreign pin at path that an install with --force
// moved aside (AsidePath) and did not remove: rest is its name after
// "foreign-", "<kind>-<name>".
func (o *Object) restoreAside(path, rest string, man *Manifest, force bool) (*Left, error) {
	var place string
	for _, k := range []Kind{Maps, Programs, Links} {
		if name, ok := strings.CutPrefix(rest, string(k)+"-"); ok && CheckName(string(k), name) == nil {
			place = o.Path(k, name)
		}
	}
	if place == "" {
		return &Left{path, "not a name bpfsup gives a pin it moves aside"}, nil
	}
	if !Exists(place) {
		// The forced install stopped before it pinned its own there: the
		// foreign pin goes back to where its owner put it.
		if err := RenameNoReplace(path, place); err != nil {
			return nil, fmt.Errorf("object %s: put back foreign pin moved aside: %w", o.Name, err)
		}
		return nil, nil
	}
	if force {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("object %s: remove foreign pin replaced with --force: %w", o.Name, err)
		}
		return nil, nil
	}
	return &Left{path, fmt.Sprintf("a foreign pin moved aside from %s by a start with --force that did not finish; bpfsup's own is there now (remove it, or start with --force)", place)}, nil
}

// removeManifestDebris removes the manifest's temporary file, which a
// crash while writing it leaves behind, and those of bpfsup before
// 2026-12, which named them with a random suffix (".fw.json-123456").
func (o *Object) removeManifestDebris() {
	// Unlink alone: bpfsup writes a file there, and a directory of that
	// name is not its own (os.Remove would take an empty one too).
	_ = unix.Unlink(o.store.manifestTemp(o.Name))
	for _, e := range legacyDebris(o.store.stateDir()) {
		if suffix, ok := strings.CutPrefix(e, "."+o.Name+".json-"); ok && suffix != "" && strings.Trim(suffix, "0123456789") == "" {
			_ = unix.Unlink(filepath.Join(o.store.stateDir(), e))
		}
	}
}

// legacyDirs holds, per state directory, the temporary manifest names of
// bpfsup before 2026-12 found there (".NAME.json-DIGITS"): listed once per
// process, not once per object (a start of a thousand objects would read
// the directory a thousand times); this bpfsup never makes such names.
var legacyDirs sync.Map

func legacyDebris(dir string) []string {
	if v, ok := legacyDirs.Load(dir); ok {
		return v.([]string)
	}
	var found []string
	if f, err := os.Open(dir); err == nil {
		names, _ := f.Readdirnames(-1)
		f.Close()
		for _, e := range names {
			if strings.HasPrefix(e, ".") && strings.Contains(e, ".json-") {
				found = append(found, e)
			}
		}
	}
	v, _ := legacyDirs.LoadOrStore(dir, found)
	return v.([]string)
}

// ManifestDebris lists the manifest's temporary files that a crash left in
// the state directory, for status.
func (s Store) ManifestDebris(name string) []string {
	return s.ManifestDebrisIn(s.StateEntries(), name)
}

// StateEntries lists the state directory's entries, for ManifestDebrisIn.
func (s Store) StateEntries() []string {
	f, err := os.Open(s.stateDir())
	if err != nil {
		return nil
	}
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	return names
}

// ManifestDebrisIn is ManifestDebris among entries, the state directory's
// as StateEntries listed them: one listing for many objects.
func (s Store) ManifestDebrisIn(entries []string, name string) []string {
	var out []string
	for _, e := range entries {
		if e == "."+name+".json.tmp" {
			out = append(out, filepath.Join(s.stateDir(), e))
		} else if suffix, ok := strings.CutPrefix(e, "."+name+".json-"); ok && suffix != "" && strings.Trim(suffix, "0123456789") == "" {
			out = append(out, filepath.Join(s.stateDir(), e))
		}
	}
	slices.Sort(out)
	return out
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
// completed instead, over a pin of bpfsup's at that place, never over
// someone else's. Reconciling the link afterwards corrects its program or
// target where the configuration differs.
func (o *Object) finishStagedLink(entry string, man *Manifest) bool {
	name, ok := strings.CutPrefix(entry, string(Links)+"-")
	if !ok || CheckName("link", name) != nil {
		return false
	}
	place := o.Path(Links, name)
	if pi, err := bpffs.ReadPin(place); err == nil && !man.Owns(Links, name, pi) {
		return false
	}
	staged := filepath.Join(o.Dir, stagingDir, entry)
	return unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, place, 0) == nil
}

package pinstore

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/crash"
)

// MapPolicy says how one map is reconciled with its pin.
type MapPolicy struct {
	// PinPath pins the map here instead of <object>/maps/<name>, to share it
	// with another object or tool. Must be on the same bpffs.
	PinPath string
	// Reset allows an incompatible pinned map to be replaced by a new, empty one.
	Reset bool
	// Migrate "copy" allows an incompatible pinned map whose key and value
	// sizes and type are unchanged to be replaced by a new one holding a copy
	// of its entries.
	Migrate string
	// Foreign says that the pinned map is not bpfsup's (run --force): it is
	// replaced by a new, empty one, compatible or not.
	Foreign bool
}

// MapResult is one reconciled map.
type MapResult struct {
	// Map is owned by the caller.
	Map *ebpf.Map
	// Path is where the map is (or will be) pinned.
	Path string
	// Adopted is true when Map is the pinned map, false when it is new and
	// must still be pinned with Object.Pin.
	Adopted bool
	// Replaced describes the incompatible map a new one replaces, if any.
	Replaced string
	// Migrated is the replaced map when its entries were copied into Map
	// (migrate = "copy"), owned by the caller: the programs still attached
	// write it until their links swap, and SyncEntries catches Map up.
	Migrated *ebpf.Map
}

// MapPath is where map name of the object is pinned under policy pol.
func (o *Object) MapPath(name string, pol MapPolicy) string {
	if pol.PinPath != "" {
		return pol.PinPath
	}
	return o.Path(Maps, name)
}

// AdoptOrCreateMap returns the map pinned for name when it is compatible with
// spec, or else a new map (not yet pinned) made from spec. An incompatible
// pinned map is an error naming the map and the fields that differ, unless pol
// allows it to be reset or migrated. Nothing is pinned or unpinned here.
func (o *Object) AdoptOrCreateMap(name string, spec *ebpf.MapSpec, pol MapPolicy) (_ *MapResult, err error) {
	if err := CheckName("map", name); err != nil {
		return nil, err
	}
	path := o.MapPath(name, pol)
	spec = WithoutReferences(spec)
	spec.Pinning = ebpf.PinNone

	pinned, err := ebpf.LoadPinnedMap(path, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", name, err)
		}
		crash.At("maps/created")
		return &MapResult{Map: m, Path: path}, nil
	case err != nil:
		return nil, fmt.Errorf("load pinned map %s from %s: %w", name, path, err)
	}
	defer func() {
		if err != nil {
			pinned.Close()
		}
	}()

	action, incompat := DecideMap(spec, pinned, pol)
	switch action {
	case MapReplaceForeign:
		fresh, err := ebpf.NewMap(spec)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", name, err)
		}
		pinned.Close()
		crash.At("maps/created")
		return &MapResult{Map: fresh, Path: path, Replaced: "a map bpfsup did not make"}, nil
	case MapAdopt:
		return &MapResult{Map: pinned, Path: path, Adopted: true}, nil
	case MapRefuse:
		return nil, fmt.Errorf("map %s pinned at %s is incompatible with the object (%w); "+
			"set reset = true or migrate = \"copy\" for this map to replace it", name, path, incompat)
	}

	fresh, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create map %s: %w", name, err)
	}
	crash.At("maps/created")
	res := &MapResult{Map: fresh, Path: path, Replaced: incompat.Error()}
	if action == MapMigrate {
		if _, err := copyEntries(pinned, fresh); err != nil {
			fresh.Close()
			return nil, fmt.Errorf("migrate map %s: %w", name, err)
		}
		crash.At("maps/migrated")
		res.Migrated = pinned
		return res, nil
	}
	pinned.Close()
	return res, nil
}

// MapAction is what an install does with a map of the object.
type MapAction string

// What an install does with a map: create it (nothing pinned), adopt the
// pinned one with its contents, replace an incompatible pinned one by an
// empty one (reset = true) or by a copy in the new shape (migrate =
// "copy"), refuse an incompatible one, or replace one bpfsup did not make
// (--force).
const (
	MapCreate         MapAction = "create"
	MapAdopt          MapAction = "adopt"
	MapReset          MapAction = "reset"
	MapMigrate        MapAction = "migrate"
	MapRefuse         MapAction = "refuse"
	MapReplaceForeign MapAction = "replace-foreign"
)

// DecideMap says what an install does with the map pinned for spec (nil
// when none is), under pol, and, for a pinned map it does not adopt, how
// it is incompatible with spec. AdoptOrCreateMap does what it says;
// `bpfsup check` reports it.
func DecideMap(spec *ebpf.MapSpec, pinned *ebpf.Map, pol MapPolicy) (MapAction, error) {
	if pinned == nil {
		return MapCreate, nil
	}
	incompat := spec.Compatible(pinned)
	switch {
	case pol.Foreign:
		return MapReplaceForeign, incompat
	case incompat == nil:
		return MapAdopt, nil
	case !pol.Reset && pol.Migrate == "":
		return MapRefuse, incompat
	case pol.Migrate == "copy" && !pol.Reset:
		return MapMigrate, incompat
	}
	return MapReset, incompat
}

// Reference is a slot of a prog array or map of maps that its declaration
// fills by name (libbpf's `.values = { [0] = &prog }`): Key holds Name, a
// program or map of the same object.
type Reference struct {
	Key  any
	Name string
}

// References lists the slots spec's declaration fills with programs or maps.
func References(spec *ebpf.MapSpec) []Reference {
	var refs []Reference
	for _, kv := range spec.Contents {
		if name, ok := kv.Value.(string); ok {
			refs = append(refs, Reference{Key: kv.Key, Name: name})
		}
	}
	return refs
}

// WithoutReferences is a copy of spec without the slots it fills with
// programs or maps. Those exist only once the object's programs are loaded
// or adopted and its maps made, so a map is created (and a collection
// loaded) without them, and the install fills them (supervisor's slots.go).
func WithoutReferences(spec *ebpf.MapSpec) *ebpf.MapSpec {
	spec = spec.Copy()
	if len(References(spec)) == 0 {
		return spec
	}
	kept := spec.Contents[:0]
	for _, kv := range spec.Contents {
		if _, ok := kv.Value.(string); !ok {
			kept = append(kept, kv)
		}
	}
	spec.Contents = kept
	return spec
}

// SyncEntries makes to hold what from holds: every entry of from is put
// into to, and the keys of to that from lacks are deleted (in an array,
// whose keys cannot be deleted, the indices past from's size keep their
// initial zeros). It is the second half of a migration, run just before the
// links swap, for what the running programs wrote to from since the copy.
// to must not be in use yet.
func SyncEntries(from, to *ebpf.Map) (put, deleted int, err error) {
	put, err = copyEntries(from, to)
	if err != nil {
		return 0, 0, err
	}
	if isArray(to.Type()) {
		return put, 0, nil
	}
	var gone [][]byte
	err = eachKey(to, func(key []byte) error {
		// LookupBytes says a missing key with a nil value.
		v, err := from.LookupBytes(key)
		if err != nil {
			return fmt.Errorf("look up entry: %w", err)
		}
		if v == nil {
			gone = append(gone, key)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	for _, k := range gone {
		if err := to.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, 0, fmt.Errorf("delete entry: %w", err)
		}
	}
	return put, len(gone), nil
}

// copyEntries copies every entry of from into to, and says how many. Both
// must have the same type and key and value sizes.
func copyEntries(from, to *ebpf.Map) (int, error) {
	if !Copyable(from.Type(), from.ValueSize()) {
		return 0, fmt.Errorf("cannot copy the entries of a %s map", from.Type())
	}
	if from.Type() != to.Type() || from.KeySize() != to.KeySize() || from.ValueSize() != to.ValueSize() {
		return 0, fmt.Errorf("copy needs the same type, key and value size: have %s %d/%d, want %s %d/%d",
			from.Type(), from.KeySize(), from.ValueSize(), to.Type(), to.KeySize(), to.ValueSize())
	}
	n := 0
	err := eachKey(from, func(key []byte) error {
		raw, err := from.LookupBytes(key)
		if err != nil {
			return fmt.Errorf("look up entry: %w", err)
		}
		if raw == nil {
			return nil // deleted meanwhile
		}
		var value any = raw
		if isPerCPU(from.Type()) {
			value = perCPUValues(raw, int(from.ValueSize()))
		}
		if err := to.Put(key, value); err != nil {
			return fmt.Errorf("copy entry: %w", err)
		}
		n++
		return nil
	})
	return n, err
}

// eachKey calls fn with each key of m, as bytes. Keys deleted meanwhile may
// make the walk start over, as the kernel's next-key does; it gives up
// after twice the map's size.
func eachKey(m *ebpf.Map, fn func(key []byte) error) error {
	var key []byte
	for i := 0; ; i++ {
		if i > 2*int(m.MaxEntries())+1 {
			return errors.New("the map changed too much to be walked")
		}
		var next []byte
		var err error
		if key == nil {
			next, err = m.NextKeyBytes(nil)
		} else {
			next, err = m.NextKeyBytes(key)
		}
		if err != nil {
			return fmt.Errorf("look up next key: %w", err)
		}
		if next == nil {
			return nil
		}
		if err := fn(next); err != nil {
			return err
		}
		key = next
	}
}

// Copyable says whether migrate = "copy" can copy a map of type t with
// values of valueSize bytes: one whose entries are keys and plain values.
// Not a ring buffer, queue or stack (no keys), nor a map whose values are
// programs, maps or sockets (read as ids, written as fds): a devmap only
// with 4-byte values, the bare ifindex (8 bytes add a program).
func Copyable(t ebpf.MapType, valueSize uint32) bool {
	switch t {
	case ebpf.Hash, ebpf.Array, ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
		return true
	case ebpf.DevMap, ebpf.DevMapHash:
		return valueSize == 4
	}
	return false
}

func isPerCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

func isArray(t ebpf.MapType) bool {
	return t == ebpf.Array || t == ebpf.PerCPUArray
}

// perCPUValues splits a per-CPU map's raw value (one value per possible
// CPU, each padded to 8 bytes) into the slice Put takes.
func perCPUValues(raw []byte, size int) [][]byte {
	stride := (size + 7) &^ 7
	out := make([][]byte, 0, len(raw)/stride)
	for off := 0; off+size <= len(raw); off += stride {
		out = append(out, raw[off:off+size])
	}
	return out
}

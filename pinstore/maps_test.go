package pinstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// mustSpec parses the committed object name ("dropfilter", ...).
func mustSpec(tb testing.TB, name string) *ebpf.CollectionSpec {
	tb.Helper()
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(name))
	if err != nil {
		tb.Fatalf("load %s: %v", name, err)
	}
	return spec
}

// mustAdoptOrCreate runs AdoptOrCreateMap and closes the map at the end of
// the test.
func mustAdoptOrCreate(tb testing.TB, o *Object, name string, spec *ebpf.MapSpec, pol MapPolicy) *MapResult {
	tb.Helper()
	r, err := o.AdoptOrCreateMap(name, spec, pol)
	if err != nil {
		tb.Fatalf("adopt or create map %s: %v", name, err)
	}
	tb.Cleanup(func() {
		r.Map.Close()
		if r.Migrated != nil {
			r.Migrated.Close()
		}
	})
	return r
}

func putPorts(tb testing.TB, m *ebpf.Map, ports ...uint16) {
	tb.Helper()
	for _, p := range ports {
		if err := m.Put(p, uint8(1)); err != nil {
			tb.Fatalf("put port %d: %v", p, err)
		}
	}
}

func hasPort(m *ebpf.Map, port uint16) bool {
	var v uint8
	return m.Lookup(port, &v) == nil
}

func countEntries(tb testing.TB, m *ebpf.Map) int {
	tb.Helper()
	var k uint16
	var v uint8
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		tb.Fatal(err)
	}
	return n
}

func TestAdoptOrCreateMap(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	v1 := mustSpec(t, "dropfilter").Maps["drop_ports"]
	big := mustSpec(t, "dropfilter_bigmap").Maps["drop_ports"]
	path := o.Path(Maps, "drop_ports")

	// Nothing pinned: a new map, not pinned by AdoptOrCreateMap.
	created := mustAdoptOrCreate(t, o, "drop_ports", v1, MapPolicy{})
	if created.Adopted || created.Replaced != "" || created.Path != path {
		t.Fatalf("first call: %+v", created)
	}
	if Exists(path) {
		t.Fatal("AdoptOrCreateMap pinned the map")
	}
	if err := o.Pin(Maps, path, created.Map); err != nil {
		t.Fatal(err)
	}
	putPorts(t, created.Map, 53)
	id := mapID(t, created.Map)

	// Pinned and compatible: the same map, contents and all.
	adopted := mustAdoptOrCreate(t, o, "drop_ports", v1, MapPolicy{})
	if !adopted.Adopted || adopted.Replaced != "" || mapID(t, adopted.Map) != id || !hasPort(adopted.Map, 53) {
		t.Fatalf("second call: %+v (id %d, want %d)", adopted, mapID(t, adopted.Map), id)
	}

	// Incompatible: an error naming the map and the field, and the pin stays.
	_, err := o.AdoptOrCreateMap("drop_ports", big, MapPolicy{})
	if !errors.Is(err, ErrMapIncompatible) {
		t.Fatalf("incompatible map: %v, want ErrMapIncompatible", err)
	}
	for _, want := range []string{"map drop_ports", path, "MaxEntries", "reset = true", `migrate = "copy"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if pinnedMapID(t, path) != id {
		t.Fatal("a refused map replaced the pin")
	}

	// Reset: a new, empty map in its place (to be pinned by the caller).
	reset := mustAdoptOrCreate(t, o, "drop_ports", big, MapPolicy{Reset: true})
	if reset.Adopted || !strings.Contains(reset.Replaced, "MaxEntries") || mapID(t, reset.Map) == id {
		t.Fatalf("reset: %+v", reset)
	}
	if reset.Map.MaxEntries() != 128 || countEntries(t, reset.Map) != 0 {
		t.Fatalf("reset map has %d max entries and %d entries, want 128 and none", reset.Map.MaxEntries(), countEntries(t, reset.Map))
	}
	if pinnedMapID(t, path) != id {
		t.Fatal("AdoptOrCreateMap replaced the pin itself")
	}

	// Migrate: a new map holding the old one's entries.
	putPorts(t, created.Map, 80, 443)
	migrated := mustAdoptOrCreate(t, o, "drop_ports", big, MapPolicy{Migrate: "copy"})
	if migrated.Adopted || migrated.Replaced == "" || mapID(t, migrated.Map) == id || migrated.Map.MaxEntries() != 128 {
		t.Fatalf("migrate: %+v", migrated)
	}
	for _, p := range []uint16{53, 80, 443} {
		if !hasPort(migrated.Map, p) {
			t.Errorf("migrated map lacks port %d", p)
		}
	}
	if n := countEntries(t, migrated.Map); n != 3 {
		t.Errorf("migrated map has %d entries, want 3", n)
	}

	// Migrating into a map too small for the entries fails and leaves the pin.
	if err := o.Pin(Maps, path, migrated.Map); err != nil {
		t.Fatal(err)
	}
	for p := uint16(1000); p < 1100; p++ {
		putPorts(t, migrated.Map, p)
	}
	_, err = o.AdoptOrCreateMap("drop_ports", v1, MapPolicy{Migrate: "copy"})
	if err == nil || !strings.Contains(err.Error(), "migrate map drop_ports") {
		t.Fatalf("migrating 103 entries into 64: %v, want a migrate error", err)
	}
	if pinnedMapID(t, path) != mapID(t, migrated.Map) {
		t.Fatal("a failed migration replaced the pin")
	}
}

// Copying needs the same layout of entries; a map whose key size changed
// cannot be migrated.
func TestAdoptOrCreateMapMigrateNeedsSameLayout(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	v1 := mustSpec(t, "dropfilter").Maps["drop_ports"]
	first := mustAdoptOrCreate(t, o, "drop_ports", v1, MapPolicy{})
	if err := o.Pin(Maps, first.Path, first.Map); err != nil {
		t.Fatal(err)
	}
	wider := v1.Copy()
	wider.Key, wider.KeySize = nil, 4
	_, err := o.AdoptOrCreateMap("drop_ports", wider, MapPolicy{Migrate: "copy"})
	if err == nil || !strings.Contains(err.Error(), "copy needs the same type, key and value size") {
		t.Fatalf("migrate to another key size: %v", err)
	}
	// Reset takes precedence over a migration that cannot work.
	r := mustAdoptOrCreate(t, o, "drop_ports", wider, MapPolicy{Reset: true, Migrate: "copy"})
	if r.Map.KeySize() != 4 {
		t.Fatalf("reset map has key size %d", r.Map.KeySize())
	}
}

func TestAdoptOrCreateMapOwnPinPath(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	spec := mustSpec(t, "dropfilter").Maps["drop_count"]
	pol := MapPolicy{PinPath: s.Root + "/shared/drop_count"}
	r := mustAdoptOrCreate(t, o, "drop_count", spec, pol)
	if r.Path != pol.PinPath || r.Adopted {
		t.Fatalf("%+v", r)
	}
	if err := o.Pin(Maps, r.Path, r.Map); err != nil {
		t.Fatal(err)
	}
	again := mustAdoptOrCreate(t, o, "drop_count", spec, pol)
	if !again.Adopted || mapID(t, again.Map) != mapID(t, r.Map) {
		t.Fatalf("not adopted from its own pin path: %+v", again)
	}
	if Exists(o.Path(Maps, "drop_count")) {
		t.Fatal("a map with its own pin path was pinned in the object's directory")
	}

	if _, err := o.AdoptOrCreateMap("drop.count", spec, MapPolicy{}); !errors.Is(err, ErrBadName) {
		t.Fatalf("bad map name: %v, want ErrBadName", err)
	}
}

// TestSyncEntries: after SyncEntries the new map holds exactly what the old
// one holds, values included, for the kinds of maps a migration copies
// (per-CPU maps carry one value per possible CPU).
func TestSyncEntries(t *testing.T) {
	testutil.RequireRoot(t)
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.Array, ebpf.PerCPUArray} {
		t.Run(typ.String(), func(t *testing.T) {
			mk := func(max uint32) *ebpf.Map {
				m, err := ebpf.NewMap(&ebpf.MapSpec{Type: typ, KeySize: 4, ValueSize: 8, MaxEntries: max})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				return m
			}
			from, to := mk(16), mk(32)
			ncpu, err := ebpf.PossibleCPU()
			if err != nil {
				t.Fatal(err)
			}
			perCPU := typ == ebpf.PerCPUHash || typ == ebpf.PerCPUArray
			put := func(m *ebpf.Map, k uint32, v uint64) {
				t.Helper()
				var err error
				if perCPU {
					vs := make([]uint64, ncpu)
					for i := range vs {
						vs[i] = v + uint64(i)
					}
					err = m.Put(k, vs)
				} else {
					err = m.Put(k, v)
				}
				if err != nil {
					t.Fatalf("put %d: %v", k, err)
				}
			}
			get := func(m *ebpf.Map, k uint32) (uint64, bool) {
				t.Helper()
				if perCPU {
					var vs []uint64
					if err := m.Lookup(k, &vs); err != nil {
						return 0, false
					}
					for i, v := range vs {
						if vs[0] != 0 && v != vs[0]+uint64(i) {
							t.Fatalf("key %d: per-CPU values %v", k, vs)
						}
					}
					return vs[0], true
				}
				var v uint64
				if err := m.Lookup(k, &v); err != nil {
					return 0, false
				}
				return v, true
			}
			// The first copy, then what the running programs change.
			put(from, 1, 10)
			put(from, 2, 20)
			if _, err := copyEntries(from, to); err != nil {
				t.Fatal(err)
			}
			put(from, 2, 21)
			put(from, 3, 30)
			arrays := typ == ebpf.Array || typ == ebpf.PerCPUArray
			if !arrays {
				if err := from.Delete(uint32(1)); err != nil {
					t.Fatal(err)
				}
			}
			if _, _, err := SyncEntries(from, to); err != nil {
				t.Fatal(err)
			}
			want := map[uint32]uint64{2: 21, 3: 30}
			if arrays {
				want[1] = 10
			}
			// Past the old size (16) too: an array's new indices are zeros.
			for k := uint32(0); k < 32; k++ {
				w, wok := want[k]
				g, gok := get(to, k)
				if arrays && !wok {
					w, wok = 0, true
				}
				if wok != gok || w != g {
					t.Errorf("key %d: have %d (%v), want %d (%v)", k, g, gok, w, wok)
				}
			}
		})
	}
}

package converge

import (
	"slices"
	"testing"

	"github.com/bpfsup/bpfsup/pinstore"
)

func TestCarryIDs(t *testing.T) {
	alive := func(ids ...uint32) func(uint32) bool {
		return func(id uint32) bool { return slices.Contains(ids, id) }
	}
	for _, tt := range []struct {
		name     string
		prev     []uint32
		old, cur uint32
		alive    func(uint32) bool
		want     []uint32
	}{
		{"first install", nil, 0, 10, alive(10), nil},
		{"upgrade keeps the old id while it lives", nil, 10, 11, alive(10, 11), []uint32{10}},
		{"dead ids go", []uint32{7, 8}, 10, 11, alive(8, 10, 11), []uint32{8, 10}},
		{"no duplicates, not the current id", []uint32{10, 11, 10}, 11, 11, alive(10, 11), []uint32{10}},
		// Any number of crashed upgrades: the pinned generation stays known
		// as long as it exists, however many ids came after it.
		{"many crashed upgrades", []uint32{1, 2, 3, 4, 5, 6, 7, 8}, 9, 10, alive(1, 10), []uint32{1}},
	} {
		if got := carryIDs(tt.prev, tt.old, tt.cur, tt.alive); !slices.Equal(got, tt.want) {
			t.Errorf("%s: carryIDs(%v, %d, %d) = %v, want %v", tt.name, tt.prev, tt.old, tt.cur, got, tt.want)
		}
	}
}

func TestOwnedBy(t *testing.T) {
	o := ownedBy(nil)
	if hasID(o.progs["x"], 1) || o.progIDs[1] {
		t.Fatal("an empty manifest owns something")
	}
	o = ownedBy(&pinstore.Manifest{
		Maps:     map[string]pinstore.MapRecord{"m": {ID: 3, PreviousIDs: []uint32{2}}},
		Programs: map[string]pinstore.ProgramRecord{"p": {ID: 5, PreviousIDs: []uint32{4}}},
		Links:    map[string]pinstore.LinkRecord{"l": {ID: 0, PreviousIDs: []uint32{9}}},
	})
	if !hasID(o.maps["m"], 3) || !hasID(o.maps["m"], 2) || hasID(o.maps["m"], 1) || !hasID(o.progs["p"], 5) || !hasID(o.progs["p"], 4) || hasID(o.progs["p"], 6) ||
		!o.progIDs[4] || !hasID(o.links["l"], 9) || hasID(o.links["l"], 0) {
		t.Errorf("ownedBy: %+v", o)
	}
}

func TestCarryStale(t *testing.T) {
	old := &pinstore.Manifest{
		Programs: map[string]pinstore.ProgramRecord{"kept": {ID: 1}, "dropped": {ID: 2}},
		Links:    map[string]pinstore.LinkRecord{"dropped": {ID: 3}},
	}
	m := &pinstore.Manifest{Programs: map[string]pinstore.ProgramRecord{"kept": {ID: 7}}, Links: map[string]pinstore.LinkRecord{}}
	carryStale(m, old)
	if m.Programs["kept"].ID != 7 || m.Programs["dropped"].ID != 2 || m.Links["dropped"].ID != 3 {
		t.Errorf("carryStale: %+v", m)
	}
	carryStale(m, nil)
}

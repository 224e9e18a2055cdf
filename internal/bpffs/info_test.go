package bpffs

import (
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
)

// progInfoStats lays out struct bpf_prog_info as <linux/bpf.h> does.
func TestProgInfoLayout(t *testing.T) {
	var info progInfoStats
	for _, c := range []struct {
		field     string
		got, want uintptr
	}{
		{"map_ids", unsafe.Offsetof(info.mapIDs), 56},
		{"name", unsafe.Offsetof(info.name), 64},
		{"netns_dev", unsafe.Offsetof(info.netnsDev), 88},
		{"btf_id", unsafe.Offsetof(info.btfID), 128},
		{"prog_tags", unsafe.Offsetof(info.progTags), 184},
		{"run_time_ns", unsafe.Offsetof(info.runTimeNs), 192},
		{"recursion_misses", unsafe.Offsetof(info.recursionMisses), 208},
		{"verified_insns", unsafe.Offsetof(info.verifiedInsns), 216},
	} {
		if c.got != c.want {
			t.Errorf("%s at offset %d, want %d", c.field, c.got, c.want)
		}
	}
}

// MapMemlock reads what the kernel charges for a map, as cilium/ebpf's
// MapInfo does from the same fdinfo.
func TestMapMemlock(t *testing.T) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	want, ok := info.Memlock()
	if !ok {
		t.Skip("this kernel's fdinfo says no memlock")
	}
	got, ok := MapMemlock(m.FD())
	if !ok || got != want || got == 0 {
		t.Errorf("MapMemlock = %d, %v; cilium/ebpf reads %d", got, ok, want)
	}
}

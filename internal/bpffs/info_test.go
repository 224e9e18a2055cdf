package bpffs

import (
	"testing"
	"unsafe"
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

package bpf

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// The names below are what other packages' tests rely on. This only parses
// the objects; loading them into the kernel is for the tests that use them.
func TestObjects(t *testing.T) {
	for _, tt := range []struct {
		object   string
		programs map[string]ebpf.ProgramType
		maps     map[string]ebpf.MapSpec
	}{
		{
			object:   "counter.bpf.o",
			programs: map[string]ebpf.ProgramType{"count_packets": ebpf.XDP, "count_tc": ebpf.SchedCLS},
			maps:     map[string]ebpf.MapSpec{"counters": {Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 256}},
		},
		{
			object:   "dropfilter.bpf.o",
			programs: map[string]ebpf.ProgramType{"xdp_drop": ebpf.XDP, "tc_drop": ebpf.SchedCLS},
			maps: map[string]ebpf.MapSpec{
				"drop_ports": {Type: ebpf.Hash, KeySize: 2, ValueSize: 1, MaxEntries: 64},
				"drop_count": {Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1},
			},
		},
		{
			object:   "dropfilter_v2.bpf.o",
			programs: map[string]ebpf.ProgramType{"xdp_drop": ebpf.XDP, "tc_drop": ebpf.SchedCLS},
			maps: map[string]ebpf.MapSpec{
				"drop_ports": {Type: ebpf.Hash, KeySize: 2, ValueSize: 1, MaxEntries: 64},
				"drop_count": {Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1},
			},
		},
		{
			object:   "dropfilter_bigmap.bpf.o",
			programs: map[string]ebpf.ProgramType{"xdp_drop": ebpf.XDP, "tc_drop": ebpf.SchedCLS},
			maps: map[string]ebpf.MapSpec{
				"drop_ports": {Type: ebpf.Hash, KeySize: 2, ValueSize: 1, MaxEntries: 128},
				"drop_count": {Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1},
			},
		},
		{
			object:   "verifier_heavy.bpf.o",
			programs: map[string]ebpf.ProgramType{"heavy": ebpf.XDP},
		},
		{
			object:   "bad_verifier.bpf.o",
			programs: map[string]ebpf.ProgramType{"bad": ebpf.XDP},
		},
		{
			// Parses; only loading it fails.
			object:   "counter_be.bpf.o",
			programs: map[string]ebpf.ProgramType{"count_packets": ebpf.XDP, "count_tc": ebpf.SchedCLS},
			maps:     map[string]ebpf.MapSpec{"counters": {Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 256}},
		},
	} {
		t.Run(tt.object, func(t *testing.T) {
			onDisk, err := os.ReadFile(Path(tt.object))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(onDisk, Object(tt.object)) {
				t.Fatal("embedded object differs from the file at Path")
			}

			spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(Object(tt.object)))
			if err != nil {
				t.Fatal(err)
			}
			if len(spec.Programs) != len(tt.programs) {
				t.Errorf("got %d programs, want %d", len(spec.Programs), len(tt.programs))
			}
			for name, typ := range tt.programs {
				prog := spec.Programs[name]
				if prog == nil {
					t.Errorf("no program %s", name)
					continue
				}
				if prog.Type != typ {
					t.Errorf("program %s: type %v, want %v", name, prog.Type, typ)
				}
			}
			if len(spec.Maps) != len(tt.maps) {
				t.Errorf("got %d maps, want %d", len(spec.Maps), len(tt.maps))
			}
			for name, want := range tt.maps {
				got := spec.Maps[name]
				if got == nil {
					t.Errorf("no map %s", name)
					continue
				}
				if got.Type != want.Type || got.KeySize != want.KeySize || got.ValueSize != want.ValueSize || got.MaxEntries != want.MaxEntries {
					t.Errorf("map %s: %v key %d value %d max %d, want %v key %d value %d max %d", name,
						got.Type, got.KeySize, got.ValueSize, got.MaxEntries,
						want.Type, want.KeySize, want.ValueSize, want.MaxEntries)
				}
			}
		})
	}
}

// Every C source has its object, so a new program is not forgotten in Makefile.inc.
func TestEverySourceBuilt(t *testing.T) {
	sources, err := filepath.Glob(Path("*.c"))
	if err != nil {
		t.Fatal(err)
	}
	if len(sources) == 0 {
		t.Fatal("no C sources found beside the objects")
	}
	for _, source := range sources {
		object := strings.TrimSuffix(filepath.Base(source), ".c") + ".bpf.o"
		if _, err := fs.Stat(Objects, object); err != nil {
			t.Errorf("%s: %v", filepath.Base(source), err)
		}
	}
}

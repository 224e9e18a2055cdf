package pinstore

import (
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The brief facts are cilium/ebpf's, for programs with and without maps and
// for more maps than the first guess of BriefProgram holds.
func TestBrief(t *testing.T) {
	testutil.RequireRoot(t)
	for _, obj := range []string{"dropfilter", "counter", "verifier_heavy"} {
		coll, err := ebpf.NewCollection(mustSpec(t, obj))
		if err != nil {
			t.Fatal(err)
		}
		defer coll.Close()
		for name, p := range coll.Programs {
			info, err := p.Info()
			if err != nil {
				t.Fatal(err)
			}
			wantID, _ := info.ID()
			wantMaps, _ := info.MapIDs()
			b, err := BriefProgram(p)
			if err != nil {
				t.Fatalf("%s/%s: %v", obj, name, err)
			}
			if b.ID != wantID || b.Tag != info.Tag || !slices.Equal(b.MapIDs, wantMaps) {
				t.Errorf("%s/%s: brief %+v, want id %d tag %s maps %v", obj, name, b, wantID, info.Tag, wantMaps)
			}
			if id, err := ProgramID(p); err != nil || id != wantID {
				t.Errorf("%s/%s: ProgramID %d, %v; want %d", obj, name, id, err, wantID)
			}
		}
		for name, m := range coll.Maps {
			info, err := m.Info()
			if err != nil {
				t.Fatal(err)
			}
			want, _ := info.ID()
			if id, err := MapID(m); err != nil || id != want {
				t.Errorf("%s/%s: MapID %d, %v; want %d", obj, name, id, err, want)
			}
		}
	}
}

// A program using more maps than BriefProgram first makes room for.
func TestBriefManyMaps(t *testing.T) {
	testutil.RequireRoot(t)
	var maps []*ebpf.Map
	for i := 0; i < 20; i++ {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		maps = append(maps, m)
	}
	p := mustProgramUsing(t, maps)
	defer p.Close()
	b, err := BriefProgram(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.MapIDs) != len(maps) {
		t.Fatalf("%d map ids, want %d", len(b.MapIDs), len(maps))
	}
	for _, m := range maps {
		id, _ := MapID(m)
		if !slices.Contains(b.MapIDs, id) {
			t.Errorf("map %d not among %v", id, b.MapIDs)
		}
	}
}

// mustProgramUsing loads a socket filter that refers to every map of maps.
func mustProgramUsing(tb testing.TB, maps []*ebpf.Map) *ebpf.Program {
	tb.Helper()
	var insns asm.Instructions
	for _, m := range maps {
		insns = append(insns, asm.LoadMapPtr(asm.R1, m.FD()))
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, License: "GPL", Instructions: insns})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// WallTime of the time since boot now is now, to the second; the boot time
// under it is right to within a few milliseconds (an emulated VM may stop
// the thread between the clock reads of all five tries), where /proc/stat's
// whole-second btime put it up to a second early.
func TestWallTime(t *testing.T) {
	// The wall clock read just before and just after the time since boot
	// brackets it, however long the reads took (an emulated VM may stop
	// the thread between them).
	before := time.Now()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	boot, ok := bootTime()
	if !ok {
		t.Fatal("no boot time")
	}
	now := boot.Add(time.Duration(ts.Nano()))
	if now.Before(before.Add(-5*time.Millisecond)) || now.After(after.Add(5*time.Millisecond)) {
		t.Fatalf("the boot time plus the time since boot is %v, read between %v and %v", now.UTC(), before.UTC(), after.UTC())
	}
	if got, want := WallTime(time.Duration(ts.Nano())), now.UTC().Truncate(time.Second); !got.Equal(want) {
		t.Errorf("WallTime of the time since boot is %v, want %v", got, want)
	}
}

package pinstore

import (
	"encoding/hex"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/bpffs"
)

// Brief facts about programs and maps, in one BPF_OBJ_GET_INFO_BY_FD each.
// cilium/ebpf's Program.Info and Map.Info also read /proc/self/fdinfo (an
// open, a read and a close) and, for a program, ask the kernel a second time
// for its map ids: about ten system calls, where reconciling an object on
// every start asks only for ids, tags and map ids, several times for each of
// hundreds of programs. Everything else still goes through cilium/ebpf.

// ProgramBrief is a program's id, tag and the ids of the maps it uses.
type ProgramBrief struct {
	ID     ebpf.ProgramID
	Tag    string
	MapIDs []ebpf.MapID
}

// BriefProgram returns p's id, tag and map ids.
func BriefProgram(p *ebpf.Program) (ProgramBrief, error) {
	f, err := bpffs.ProgInfo(p.FD(), true)
	if err != nil {
		return ProgramBrief{}, err
	}
	b := ProgramBrief{ID: ebpf.ProgramID(f.ID), Tag: hex.EncodeToString(f.Tag[:])}
	for _, id := range f.MapIDs {
		b.MapIDs = append(b.MapIDs, ebpf.MapID(id))
	}
	return b, nil
}

// ProgramID returns p's id.
func ProgramID(p *ebpf.Program) (ebpf.ProgramID, error) {
	f, err := bpffs.ProgInfo(p.FD(), false)
	return ebpf.ProgramID(f.ID), err
}

// MapID returns m's id.
func MapID(m *ebpf.Map) (ebpf.MapID, error) {
	f, err := bpffs.MapInfo(m.FD())
	return ebpf.MapID(f.ID), err
}

// WallTime turns a time since boot (CLOCK_BOOTTIME, as the kernel says when
// it loaded a program) into wall-clock time, to the second, as bpftool
// prints it. The boot time behind it is an estimate that two processes make
// a few microseconds apart (bootTime); cut to the millisecond, as it was,
// two statuses of one program could say times a millisecond apart, about
// once in a few hundred boots, where the offset lies near a millisecond's
// edge. To the second, that is a thousand times rarer.
func WallTime(sinceBoot time.Duration) time.Time {
	boot, ok := bootTime()
	if !ok {
		return time.Time{}
	}
	return boot.Add(sinceBoot).UTC().Truncate(time.Second)
}

// bootTime is when the machine booted, read once: the wall clock less the
// time since boot. /proc/stat's btime has whole seconds only, which put
// times up to a second early. The wall clock is read between two reads of
// the time since boot, and the narrowest of five tries is taken: a thread
// preempted between two reads (an emulated VM does that for milliseconds)
// would put the boot that much early.
var bootTime = sync.OnceValues(func() (time.Time, bool) {
	best, bestWindow := time.Duration(0), time.Duration(-1)
	for range 5 {
		var b1, real, b2 unix.Timespec
		if unix.ClockGettime(unix.CLOCK_BOOTTIME, &b1) != nil || unix.ClockGettime(unix.CLOCK_REALTIME, &real) != nil ||
			unix.ClockGettime(unix.CLOCK_BOOTTIME, &b2) != nil {
			return time.Time{}, false
		}
		window := time.Duration(b2.Nano() - b1.Nano())
		if bestWindow < 0 || window < bestWindow {
			best, bestWindow = time.Duration(real.Nano()-(b1.Nano()+b2.Nano())/2), window
		}
	}
	return time.Unix(0, int64(best)), true
})

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
// it loaded a program) into wall-clock time, to the millisecond.
func WallTime(sinceBoot time.Duration) time.Time {
	boot, ok := bootTime()
	if !ok {
		return time.Time{}
	}
	return boot.Add(sinceBoot).UTC().Truncate(time.Millisecond)
}

// bootTime is when the machine booted, read once: the wall clock less the
// time since boot, rounded to the millisecond so that every status of the
// same program says the same time. /proc/stat's btime has whole seconds
// only, which put times up to a second early.
var bootTime = sync.OnceValues(func() (time.Time, bool) {
	var real, boot unix.Timespec
	if unix.ClockGettime(unix.CLOCK_REALTIME, &real) != nil || unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot) != nil {
		return time.Time{}, false
	}
	since := time.Duration(real.Nano() - boot.Nano())
	return time.Unix(0, 0).Add(since.Round(time.Millisecond)), true
})

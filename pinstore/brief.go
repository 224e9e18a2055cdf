package pinstore

import (
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"

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
// it loaded a program) into wall-clock time, from the boot time in
// /proc/stat: every status of the same program says the same time.
func WallTime(sinceBoot time.Duration) time.Time {
	boot, ok := bootTime()
	if !ok {
		return time.Time{}
	}
	return boot.Add(sinceBoot).UTC().Truncate(time.Millisecond)
}

// bootTime is when the machine booted, from /proc/stat, read once.
var bootTime = sync.OnceValues(func() (time.Time, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			return time.Unix(secs, 0), true
		}
	}
	return time.Time{}, false
})

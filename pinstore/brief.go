package pinstore

import (
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

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

// progInfoHead is the start of struct bpf_prog_info, up to map_ids; the
// kernel fills in as much of the struct as the caller says it has.
type progInfoHead struct {
	typ             uint32
	id              uint32
	tag             [8]byte
	jitedProgLen    uint32
	xlatedProgLen   uint32
	jitedProgInsns  uint64
	xlatedProgInsns uint64
	loadTime        uint64
	createdByUID    uint32
	nrMapIDs        uint32
	mapIDs          unsafe.Pointer // __aligned_u64: a pointer on 64-bit machines
}

// mapInfoHead is the start of struct bpf_map_info.
type mapInfoHead struct {
	typ uint32
	id  uint32
}

// pointers64 says whether a pointer fills the kernel's __aligned_u64, as the
// structs above assume; elsewhere cilium/ebpf answers.
const pointers64 = unsafe.Sizeof(uintptr(0)) == 8

// BriefProgram returns p's id, tag and map ids.
func BriefProgram(p *ebpf.Program) (ProgramBrief, error) {
	if !pointers64 {
		info, err := p.Info()
		if err != nil {
			return ProgramBrief{}, err
		}
		id, _ := info.ID()
		ids, _ := info.MapIDs()
		return ProgramBrief{ID: id, Tag: info.Tag, MapIDs: ids}, nil
	}
	ids := make([]uint32, 16)
	for {
		info := &progInfoHead{nrMapIDs: uint32(len(ids)), mapIDs: unsafe.Pointer(&ids[0])}
		if err := bpffs.ObjInfo(p.FD(), unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
			return ProgramBrief{}, fmt.Errorf("program info: %w", err)
		}
		runtime.KeepAlive(ids)
		if int(info.nrMapIDs) > len(ids) {
			ids = make([]uint32, info.nrMapIDs)
			continue
		}
		b := ProgramBrief{ID: ebpf.ProgramID(info.id), Tag: hex.EncodeToString(info.tag[:])}
		for _, id := range ids[:info.nrMapIDs] {
			b.MapIDs = append(b.MapIDs, ebpf.MapID(id))
		}
		return b, nil
	}
}

// ProgramID returns p's id.
func ProgramID(p *ebpf.Program) (ebpf.ProgramID, error) {
	if !pointers64 {
		b, err := BriefProgram(p)
		return b.ID, err
	}
	info := &progInfoHead{}
	if err := bpffs.ObjInfo(p.FD(), unsafe.Pointer(info), unsafe.Offsetof(info.jitedProgLen)); err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	return ebpf.ProgramID(info.id), nil
}

// MapID returns m's id.
func MapID(m *ebpf.Map) (ebpf.MapID, error) {
	info := &mapInfoHead{}
	if err := bpffs.ObjInfo(m.FD(), unsafe.Pointer(info), unsafe.Sizeof(*info)); err != nil {
		return 0, fmt.Errorf("map info: %w", err)
	}
	return ebpf.MapID(info.id), nil
}

// WallTime turns a time since boot (CLOCK_BOOTTIME, as the kernel says when
// it loaded a program) into wall-clock time, from the boot time in
// /proc/stat: every status of the same program says the same time.
func WallTime(sinceBoot time.Duration) time.Time {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}
			}
			return time.Unix(secs, 0).Add(sinceBoot).UTC().Truncate(time.Millisecond)
		}
	}
	return time.Time{}
}

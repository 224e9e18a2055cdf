package bpffs

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PinInfo is what a pin holds.
type PinInfo struct {
	// Kind is Map, Program, Link, or the name of the anonymous
	// inode of anything else.
	Kind string
	// ID is the map's, program's or link's id.
	ID uint32
	// Program is a link's program id.
	Program uint32
}

// ReadPin says what is pinned at path, in one BPF_OBJ_GET and one
// BPF_OBJ_GET_INFO_BY_FD. A missing pin is an error wrapping os.ErrNotExist.
func ReadPin(path string) (PinInfo, error) {
	fd, kind, err := OpenPin(path)
	if err != nil {
		return PinInfo{}, err
	}
	defer unix.Close(fd)
	return FDInfo(fd, kind), nil
}

// FDInfo says what the fd of kind (as FDKind says) is, in one
// BPF_OBJ_GET_INFO_BY_FD; the ids are 0 where the kernel would not say.
func FDInfo(fd int, kind string) PinInfo {
	pi := PinInfo{Kind: kind}
	switch kind {
	case Map:
		info := &mapInfoHead{}
		if err := ObjInfo(fd, unsafe.Pointer(info), unsafe.Offsetof(info.keySize)); err == nil {
			pi.ID = info.id
		}
	case Program:
		info := &progInfoHead{}
		if err := ObjInfo(fd, unsafe.Pointer(info), unsafe.Offsetof(info.jitedProgLen)); err == nil {
			pi.ID = info.id
		}
	case Link:
		info := &linkInfoHead{}
		if err := ObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err == nil {
			pi.ID, pi.Program = info.id, info.progID
		}
	}
	return pi
}

// The heads of struct bpf_map_info, bpf_prog_info and bpf_link_info: the
// kernel fills in as much of each as the caller says it has.
type (
	mapInfoHead struct {
		typ, id, keySize, valueSize, maxEntries, flags uint32
	}
	progInfoHead struct {
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
		mapIDs          uint64 // __aligned_u64: a pointer
	}
	linkInfoHead struct{ typ, id, progID uint32 }
	// progInfoStats is struct bpf_prog_info up to verified_insns (Linux
	// 5.16; an older kernel takes the longer struct, its tail zero). The
	// counts and pointers of the arrays between stay 0: nothing is copied.
	progInfoStats struct {
		progInfoHead
		name                                    [16]byte
		ifindex, gplCompatible                  uint32
		netnsDev, netnsIno                      uint64
		nrJitedKsyms, nrJitedFuncLens           uint32
		jitedKsyms, jitedFuncLens               uint64
		btfID, funcInfoRecSize                  uint32
		funcInfo                                uint64
		nrFuncInfo, nrLineInfo                  uint32
		lineInfo, jitedLineInfo                 uint64
		nrJitedLineInfo, lineInfoRecSize        uint32
		jitedLineInfoRecSize, nrProgTags        uint32
		progTags                                uint64
		runTimeNs, runCnt, recursionMisses      uint64
		verifiedInsns, attachBTFObjID, attachID uint32
	}
)

// MapFacts are what the kernel says of a map in one BPF_OBJ_GET_INFO_BY_FD.
type MapFacts struct {
	Type, ID, KeySize, ValueSize, MaxEntries, Flags uint32
}

// MapInfo asks the kernel about the map fd.
func MapInfo(fd int) (MapFacts, error) {
	var h mapInfoHead
	if err := ObjInfo(fd, unsafe.Pointer(&h), unsafe.Sizeof(h)); err != nil {
		return MapFacts{}, fmt.Errorf("map info: %w", err)
	}
	return MapFacts{h.typ, h.id, h.keySize, h.valueSize, h.maxEntries, h.flags}, nil
}

// ProgFacts are what the kernel says of a program in one
// BPF_OBJ_GET_INFO_BY_FD (two when it uses more maps than first asked for).
type ProgFacts struct {
	Type, ID uint32
	Tag      [8]byte
	// LoadTime is when it was loaded, in nanoseconds since boot.
	LoadTime uint64
	// MapIDs are the maps it uses, when asked for.
	MapIDs []uint32
	// RunTimeNs and RunCount are the time it ran and the times it ran,
	// counted while the kernel's run-time statistics are on;
	// RecursionMisses the times it did not run because another program
	// ran on the CPU.
	RunTimeNs, RunCount, RecursionMisses uint64
	// XlatedLen is the size of its instructions after the verifier, in
	// bytes; JitedLen that of its machine code.
	XlatedLen, JitedLen uint32
}

// ProgInfo asks the kernel about the program fd, and for the ids of the
// maps it uses when withMaps.
func ProgInfo(fd int, withMaps bool) (ProgFacts, error) {
	var ids []uint32
	if withMaps {
		ids = make([]uint32, 16)
	}
	for {
		var info progInfoStats
		h := &info.progInfoHead
		h.nrMapIDs = uint32(len(ids))
		if len(ids) > 0 {
			h.mapIDs = uint64(uintptr(unsafe.Pointer(&ids[0])))
		}
		err := ObjInfo(fd, unsafe.Pointer(&info), unsafe.Sizeof(info))
		runtime.KeepAlive(ids)
		if err != nil {
			return ProgFacts{}, fmt.Errorf("program info: %w", err)
		}
		if withMaps && int(h.nrMapIDs) > len(ids) {
			ids = make([]uint32, h.nrMapIDs)
			continue
		}
		f := ProgFacts{Type: h.typ, ID: h.id, Tag: h.tag, LoadTime: h.loadTime,
			RunTimeNs: info.runTimeNs, RunCount: info.runCnt, RecursionMisses: info.recursionMisses,
			XlatedLen: h.xlatedProgLen, JitedLen: h.jitedProgLen}
		if withMaps {
			f.MapIDs = ids[:h.nrMapIDs]
		}
		return f, nil
	}
}

// ObjInfo is BPF_OBJ_GET_INFO_BY_FD for the first size bytes of info.
func ObjInfo(fd int, info unsafe.Pointer, size uintptr) error {
	attr := struct {
		fd, infoLen uint32
		info        uint64
	}{fd: uint32(fd), infoLen: uint32(size), info: uint64(uintptr(info))}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(info)
	if errno != 0 {
		return errno
	}
	return nil
}

// MapMemlock is the memory the kernel charges for the map fd, from
// /proc/self/fdinfo; false where it does not say.
func MapMemlock(fd int) (uint64, bool) {
	var buf [1024]byte // a map's fdinfo is a few hundred bytes
	data, err := readFDInfo(fd, buf[:])
	if err != nil {
		return 0, false
	}
	// "memlock:\tN\n", found without splitting (status reads this for
	// every map).
	_, rest, ok := bytes.Cut(data, []byte("\nmemlock:"))
	if !ok {
		return 0, false
	}
	if i := bytes.IndexByte(rest, '\n'); i >= 0 {
		rest = rest[:i]
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
	return n, err == nil
}

package bpffs

import (
	"runtime"
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
		if err := ObjInfo(fd, unsafe.Pointer(info), unsafe.Sizeof(*info)); err == nil {
			pi.ID = info.id
		}
	case Program:
		info := &progInfoHead{}
		if err := ObjInfo(fd, unsafe.Pointer(info), unsafe.Offsetof(info.rest)); err == nil {
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
	mapInfoHead  struct{ typ, id uint32 }
	progInfoHead struct {
		typ  uint32
		id   uint32
		tag  [8]byte
		rest uint32 // jited_prog_len: where the head ends
	}
	linkInfoHead struct{ typ, id, progID uint32 }
)

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

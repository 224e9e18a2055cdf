package bpffs

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// What a pin holds, as OpenPin says it.
const (
	Map     = "map"
	Program = "program"
	Link    = "link"
)

// OpenPin opens the BPF object pinned at path (BPF_OBJ_GET, read-write: the
// kernel refuses links opened otherwise) and says what it is: Map,
// Program, Link, or the name of its anonymous inode for anything else.
// The caller owns fd, which is close-on-exec. A missing pin is an error
// wrapping os.ErrNotExist.
func OpenPin(path string) (fd int, kind string, err error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return -1, "", err
	}
	// union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
	attr := struct {
		pathname  uint64
		bpfFD     uint32
		fileFlags uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(p)))}
	r, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if errno != 0 {
		if errno == unix.ENOENT {
			return -1, "", fmt.Errorf("open pin %s: %w", path, os.ErrNotExist)
		}
		return -1, "", fmt.Errorf("open pin %s: %w", path, errno)
	}
	fd = int(r)
	if kind, err = FDKind(fd); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("open pin %s: %w", path, err)
	}
	return fd, kind, nil
}

// FDKind says what kind of BPF object fd is: Map, Program, Link, or the
// name of its anonymous inode for anything else. The name of the fd's
// anonymous inode is the only thing that tells them apart.
func FDKind(fd int) (string, error) {
	target, err := fdTarget(fd)
	if err != nil {
		return "", err
	}
	switch kind := strings.TrimPrefix(target, "anon_inode:"); kind {
	case "bpf-map":
		return Map, nil
	case "bpf-prog":
		return Program, nil
	case "bpf_link", "bpf-link": // the name changed over kernel versions
		return Link, nil
	default:
		return kind, nil
	}
}

// PinKind says what is pinned at path (see OpenPin), or "" when nothing is.
func PinKind(path string) (string, error) {
	fd, kind, err := OpenPin(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	unix.Close(fd)
	return kind, nil
}

// OpenByID opens the map, program or link (kind: Map, Program, Link) with
// the given id anew (BPF_*_GET_FD_BY_ID, read-write): a file description of
// its own, which systemd's fd store, for one, does not take for a
// duplicate of another fd of the object. The caller owns fd, which is
// close-on-exec.
func OpenByID(kind string, id uint32) (fd int, err error) {
	var cmd uintptr
	switch kind {
	case Map:
		cmd = unix.BPF_MAP_GET_FD_BY_ID
	case Program:
		cmd = unix.BPF_PROG_GET_FD_BY_ID
	case Link:
		cmd = unix.BPF_LINK_GET_FD_BY_ID
	default:
		return -1, fmt.Errorf("open BPF object id %d: kind %q is not a map, program or link", id, kind)
	}
	// union bpf_attr for BPF_*_GET_FD_BY_ID: the id, next_id, open_flags.
	attr := struct {
		id        uint32
		nextID    uint32
		openFlags uint32
	}{id: id}
	r, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return -1, fmt.Errorf("open %s id %d: %w", kind, id, errno)
	}
	return int(r), nil
}

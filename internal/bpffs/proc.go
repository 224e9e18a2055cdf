package bpffs

import (
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The process's /proc/self/fd and /proc/self/fdinfo, opened once: a
// readlink or an open relative to them resolves one name, where the full
// path walks /proc, self and the directory again each time (status reads
// three of them for each of a thousand pins). The fds are the process's
// for its life, close-on-exec.
var (
	procFD     = sync.OnceValue(func() int { return openProcDir("/proc/self/fd") })
	procFDInfo = sync.OnceValue(func() int { return openProcDir("/proc/self/fdinfo") })
)

// OpenProcDirs opens those directories now rather than at their first use:
// for a check of leaked fds, which takes them for the process's own only
// when they are open before it looks.
func OpenProcDirs() {
	procFD()
	procFDInfo()
}

func openProcDir(path string) int {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// fdTarget is what /proc/self/fd/FD links to.
func fdTarget(fd int) (string, error) {
	name := strconv.Itoa(fd)
	buf := make([]byte, 128)
	for {
		var n int
		var err error
		if dir := procFD(); dir >= 0 {
			n, err = unix.Readlinkat(dir, name, buf)
		} else {
			n, err = unix.Readlink("/proc/self/fd/"+name, buf)
		}
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// readFDInfo reads /proc/self/fdinfo/FD into buf and returns what it read.
func readFDInfo(fd int, buf []byte) ([]byte, error) {
	name := strconv.Itoa(fd)
	var f int
	var err error
	if dir := procFDInfo(); dir >= 0 {
		f, err = unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	} else {
		f, err = unix.Open("/proc/self/fdinfo/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(f)
	// An fdinfo file is one record of the kernel's seq_file: a read with
	// room for it returns all of it, and one that returns less than it had
	// room for is the whole file, without the read of its end (status
	// reads this for every map).
	n := 0
	for n < len(buf) {
		m, err := unix.Read(f, buf[n:])
		if err != nil {
			return nil, err
		}
		n += m
		if m == 0 || n < len(buf) {
			break
		}
	}
	return buf[:n], nil
}

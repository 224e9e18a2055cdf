// Package fastio reads small files as os.ReadFile does, in fewer system
// calls: an os.File of a regular file is offered to the netpoller, which
// refuses it, and set blocking again, six calls more than the open, fstat,
// read and close the read needs. Status and adopt read a manifest or two
// per object, hundreds of them.
package fastio

import (
	"io/fs"
	"strings"

	"golang.org/x/sys/unix"
)

// Open opens path with flags and perm as os.OpenFile does, close-on-exec,
// again when a signal interrupts it, with its errors, and returns the fd:
// without the os.File, which offers the fd to the netpoller (refused for a
// regular file or a directory) and sets it blocking again, four system
// calls more.
func Open(path string, flags int, perm uint32) (int, error) {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, perm)
	for err == unix.EINTR {
		fd, err = unix.Open(path, flags|unix.O_CLOEXEC, perm)
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// StatusField is the value of field ("PPid", "FDSize") in
// /proc/PROC/status, PROC a pid or "self", without the blanks around it;
// false when the file or the field is not there.
func StatusField(proc, field string) (string, bool) {
	data, err := ReadFile("/proc/" + proc + "/status")
	if err != nil {
		return "", false
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// ReadFile reads the whole file at path, as os.ReadFile, with its errors.
func ReadFile(path string) ([]byte, error) {
	return ReadFileInto(path, nil)
}

// ReadFileInto is ReadFile into buf's memory, which it grows as the file
// needs: the result is buf[:n], or a larger slice that replaces it. A caller
// that reads many files one after the other (the object files and manifests
// of a start of a hundred objects) passes the last result back, and touches
// no fresh memory for each: on a virtual machine every first touch of a page
// is a fault that costs tens of microseconds.
func ReadFileInto(path string, buf []byte) ([]byte, error) {
	fd, err := Open(path, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	size, regular := 512, false
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		regular = true
		if st.Size > 0 && st.Size < 1<<30 {
			size = int(st.Size) + 1
		}
	}
	data := buf[:0]
	if cap(data) < size {
		data = make([]byte, 0, size)
	}
	for {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		want := cap(data) - len(data)
		n, err := unix.Read(fd, data[len(data):cap(data)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		data = data[:len(data)+n]
		// A read of a regular file that returns less than it was asked
		// for has reached the end: asked for one more than the size,
		// the first read says so without a read of the end.
		if n == 0 || regular && n < want {
			return data, nil
		}
	}
}

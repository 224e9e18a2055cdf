package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NotifyListener is a test's stand-in for systemd's notify socket: it
// records every line of every datagram, in order, and keeps a file
// descriptor store as systemd does (FDSTORE=1 with FDNAME=, FDSTOREREMOVE=1).
// Path is for NOTIFY_SOCKET.
type NotifyListener struct {
	Path  string
	conn  *net.UnixConn
	mu    sync.Mutex
	msgs  []string
	store []StoredFD
	done  chan struct{}
}

// StoredFD is an fd in the NotifyListener's store, with its name.
type StoredFD struct {
	Name string
	File *os.File
}

// ListenNotify listens on a notify socket in a directory of its own (short:
// a unix socket's path has room for 107 bytes), removed at the test's end.
func ListenNotify(tb testing.TB) *NotifyListener {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bpfsup-notify-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		tb.Fatalf("listen on %s: %v", path, err)
	}
	n := &NotifyListener{Path: path, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(16*4))
		for {
			k, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			n.received(strings.Split(strings.TrimSpace(string(buf[:k])), "\n"), receivedFDs(oob[:oobn]))
		}
	}()
	tb.Cleanup(func() {
		conn.Close()
		<-n.done
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, s := range n.store {
			s.File.Close()
		}
		n.store = nil
	})
	return n
}

func receivedFDs(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "stored"))
		}
	}
	return files
}

// received records a datagram's lines and acts on the fd store's
// assignments, as systemd does; fds that nothing keeps are closed.
func (n *NotifyListener) received(lines []string, files []*os.File) {
	vars := map[string]string{}
	for _, l := range lines {
		if k, v, ok := strings.Cut(l, "="); ok {
			vars[k] = v
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = append(n.msgs, lines...)
	name := vars["FDNAME"]
	if name == "" {
		name = "stored"
	}
	switch {
	case vars["FDSTORE"] == "1":
		for _, f := range files {
			if n.holds(f) {
				// systemd's service_add_fd_store: "Suppressing
				// duplicate fd" of a file description it holds.
				f.Close()
				continue
			}
			n.store = append(n.store, StoredFD{Name: name, File: f})
		}
		return
	case vars["FDSTOREREMOVE"] == "1":
		n.store = slices.DeleteFunc(n.store, func(s StoredFD) bool {
			if s.Name == name {
				s.File.Close()
				return true
			}
			return false
		})
	}
	for _, f := range files {
		f.Close()
	}
}

// kcmpFile is KCMP_FILE of kcmp(2): do two fds share a file description?
const kcmpFile = 0

// holds says whether the store holds f's file description already, as
// systemd's same_fd() tells with kcmp(2).
func (n *NotifyListener) holds(f *os.File) bool {
	pid := uintptr(os.Getpid())
	for _, s := range n.store {
		r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, kcmpFile, s.File.Fd(), f.Fd(), 0)
		if errno == 0 && r == 0 {
			return true
		}
	}
	return false
}

// Stored is what the store holds, in the order it was stored, as systemd
// hands it back: duplicates of the fds, which the caller closes.
func (n *NotifyListener) Stored(tb testing.TB) []StoredFD {
	tb.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]StoredFD, len(n.store))
	for i, s := range n.store {
		fd, err := unix.FcntlInt(s.File.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			tb.Fatalf("dup stored fd %s: %v", s.Name, err)
		}
		out[i] = StoredFD{Name: s.Name, File: os.NewFile(uintptr(fd), s.Name)}
	}
	return out
}

// StoreNames are the names of what the store holds, in order.
func (n *NotifyListener) StoreNames() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	names := make([]string, len(n.store))
	for i, s := range n.store {
		names[i] = s.Name
	}
	return names
}

// HandBack makes cmd start as systemd starts a service with fds: files from
// fd 3 on, LISTEN_FDS and LISTEN_FDNAMES naming them, and LISTEN_PID the
// process's own pid (cmd runs through sh, which sets it and execs).
func HandBack(cmd *exec.Cmd, files []StoredFD) {
	names := make([]string, len(files))
	cmd.ExtraFiles = make([]*os.File, len(files))
	for i, f := range files {
		names[i], cmd.ExtraFiles[i] = f.Name, f.File
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	cmd.Args = append([]string{"sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = "/bin/sh"
}

// Lines are the lines received so far.
func (n *NotifyListener) Lines() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// Index is the position of the first line starting with prefix, or -1.
func (n *NotifyListener) Index(prefix string) int {
	return slices.IndexFunc(n.Lines(), func(l string) bool { return strings.HasPrefix(l, prefix) })
}

// Count is the number of lines starting with prefix.
func (n *NotifyListener) Count(prefix string) int {
	c := 0
	for _, l := range n.Lines() {
		if strings.HasPrefix(l, prefix) {
			c++
		}
	}
	return c
}

// WaitFor waits for a line starting with prefix.
func (n *NotifyListener) WaitFor(tb testing.TB, prefix string) {
	tb.Helper()
	WaitFor(tb, 10*time.Second, fmt.Sprintf("%q on the notify socket (have %q)", prefix, n.Lines()),
		func() bool { return n.Index(prefix) >= 0 })
}

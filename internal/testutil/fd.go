package testutil

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/bpffs"
)

// OpenFD is one open file descriptor of this process.
type OpenFD struct {
	FD int
	// Target is what /proc/self/fd/FD links to: a path, "socket:[inode]",
	// "anon_inode:bpf-map", "pipe:[inode]" ...
	Target string
}

func (f OpenFD) String() string { return fmt.Sprintf("fd %d -> %s", f.FD, f.Target) }

// FDSnapshot maps the open file descriptors of the process to their targets.
type FDSnapshot map[int]string

// SnapshotFDs lists the open file descriptors of the process from
// /proc/self/fd, leaving out the one it uses to read that directory. An fd
// closed while the list is read is left out too.
func SnapshotFDs() (FDSnapshot, error) {
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("snapshot fds: %w", err)
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("snapshot fds: %w", err)
	}
	own := int(dir.Fd())

	snap := make(FDSnapshot, len(names))
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == own {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // Closed meanwhile.
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot fds: %w", err)
		}
		snap[fd] = target
	}
	return snap, nil
}

// FDCount is the number of open file descriptors of the process.
func FDCount() (int, error) {
	snap, err := SnapshotFDs()
	return len(snap), err
}

// Leaked returns the fds open in after that were not open in before, in fd
// order. An fd number that is open in both but with another target counts as
// leaked: the old one was closed, and what reused its number is still open.
func (before FDSnapshot) Leaked(after FDSnapshot) []OpenFD {
	var leaked []OpenFD
	for fd, target := range after {
		if old, ok := before[fd]; !ok || old != target {
			leaked = append(leaked, OpenFD{FD: fd, Target: target})
		}
	}
	slices.SortFunc(leaked, func(a, b OpenFD) int { return a.FD - b.FD })
	return leaked
}

// fdLeakGrace is how long CheckNoFDLeaks lets goroutines that are still
// shutting down close their fds.
const fdLeakGrace = 2 * time.Second

// CheckNoFDLeaks runs the tests and checks that every file descriptor they
// opened has been closed once they and their cleanups are done, waiting up
// to two seconds for goroutines still closing theirs. It prints the leaked
// fds with their targets to stderr and returns the exit code for os.Exit:
// the tests' own when they failed, 1 when they passed but leaked.
//
//	func TestMain(m *testing.M) { os.Exit(testutil.CheckNoFDLeaks(m)) }
//
// Nothing is ignored by kind. The Go runtime opens some fds lazily and keeps
// them for good: the netpoller's epoll instance and its eventfd, created with
// the first timer or pollable file, and (since Go 1.25) the cgroup CPU limit
// files it re-reads to adjust GOMAXPROCS. They are open before TestMain runs,
// and CheckNoFDLeaks makes sure of the netpoller by opening and closing a
// pipe before its first snapshot, so they are in both snapshots: an epoll or
// eventfd that a test leaks (a ringbuf or perf reader never closed) is still
// reported. A pidfd is not the runtime's either: Go's probe for pidfd support
// closes its own, so a pidfd that is left belongs to an os.Process that was
// neither waited for nor released (os.FindProcess opens one too), a child
// process nobody reaped. Files that the GC would close through finalizers
// are not collected first: relying on them is the bug.
func CheckNoFDLeaks(m *testing.M) int {
	return checkNoFDLeaks(m.Run, os.Stderr, fdLeakGrace)
}

func checkNoFDLeaks(run func() int, w io.Writer, grace time.Duration) int {
	if err := startNetpoller(); err != nil {
		fmt.Fprintf(w, "fd leak check disabled: %v\n", err)
		return run()
	}
	// The process keeps these for its life, as the netpoller's.
	bpffs.OpenProcDirs()
	before, err := SnapshotFDs()
	if err != nil {
		fmt.Fprintf(w, "fd leak check disabled: %v\n", err)
		return run()
	}

	code := run()

	var leaked []OpenFD
	var snapErr error
	Poll(grace, func() bool {
		var after FDSnapshot
		after, snapErr = SnapshotFDs()
		leaked = before.Leaked(after)
		return snapErr != nil || len(leaked) == 0
	})
	switch {
	case snapErr != nil:
		fmt.Fprintf(w, "fd leak check: %v\n", snapErr)
		return max(code, 1)
	case len(leaked) == 0:
		return code
	}
	fmt.Fprintf(w, "fd leak: %d file descriptor(s) opened by the tests still open:\n", len(leaked))
	for _, fd := range leaked {
		fmt.Fprintf(w, "\t%v\n", fd)
	}
	return max(code, 1)
}

// startNetpoller makes sure the runtime has created its epoll fd and
// eventfd, which it does on the first use of a timer or pollable file.
func startNetpoller() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start netpoller: %w", err)
	}
	r.Close()
	w.Close()
	return nil
}

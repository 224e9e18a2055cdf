package supervision

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// counterObj is the object most tests install: one map, two programs.
var counterObj = testutil.BPFObject("counter")

// startRun starts `bpfsup run` in env with args and the environment
// os.Environ()+extra (nil: bpfsup's own).
func startRun(tb testing.TB, e *testutil.Env, env []string, args ...string) *testutil.Proc {
	tb.Helper()
	cmd := exec.Command(e.Bin, e.Args("run", args...)...)
	cmd.Env = env
	return testutil.StartProc(tb, cmd)
}

// self is the test binary, which bpfsup starts as its child.
func self(tb testing.TB) string {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("find test binary: %v", err)
	}
	return exe
}

// childPidRe matches the line in which a child behaviour announces its pid.
var childPidRe = regexp.MustCompile(`child pid=(\d+)`)

// waitChildPid waits until a child announces its pid and returns the last
// one announced.
func waitChildPid(tb testing.TB, p *testutil.Proc) int {
	tb.Helper()
	pids := e2e.WaitPIDs(tb, p, childPidRe, 1, 10*time.Second)
	return pids[len(pids)-1]
}

// countLines counts the lines of path that start with prefix (0 when the
// file does not exist).
func countLines(tb testing.TB, path, prefix string) int {
	tb.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		tb.Fatalf("read %s: %v", path, err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if line != "" && strings.HasPrefix(line, prefix) {
			n++
		}
	}
	return n
}

// shortDir is a directory for unix sockets and marker files: short enough
// for sun_path, removed at the end of the test.
func shortDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bpfsup-sup-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// fdCount counts the open fds of process pid.
func fdCount(tb testing.TB, pid int) int {
	tb.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatalf("list fds of %d: %v", pid, err)
	}
	return len(entries)
}

// procGoneEntirely reports whether pid has no /proc entry: not even a
// zombie waiting for its parent.
func procGoneEntirely(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return os.IsNotExist(err)
}

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

var childPidRe = regexp.MustCompile(`child pid=(\d+)`)

// childPids lists the pids the child behaviours announced, in order.
func childPids(out string) []int {
	var pids []int
	for _, m := range childPidRe.FindAllStringSubmatch(out, -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	return pids
}

// waitChildPid waits until the child announces its pid and returns it.
func waitChildPid(tb testing.TB, p *testutil.Proc) int {
	tb.Helper()
	p.WaitOutput(tb, "child pid=", 10*time.Second)
	var pid int
	testutil.WaitFor(tb, 5*time.Second, "the child's pid line", func() bool {
		pids := childPids(p.Output())
		if len(pids) == 0 {
			return false
		}
		pid = pids[len(pids)-1]
		return true
	})
	return pid
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

// procStatusField reads a field of /proc/PID/status ("VmRSS", "Threads").
func procStatusField(tb testing.TB, pid int, field string) string {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatalf("read status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
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

// procParent is the parent pid of pid, or 0.
func procParent(tb testing.TB, pid int) int {
	tb.Helper()
	ppid, _ := strconv.Atoi(procStatusField(tb, pid, "PPid"))
	return ppid
}

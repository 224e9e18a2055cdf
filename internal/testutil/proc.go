package testutil

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ProcState reads the state letter of process pid from /proc/PID/status
// ('R', 'S', 'D', 'T', 'Z', ...) and reports whether the process still
// exists.
//
// A zombie ('Z') or dead ('X') process counts as gone: it runs no code any
// more, although kill(pid, 0) still succeeds on it until its parent reaps it.
// A process that has been reaped has no /proc entry: state is 0 then.
// If /proc/PID/status exists but cannot be read or parsed, the process is
// assumed to exist, with state '?', so that a wait for it to end does not
// succeed by mistake.
func ProcState(pid int) (state byte, exists bool) {
	if pid <= 0 {
		return 0, false
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return 0, false
	}
	if err != nil {
		return '?', true
	}
	state, ok := parseProcState(status)
	if !ok {
		return '?', true
	}
	return state, state != 'Z' && state != 'X'
}

// parseProcState finds the line "State:\tS (sleeping)" and returns its letter.
func parseProcState(status []byte) (byte, bool) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, found := bytes.CutPrefix(sc.Bytes(), []byte("State:"))
		if !found {
			continue
		}
		rest = bytes.TrimLeft(rest, " \t")
		if len(rest) == 0 {
			return 0, false
		}
		return rest[0], true
	}
	return 0, false
}

// WaitProcGone waits until process pid no longer exists or is a zombie (see
// ProcState), and fails the test if it still runs after timeout.
func WaitProcGone(tb testing.TB, pid int, timeout time.Duration) {
	tb.Helper()
	var last byte
	gone := Poll(timeout, func() bool {
		state, exists := ProcState(pid)
		last = state
		return !exists
	})
	if !gone {
		tb.Fatalf("timed out after %v waiting for process %d to end (state %c)", timeout, pid, last)
	}
}

// ProcStatusField is the value of field ("PPid", "Threads", "VmRSS") in
// /proc/PID/status, without the blanks around it. It fails the test when the
// process or the field is not there.
func ProcStatusField(tb testing.TB, pid int, field string) string {
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

// ParentPID is the pid of the parent of process pid (0 for none), as
// /proc/PID/status says now.
func ParentPID(tb testing.TB, pid int) int {
	tb.Helper()
	ppid, _ := strconv.Atoi(ProcStatusField(tb, pid, "PPid"))
	return ppid
}

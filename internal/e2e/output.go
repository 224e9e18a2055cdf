package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// MustRun runs a bpfsup subcommand to completion in e's pin root and state
// directory, as e.Run does, and returns its combined output. It fails the
// test when the subcommand exits non-zero.
func MustRun(tb testing.TB, e *testutil.Env, sub string, args ...string) string {
	tb.Helper()
	out, code := e.Run(tb, sub, args...)
	if code != 0 {
		tb.Fatalf("bpfsup %s: exit %d\n%s", strings.Join(append([]string{sub}, args...), " "), code, out)
	}
	return out
}

// WantAll fails the test, and goes on, for each of words that out lacks.
func WantAll(tb testing.TB, out string, words ...string) {
	tb.Helper()
	for _, w := range words {
		if !strings.Contains(out, w) {
			tb.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// objectReadyRE matches bpfsup's log line for an installed object.
var objectReadyRE = regexp.MustCompile(`msg="object ready" object=(\S+) .*\badopted=(\d+) loaded=(\d+)`)

// InstallCounts returns how many programs of object the first install that
// bpfsup logged in out adopted and loaded (its "object ready" line). It
// fails the test when out has no such line.
func InstallCounts(tb testing.TB, out, object string) (adopted, loaded int) {
	tb.Helper()
	for _, m := range objectReadyRE.FindAllStringSubmatch(out, -1) {
		if m[1] == object {
			adopted, _ = strconv.Atoi(m[2])
			loaded, _ = strconv.Atoi(m[3])
			return adopted, loaded
		}
	}
	tb.Fatalf("no \"object ready\" line for %s in bpfsup's output:\n%s", object, out)
	return 0, 0
}

// PIDs lists, in order, the pids announced in out by the lines that re
// matches: re's first group is the pid. Each e2e package's child announces
// itself in a line of its own; bpfsup's is ChildStartedRE.
func PIDs(re *regexp.Regexp, out string) []int {
	var pids []int
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	return pids
}

// ChildStartedRE matches the line bpfsup logs when it has started a child;
// its first group is the child's pid.
var ChildStartedRE = regexp.MustCompile(`msg="child started" pid=(\d+)`)

// WaitPIDs waits until p's output announces at least n pids (see PIDs) and
// returns all it announces then. It fails the test when p exits before, or
// when timeout passes.
func WaitPIDs(tb testing.TB, p *testutil.Proc, re *regexp.Regexp, n int, timeout time.Duration) []int {
	tb.Helper()
	var pids []int
	exited := false
	testutil.Poll(timeout, func() bool {
		select {
		case <-p.Done():
			exited = true
		default:
		}
		// Read after looking at Done: a line printed just before the
		// exit still counts.
		pids = PIDs(re, p.Output())
		return len(pids) >= n || exited
	})
	if len(pids) >= n {
		return pids
	}
	if exited {
		tb.Fatalf("%s exited after %d of %d announcements (%s); output:\n%s", p.Cmd.Args[0], len(pids), n, re, p.Output())
	}
	tb.Fatalf("%d of %d announcements (%s) within %v; output:\n%s", len(pids), n, re, timeout, p.Output())
	return nil
}

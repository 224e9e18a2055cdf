package testutil

import (
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// pollInterval is how often the Wait helpers re-check their condition: short
// enough not to slow tests down, long enough not to burn a CPU.
const pollInterval = 10 * time.Millisecond

// timeoutScale multiplies every deadline of the Wait helpers: 1 on a real
// machine; in the VMs of `make kernels` (BPFSUP_TEST_VM set), whose BPF work
// runs 8-13x slower under emulation with two VMs sharing two cores, 4; and
// BPFSUP_TEST_TIMEOUT_SCALE when set. The tests still wait for conditions; a
// deadline only bounds how long a broken one is waited for.
var timeoutScale = sync.OnceValue(func() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("BPFSUP_TEST_TIMEOUT_SCALE")); err == nil && v > 0 {
		return time.Duration(v)
	}
	if os.Getenv("BPFSUP_TEST_VM") != "" {
		return 4
	}
	return 1
})

// Scaled returns timeout as the Wait helpers apply it on this machine (see
// timeoutScale), for a test's own deadlines.
func Scaled(timeout time.Duration) time.Duration { return timeout * timeoutScale() }

// WaitFor polls cond every few milliseconds until it returns true, and fails
// the test with "timed out after <timeout> waiting for <what>" if it has not
// by then. cond is checked at least once, and once more at the deadline.
//
// Like tb.Fatalf, WaitFor must be called from the goroutine running the test.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(timeout, cond) {
		timeout = Scaled(timeout)
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Poll polls cond as WaitFor does and reports whether it became true within
// timeout, without failing the test: for a caller whose failure message
// needs what cond saw last, or for which a timeout is no failure.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(Scaled(timeout))
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(pollInterval, left))
	}
}

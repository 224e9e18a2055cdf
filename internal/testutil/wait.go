package testutil

import (
	"testing"
	"time"
)

// pollInterval is how often the Wait helpers re-check their condition: short
// enough not to slow tests down, long enough not to burn a CPU.
const pollInterval = 10 * time.Millisecond

// WaitFor polls cond every few milliseconds until it returns true, and fails
// the test with "timed out after <timeout> waiting for <what>" if it has not
// by then. cond is checked at least once, and once more at the deadline.
//
// Like tb.Fatalf, WaitFor must be called from the goroutine running the test.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(timeout, cond) {
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Poll polls cond as WaitFor does and reports whether it became true within
// timeout, without failing the test: for a caller whose failure message
// needs what cond saw last, or for which a timeout is no failure.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
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

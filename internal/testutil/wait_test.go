package testutil

import (
	"fmt"
	"testing"
	"time"
)

func TestWaitFor(t *testing.T) {
	calls := 0
	WaitFor(t, 5*time.Second, "the third call", func() bool {
		calls++
		return calls == 3
	})
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3", calls)
	}
}

func TestWaitForTimesOut(t *testing.T) {
	calls := 0
	start := time.Now()
	f := runFake(t, func(tb testing.TB) {
		WaitFor(tb, 50*time.Millisecond, "the moon", func() bool {
			calls++
			return false
		})
		tb.Errorf("WaitFor returned after timing out")
	})
	wantFailure(t, f, fmt.Sprintf("timed out after %v waiting for the moon", Scaled(50*time.Millisecond)))
	if elapsed := time.Since(start); elapsed < 50*time.Millisecond {
		t.Errorf("gave up after %v, before the timeout", elapsed)
	}
	if calls < 2 {
		t.Errorf("cond called %d times, want it polled", calls)
	}
}

func TestWaitForZeroTimeoutChecksOnce(t *testing.T) {
	calls := 0
	WaitFor(t, 0, "an immediate condition", func() bool {
		calls++
		return true
	})
	if calls != 1 {
		t.Fatalf("cond called %d times, want 1", calls)
	}
}

func TestPollReportsTimeout(t *testing.T) {
	if Poll(20*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll of a condition that never holds reported true")
	}
	calls := 0
	if !Poll(5*time.Second, func() bool { calls++; return calls == 2 }) || calls != 2 {
		t.Fatalf("Poll: cond called %d times, want true after 2", calls)
	}
}

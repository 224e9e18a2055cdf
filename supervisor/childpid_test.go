package supervisor

import (
	"testing"
	"time"
)

// TestChildPIDWaitsForStart: a message on the notify socket that comes
// while a start is under way is judged by the new child's pid, not the
// none before it (a fast child said READY=1 before the fork returned, and
// was refused as "not the child").
func TestChildPIDWaitsForStart(t *testing.T) {
	var c childPIDs
	if got := c.Load(); got != 0 {
		t.Fatalf("no child: %d", got)
	}
	c.Starting()
	got := make(chan int32, 1)
	go func() { got <- c.Load() }()
	select {
	case pid := <-got:
		t.Fatalf("Load returned %d during a start", pid)
	case <-time.After(50 * time.Millisecond): // nothing must come: the start is not done
	}
	c.Store(42)
	if pid := <-got; pid != 42 {
		t.Fatalf("Load after the start: %d, want 42", pid)
	}
	c.Starting()
	c.Store(0) // a start that failed
	if pid := c.Load(); pid != 0 {
		t.Fatalf("Load after a failed start: %d, want 0", pid)
	}
}

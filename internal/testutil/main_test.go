package testutil

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestMain(m *testing.M) {
	os.Exit(CheckNoFDLeaks(m))
}

// fakeTB stands in for a failing test: Fatalf ends the goroutine as the real
// one does, failures are recorded instead of failing the real test, and
// cleanups are kept for runFake to run. Everything else (Logf, Name,
// TempDir...) goes to the real test.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	failures []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.failures) > 0
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// Failures returns what was reported, one message per failure.
func (f *fakeTB) Failures() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.failures...)
}

// runFake runs body as a test on its own goroutine, then its cleanups in
// reverse order, each on its own goroutine, like the testing package does.
func runFake(t *testing.T, body func(tb testing.TB)) *fakeTB {
	t.Helper()
	f := &fakeTB{TB: t}
	onGoroutine(func() { body(f) })
	for {
		f.mu.Lock()
		n := len(f.cleanups)
		if n == 0 {
			f.mu.Unlock()
			return f
		}
		fn := f.cleanups[n-1]
		f.cleanups = f.cleanups[:n-1]
		f.mu.Unlock()
		onGoroutine(fn)
	}
}

func onGoroutine(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

// wantFailure fails t unless f reported exactly one failure containing want.
func wantFailure(t *testing.T, f *fakeTB, want string) {
	t.Helper()
	failures := f.Failures()
	if len(failures) != 1 || !strings.Contains(failures[0], want) {
		t.Fatalf("want one failure containing %q, got %q", want, failures)
	}
}

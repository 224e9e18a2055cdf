// Package crash is a testing aid: it makes bpfsup SIGKILL itself at a named
// step of its work, so that tests can prove that a crash at any step leaves
// state the next start converges from.
//
// It is driven by the environment variable BPFSUP_TEST_CRASH_AT, which is for
// tests only and must never be set in production. Its value is a step name
// from Points, optionally followed by "#N" to crash at the N-th time the step
// is reached (default 1).
package crash

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// EnvVar names the testing-only variable that arms a crash point.
const EnvVar = "BPFSUP_TEST_CRASH_AT"

// The steps at which bpfsup can be made to crash. Every call of At must name
// one of these; TestPointsAreListed checks the sources for that.
var points = []string{
	"maps/created",
	"maps/staged",
	"maps/moved",
	"programs/loaded",
	"programs/staged",
	"programs/moved",
	"links/attached",
	"links/updated",
	"links/staged",
	"links/moved",
	"manifest/before-write",
	"manifest/after-write",
}

// Points lists every crash point, in the order bpfsup reaches them.
func Points() []string { return append([]string(nil), points...) }

var (
	once   sync.Once
	target string
	nth    = 1
	mu     sync.Mutex
	seen   int
)

func arm() {
	v := os.Getenv(EnvVar)
	if v == "" {
		return
	}
	name, count, ok := strings.Cut(v, "#")
	if ok {
		if n, err := strconv.Atoi(count); err == nil && n > 0 {
			nth = n
		}
	}
	target = name
}

// At kills the process with SIGKILL when the armed crash point is name.
func At(name string) {
	once.Do(arm)
	if target == "" || name != target {
		return
	}
	mu.Lock()
	seen++
	hit := seen == nth
	mu.Unlock()
	if hit {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not deliverable late, but never return
	}
}

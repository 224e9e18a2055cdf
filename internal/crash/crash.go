// Package crash is a testing aid: it makes bpfsup SIGKILL itself at a named
// step of its work, so that tests can prove that a crash at any step leaves
// state the next start converges from.
//
// It is driven by environment variables that are for tests only and must
// never be set in production:
//
//   - BPFSUP_TEST_CRASH_AT=STEP[#N] kills the process with SIGKILL the N-th
//     time (default 1) it reaches STEP, one of Points.
//   - BPFSUP_TEST_CRASH_TRACE=FILE appends the name of every step reached to
//     FILE, one a line, so that a test can list the steps a run goes through
//     and then crash at each of them.
//   - BPFSUP_TEST_STOP_AT=STEP[#N] stops the process with SIGSTOP instead,
//     so that a test can act in the middle of a step and then let bpfsup
//     go on with SIGCONT.
//
// When none is set, At costs one comparison.
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

// TraceEnvVar names the testing-only variable that records the steps reached.
const TraceEnvVar = "BPFSUP_TEST_CRASH_TRACE"

// StopEnvVar names the testing-only variable that arms a stop point.
const StopEnvVar = "BPFSUP_TEST_STOP_AT"

// The steps at which bpfsup can be made to crash, in the order an install
// reaches them. Every call of At must name one of these, and every one of
// these must be named by a call; TestPointsMatchSources checks both.
var points = []string{
	"maps/created",          // a map was created (not pinned yet)
	"maps/migrated",         // a new map got the entries of the one it replaces
	"maps/staged",           // a map was pinned under its staging name
	"maps/moved",            // a map's pin was moved into place
	"programs/loaded",       // a program was loaded (not pinned yet)
	"programs/staged",       // a program was pinned under its staging name
	"programs/moved",        // a program's pin was moved into place
	"links/attached",        // a new link was attached (not pinned yet)
	"links/updated",         // a pinned link's program was swapped in place
	"links/staged",          // a link was pinned under its staging name
	"links/moved",           // a link's pin was moved into place
	"manifest/before-write", // the manifest is about to be replaced
	"manifest/after-write",  // the manifest was replaced
}

// Points lists every crash point, in the order bpfsup reaches them.
func Points() []string { return append([]string(nil), points...) }

// trigger is an armed point: the nth time the step is reached.
type trigger struct {
	step string
	nth  int
	seen int
}

func parseTrigger(v string) trigger {
	name, count, ok := strings.Cut(v, "#")
	t := trigger{step: name, nth: 1}
	if ok {
		if n, err := strconv.Atoi(count); err == nil && n > 0 {
			t.nth = n
		}
	}
	return t
}

// reached counts a step and says whether it is the armed one's nth.
func (t *trigger) reached(name string) bool {
	if t.step == "" || name != t.step {
		return false
	}
	t.seen++
	return t.seen == t.nth
}

var (
	once   sync.Once
	active bool
	kill   trigger
	stop   trigger
	trace  *os.File
	mu     sync.Mutex
)

func arm() {
	if path := os.Getenv(TraceEnvVar); path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
		if err == nil {
			trace = f
		}
	}
	kill = parseTrigger(os.Getenv(EnvVar))
	stop = parseTrigger(os.Getenv(StopEnvVar))
	active = trace != nil || kill.step != "" || stop.step != ""
}

// At kills the process with SIGKILL when the armed crash point is name
// (stops it with SIGSTOP when the armed stop point is), and records name
// when tracing is on.
func At(name string) {
	once.Do(arm)
	if !active {
		return
	}
	mu.Lock()
	if trace != nil {
		// One write per line: O_APPEND keeps lines whole and in order.
		_, _ = trace.WriteString(name + "\n")
	}
	killHit, stopHit := kill.reached(name), stop.reached(name)
	mu.Unlock()
	if stopHit {
		// Every thread stops; At returns once the test sends SIGCONT. To
		// this thread: one sent to the process is taken by whichever
		// thread the kernel picks (the main one, often asleep), and this
		// one runs on until that one has woken and stopped the others,
		// past the stop point by a link swap or two on a busy machine.
		_ = syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGSTOP)
	}
	if killHit {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught; never return
	}
}

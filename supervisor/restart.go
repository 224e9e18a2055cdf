package supervisor

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/bpfsup/bpfsup/config"
)

// RestartPolicy decides whether and when a child that exited is started again.
type RestartPolicy struct {
	// Mode is always, on-failure (default) or never.
	Mode config.RestartMode
	// Delay is the first back-off delay (default 100ms); it doubles on every
	// restart up to MaxDelay (default 30s; when below Delay, the delay does
	// not grow).
	Delay, MaxDelay time.Duration
	// StableAfter resets the back-off once a child has run this long
	// (default 10s).
	StableAfter time.Duration
	// StartLimit starts within StartLimitInterval are allowed; one more makes
	// bpfsup give up (defaults 5 in 10s; 0 means no limit).
	StartLimit         int
	StartLimitInterval time.Duration
}

// DefaultRestartPolicy is systemd's Restart=on-failure with bpfsup's back-off.
func DefaultRestartPolicy() RestartPolicy {
	return RestartPolicy{
		Mode:               config.RestartOnFailure,
		Delay:              100 * time.Millisecond,
		MaxDelay:           30 * time.Second,
		StableAfter:        10 * time.Second,
		StartLimit:         5,
		StartLimitInterval: 10 * time.Second,
	}
}

// Check reports a policy that makes no sense.
func (p RestartPolicy) Check() error {
	if _, err := config.ParseRestartMode(string(p.Mode)); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"restart delay", p.Delay}, {"restart max delay", p.MaxDelay}, {"stable after", p.StableAfter}, {"start limit interval", p.StartLimitInterval}} {
		if d.v < 0 {
			return fmt.Errorf("%s %s: must not be negative", d.name, d.v)
		}
	}
	if p.StartLimit < 0 {
		return fmt.Errorf("start limit %d: must not be negative", p.StartLimit)
	}
	return nil
}

// Clean reports whether an exit counts as clean in systemd's sense: exit
// status 0, or death by SIGHUP, SIGINT, SIGTERM or SIGPIPE.
func Clean(st *os.ProcessState) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return st.Success()
	}
	return cleanStatus(ws)
}

func cleanStatus(ws syscall.WaitStatus) bool {
	if ws.Exited() {
		return ws.ExitStatus() == 0
	}
	if ws.Signaled() {
		switch ws.Signal() {
		case syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE:
			return true
		}
	}
	return false
}

// ExitCode is the status a shell would report: the exit status, or 128 plus
// the signal that killed the process. A nil state (no child ever exited) is 0.
func ExitCode(st *os.ProcessState) int {
	if st == nil {
		return 0
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok {
		return exitCode(ws)
	}
	return st.ExitCode()
}

func exitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// ShouldRestart applies the mode to an exit: always restarts, never does
// not, on-failure restarts unless the exit was clean (see Clean).
func (p RestartPolicy) ShouldRestart(st *os.ProcessState) bool {
	return p.restartAfter(Clean(st))
}

func (p RestartPolicy) restartAfter(clean bool) bool {
	switch p.Mode {
	case config.RestartAlways:
		return true
	case config.RestartNever:
		return false
	default:
		return !clean
	}
}

// backoff tracks the restart delay and the start limit. It keeps at most
// StartLimit+1 start times, so a child that crashes forever (with no limit,
// StartLimit 0, none at all) costs no memory.
type backoff struct {
	policy RestartPolicy
	next   time.Duration
	starts []time.Time
}

func newBackoff(p RestartPolicy) *backoff { return &backoff{policy: p, next: p.Delay} }

// started records a start at now and reports false when it exceeds the
// start limit: more than StartLimit starts within StartLimitInterval (the
// window ends at now, a start exactly StartLimitInterval ago is outside).
func (b *backoff) started(now time.Time) bool {
	if b.policy.StartLimit <= 0 {
		return true
	}
	cut := now.Add(-b.policy.StartLimitInterval)
	kept := b.starts[:0]
	for _, t := range b.starts {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	b.starts = append(kept, now)
	return len(b.starts) <= b.policy.StartLimit
}

// delay is how long to wait before the next start, given how long the child
// that just exited ran: Delay after a stable run (at least StableAfter),
// otherwise twice the previous delay, at most MaxDelay. A MaxDelay below
// Delay means no growth: a lone --restart-delay 1m is not an error.
func (b *backoff) delay(ran time.Duration) time.Duration {
	limit := max(b.policy.MaxDelay, b.policy.Delay)
	if ran >= b.policy.StableAfter {
		b.next = b.policy.Delay
	}
	d := min(b.next, limit)
	if b.next > limit/2 {
		// Doubling would pass the cap (or overflow).
		b.next = limit
	} else {
		b.next *= 2
	}
	return d
}

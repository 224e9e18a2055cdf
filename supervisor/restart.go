package supervisor

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

// Restart modes, with systemd's meaning.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// RestartPolicy decides whether and when a child that exited is started again.
type RestartPolicy struct {
	// Mode is always, on-failure (default) or never.
	Mode string
	// Delay is the first back-off delay (default 100ms); it doubles on every
	// restart up to MaxDelay (default 30s).
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
		Mode:               RestartOnFailure,
		Delay:              100 * time.Millisecond,
		MaxDelay:           30 * time.Second,
		StableAfter:        10 * time.Second,
		StartLimit:         5,
		StartLimitInterval: 10 * time.Second,
	}
}

// Check reports a policy that makes no sense.
func (p RestartPolicy) Check() error {
	switch p.Mode {
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		return fmt.Errorf("restart %q: must be always, on-failure or never", p.Mode)
	}
	if p.Delay < 0 || p.MaxDelay < 0 || p.StableAfter < 0 || p.StartLimitInterval < 0 || p.StartLimit < 0 {
		return fmt.Errorf("restart delays and limits must not be negative")
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
// the signal that killed the process.
func ExitCode(st *os.ProcessState) int {
	if st == nil {
		return 0
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// ShouldRestart applies the mode to an exit.
func (p RestartPolicy) ShouldRestart(st *os.ProcessState) bool {
	switch p.Mode {
	case RestartAlways:
		return true
	case RestartNever:
		return false
	default:
		return !Clean(st)
	}
}

// backoff tracks the restart delay and the start limit.
type backoff struct {
	policy RestartPolicy
	next   time.Duration
	starts []time.Time
}

func newBackoff(p RestartPolicy) *backoff { return &backoff{policy: p, next: p.Delay} }

// started records a start at now and reports false when it exceeds the
// start limit.
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
// that just exited ran.
func (b *backoff) delay(ran time.Duration) time.Duration {
	if ran >= b.policy.StableAfter {
		b.next = b.policy.Delay
	}
	d := b.next
	b.next *= 2
	if b.next > b.policy.MaxDelay {
		b.next = b.policy.MaxDelay
	}
	return d
}

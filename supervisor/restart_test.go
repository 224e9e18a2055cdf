package supervisor

import (
	"math"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/config"
)

// exited and signaled build wait statuses as the kernel encodes them
// (wait(2)): the exit status in bits 8-15, the terminating signal in bits
// 0-6, 0x80 when a core was dumped.
func exited(code int) syscall.WaitStatus { return syscall.WaitStatus(code << 8) }

func signaled(sig syscall.Signal, core bool) syscall.WaitStatus {
	ws := syscall.WaitStatus(sig)
	if core {
		ws |= 0x80
	}
	return ws
}

func TestRestartDecision(t *testing.T) {
	tests := []struct {
		name   string
		ws     syscall.WaitStatus
		clean  bool
		code   int
		always bool // what each mode does
		onFail bool
		never  bool
	}{
		{"exit 0", exited(0), true, 0, true, false, false},
		{"exit 1", exited(1), false, 1, true, true, false},
		{"exit 3", exited(3), false, 3, true, true, false},
		{"exit 255", exited(255), false, 255, true, true, false},
		{"SIGHUP", signaled(syscall.SIGHUP, false), true, 129, true, false, false},
		{"SIGINT", signaled(syscall.SIGINT, false), true, 130, true, false, false},
		{"SIGTERM", signaled(syscall.SIGTERM, false), true, 143, true, false, false},
		{"SIGPIPE", signaled(syscall.SIGPIPE, false), true, 141, true, false, false},
		{"SIGKILL", signaled(syscall.SIGKILL, false), false, 137, true, true, false},
		{"SIGSEGV", signaled(syscall.SIGSEGV, false), false, 139, true, true, false},
		{"SIGSEGV core dumped", signaled(syscall.SIGSEGV, true), false, 139, true, true, false},
		{"SIGABRT core dumped", signaled(syscall.SIGABRT, true), false, 134, true, true, false},
		{"SIGQUIT", signaled(syscall.SIGQUIT, false), false, 131, true, true, false},
		{"SIGUSR1", signaled(syscall.SIGUSR1, false), false, 138, true, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cleanStatus(tt.ws); got != tt.clean {
				t.Errorf("clean = %v, want %v", got, tt.clean)
			}
			if got := exitCode(tt.ws); got != tt.code {
				t.Errorf("exit code = %d, want %d", got, tt.code)
			}
			for mode, want := range map[config.RestartMode]bool{
				config.RestartAlways: tt.always, config.RestartOnFailure: tt.onFail, config.RestartNever: tt.never,
			} {
				if got := (RestartPolicy{Mode: mode}).restartAfter(cleanStatus(tt.ws)); got != want {
					t.Errorf("restart=%s restarts = %v, want %v", mode, got, want)
				}
			}
		})
	}
}

func TestExitCodeNil(t *testing.T) {
	if got := ExitCode(nil); got != 0 {
		t.Errorf("ExitCode(nil) = %d, want 0", got)
	}
}

func TestRestartPolicyCheck(t *testing.T) {
	ok := DefaultRestartPolicy()
	tests := []struct {
		name   string
		change func(*RestartPolicy)
		valid  bool
	}{
		{"default", func(*RestartPolicy) {}, true},
		{"always", func(p *RestartPolicy) { p.Mode = config.RestartAlways }, true},
		{"never", func(p *RestartPolicy) { p.Mode = config.RestartNever }, true},
		{"empty mode", func(p *RestartPolicy) { p.Mode = "" }, false},
		{"systemd's on-abnormal is not ours", func(p *RestartPolicy) { p.Mode = "on-abnormal" }, false},
		{"zero delays", func(p *RestartPolicy) { p.Delay, p.MaxDelay = 0, 0 }, true},
		{"no start limit", func(p *RestartPolicy) { p.StartLimit = 0 }, true},
		{"negative delay", func(p *RestartPolicy) { p.Delay = -time.Second }, false},
		{"negative start limit", func(p *RestartPolicy) { p.StartLimit = -1 }, false},
		{"negative interval", func(p *RestartPolicy) { p.StartLimitInterval = -1 }, false},
		{"negative stable-after", func(p *RestartPolicy) { p.StableAfter = -1 }, false},
		{"max delay below delay: no growth", func(p *RestartPolicy) { p.Delay, p.MaxDelay = time.Hour, time.Second }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ok
			tt.change(&p)
			err := p.Check()
			if (err == nil) != tt.valid {
				t.Errorf("Check() = %v, want valid=%v", err, tt.valid)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	const ms = time.Millisecond
	quick := 10 * ms // a run shorter than every StableAfter below
	tests := []struct {
		name   string
		policy RestartPolicy
		ran    []time.Duration // how long each child ran
		want   []time.Duration // the delay before the next start
	}{
		{
			name:   "doubles up to the cap",
			policy: RestartPolicy{Delay: 100 * ms, MaxDelay: 1000 * ms, StableAfter: time.Second},
			ran:    []time.Duration{quick, quick, quick, quick, quick, quick},
			want:   []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1000 * ms, 1000 * ms},
		},
		{
			name:   "a stable run resets",
			policy: RestartPolicy{Delay: 100 * ms, MaxDelay: 30 * time.Second, StableAfter: time.Second},
			ran:    []time.Duration{quick, quick, quick, time.Second, quick, 2 * time.Second, quick},
			want:   []time.Duration{100 * ms, 200 * ms, 400 * ms, 100 * ms, 200 * ms, 100 * ms, 200 * ms},
		},
		{
			name:   "a run just short of stable does not reset",
			policy: RestartPolicy{Delay: 100 * ms, MaxDelay: 30 * time.Second, StableAfter: time.Second},
			ran:    []time.Duration{quick, time.Second - 1},
			want:   []time.Duration{100 * ms, 200 * ms},
		},
		{
			name:   "zero delay stays zero",
			policy: RestartPolicy{Delay: 0, MaxDelay: 30 * time.Second, StableAfter: time.Second},
			ran:    []time.Duration{quick, quick, quick},
			want:   []time.Duration{0, 0, 0},
		},
		{
			name:   "delay equal to the cap",
			policy: RestartPolicy{Delay: time.Second, MaxDelay: time.Second, StableAfter: time.Hour},
			ran:    []time.Duration{quick, quick, quick},
			want:   []time.Duration{time.Second, time.Second, time.Second},
		},
		{
			name:   "max delay below delay: the delay does not grow",
			policy: RestartPolicy{Delay: time.Hour, MaxDelay: 30 * time.Second, StableAfter: 10 * time.Second},
			ran:    []time.Duration{quick, quick, quick},
			want:   []time.Duration{time.Hour, time.Hour, time.Hour},
		},
		{
			name:   "stable-after zero: never grows",
			policy: RestartPolicy{Delay: 50 * ms, MaxDelay: time.Second, StableAfter: 0},
			ran:    []time.Duration{0, 0, 0},
			want:   []time.Duration{50 * ms, 50 * ms, 50 * ms},
		},
		{
			name:   "a huge cap does not overflow",
			policy: RestartPolicy{Delay: time.Hour, MaxDelay: math.MaxInt64, StableAfter: math.MaxInt64},
			ran:    make([]time.Duration, 40),
			want: func() []time.Duration {
				var w []time.Duration
				d := time.Hour
				for range 40 {
					w = append(w, d)
					if d > math.MaxInt64/2 {
						d = math.MaxInt64
					} else {
						d *= 2
					}
				}
				return w
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(tt.policy)
			for i, ran := range tt.ran {
				got := b.delay(ran)
				if got != tt.want[i] {
					t.Fatalf("delay %d (after a run of %s) = %s, want %s", i, ran, got, tt.want[i])
				}
				if got < 0 {
					t.Fatalf("delay %d is negative: %s", i, got)
				}
			}
		})
	}
}

func TestBackoffStartLimit(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(offsets ...time.Duration) []time.Time {
		var ts []time.Time
		for _, o := range offsets {
			ts = append(ts, t0.Add(o))
		}
		return ts
	}
	const s = time.Second
	tests := []struct {
		name     string
		limit    int
		interval time.Duration
		starts   []time.Time
		refused  int // index of the first refused start, -1 for none
	}{
		{"5 in 10s: the 6th within 10s is refused", 5, 10 * s, at(0, 1*s, 2*s, 3*s, 4*s, 5*s), 5},
		{"5 in 10s: spread out, never refused", 5, 10 * s, at(0, 3*s, 6*s, 9*s, 12*s, 15*s, 18*s, 21*s), -1},
		{"the window slides: the oldest start leaves it", 2, 10 * s, at(0, 5*s, 10*s, 14*s), 3},
		{"a start exactly an interval ago is outside", 1, 10 * s, at(0, 10*s, 20*s), -1},
		{"limit 1: the first restart is refused", 1, 10 * s, at(0, 9*s), 1},
		{"limit 0: no limit", 0, 10 * s, at(0, 0, 0, 0, 0, 0, 0, 0), -1},
		{"interval 0: no window, no limit", 1, 0, at(0, 0, 0), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(RestartPolicy{StartLimit: tt.limit, StartLimitInterval: tt.interval})
			refused := -1
			for i, ts := range tt.starts {
				if !b.started(ts) {
					refused = i
					break
				}
			}
			if refused != tt.refused {
				t.Errorf("first refused start = %d, want %d", refused, tt.refused)
			}
		})
	}
}

// A child that crashes forever must not make the start history grow.
func TestBackoffStartHistoryBounded(t *testing.T) {
	b := newBackoff(RestartPolicy{StartLimit: 3, StartLimitInterval: time.Second})
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for range 10000 {
		now = now.Add(400 * time.Millisecond)
		if !b.started(now) {
			t.Fatal("a start every 400ms refused with a limit of 3 per second")
		}
	}
	if len(b.starts) > 3 {
		t.Errorf("start history holds %d times, want at most 3", len(b.starts))
	}
	nolimit := newBackoff(RestartPolicy{})
	for range 10000 {
		nolimit.started(now)
	}
	if len(nolimit.starts) != 0 {
		t.Errorf("start history without a limit holds %d times, want 0", len(nolimit.starts))
	}
}

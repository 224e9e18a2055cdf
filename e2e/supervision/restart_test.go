package supervision

import (
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// Each restart policy against each way a child can end, with systemd's
// semantics: exit 0 and death by SIGTERM are clean, exit 3, SIGSEGV and
// SIGKILL are failures. A restarted child is started again until the start
// limit (2 starts) stops bpfsup; one that is not makes bpfsup exit with its
// status, 128+signal for a signal.
func TestRestartPolicy(t *testing.T) {
	ends := []struct {
		name  string
		sh    string // how the child ends
		clean bool
		code  int
	}{
		{"exit 0", "exit 0", true, 0},
		{"exit 3", "exit 3", false, 3},
		{"SIGTERM", "kill -TERM $$", true, 128 + 15},
		// No core file: the child's working directory is the test's.
		{"SIGSEGV", "ulimit -c 0; kill -SEGV $$", false, 128 + 11},
		{"SIGKILL", "kill -KILL $$", false, 128 + 9},
	}
	for _, policy := range []string{"always", "on-failure", "never"} {
		for _, end := range ends {
			restarted := policy == "always" || (policy == "on-failure" && !end.clean)
			t.Run(policy+"/"+end.name, func(t *testing.T) {
				e := testutil.MustEnv(t)
				starts := filepath.Join(shortDir(t), "starts")
				p := startRun(t, e, nil, "-o", counterObj, "--restart", policy,
					"--restart-delay", "10ms", "--start-limit", "2", "--start-limit-interval", "1m",
					"--", "sh", "-c", "echo start >> "+starts+"; "+end.sh)
				code := p.Wait(t, 20*time.Second)
				n := countLines(t, starts, "start")
				if restarted {
					if code != 1 || n != 2 || !strings.Contains(p.Output(), "start limit hit") {
						t.Fatalf("restart=%s, child ends by %s: want a restart, then the start limit (exit 1 after 2 starts); got exit %d after %d starts; output:\n%s",
							policy, end.name, code, n, p.Output())
					}
					return
				}
				if code != end.code || n != 1 {
					t.Fatalf("restart=%s, child ends by %s: want no restart and bpfsup's exit status %d; got exit %d after %d starts; output:\n%s",
						policy, end.name, end.code, code, n, p.Output())
				}
			})
		}
	}
}

// The restart delay doubles while the child keeps failing fast, and falls
// back to --restart-delay after a run of at least --stable-after. Delays are
// read from bpfsup's log: from "child exited" to the next "child started",
// which can only be longer than the delay bpfsup chose, never shorter.
// (Measured by the child, they would include its own start-up, which takes
// tens of milliseconds on a loaded machine.)
func TestBackoff(t *testing.T) {
	const (
		base        = 200 * time.Millisecond
		stableAfter = 3 * time.Second
	)
	e := testutil.MustEnv(t)
	log := filepath.Join(shortDir(t), "runs")
	p := startRun(t, e, childEnv("backoff", envFile+"="+log, envStableRun+"=3", envStableFor+"=3400ms"),
		"-o", counterObj, "--restart", "on-failure", "--restart-delay", base.String(), "--restart-max-delay", "10s",
		"--stable-after", stableAfter.String(), "--start-limit", "0", "--", self(t))
	// Runs 0-2 fail fast, run 3 is stable, runs 4 and 5 fail fast again.
	testutil.WaitFor(t, 60*time.Second, "6 runs of the child", func() bool { return countLines(t, log, "end") >= 6 })
	p.Kill(15)
	p.Wait(t, 10*time.Second)

	var started, exited []time.Time
	var ran []time.Duration
	for _, m := range logTimeRe.FindAllStringSubmatch(p.Output(), -1) {
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("bad time in log line %q", m[0])
		}
		if m[2] == "child started" {
			started = append(started, ts)
			continue
		}
		exited = append(exited, ts)
		d, err := time.ParseDuration(m[3])
		if err != nil {
			t.Fatalf("bad run time in log line %q", m[0])
		}
		ran = append(ran, d)
	}
	const runs = 5 // the delays after runs 0-4
	if len(started) < runs+1 || len(exited) < runs {
		t.Fatalf("%d starts and %d exits in the log, want %d and %d:\n%s", len(started), len(exited), runs+1, runs, p.Output())
	}
	// The policy, applied to how long each run lasted as bpfsup measured
	// it: a run of at least --stable-after resets the delay, a shorter
	// one doubles it. (On a machine slow enough that a run meant to fail
	// fast lasts that long, the reset is right too.)
	var want []time.Duration
	next := base
	for _, r := range ran[:runs] {
		if r >= stableAfter {
			next = base
		}
		want = append(want, next)
		next *= 2
	}
	var got []time.Duration
	for i := range want {
		got = append(got, started[i+1].Sub(exited[i]))
	}
	t.Logf("runs lasted %v; delays between runs: %v", ran[:runs], got)
	// The delays bpfsup chose, from its log: exactly the policy's. The
	// measured gaps can only be longer (a loaded machine starts the child
	// late), never shorter.
	var chosen []time.Duration
	for _, m := range restartInRe.FindAllStringSubmatch(p.Output(), -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("bad delay in log line %q", m[0])
		}
		chosen = append(chosen, d)
	}
	if len(chosen) < len(want) {
		t.Fatalf("%d restart delays in the log, want %d:\n%s", len(chosen), len(want), p.Output())
	}
	for i, w := range want {
		if chosen[i] != w {
			t.Errorf("delay chosen after run %d (which lasted %v) is %v, want %v (all: %v)", i, ran[i], chosen[i], w, chosen[:len(want)])
		}
		if got[i] < w {
			t.Errorf("child started %v after run %d ended, sooner than the delay %v", got[i], i, w)
		}
	}
	if ran[3] < stableAfter {
		t.Fatalf("run 3 lasted %v, shorter than --stable-after %v: the test proves nothing", ran[3], stableAfter)
	}
	if !slices.Contains(want, 2*base) {
		t.Fatalf("no run was short enough for the delay to double (runs lasted %v): the test proves nothing", ran[:runs])
	}
}

var restartInRe = regexp.MustCompile(`msg="restarting child" in=(\S+)`)

var logTimeRe = regexp.MustCompile(`time=(\S+) level=INFO msg="(child started|child exited)"(?:[^\n]* ran=(\S+))?`)

// The start limit stops bpfsup with a message that says so and a non-zero
// exit status, and leaves the program attached: the data path keeps running
// when the control plane gives up.
func TestStartLimitLeavesProgramAttached(t *testing.T) {
	e := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "sup-a"), testutil.MustNetns(t, "sup-b")
	ifA, _ := testutil.MustVethPair(t, a, b)
	starts := filepath.Join(shortDir(t), "starts")
	p := startRun(t, e, nil, "-o", counterObj, "-a", "count_packets@xdp:"+ifA.Name, "--netns", a.Path,
		"--restart-delay", "1ms", "--start-limit", "3", "--start-limit-interval", "1m",
		"--", "sh", "-c", "echo start >> "+starts+"; exit 3")
	code := p.Wait(t, 20*time.Second)
	out := p.Output()
	if code == 0 {
		t.Fatalf("bpfsup exited 0 after the start limit; output:\n%s", out)
	}
	if n := countLines(t, starts, "start"); n != 3 {
		t.Errorf("the child was started %d times, want 3 (--start-limit 3)", n)
	}
	e2e.WantAll(t, out, "start limit hit", "the child exited 3 times within 1m0s", "exit status 3", "the BPF programs stay attached")

	// The link is pinned and attached to the interface, in the kernel.
	info := e2e.PinnedLinkInfo(t, e2e.PinPath(e, "counter", "links", "count_packets"))
	xdp := info.XDP()
	if xdp == nil || xdp.Ifindex == 0 {
		t.Fatalf("link %d is not an attached XDP link: %+v", info.ID, info)
	}
	attached := e2e.IPLinkXDP(t, a, ifA.Name)
	if attached != uint32(info.Program) {
		t.Errorf("%s runs XDP program %d, want the link's program %d", ifA.Name, attached, info.Program)
	}
}

// A command that cannot run, and flags that make no sense, are refused at
// once with a message that names the problem.
func TestErrorMessages(t *testing.T) {
	e := testutil.MustEnv(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no such command", []string{"-o", counterObj, "--", "/nonexistent/app"}, `command: exec: "/nonexistent/app"`},
		{"command not in PATH", []string{"-o", counterObj, "--", "no-such-app-xyz"}, "executable file not found in $PATH"},
		{"bad restart policy", []string{"-o", counterObj, "--restart", "sometimes", "--", "true"}, `restart "sometimes": must be always, on-failure or never`},
		{"negative delay", []string{"-o", counterObj, "--restart-delay", "-1s", "--", "true"}, "restart delay -1s: must not be negative"},
		{"no such user", []string{"-o", counterObj, "--user", "no-such-user-xyz", "--", "true"}, `--user "no-such-user-xyz"`},
		{"bad notify", []string{"-o", counterObj, "--notify", "parent", "--", "true"}, `--notify "parent": must be child or none`},
		{"bad log format", []string{"-o", counterObj, "--log-format", "xml", "--", "true"}, `--log-format "xml": must be text or json`},
		{"bad map access", []string{"-o", counterObj, "--map-access", "counters=rx", "--", "true"}, `access "rx": must be rw, ro, wo or none`},
		{"no command", []string{"-o", counterObj}, "no command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := e.Run(t, "run", tt.args...)
			if code == 0 || !strings.Contains(out, tt.want) {
				t.Errorf("bpfsup run %s: exit %d, output:\n%s\nwant a non-zero exit and %q", strings.Join(tt.args, " "), code, out, tt.want)
			}
			if strings.Contains(out, "child started") {
				t.Errorf("a child was started despite the error:\n%s", out)
			}
		})
	}
}

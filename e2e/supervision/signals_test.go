package supervision

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// SIGTERM and SIGINT to bpfsup reach the child, which ends the way it
// chooses; bpfsup exits with the child's status. SIGQUIT, SIGUSR1 and
// SIGWINCH are forwarded as they are and bpfsup carries on.
func TestStopAndForwardedSignals(t *testing.T) {
	for _, stop := range []struct {
		sig  syscall.Signal
		name string
		code int // childSignals' status for it
	}{
		{syscall.SIGTERM, "SIGTERM", 42},
		{syscall.SIGINT, "SIGINT", 43},
	} {
		t.Run(stop.name, func(t *testing.T) {
			e := testutil.MustEnv(t)
			marker := filepath.Join(shortDir(t), "marker")
			p := startRun(t, e, childEnv("signals", envFile+"="+marker),
				"-o", counterObj, "--restart", "always", "--", self(t))
			waitChildPid(t, p)
			for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGWINCH} {
				p.Kill(sig)
				p.WaitOutput(t, "child got "+signalName(sig), 5*time.Second)
			}
			p.Kill(stop.sig)
			if code := p.Wait(t, 10*time.Second); code != stop.code {
				t.Errorf("bpfsup exited %d after %s, want the child's status %d", code, stop.name, stop.code)
			}
			data, err := os.ReadFile(marker)
			if err != nil || string(data) != stop.name {
				t.Errorf("the child's marker holds %q (%v), want %q: the child did not see %s", data, err, stop.name, stop.name)
			}
		})
	}
}

func signalName(sig syscall.Signal) string {
	return map[syscall.Signal]string{
		syscall.SIGQUIT: "SIGQUIT", syscall.SIGUSR1: "SIGUSR1", syscall.SIGWINCH: "SIGWINCH",
	}[sig]
}

// A child that ignores SIGTERM is SIGKILLed after --stop-timeout, and
// bpfsup exits with 128+SIGKILL.
func TestStopTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	e := testutil.MustEnv(t)
	p := startRun(t, e, childEnv("ignore-term"), "-o", counterObj, "--stop-timeout", timeout.String(), "--", self(t))
	pid := waitChildPid(t, p)
	start := time.Now()
	p.Kill(syscall.SIGTERM)
	code := p.Wait(t, 10*time.Second)
	took := time.Since(start)
	if code != 128+9 {
		t.Errorf("bpfsup exited %d, want %d (the child's SIGKILL)", code, 128+9)
	}
	if took < timeout {
		t.Errorf("bpfsup exited %v after SIGTERM, before the stop timeout %v", took, timeout)
	}
	p.WaitOutput(t, "child did not stop in time", time.Second)
	testutil.WaitProcGone(t, pid, time.Second)
}

// SIGKILL to bpfsup: nothing can run in bpfsup any more, yet the child dies
// with it (parent-death signal) and nobody is left a zombie.
func TestSupervisorKilled(t *testing.T) {
	e := testutil.MustEnv(t)
	p := startRun(t, e, childEnv("ignore-term"), "-o", counterObj, "--", self(t))
	pid := waitChildPid(t, p)
	if ppid := testutil.ParentPID(t, pid); ppid != p.Pid() {
		t.Fatalf("the child's parent is %d, want bpfsup (%d)", ppid, p.Pid())
	}
	p.Kill(syscall.SIGKILL)
	testutil.WaitProcGone(t, pid, time.Second)
	// Reaped, by whoever adopted it (init here; bpfsup is gone).
	testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("the child %d to be reaped", pid), func() bool { return procGoneEntirely(pid) })
}

var grandchildRe = regexp.MustCompile(`grandchild=(\d+)`)

// bpfsup is a child subreaper: a grandchild orphaned by the child becomes
// bpfsup's, and bpfsup reaps it when it exits, so no zombie piles up under
// a long-running supervisor.
func TestGrandchildReaped(t *testing.T) {
	e := testutil.MustEnv(t)
	release := filepath.Join(shortDir(t), "release")
	// The child leaves a grandchild behind that waits for the test, then
	// exits 0; bpfsup restarts it only an hour later, and meanwhile runs.
	p := startRun(t, e, nil, "-o", counterObj, "--restart", "always", "--restart-delay", "1h", "--",
		"sh", "-c", "(while [ ! -e "+release+" ]; do sleep 0.01; done) & echo grandchild=$!; exit 0")
	p.WaitOutput(t, "child exited", 10*time.Second)
	m := grandchildRe.FindStringSubmatch(p.Output())
	if m == nil {
		t.Fatalf("no grandchild pid in the output:\n%s", p.Output())
	}
	gc, _ := strconv.Atoi(m[1])
	if ppid := testutil.ParentPID(t, gc); ppid != p.Pid() {
		t.Fatalf("the orphaned grandchild's parent is %d, want bpfsup (%d) as subreaper", ppid, p.Pid())
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("grandchild %d to exit and be reaped", gc), func() bool {
		return procGoneEntirely(gc)
	})
	select {
	case <-p.Done():
		t.Fatalf("bpfsup exited; output:\n%s", p.Output())
	default:
	}
}

// SIGTERM while bpfsup installs (here during slow verifier runs): the
// install completes, so the pins are whole, and bpfsup exits 0 without
// starting the child.
func TestStopDuringInstall(t *testing.T) {
	e := testutil.MustEnv(t)
	// Four copies of a slow object: the stop comes while the first loads,
	// three more loads make sure it comes before the install ends.
	var cfg strings.Builder
	for i := 1; i <= 4; i++ {
		fmt.Fprintf(&cfg, "[[object]]\npath = %q\nname = \"heavy%d\"\n", testutil.BPFObject("verifier_heavy"), i)
	}
	config := filepath.Join(shortDir(t), "heavy.toml")
	if err := os.WriteFile(config, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startRun(t, e, nil, "-c", config, "--", "sleep", "1000")
	// The lock is taken just before the first program is loaded.
	lock := filepath.Join(e.StateDir, "heavy1.lock")
	testutil.WaitFor(t, 10*time.Second, "bpfsup to lock the first object", func() bool {
		_, err := os.Stat(lock)
		return err == nil
	})
	p.Kill(syscall.SIGTERM)
	if code := p.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("bpfsup exited %d, want 0; output:\n%s", code, p.Output())
	}
	out := p.Output()
	if !strings.Contains(out, "stopping before the child started") || strings.Contains(out, `msg="child started"`) {
		t.Errorf("want a stop before the child starts; output:\n%s", out)
	}
	for i := 1; i <= 4; i++ {
		pin := filepath.Join(e.PinRoot, fmt.Sprintf("heavy%d", i), "programs", "heavy")
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("the install was cut short: %v", err)
		}
	}
}

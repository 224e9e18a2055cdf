package testutil

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseProcState(t *testing.T) {
	for _, tc := range []struct {
		status string
		state  byte
		ok     bool
	}{
		{"Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n", 'S', true},
		{"Name:\tx\nState:\tZ (zombie)\n", 'Z', true},
		{"State:  R (running)", 'R', true},
		{"Name:\tx\n", 0, false},
		{"State:\t\n", 0, false},
		{"", 0, false},
	} {
		state, ok := parseProcState([]byte(tc.status))
		if state != tc.state || ok != tc.ok {
			t.Errorf("parseProcState(%q) = %q, %v; want %q, %v", tc.status, state, ok, tc.state, tc.ok)
		}
	}
}

func TestProcStateSelf(t *testing.T) {
	if state, exists := ProcState(os.Getpid()); !exists || state == 0 || state == '?' {
		t.Fatalf("ProcState(self) = %q, %v", state, exists)
	}
	if _, exists := ProcState(0); exists {
		t.Fatal("pid 0 exists")
	}
}

// A killed child is a zombie until reaped; both count as gone.
func TestProcStateZombieThenReaped(t *testing.T) {
	cmd := startSleep(t)
	pid := cmd.Process.Pid

	WaitFor(t, 5*time.Second, "sleep to be sleeping", func() bool {
		state, exists := ProcState(pid)
		return exists && state == 'S'
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	WaitProcGone(t, pid, 5*time.Second)
	if state, exists := ProcState(pid); state != 'Z' || exists {
		t.Fatalf("killed, unreaped child: ProcState = %q, %v; want 'Z', false", state, exists)
	}

	_ = cmd.Wait() // Reap it: "signal: killed".
	if state, exists := ProcState(pid); state != 0 || exists {
		t.Fatalf("reaped child: ProcState = %q, %v; want 0, false", state, exists)
	}
}

func TestWaitProcGoneTimesOut(t *testing.T) {
	cmd := startSleep(t)
	f := runFake(t, func(tb testing.TB) {
		WaitProcGone(tb, cmd.Process.Pid, 50*time.Millisecond)
	})
	wantFailure(t, f, "to end")
}

// startSleep starts `sleep 60`, killed and reaped at the end of the test.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func TestParentPIDSelf(t *testing.T) {
	if got, want := ParentPID(t, os.Getpid()), os.Getppid(); got != want {
		t.Fatalf("ParentPID(self) = %d, want %d", got, want)
	}
	if threads := ProcStatusField(t, os.Getpid(), "Threads"); threads == "" || threads == "0" {
		t.Fatalf("Threads of self: %q", threads)
	}
}

func TestProcStatusFieldMissing(t *testing.T) {
	f := runFake(t, func(tb testing.TB) {
		ProcStatusField(tb, os.Getpid(), "NoSuchField")
	})
	wantFailure(t, f, "no NoSuchField in /proc/")
}

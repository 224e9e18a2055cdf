package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// RepoRoot is the repository's top directory: $BPFSUP_TEST_REPO when set
// (a test binary run away from its source tree, as in the VMs of `make
// kernels`), else where this file was compiled from.
func RepoRoot() string {
	if dir := os.Getenv("BPFSUP_TEST_REPO"); dir != "" {
		return filepath.Clean(dir)
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BuildBpfsup builds the bpfsup binary once per test binary into a directory
// everyone may read and execute (a child run as another user re-executes it),
// and returns its path. Call BuildCleanup from TestMain to remove it.
// Where there is no Go toolchain (the VMs of `make kernels`),
// $BPFSUP_TEST_BIN names a prebuilt binary to use instead.
func BuildBpfsup(tb testing.TB) string {
	tb.Helper()
	if bin := os.Getenv("BPFSUP_TEST_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			tb.Fatalf("prebuilt bpfsup ($BPFSUP_TEST_BIN): %v", err)
		}
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bpfsup-bin-")
		if err != nil {
			buildErr = err
			return
		}
		_ = os.Chmod(dir, 0o755)
		buildPath = filepath.Join(dir, "bpfsup")
		if out, err := goBuild("-o", buildPath, "./cmd/bpfsup").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatalf("build bpfsup: %v", buildErr)
	}
	return buildPath
}

// BuildCleanup removes the binary BuildBpfsup made.
func BuildCleanup() {
	if buildPath != "" {
		os.RemoveAll(filepath.Dir(buildPath))
	}
}

// BPFObject is the path of a committed object in bpf/, e.g. "counter".
func BPFObject(name string) string {
	return filepath.Join(RepoRoot(), "bpf", name+".bpf.o")
}

// Env is a private place for one bpfsup: a pin root and a state directory.
type Env struct {
	Bin      string
	PinRoot  string
	StateDir string
}

// MustEnv builds bpfsup and makes a private pin root and state directory,
// removed with everything in them when the test ends (after `bpfsup down`).
func MustEnv(tb testing.TB) *Env {
	tb.Helper()
	RequireRoot(tb)
	MustBPFFS(tb)
	e := &Env{Bin: BuildBpfsup(tb), PinRoot: MustPinRoot(tb), StateDir: MustStateDir(tb)}
	tb.Cleanup(func() {
		// Detach what is still attached before the pin root goes.
		_ = exec.Command(e.Bin, "down", "--pin-root", e.PinRoot, "--state-dir", e.StateDir).Run()
	})
	return e
}

// Args prefixes args of a subcommand with the env's pin root and state dir:
// Args("run", "-o", X) -> run --pin-root P --state-dir S -o X.
func (e *Env) Args(sub string, args ...string) []string {
	return append([]string{sub, "--pin-root", e.PinRoot, "--state-dir", e.StateDir}, args...)
}

// Run runs a bpfsup subcommand to completion and returns its combined output
// and exit status.
func (e *Env) Run(tb testing.TB, sub string, args ...string) (string, int) {
	tb.Helper()
	cmd := exec.Command(e.Bin, e.Args(sub, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			tb.Fatalf("bpfsup %s: %v", sub, err)
		}
	}
	return string(out), code
}

// Proc is a bpfsup (or other) process started in the background.
type Proc struct {
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start starts `bpfsup run` (or another subcommand) with the env's pin root
// and state dir. The process is SIGKILLed and reaped when the test ends.
func (e *Env) Start(tb testing.TB, sub string, args ...string) *Proc {
	tb.Helper()
	return StartProc(tb, exec.Command(e.Bin, e.Args(sub, args...)...))
}

// StartProc starts cmd with its output captured, killed and reaped at the
// end of the test.
func StartProc(tb testing.TB, cmd *exec.Cmd) *Proc {
	tb.Helper()
	p := &Proc{Cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %v: %v", cmd.Args, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Kill(syscall.SIGKILL)
		<-p.done
		if tb.Failed() {
			tb.Logf("output of %s:\n%s", strings.Join(cmd.Args, " "), p.Output())
		}
	})
	return p
}

// Pid is the process's pid.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Output is everything the process wrote so far.
func (p *Proc) Output() string { return p.out.String() }

// Kill sends sig if the process has not exited yet.
func (p *Proc) Kill(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.Cmd.Process.Signal(sig)
	}
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to exit and returns its exit
// status (128+signal when killed by a signal).
func (p *Proc) Wait(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	timeout = Scaled(timeout)
	select {
	case <-p.done:
	case <-time.After(timeout):
		tb.Fatalf("%s did not exit within %s; output:\n%s", p.Cmd.Args[0], timeout, p.Output())
	}
	ws, ok := p.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return p.Cmd.ProcessState.ExitCode()
}

// WaitOutput waits until the process's output contains s.
func (p *Proc) WaitOutput(tb testing.TB, s string, timeout time.Duration) {
	tb.Helper()
	timeout = Scaled(timeout)
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.Output(), s) {
		select {
		case <-p.done:
			if strings.Contains(p.Output(), s) {
				return
			}
			tb.Fatalf("process exited before printing %q; output:\n%s", s, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no %q in output within %s; output:\n%s", s, timeout, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

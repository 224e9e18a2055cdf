package pinstore

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The lock needs no bpffs: these tests use plain directories and run
// unprivileged too.
func mustPlainStore(tb testing.TB) Store {
	tb.Helper()
	return Store{Root: tb.TempDir(), StateDir: tb.TempDir(), anyFS: true}
}

func mustOpen(tb testing.TB, s Store, name string) *Object {
	tb.Helper()
	o, err := s.Open(name)
	if err != nil {
		tb.Fatalf("open %s: %v", name, err)
	}
	tb.Cleanup(func() { o.Close() })
	return o
}

// readLockPid reads the pid in the lock file at path. Through another
// process: closing a file this process holds a POSIX lock on drops the lock.
func readLockPid(tb testing.TB, path string) int {
	tb.Helper()
	b, err := exec.Command("cat", path).Output()
	if err != nil {
		tb.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatalf("lock file %s holds %q", path, b)
	}
	return pid
}

func TestLockSameProcess(t *testing.T) {
	s := mustPlainStore(t)
	o := mustOpen(t, s, "fw")
	if got := readLockPid(t, s.LockPath("fw")); got != os.Getpid() {
		t.Fatalf("lock file names pid %d, want %d", got, os.Getpid())
	}
	if pid, ok := LockHolder(s.LockPath("fw")); !ok || pid != os.Getpid() {
		t.Fatalf("LockHolder = %d, %v; want %d", pid, ok, os.Getpid())
	}

	if pid, found, _ := ReadLocks().line(s.LockPath("fw")); !found || pid != os.Getpid() {
		t.Fatalf("/proc/locks: lock of %d (found %v), want this process's", pid, found)
	}

	// Not even this process can take it twice.
	_, err := s.Open("fw")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Open = %v, want ErrLocked naming pid %d", err, os.Getpid())
	}
	// Another object is another lock.
	mustOpen(t, s, "other")

	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, ok := LockHolder(s.LockPath("fw")); ok {
		t.Fatal("LockHolder reports a holder after Close")
	}
	mustOpen(t, s, "fw")
}

func TestLockOtherProcessRefused(t *testing.T) {
	s := mustPlainStore(t)
	mustOpen(t, s, "fw")

	out, err := helperCmd(t, "lock-try", s, "fw").CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	report := string(out)
	if !strings.Contains(report, "locked=true") {
		t.Fatalf("the other process's Open was not refused with ErrLocked:\n%s", report)
	}
	if want := "held by pid " + strconv.Itoa(os.Getpid()); !strings.Contains(report, want) {
		t.Fatalf("the other process's error does not say %q:\n%s", want, report)
	}
	// Its attempt did not overwrite the holder's pid.
	if got := readLockPid(t, s.LockPath("fw")); got != os.Getpid() {
		t.Fatalf("lock file names pid %d after a refused Open, want %d", got, os.Getpid())
	}
}

// A supervisor that dies (SIGKILL: no cleanup at all) leaves its lock file;
// the kernel dropped the lock with it, and the next Open takes over.
func TestLockTakenOverFromDeadHolder(t *testing.T) {
	s := mustPlainStore(t)
	holder := testutil.StartProc(t, helperCmd(t, "lock-hold", s, "fw"))
	holder.WaitOutput(t, "locked pid=", 10*time.Second)
	hpid := holder.Pid()

	_, err := s.Open("fw")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "held by pid "+strconv.Itoa(hpid)) {
		t.Fatalf("Open while pid %d holds the lock = %v, want ErrLocked naming it", hpid, err)
	}
	if pid, ok := LockHolder(s.LockPath("fw")); !ok || pid != hpid {
		t.Fatalf("LockHolder = %d, %v; want %d", pid, ok, hpid)
	}

	holder.Kill(syscall.SIGKILL)
	holder.Wait(t, 10*time.Second)
	if got := readLockPid(t, s.LockPath("fw")); got != hpid {
		t.Fatalf("the dead holder's lock file names %d, want %d", got, hpid)
	}
	if pid, ok := LockHolder(s.LockPath("fw")); ok {
		t.Fatalf("LockHolder = %d for a dead holder", pid)
	}
	mustOpen(t, s, "fw")
	if got := readLockPid(t, s.LockPath("fw")); got != os.Getpid() {
		t.Fatalf("taken-over lock file names %d, want %d", got, os.Getpid())
	}
}

// A lock file nobody holds is stale, whatever it says.
func TestLockStaleFile(t *testing.T) {
	s := mustPlainStore(t)
	for _, content := range []string{"4194304999\n", "", "garbage"} {
		if err := os.WriteFile(s.LockPath("fw"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, ok := LockHolder(s.LockPath("fw")); ok {
			t.Fatalf("LockHolder reports a holder for an unlocked file holding %q", content)
		}
		o := mustOpen(t, s, "fw")
		if got := readLockPid(t, s.LockPath("fw")); got != os.Getpid() {
			t.Fatalf("lock file names %d after taking over %q, want %d", got, content, os.Getpid())
		}
		o.Close()
	}
	if _, ok := LockHolder(s.LockPath("nosuch")); ok {
		t.Fatal("LockHolder reports a holder for a missing file")
	}
}

// Asking who holds a lock must not hold it, not even for an instant: a
// status run while a supervisor opens the object would make that open fail.
func TestLockHolderDoesNotTakeTheLock(t *testing.T) {
	s := mustPlainStore(t)
	o := mustOpen(t, s, "fw")
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				LockHolder(s.LockPath("fw"))
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	for i := 0; i < 2000; i++ {
		o, err := s.Open("fw")
		if err != nil {
			t.Fatalf("open %d while LockHolder asks: %v", i, err)
		}
		if pid, ok := LockHolder(s.LockPath("fw")); !ok || pid != os.Getpid() {
			t.Fatalf("open %d: LockHolder = %d, %v; want %d", i, pid, ok, os.Getpid())
		}
		o.Close()
	}
}

// A child that holds copies of the lock fds (as the application does for
// the instant between its fork and its exec, or a child killed with bpfsup
// that is not gone yet) does not keep a dead supervisor's object from the
// next: the lock file's lock is the process's own and goes with it, and the
// pin directory's is waited for until the child lets go. Before, the next
// start was refused, "held by pid N", N the dead supervisor.
func TestLockFreedWhenHolderDies(t *testing.T) {
	s := mustPlainStore(t)
	cmd := helperCmd(t, "lock-fork-die", s, "fw")
	cmd.Env = append(cmd.Env, "BPFSUP_PINSTORE_TEST_SLEEP=1")
	holder := testutil.StartProc(t, cmd)
	holder.WaitOutput(t, "locked pid=", 10*time.Second)
	var child int
	if _, err := fmt.Sscanf(holder.Output()[strings.Index(holder.Output(), "child="):], "child=%d", &child); err != nil {
		t.Fatalf("no child pid in %q", holder.Output())
	}
	holder.Kill(syscall.SIGKILL)
	holder.Wait(t, 10*time.Second)
	if state, _ := testutil.ProcState(child); state == 'Z' {
		t.Fatal("the child exited before the test could look")
	}

	// At once: the lock file is free though the child holds its fd.
	f, err := lockFile(s.LockPath("fw"))
	if err != nil {
		t.Fatalf("lock file after its holder died, its child alive: %v", err)
	}
	if err := unlockFile(f); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	o, err := s.Open("fw")
	if err != nil {
		t.Fatalf("Open after the holder died, its child holding the pin directory's lock a moment longer: %v", err)
	}
	o.Close()
	t.Logf("Open waited %v for the child that held the pin directory's lock", time.Since(start).Round(time.Millisecond))
}

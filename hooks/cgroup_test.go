package hooks

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// mustTestCgroup creates an empty cgroup v2 directory, removed when the test
// ends (registered first, so after the processes the test starts in it).
func mustTestCgroup(tb testing.TB) string {
	tb.Helper()
	testutil.RequireRoot(tb)
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	root := findMount(string(mountinfo), "cgroup2")
	if root == "" {
		tb.Fatal("cgroup v2 is not mounted")
	}
	dir, err := os.MkdirTemp(root, "bpfsup-test-")
	if err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		// A process that just exited leaves its cgroup a moment later.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				return
			}
			if time.Now().After(deadline) {
				tb.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return dir
}

// runInCgroup runs a shell command as a process of the cgroup at dir.
func runInCgroup(tb testing.TB, dir, script string) {
	tb.Helper()
	f, err := os.Open(dir)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("bash", "-c", script)
	cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("%s in %s: %v: %s", script, dir, err, out)
	}
}

// readHits reads hits[slot] of the hooks and tracing objects' counter map.
func readHits(tb testing.TB, hits *ebpf.Map, slot uint32) uint64 {
	tb.Helper()
	var v uint64
	if err := hits.Lookup(slot, &v); err != nil {
		tb.Fatalf("read hits[%d]: %v", slot, err)
	}
	return v
}

func TestCgroupHook(t *testing.T) {
	dir := mustTestCgroup(t)
	other := mustTestCgroup(t)
	prog, maps := mustProgramWithMaps(t, "hooks", "connect4_count")
	progB := mustProgram(t, "hooks_v2", "connect4_count")
	h := mustHook(t, "cgroup/connect4:"+dir, "")
	if !h.Updatable() || !strings.Contains(h.Mechanism(), "cgroup") {
		t.Fatalf("cgroup hook: Updatable %v, Mechanism %q", h.Updatable(), h.Mechanism())
	}

	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "cgroup/connect4:"+other, ""), l, Elsewhere)
	wantState(t, mustHook(t, "cgroup/connect6:"+dir, ""), l, Elsewhere)

	// It fires for a process in the cgroup: connect() on a UDP socket sends
	// nothing.
	runInCgroup(t, dir, ": 3<>/dev/udp/127.0.0.1/9")
	if n := readHits(t, maps["hits"], 6); n == 0 {
		t.Fatal("connect4 program did not fire for a process in its cgroup")
	}
	before := readHits(t, maps["hits"], 6)
	runInCgroup(t, other, ": 3<>/dev/udp/127.0.0.1/9")
	if n := readHits(t, maps["hits"], 6); n != before {
		t.Fatalf("connect4 program fired for a process of another cgroup (%d -> %d)", before, n)
	}

	// In place, compare-and-swap.
	if err := l.Update(progB, prog); err != nil {
		t.Fatalf("update cgroup link: %v", err)
	}
	if got := linkInfo(t, l).Program; got != progID(t, progB) {
		t.Fatalf("after update the link runs %d, want %d", got, progID(t, progB))
	}

	// The cgroup goes away: the link is defunct, the target missing.
	if err := unix.Rmdir(dir); err != nil {
		t.Fatalf("remove cgroup: %v", err)
	}
	testutil.WaitFor(t, 10*time.Second, "the link to turn defunct", func() bool {
		st, err := h.Check(l)
		return err == nil && st == Defunct
	})
	if err := CheckTarget(h.Spec()); !errors.Is(err, ErrTargetNotFound) {
		t.Fatalf("CheckTarget with the cgroup gone: %v, want ErrTargetNotFound", err)
	}
}

func TestCgroupHookRefuses(t *testing.T) {
	testutil.RequireRoot(t)
	dir := mustTestCgroup(t)
	tp := mustProgram(t, "hooks", "tp_count")
	if _, err := mustHook(t, "cgroup/connect4:"+dir, "").Attach(tp); !errors.Is(err, ErrWrongProgramType) {
		t.Errorf("attach a tracepoint program to a cgroup: %v, want ErrWrongProgramType", err)
	}
	prog := mustProgram(t, "hooks", "connect4_count")
	if _, err := mustHook(t, "cgroup/connect4:"+dir+"-missing", "").Attach(prog); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("attach to a missing cgroup: %v, want ErrTargetNotFound", err)
	}
	// A directory that is not a cgroup v2 one.
	if _, err := mustHook(t, "cgroup/connect4:"+t.TempDir(), "").Attach(prog); !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), "not on cgroup2") {
		t.Errorf("attach to a plain directory: %v, want ErrBadSpec saying not on cgroup2", err)
	}
	if _, err := New(Spec{Kind: "cgroup", Variant: "connect4", Target: "relative/dir"}); !errors.Is(err, ErrBadSpec) {
		t.Errorf("relative cgroup path: %v, want ErrBadSpec", err)
	}
}

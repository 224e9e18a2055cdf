package skeleton

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestGlobalsAndCORE: a program whose loaded form differs from its ELF's (a
// CO-RE relocation rewrote a field offset, so the kernel's tag is not the
// ELF's) is adopted on a restart all the same, from what the manifest
// recorded of its load; and a program whose configuration variable changed
// (its .rodata, not its instructions) is loaded anew with the new value
// instead of adopted with the old.
func TestGlobalsAndCORE(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("this kernel has no BTF (/sys/kernel/btf/vmlinux: %v), which CO-RE needs", err)
	}
	testutil.SkipWithout(t, testutil.PerfLink) // the object's program is on a tracepoint
	e := testutil.MustEnv(t)
	obj := testutil.BPFObject("globals")
	config := func(step int) string {
		return e2e.WriteConfig(t, fmt.Sprintf("[[object]]\npath = %q\nvariables = { step = %d }\n", obj, step))
	}
	// start runs bpfsup until its child runs and returns its output and the
	// pinned program's id, once the program ran for this process's getppid.
	start := func(cfg string) (string, ebpf.ProgramID) {
		t.Helper()
		p := startRun(t, e, nil, "-c", cfg, "--", "sleep", "1000")
		p.WaitOutput(t, "child started", 30*time.Second)
		testutil.WaitFor(t, 5*time.Second, "the program to see this process's getppid", func() bool {
			unix.Getppid()
			return mapValue(t, e, "globals", "seen", 1) == uint64(os.Getpid())
		})
		id := e2e.FindProgram(t, objectStatus(t, e, "globals"), "on_getppid").ID
		p.Kill(syscall.SIGTERM)
		p.Wait(t, 20*time.Second)
		return p.Output(), ebpf.ProgramID(id)
	}

	out, first := start(config(3))
	if a, l := e2e.InstallCounts(t, out, "globals"); a != 0 || l != 1 {
		t.Fatalf("first start: adopted %d, loaded %d; want 0 and 1", a, l)
	}
	if got := mapValue(t, e, "globals", "seen", 0); got != 3 {
		t.Fatalf("step is %d, want 3 from the configuration", got)
	}
	// The premise: the kernel's tag is not the ELF's (the CO-RE relocation
	// changed an instruction), so adopting by tag alone would fail.
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	info := e2e.ProgramInfo(t, first)
	if err := spec.Programs["on_getppid"].Compatible(info); !errors.Is(err, ebpf.ErrProgIncompatible) {
		t.Fatalf("the loaded program's tag matches the ELF's (%v): the CO-RE relocation changed nothing, the test tests nothing", err)
	}

	out, second := start(config(3))
	if a, l := e2e.InstallCounts(t, out, "globals"); a != 1 || l != 0 || second != first {
		t.Fatalf("restart, same configuration: adopted %d, loaded %d, program %d (was %d); want it adopted\n%s", a, l, second, first, out)
	}

	out, third := start(config(7))
	if a, l := e2e.InstallCounts(t, out, "globals"); a != 0 || l != 1 || third == first {
		t.Fatalf("restart, step 3 -> 7: adopted %d, loaded %d, program %d (was %d); want it loaded anew\n%s", a, l, third, first, out)
	}
	if got := mapValue(t, e, "globals", "seen", 0); got != 7 {
		t.Fatalf("step is %d after the restart with step = 7", got)
	}

	out, fourth := start(config(7))
	if a, l := e2e.InstallCounts(t, out, "globals"); a != 1 || l != 0 || fourth != third {
		t.Fatalf("restart, step 7 again: adopted %d, loaded %d, program %d (was %d); want it adopted\n%s", a, l, fourth, third, out)
	}
}

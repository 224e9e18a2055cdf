package hooks

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// countOwnEvents makes the hooks object's tracing programs count this
// process's events.
func countOwnEvents(tb testing.TB, maps map[string]*ebpf.Map) {
	tb.Helper()
	if err := maps["config"].Put(uint32(0), uint32(os.Getpid())); err != nil {
		tb.Fatalf("set config: %v", err)
	}
}

// testNotUpdatable checks that the hook cannot update l in place, that l
// can be pinned and loaded back, and that a second link with another
// program (next, the upgrade) is taken beside it: make-before-break. The
// kernel refuses the same program twice on one perf event hook (EEXIST).
func testNotUpdatable(t *testing.T, h Hook, l Attachment, next *ebpf.Program) {
	t.Helper()
	if h.Updatable() {
		t.Fatalf("%s: Updatable() = true", h.Spec())
	}
	if err := l.Update(next, nil); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("%s: update: %v, want ErrNotSupported", h.Spec(), err)
	}
	path := filepath.Join(testutil.MustPinRoot(t), "link")
	if err := l.Pin(path); err != nil {
		t.Fatalf("pin %s link: %v", h.Spec(), err)
	}
	pinned, err := LoadPinned(path)
	if err != nil {
		t.Fatalf("load %s link from its pin: %v", h.Spec(), err)
	}
	defer pinned.Close()
	wantState(t, h, pinned, Attached)
	// Make-before-break: a second link on the same hook is taken.
	l2 := mustAttach(t, h, next)
	wantState(t, h, l2, Attached)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func TestTracepointHook(t *testing.T) {
	prog, maps := mustProgramWithMaps(t, "hooks", "tp_count")
	countOwnEvents(t, maps)
	h := mustHook(t, "tracepoint:syscalls/sys_enter_getppid", "")
	refusedWithout(t, testutil.PerfLink, h, prog, "no perf_event bpf_link (Linux 5.15+)")
	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "tracepoint:syscalls/sys_enter_getpid", ""), l, Elsewhere)
	wantState(t, mustHook(t, "raw_tp:sys_enter_getppid", ""), l, Elsewhere)

	before := readHits(t, maps["hits"], 0)
	unix.Getppid()
	if after := readHits(t, maps["hits"], 0); after <= before {
		t.Fatalf("tracepoint program did not fire on getppid (%d -> %d)", before, after)
	}
	testNotUpdatable(t, h, l, mustProgram(t, "hooks_v2", "tp_count"))
}

func TestRawTracepointHook(t *testing.T) {
	prog, maps := mustProgramWithMaps(t, "hooks", "raw_tp_count")
	countOwnEvents(t, maps)
	h := mustHook(t, "raw_tp:sys_enter", "")
	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "raw_tp:sys_exit", ""), l, Elsewhere)

	before := readHits(t, maps["hits"], 1)
	unix.Getppid()
	if after := readHits(t, maps["hits"], 1); after <= before {
		t.Fatalf("raw_tp program did not fire on a syscall (%d -> %d)", before, after)
	}
	testNotUpdatable(t, h, l, mustProgram(t, "hooks_v2", "raw_tp_count"))
}

func TestTracepointRefuses(t *testing.T) {
	testutil.RequireRoot(t)
	tp := mustProgram(t, "hooks", "tp_count")
	raw := mustProgram(t, "hooks", "raw_tp_count")
	if _, err := mustHook(t, "tracepoint:syscalls/no_such_event", "").Attach(tp); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("attach to a missing tracepoint: %v, want ErrTargetNotFound", err)
	}
	if _, err := mustHook(t, "raw_tp:no_such_event", "").Attach(raw); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("attach to a missing raw tracepoint: %v, want ErrTargetNotFound", err)
	}
	if _, err := mustHook(t, "tracepoint:syscalls/sys_enter_getppid", "").Attach(raw); !errors.Is(err, ErrWrongProgramType) {
		t.Errorf("raw_tp program on a tracepoint: %v, want ErrWrongProgramType", err)
	}
	ps := &ebpf.ProgramSpec{SectionName: "tracepoint", Type: ebpf.TracePoint}
	if err := Prepare(mustHook(t, "tracepoint:syscalls/no_such_event", ""), "p", ps); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("Prepare for a missing tracepoint: %v, want ErrTargetNotFound", err)
	}
	for _, bad := range []string{"tracepoint:sys_enter_getppid", "tracepoint:a/b/c", "raw_tp:a/b"} {
		s, err := Parse(bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(s); !errors.Is(err, ErrBadSpec) {
			t.Errorf("New(%s): %v, want ErrBadSpec", bad, err)
		}
	}
}

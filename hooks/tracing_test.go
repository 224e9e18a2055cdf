package hooks

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// trampolinesRefusedHere is this test's own probe, independent of the
// package's: a trivial fentry program fails to load with EPERM while a socket
// filter loads.
func trampolinesRefusedHere(tb testing.TB) bool {
	tb.Helper()
	testutil.RequireRoot(tb)
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	plain, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns, License: "GPL"})
	if err != nil {
		tb.Fatalf("load a socket filter: %v", err)
	}
	plain.Close()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry,
		AttachTo: "__task_pid_nr_ns", Instructions: insns, License: "GPL"})
	if err == nil {
		p.Close()
		return false
	}
	if !errors.Is(err, unix.EPERM) {
		tb.Fatalf("load a trivial fentry program: %v", err)
	}
	return true
}

// mustTracingProgram loads program name of the tracing object, prepared for
// hook h, with its maps.
func mustTracingProgram(tb testing.TB, obj, name string, h Hook) (*ebpf.Program, map[string]*ebpf.Map) {
	tb.Helper()
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(obj))
	if err != nil {
		tb.Fatal(err)
	}
	ps := spec.Programs[name]
	if err := Prepare(h, name, ps); err != nil {
		tb.Fatalf("Prepare %s for %s: %v", name, h.Spec(), err)
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{name: ps}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		tb.Fatalf("load %s: %v", name, err)
	}
	p := coll.DetachProgram(name)
	maps := map[string]*ebpf.Map{}
	for m := range coll.Maps {
		maps[m] = coll.DetachMap(m)
	}
	coll.Close()
	tb.Cleanup(func() {
		p.Close()
		for _, m := range maps {
			m.Close()
		}
	})
	return p, maps
}

func TestTracingHooks(t *testing.T) {
	refused := trampolinesRefusedHere(t)
	for _, tc := range []struct {
		spec, program, other string
		slot                 uint32
		event                func()
	}{
		{"fentry:__task_pid_nr_ns", "fentry_count", "fexit:__task_pid_nr_ns", 0, func() { unix.Getppid() }},
		{"fexit:__task_pid_nr_ns", "fexit_count", "fentry:__task_pid_nr_ns", 1, func() { unix.Getppid() }},
		{"fmod_ret:security_file_open", "fmod_ret_count", "fmod_ret:security_file_permission", 2, openDevNull},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			h := mustHook(t, tc.spec, "")
			if h.Updatable() {
				t.Errorf("%s: Updatable() = true", tc.spec)
			}
			if refused {
				spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject("tracing"))
				if err != nil {
					t.Fatal(err)
				}
				err = Prepare(h, tc.program, spec.Programs[tc.program])
				if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "refuses BPF trampolines") {
					t.Fatalf("Prepare on a kernel that refuses trampolines: %v, want ErrNotSupported saying so", err)
				}
				t.Skip("this kernel refuses BPF trampolines (EPERM loading a trivial fentry program): checked that the hook says so")
			}
			prog, maps := mustTracingProgram(t, "tracing", tc.program, h)
			if err := maps["config"].Put(uint32(0), uint32(unix.Getpid())); err != nil {
				t.Fatal(err)
			}
			refusedWithout(t, testutil.TracingLinkInfo, h, prog, "(Linux 5.13+)")
			l := mustAttach(t, h, prog)
			wantState(t, h, l, Attached)
			wantState(t, mustHook(t, tc.other, ""), l, Elsewhere)
			before := readHits(t, maps["hits"], tc.slot)
			tc.event()
			if after := readHits(t, maps["hits"], tc.slot); after <= before {
				t.Fatalf("%s did not fire (%d -> %d)", tc.spec, before, after)
			}
			next, _ := mustTracingProgram(t, "tracing_v2", tc.program, h)
			testNotUpdatable(t, h, l, next)
		})
	}
}

func openDevNull() {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
}

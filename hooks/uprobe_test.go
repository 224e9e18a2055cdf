package hooks

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestParseUprobe(t *testing.T) {
	for _, tc := range []struct {
		in      string
		binary  string
		symbol  string
		offset  uint64
		pid     int
		ret     bool
		wantErr bool
	}{
		{in: "uprobe:/usr/bin/bash:readline", binary: "/usr/bin/bash", symbol: "readline"},
		{in: "uretprobe:/usr/bin/bash:readline", binary: "/usr/bin/bash", symbol: "readline", ret: true},
		{in: "uprobe:bash:readline:42", binary: "bash", symbol: "readline", pid: 42},
		{in: "uprobe:/lib/libc.so.6:malloc+0x10", binary: "/lib/libc.so.6", symbol: "malloc", offset: 16},
		{in: "uprobe:/lib/libc.so.6:malloc+4:7", binary: "/lib/libc.so.6", symbol: "malloc", offset: 4, pid: 7},
		{in: "uprobe:/bin/app:github.com/x/y.(*T).Run", binary: "/bin/app", symbol: "github.com/x/y.(*T).Run"},
		{in: "uprobe:/usr/bin/bash", wantErr: true},
		{in: "uprobe:/usr/bin/bash:", wantErr: true},
		{in: "uprobe::readline", wantErr: true},
		{in: "uprobe:/usr/bin/bash:readline:pid", wantErr: true},
		{in: "uprobe:/usr/bin/bash:readline:0", wantErr: true},
		{in: "uprobe:/usr/bin/bash:readline+x", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			s, err := Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			h, err := New(s)
			if tc.wantErr {
				if !errors.Is(err, ErrBadSpec) {
					t.Fatalf("New(%s) = %v, want ErrBadSpec", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u := h.(*uprobeHook)
			if u.binary != tc.binary || u.symbol != tc.symbol || u.offset != tc.offset || u.pid != tc.pid || u.ret != tc.ret {
				t.Fatalf("New(%s) = %+v", tc.in, u)
			}
		})
	}
}

// libc finds the C library, a binary with dynamic symbols on any distribution.
func libc(tb testing.TB) string {
	tb.Helper()
	for _, pattern := range []string{"/lib/*-linux-gnu/libc.so.6", "/usr/lib/*-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib64/libc.so.6"} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return m[0]
		}
	}
	tb.Skip("no libc.so.6 to probe on this system")
	return ""
}

// The uprobe's file and offset as the kernel reports them (computed by
// cilium/ebpf when attaching) are what Check computes from the symbol.
func TestUprobeHook(t *testing.T) {
	lib := libc(t)
	prog := mustProgram(t, "hooks", "uprobe_count")
	h := mustHook(t, "uprobe:"+lib+":getpid", "")
	if err := Prepare(h, "uprobe_count", &ebpf.ProgramSpec{SectionName: "uprobe", Type: ebpf.Kprobe}); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	refusedWithout(t, testutil.PerfLink, h, prog, "no perf_event bpf_link (Linux 5.15+)")
	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "uprobe:"+lib+":getppid", ""), l, Elsewhere)
	wantState(t, mustHook(t, "uretprobe:"+lib+":getpid", ""), l, Elsewhere)
	wantState(t, mustHook(t, "uprobe:"+lib+":getpid+1", ""), l, Elsewhere)
	// The pid is not reported: a link for any pid counts as attached.
	wantState(t, mustHook(t, "uprobe:"+lib+":getpid:1", ""), l, Attached)

	// A bare library name is found where the dynamic linker looks.
	wantState(t, mustHook(t, "uprobe:libc.so.6:getpid", ""), l, Attached)

	ret := mustAttach(t, mustHook(t, "uretprobe:"+lib+":getpid", ""), mustProgram(t, "hooks", "uretprobe_count"))
	wantState(t, mustHook(t, "uretprobe:"+lib+":getpid", ""), ret, Attached)
	wantState(t, h, ret, Elsewhere)
	testNotUpdatable(t, h, l, mustProgram(t, "hooks_v2", "uprobe_count"))
}

func TestUprobeRefuses(t *testing.T) {
	testutil.RequireRoot(t)
	lib := libc(t)
	ps := &ebpf.ProgramSpec{SectionName: "uprobe", Type: ebpf.Kprobe}
	if err := Prepare(mustHook(t, "uprobe:"+lib+":no_such_symbol_bpfsup", ""), "p", ps); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("Prepare for a missing symbol: %v, want ErrTargetNotFound", err)
	}
	if err := Prepare(mustHook(t, "uprobe:/no/such/binary:main", ""), "p", ps); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("Prepare for a missing binary: %v, want ErrTargetNotFound", err)
	}
	if err := Prepare(mustHook(t, "uprobe:"+lib+":getpid", ""), "p", &ebpf.ProgramSpec{SectionName: "xdp", Type: ebpf.XDP}); !errors.Is(err, ErrWrongProgramType) {
		t.Errorf("Prepare an XDP program for a uprobe: %v, want ErrWrongProgramType", err)
	}
	if err := CheckTarget(mustHook(t, "uprobe:/no/such/binary:main", "").Spec()); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("CheckTarget for a missing binary: %v, want ErrTargetNotFound", err)
	}
}

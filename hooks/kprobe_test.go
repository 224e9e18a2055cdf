package hooks

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestParseKprobe(t *testing.T) {
	for in, wantErr := range map[string]bool{
		"kprobe:do_unlinkat":        false,
		"kprobe:do_unlinkat+0x8":    false,
		"kretprobe:do_unlinkat":     false,
		"kretprobe:do_unlinkat+8":   true, // a return probe has no offset
		"kprobe:do_unlinkat+x":      true,
		"kprobe:do unlinkat":        true,
		"kprobe:/usr/bin/bash:main": true,
	} {
		s, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(s)
		if got := errors.Is(err, ErrBadSpec); got != wantErr {
			t.Errorf("New(%s) = %v, want ErrBadSpec: %v", in, err, wantErr)
		}
	}
}

// On a kernel without kprobes the hook says so, before loading and when
// attaching; elsewhere it attaches and checks.
func TestKprobeHook(t *testing.T) {
	prog, maps := mustProgramWithMaps(t, "hooks", "kprobe_count")
	h := mustHook(t, "kprobe:__task_pid_nr_ns", "")
	ps := &ebpf.ProgramSpec{SectionName: "kprobe", Type: ebpf.Kprobe}
	if !haveProbes("kprobe") {
		for what, err := range map[string]error{"Prepare": Prepare(h, "kprobe_count", ps), "Attach": attachErr(h, prog)} {
			if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "lacks kprobes") {
				t.Errorf("%s without kprobes: %v, want ErrNotSupported saying the kernel lacks kprobes", what, err)
			}
		}
		t.Skip("this kernel lacks kprobes (CONFIG_KPROBES): checked that the hook says so")
	}
	if err := Prepare(h, "kprobe_count", ps); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	countOwnEvents(t, maps)
	refusedWithout(t, testutil.PerfLink, h, prog, "no perf_event bpf_link (Linux 5.15+)")
	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "kretprobe:__task_pid_nr_ns", ""), l, Elsewhere)
	wantState(t, mustHook(t, "kprobe:do_unlinkat", ""), l, Elsewhere)
	before := readHits(t, maps["hits"], 4)
	unix.Getppid()
	if after := readHits(t, maps["hits"], 4); after <= before {
		t.Fatalf("kprobe did not fire (%d -> %d)", before, after)
	}
	testNotUpdatable(t, h, l, mustProgram(t, "hooks_v2", "kprobe_count"))
}

// attachErr attaches and returns the error, closing a link that was made.
func attachErr(h Hook, prog *ebpf.Program) error {
	l, err := h.Attach(prog)
	if err == nil {
		l.Close()
	}
	return err
}

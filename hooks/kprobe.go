package hooks

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func init() {
	for _, name := range []string{"kprobe", "kretprobe"} {
		register(name, kind{
			variants:    []string{""},
			needsTarget: true,
			make: func(s Spec) (Hook, error) {
				fn, off, hasOff := strings.Cut(s.Target, "+")
				h := &kprobeHook{spec: s, ret: s.Kind == "kretprobe", function: fn}
				if hasOff {
					n, err := strconv.ParseUint(off, 0, 64)
					if err != nil || h.ret {
						return nil, fmt.Errorf("hook %q: want kprobe:FUNCTION[+OFFSET] or kretprobe:FUNCTION: %w", s, ErrBadSpec)
					}
					h.offset = n
				}
				if !traceName(fn) {
					return nil, fmt.Errorf("hook %q: want %s:FUNCTION, a kernel function: %w", s, s.Kind, ErrBadSpec)
				}
				return h, nil
			},
		})
	}
}

// kprobeHook attaches a Kprobe program to a kernel function, on entry
// (kprobe, optionally OFFSET bytes in) or return (kretprobe), with a
// perf_event bpf_link. Such links cannot swap their program: upgrades are
// make-before-break. A kernel built without CONFIG_KPROBES has neither a
// kprobe PMU nor kprobe_events in tracefs: the hook says so before anything
// is loaded.
type kprobeHook struct {
	spec     Spec
	ret      bool
	function string
	offset   uint64
}

func (h *kprobeHook) Spec() Spec        { return h.spec }
func (h *kprobeHook) Updatable() bool   { return false }
func (h *kprobeHook) Mechanism() string { return "bpf_link perf_event (" + h.spec.Kind + ")" }

func (h *kprobeHook) lacking() error {
	if haveProbes("kprobe") {
		return nil
	}
	return fmt.Errorf("hook %s: this kernel lacks kprobes (no kprobe PMU in /sys/bus/event_source/devices and no kprobe_events in tracefs; it was built without CONFIG_KPROBES): %w", h.spec, ErrNotSupported)
}

func (h *kprobeHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != ebpf.Kprobe {
		return fmt.Errorf("hook %s needs a program of type %s (SEC(\"%s\")); program %s (section %q) is %s: %w",
			h.spec, ebpf.Kprobe, h.spec.Kind, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	return h.lacking()
}

func (h *kprobeHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.Kprobe); err != nil {
		return nil, err
	}
	if err := h.lacking(); err != nil {
		return nil, err
	}
	var (
		l   link.Link
		err error
	)
	if h.ret {
		l, err = link.Kretprobe(h.function, prog, nil)
	} else {
		l, err = link.Kprobe(h.function, prog, &link.KprobeOptions{Offset: h.offset})
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	if err := mustBePinnable(l); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

// Check compares the probe's kind, function and offset as the kernel reports
// them.
func (h *kprobeHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	want := link.PerfEventKprobe
	if h.ret {
		want = link.PerfEventKretprobe
	}
	pe := info.PerfEvent()
	if st, known := perfEventState(info, pe); !known {
		return st, nil
	}
	if pe.Type != want {
		return Elsewhere, nil
	}
	kp := pe.Kprobe()
	if kp == nil || kp.Function != h.function || uint64(kp.Offset) != h.offset {
		return Elsewhere, nil
	}
	return Attached, nil
}

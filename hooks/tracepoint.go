package hooks

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func init() {
	register("tracepoint", kind{
		variants:    []string{""},
		needsTarget: true,
		make: func(s Spec) (Hook, error) {
			group, name, ok := strings.Cut(s.Target, "/")
			if !ok || !traceName(group) || !traceName(name) {
				return nil, fmt.Errorf("hook %q: want tracepoint:GROUP/NAME, e.g. tracepoint:sched/sched_process_exec: %w", s, ErrBadSpec)
			}
			return &tracepointHook{spec: s, group: group, name: name}, nil
		},
	})
	register("raw_tp", kind{
		variants:    []string{""},
		needsTarget: true,
		make: func(s Spec) (Hook, error) {
			if !traceName(s.Target) {
				return nil, fmt.Errorf("hook %q: want raw_tp:NAME, e.g. raw_tp:sched_switch: %w", s, ErrBadSpec)
			}
			return &rawTPHook{spec: s}, nil
		},
	})
}

// traceName reports whether s is a plausible tracepoint group or event name.
func traceName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// tracefsDirs are where tracefs is found, in the order cilium/ebpf looks.
var tracefsDirs = []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}

// tracefs returns the mounted tracefs directory, or "".
func tracefs() string {
	for _, d := range tracefsDirs {
		if _, err := os.Stat(filepath.Join(d, "events")); err == nil {
			return d
		}
	}
	return ""
}

// tracepointHook attaches a TracePoint program to a kernel tracepoint with a
// perf_event bpf_link. Such a link cannot swap its program: an upgrade
// attaches a second link and then drops the first (make-before-break), so an
// event in between may be counted twice, never missed.
type tracepointHook struct {
	spec        Spec
	group, name string
}

func (h *tracepointHook) Spec() Spec        { return h.spec }
func (h *tracepointHook) Updatable() bool   { return false }
func (h *tracepointHook) Mechanism() string { return "bpf_link perf_event (tracepoint)" }

// prepare checks the program type and that the tracepoint exists, so that a
// misspelt name is said before anything is loaded.
func (h *tracepointHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != ebpf.TracePoint {
		return fmt.Errorf("hook %s needs a program of type %s; program %s (section %q) is %s: %w",
			h.spec, ebpf.TracePoint, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	return h.exists()
}

func (h *tracepointHook) exists() error {
	dir := tracefs()
	if dir == "" {
		return fmt.Errorf("hook %s: tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing); tracepoints need it", h.spec)
	}
	if _, err := os.Stat(filepath.Join(dir, "events", h.group, h.name)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hook %s: no tracepoint %s/%s in %s/events: %w", h.spec, h.group, h.name, dir, ErrTargetNotFound)
	}
	return nil
}

func (h *tracepointHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.TracePoint); err != nil {
		return nil, err
	}
	if err := h.exists(); err != nil {
		return nil, err
	}
	l, err := link.Tracepoint(h.group, h.name, prog, nil)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	if err := mustBePinnable(l); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

// Check compares the tracepoint's name. The kernel reports the event's name
// but not its group (sys_enter_openat, not syscalls/sys_enter_openat), so two
// tracepoints of one name in different groups cannot be told apart.
func (h *tracepointHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	pe := info.PerfEvent()
	if st, known := perfEventState(info, pe); !known {
		return st, nil
	}
	if pe.Type != link.PerfEventTracepoint {
		return Elsewhere, nil
	}
	if tp := pe.Tracepoint(); tp == nil || tp.Tracepoint != h.name {
		return Elsewhere, nil
	}
	return Attached, nil
}

// perfEventState sorts out the perf_event links whose event the kernel does
// not describe: known is false when Check has its answer already, st. A link
// of another type is Elsewhere; a perf_event link on a kernel before 6.6,
// which reports no event, is Unknown.
func perfEventState(info *link.Info, pe *link.PerfEventInfo) (st State, known bool) {
	if info.Type != link.PerfEventType {
		return Elsewhere, false
	}
	if pe == nil || pe.Type == link.PerfEventUnspecified {
		return Unknown, false
	}
	return Attached, true
}

// mustBePinnable closes l and returns an error when it is not a bpf_link:
// cilium/ebpf falls back to attaching perf events by ioctl before Linux 5.15,
// which makes nothing bpfsup can pin.
func mustBePinnable(l link.Link) error {
	if _, isLink := l.(interface{ FD() int }); isLink {
		return nil
	}
	l.Close()
	return fmt.Errorf("the kernel has no perf_event bpf_link (Linux 5.15+), which a pinned attachment needs: %w", ErrNotSupported)
}

// rawTPHook attaches a RawTracepoint program to a raw tracepoint with a
// raw_tracepoint bpf_link. Such a link cannot swap its program: upgrades are
// make-before-break.
type rawTPHook struct{ spec Spec }

func (h *rawTPHook) Spec() Spec        { return h.spec }
func (h *rawTPHook) Updatable() bool   { return false }
func (h *rawTPHook) Mechanism() string { return "bpf_link raw_tracepoint" }

func (h *rawTPHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != ebpf.RawTracepoint && ps.Type != ebpf.RawTracepointWritable {
		return fmt.Errorf("hook %s needs a program of type %s; program %s (section %q) is %s: %w",
			h.spec, ebpf.RawTracepoint, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	return nil
}

func (h *rawTPHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.RawTracepoint, ebpf.RawTracepointWritable); err != nil {
		return nil, err
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: h.spec.Target, Program: prog})
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attach %s: no raw tracepoint %q: %w", h.spec, h.spec.Target, ErrTargetNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

func (h *rawTPHook) Check(a Attachment) (State, error) {
	return rawTracepointState(a, h.spec.Target)
}

// rawTracepointState is Attached when l is a raw_tracepoint link on the
// tracepoint name (raw_tp and tp_btf programs alike).
func rawTracepointState(a Attachment, name string) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	rt := info.RawTracepoint()
	if info.Type != link.RawTracepointType || rt == nil || rt.Name != name {
		return Elsewhere, nil
	}
	return Attached, nil
}

package hooks

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// tracingAttach maps the tracing kinds to their attach types.
var tracingAttach = map[string]ebpf.AttachType{
	"fentry":   ebpf.AttachTraceFEntry,
	"fexit":    ebpf.AttachTraceFExit,
	"fmod_ret": ebpf.AttachModifyReturn,
}

func init() {
	for name := range tracingAttach {
		register(name, kind{
			variants:    []string{""},
			needsTarget: true,
			make: func(s Spec) (Hook, error) {
				if !traceName(s.Target) {
					return nil, fmt.Errorf("hook %q: want %s:FUNCTION, a kernel function: %w", s, s.Kind, ErrBadSpec)
				}
				return &tracingHook{spec: s, attach: tracingAttach[s.Kind]}, nil
			},
		})
	}
	register("tp_btf", kind{
		variants:    []string{""},
		needsTarget: true,
		make: func(s Spec) (Hook, error) {
			if !traceName(s.Target) {
				return nil, fmt.Errorf("hook %q: want tp_btf:TRACEPOINT, a raw tracepoint the kernel's BTF describes (tp_btf:sched_switch): %w", s, ErrBadSpec)
			}
			return &btfTracepointHook{spec: s}, nil
		},
	})
}

// btfTracepointHook attaches a Tracing program of attach type raw_tp
// (SEC("tp_btf/NAME")) to a raw tracepoint typed by the kernel's BTF. Unlike
// fentry it needs no trampoline: the kernel attaches it with a
// raw_tracepoint link, as a raw_tp program. As for fentry the kernel binds
// the tracepoint at load time (prepare), and the link cannot swap its
// program: upgrades are make-before-break.
type btfTracepointHook struct {
	spec Spec
}

func (h *btfTracepointHook) Spec() Spec        { return h.spec }
func (h *btfTracepointHook) Updatable() bool   { return false }
func (h *btfTracepointHook) Mechanism() string { return "bpf_link raw_tracepoint (tp_btf)" }

func (h *btfTracepointHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	return bindAtLoad(h.spec, name, ps, ebpf.Tracing, ebpf.AttachTraceRawTp, h.spec.Target)
}

func (h *btfTracepointHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.Tracing); err != nil {
		return nil, err
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

func (h *btfTracepointHook) Check(a Attachment) (State, error) {
	return rawTracepointState(a, h.spec.Target)
}

// tracingHook attaches a Tracing program to a kernel function through a BPF
// trampoline (fentry, fexit, fmod_ret) with a tracing bpf_link. The kernel
// binds the function at load time, so the hook sets the program's AttachTo
// before it is loaded (prepare): a program of this kind attaches to the one
// function it was loaded for. Tracing links cannot swap their program:
// upgrades are make-before-break.
type tracingHook struct {
	spec   Spec
	attach ebpf.AttachType
}

func (h *tracingHook) Spec() Spec        { return h.spec }
func (h *tracingHook) Updatable() bool   { return false }
func (h *tracingHook) Mechanism() string { return "bpf_link tracing (" + h.spec.Kind + ")" }

func (h *tracingHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if err := bindAtLoad(h.spec, name, ps, ebpf.Tracing, h.attach, h.spec.Target); err != nil {
		return err
	}
	return probeTrampoline(h.spec, ebpf.Tracing, h.attach, h.spec.Target)
}

func (h *tracingHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.Tracing); err != nil {
		return nil, err
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: h.attach})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, trampolineError(err))
	}
	if err := mustSayTarget(l); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

// mustSayTarget closes l and returns an error when its info names no
// target: before Linux 5.13 a tracing link does not say what it is
// attached to, so a pinned one could be neither checked nor adopted (and
// its pinned program not attached again).
func mustSayTarget(l link.Link) error {
	info, err := l.Info()
	if err == nil {
		if ti := info.Tracing(); ti != nil && ti.TargetBtfId != 0 {
			return nil
		}
	}
	l.Close()
	return fmt.Errorf("the kernel's tracing links do not say their target (Linux 5.13+), which checking and adopting a pinned one needs: %w", ErrNotSupported)
}

func (h *tracingHook) Check(a Attachment) (State, error) {
	return checkTracing(a, h.attach, h.spec.Target)
}

// bindAtLoad checks that ps can be loaded for a hook whose target the kernel
// wants at load time (fentry and the like, lsm), and sets that target. A
// program whose section names another target is re-targeted; one that an
// earlier attachment already re-targeted elsewhere is refused, since one
// loaded program serves one target.
func bindAtLoad(spec Spec, name string, ps *ebpf.ProgramSpec, typ ebpf.ProgramType, attach ebpf.AttachType, target string) error {
	if ps.Type != typ || ps.AttachType != attach {
		return fmt.Errorf("hook %s needs a program of type %s for %s; program %s (section %q) is %s for %s: %w",
			spec, typ, attach, name, ps.SectionName, ps.Type, ps.AttachType, ErrWrongProgramType)
	}
	if ps.AttachTo != target && ps.AttachTo != sectionTarget(ps.SectionName) {
		return fmt.Errorf("hook %s: program %s is already loaded for %s:%s; a %s program attaches to the one target it is loaded for (load it again under another name): %w",
			spec, name, spec.Kind, ps.AttachTo, spec.Kind, ErrBadSpec)
	}
	ps.AttachTo = target
	return nil
}

// sectionTarget is what follows the first '/' of a section name, which
// cilium/ebpf, like libbpf, takes as the program's load-time target.
func sectionTarget(section string) string {
	_, extra, _ := strings.Cut(strings.TrimPrefix(section, "?"), "/")
	return extra
}

// errTrampolines says that this kernel refuses BPF trampolines.
var errTrampolines = fmt.Errorf("this kernel refuses BPF trampolines: a trivial program of this kind fails to load with EPERM while other programs load, so fentry, fexit, fmod_ret and lsm hooks cannot be used on this machine: %w", ErrNotSupported)

// probeTrampoline loads a trivial program of the hook's kind at its target
// and returns errTrampolines when the kernel refuses it with EPERM although
// it loads a socket filter: some kernels forbid trampolines outright, and
// the load error of the real program would only say "operation not
// permitted". Other failures (no such function) are left for the real load
// to report.
func probeTrampoline(spec Spec, typ ebpf.ProgramType, attach ebpf.AttachType, target string) error {
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	plain, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns, License: "GPL"})
	if err != nil {
		return nil // Not privileged, or worse: the real load says so.
	}
	plain.Close()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: typ, AttachType: attach, AttachTo: target, Instructions: insns, License: "GPL"})
	if err == nil {
		p.Close()
		return nil
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("hook %s: %w", spec, errTrampolines)
	}
	return nil
}

// trampolineError rewords the attach errors that mean the kernel cannot make
// a trampoline here.
func trampolineError(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, ErrNotSupported) {
		return fmt.Errorf("%w (%v)", errTrampolines, err)
	}
	return err
}

// checkTracing compares a tracing link's attach type and target function
// with the kernel's BTF. When the target cannot be looked up (a module
// function, no kernel BTF) an alive link of the right attach type counts as
// attached.
func checkTracing(a Attachment, attach ebpf.AttachType, function string) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	ti := info.Tracing()
	if info.Type != link.TracingType || ti == nil || ebpf.AttachType(ti.AttachType) != attach {
		return Elsewhere, nil
	}
	id, ok := kernelFuncID(function)
	if ok && id != ti.TargetBtfId {
		return Elsewhere, nil
	}
	return Attached, nil
}

// kernelFuncID is the BTF id of a function of vmlinux.
func kernelFuncID(name string) (btf.TypeID, bool) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, false
	}
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); err != nil {
		return 0, false
	}
	id, err := spec.TypeID(fn)
	if err != nil {
		return 0, false
	}
	return id, true
}

package hooks

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// newTCXHook makes a tcx hook, or, on a kernel without tcx (before Linux
// 6.6), a tc hook that stands in for it: the same program type and traffic,
// attached with a cls_bpf filter on clsact (tc.go says what that keeps of
// the link promises). The hook's Mechanism and Caveat say which it is.
func newTCXHook(s Spec) (Hook, error) {
	if err := HaveTCX(); errors.Is(err, ErrNotSupported) {
		return &tcHook{spec: s, fallback: true}, nil
	}
	// A probe that could not tell (no privileges to load a program) leaves
	// tcx, whose attach then reports the real error.
	return &tcxHook{spec: s}, nil
}

// HaveTCX reports whether the kernel has tcx links: nil, or an error wrapping
// ErrNotSupported (or why the probe could not tell). The answer is cached.
var HaveTCX = sync.OnceValue(probeTCX)

// probeTCX attaches a trivial program to an interface that does not exist:
// a kernel with tcx answers ENODEV, one without refuses the attach type.
func probeTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("probe tcx: load program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Program: prog, Attach: ebpf.AttachTCXIngress, Interface: math.MaxInt32})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("tcx: %w", err)
	}
	return nil
}

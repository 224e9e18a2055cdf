package hooks

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func init() {
	register("xdp", kind{
		variants:    []string{"", "generic", "native"},
		needsTarget: true,
		network:     true,
		make:        func(s Spec) (Hook, error) { return &xdpHook{spec: s}, nil },
	})
}

// xdpHook attaches an XDP program to an interface with an XDP bpf_link.
// Without a variant the kernel picks the mode: native where the driver has
// it, generic otherwise.
type xdpHook struct{ spec Spec }

func (h *xdpHook) Spec() Spec      { return h.spec }
func (h *xdpHook) Updatable() bool { return true }

func (h *xdpHook) Mechanism() string {
	if h.spec.Variant != "" {
		return "bpf_link xdp (" + h.spec.Variant + ")"
	}
	return "bpf_link xdp"
}

func (h *xdpHook) flags() link.XDPAttachFlags {
	switch h.spec.Variant {
	case "generic":
		return link.XDPGenericMode
	case "native":
		return link.XDPDriverMode
	}
	return 0
}

func (h *xdpHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.XDP); err != nil {
		return nil, err
	}
	var l link.Link
	err := InNetns(h.spec.Netns, func() error {
		idx, err := ifindexHere(h.spec.Netns, h.spec.Target)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: h.flags()})
		return err
	})
	if errors.Is(err, unix.EEXIST) {
		if other := h.otherMode(); other != "" {
			return nil, fmt.Errorf("attach %s: %w: the interface runs an XDP program in %s mode, and the kernel does not "+
				"run generic and native XDP programs on one interface at once, so changing the mode leaves the "+
				"interface without a filter for a moment: detach the %s program first (bpfsup down, or "+
				"ip link set dev %s xdp off), then start again", h.spec, err, other, other, h.spec.Target)
		}
	}
	if errors.Is(err, unix.EBUSY) {
		if other := h.runningProgram(); other != "" {
			return nil, fmt.Errorf("attach %s: %w: the interface already runs XDP program %s, put there by something "+
				"other than this attachment (see bpftool net show dev %s, and bpftool link show for the link that may "+
				"hold it); bpfsup does not replace it: detach it first", h.spec, err, other, h.spec.Target)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

// runningProgram describes the XDP program the interface runs ("id 12
// (name xdp_fw)"), or "".
func (h *xdpHook) runningProgram() string {
	f, err := ifaceByName(h.spec.Netns, h.spec.Target)
	if err != nil {
		return ""
	}
	for _, id := range []uint32{f.drvProg, f.skbProg, f.hwProg} {
		if id == 0 {
			continue
		}
		desc := fmt.Sprintf("id %d", id)
		if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id)); err == nil {
			if info, err := p.Info(); err == nil && info.Name != "" {
				desc += fmt.Sprintf(" (name %s)", info.Name)
			}
			p.Close()
		}
		return desc
	}
	return ""
}

// otherMode names the XDP mode other than the hook's that the interface
// runs a program in ("generic" or "native"), or "".
func (h *xdpHook) otherMode() string {
	f, err := ifaceByName(h.spec.Netns, h.spec.Target)
	if err != nil {
		return ""
	}
	switch {
	case h.spec.Variant != "native" && f.drvProg != 0:
		return "native"
	case h.spec.Variant != "generic" && f.skbProg != 0:
		return "generic"
	}
	return ""
}

func (h *xdpHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	xi := info.XDP()
	if info.Type != link.XDPType || xi == nil {
		return Elsewhere, nil
	}
	if xi.Ifindex == 0 {
		return Defunct, nil
	}
	// Ifindexes repeat across network namespaces: the interface itself must
	// run the link's program, or the link sits on a namesake elsewhere. And
	// in the mode the hook asks for: the link info does not say which, and
	// a generic link does not make an xdp/native hook.
	f, err := ifaceByName(h.spec.Netns, h.spec.Target)
	if err != nil || f.index != int(xi.Ifindex) || !f.runsXDP(uint32(info.Program), h.spec.Variant) {
		// Our interface is gone, or the link is on another one, or in
		// another mode.
		return Elsewhere, nil
	}
	return Attached, nil
}

// ifaceState compares the ifindex a link reports with the hook's interface.
func ifaceState(spec Spec, linkIfindex int) (State, error) {
	if linkIfindex == 0 {
		return Defunct, nil
	}
	idx, err := ifindex(spec.Netns, spec.Target)
	if err != nil {
		// The link is on an interface, but ours is gone: not ours.
		return Elsewhere, nil
	}
	if idx != linkIfindex {
		return Elsewhere, nil
	}
	return Attached, nil
}

// HaveXDPFrags reports whether the kernel loads XDP programs for
// multi-buffer packets (SEC("xdp.frags"), BPF_F_XDP_HAS_FRAGS, Linux 5.18):
// nil, or an error wrapping ErrNotSupported. The answer is cached.
var HaveXDPFrags = sync.OnceValue(func() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Flags: unix.BPF_F_XDP_HAS_FRAGS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("XDP programs for multi-buffer packets (xdp.frags, Linux 5.18+): %w", ErrNotSupported)
	}
	if err == nil {
		prog.Close()
	}
	return nil
})

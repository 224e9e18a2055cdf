package hooks

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func init() {
	register("tcx", kind{
		variants:    []string{"ingress", "egress"},
		needsTarget: true,
		network:     true,
		make:        newTCXHook, // tcx_fallback.go: tc on kernels without tcx
	})
}

// tcxHook attaches a SchedCLS program to an interface's ingress or egress
// with a tcx bpf_link (Linux 6.6+).
type tcxHook struct{ spec Spec }

func (h *tcxHook) Spec() Spec        { return h.spec }
func (h *tcxHook) Updatable() bool   { return true }
func (h *tcxHook) Mechanism() string { return "bpf_link tcx" }

func (h *tcxHook) attachType() ebpf.AttachType {
	if h.spec.Variant == "egress" {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

func (h *tcxHook) Attach(prog *ebpf.Program) (Attachment, error) {
	return h.AttachAt(prog, Position{Where: Last}, 0)
}

// AttachAt attaches prog at pos, if the hook is at revision (0: any).
func (h *tcxHook) AttachAt(prog *ebpf.Program, pos Position, revision uint64) (Attachment, error) {
	return attachOrdered(h.spec, prog, pos, func(idx int, anchor link.Anchor) (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{Program: prog, Interface: idx, Attach: h.attachType(),
			Anchor: anchor, ExpectedRevision: revision})
	})
}

// attachOrdered attaches the SchedCLS program prog at pos on the interface
// of spec through attach, in the interface's network namespace: the part
// tcx and netkit share.
func attachOrdered(spec Spec, prog *ebpf.Program, pos Position, attach func(ifindex int, anchor link.Anchor) (link.Link, error)) (Attachment, error) {
	if err := checkType(spec, prog, ebpf.SchedCLS); err != nil {
		return nil, err
	}
	anchor, err := anchorOf(pos)
	if err != nil {
		return nil, err
	}
	var l link.Link
	err = InNetns(spec.Netns, func() error {
		idx, err := ifindexHere(spec.Netns, spec.Target)
		if err != nil {
			return err
		}
		l, err = attach(idx, anchor)
		return err
	})
	if err != nil {
		return nil, attachError(spec, pos, err)
	}
	return attached(l), nil
}

// Chain reads the programs on the hook, in order, and its revision.
func (h *tcxHook) Chain() (Chain, error) { return queryChain(h.spec, h.attachType()) }

// LinkOn reports whether the link of info is a tcx link of this hook's
// direction on its interface.
func (h *tcxHook) LinkOn(info *link.Info) bool {
	ti := info.TCX()
	if info.Type != link.TCXType || ti == nil || ebpf.AttachType(ti.AttachType) != h.attachType() {
		return false
	}
	idx, err := ifindex(h.spec.Netns, h.spec.Target)
	return err == nil && idx == int(ti.Ifindex)
}

func (h *tcxHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	ti := info.TCX()
	if info.Type != link.TCXType || ti == nil || ebpf.AttachType(ti.AttachType) != h.attachType() {
		return Elsewhere, nil
	}
	st, err := ifaceState(h.spec, int(ti.Ifindex))
	if err != nil || st != Attached {
		return st, err
	}
	// Ifindexes repeat across network namespaces: the interface itself must
	// list the link, or the link sits on a namesake elsewhere.
	ids, err := tcxLinksOn(h.spec.Netns, int(ti.Ifindex), h.attachType())
	if err != nil {
		return Elsewhere, nil
	}
	for _, id := range ids {
		if id == info.ID {
			return Attached, nil
		}
	}
	return Elsewhere, nil
}

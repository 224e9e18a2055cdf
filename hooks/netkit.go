package hooks

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func init() {
	register("netkit", kind{
		variants:    []string{"primary", "peer"},
		needsTarget: true,
		network:     true,
		make:        func(s Spec) (Hook, error) { return &netkitHook{spec: s}, nil },
	})
}

// netkitHook attaches a SchedCLS program to a netkit device (Linux 6.7+):
// "netkit/primary:nk0" runs it for what the primary device nk0 sends,
// "netkit/peer:nk0" for what its peer sends. Both are named by the primary
// device, as the kernel takes them (the peer usually sits in a container's
// network namespace, where bpfsup need not reach). The links are ordered and
// updated in place as tcx's are.
type netkitHook struct{ spec Spec }

func (h *netkitHook) Spec() Spec        { return h.spec }
func (h *netkitHook) Updatable() bool   { return true }
func (h *netkitHook) Mechanism() string { return "bpf_link netkit" }

func (h *netkitHook) attachType() ebpf.AttachType {
	if h.spec.Variant == "peer" {
		return ebpf.AttachNetkitPeer
	}
	return ebpf.AttachNetkitPrimary
}

func (h *netkitHook) Attach(prog *ebpf.Program) (Attachment, error) {
	return h.AttachAt(prog, Position{Where: Last}, 0)
}

// AttachAt attaches prog at pos, if the hook is at revision (0: any).
func (h *netkitHook) AttachAt(prog *ebpf.Program, pos Position, revision uint64) (Attachment, error) {
	return attachOrdered(h.spec, prog, pos, func(idx int, anchor link.Anchor) (link.Link, error) {
		return link.AttachNetkit(link.NetkitOptions{Program: prog, Interface: idx, Attach: h.attachType(),
			Anchor: anchor, ExpectedRevision: revision})
	})
}

// Chain reads the programs on the hook, in order, and its revision.
func (h *netkitHook) Chain() (Chain, error) { return queryChain(h.spec, h.attachType()) }

// LinkOn reports whether the link of info is a netkit link of this hook's
// side on its device.
func (h *netkitHook) LinkOn(info *link.Info) bool {
	ni := info.Netkit()
	if info.Type != link.NetkitType || ni == nil || ebpf.AttachType(ni.AttachType) != h.attachType() {
		return false
	}
	if h.spec.Variant == "peer" {
		// The link is on the peer device, whose index is of the peer's
		// namespace: the chain, read through the primary, says.
		return ni.Ifindex != 0
	}
	idx, err := ifindex(h.spec.Netns, h.spec.Target)
	return err == nil && idx == int(ni.Ifindex)
}

func (h *netkitHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	ni := info.Netkit()
	if info.Type != link.NetkitType || ni == nil || ebpf.AttachType(ni.AttachType) != h.attachType() {
		return Elsewhere, nil
	}
	if h.spec.Variant == "peer" {
		// The kernel reports the peer device's index, of the peer's
		// network namespace; the primary's chain says where it is.
		if ni.Ifindex == 0 {
			return Defunct, nil
		}
	} else if st, err := ifaceState(h.spec, int(ni.Ifindex)); err != nil || st != Attached {
		return st, err
	}
	// Ifindexes repeat across network namespaces: the device itself must
	// list the link.
	c, err := h.Chain()
	if err != nil || c.Index(info.ID) < 0 {
		return Elsewhere, nil
	}
	return Attached, nil
}

package hooks

import (
	"fmt"

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
	if err := checkType(h.spec, prog, ebpf.SchedCLS); err != nil {
		return nil, err
	}
	var l link.Link
	err := InNetns(h.spec.Netns, func() error {
		idx, err := ifindexHere(h.spec.Netns, h.spec.Target)
		if err != nil {
			return err
		}
		l, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: idx, Attach: h.attachType()})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
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

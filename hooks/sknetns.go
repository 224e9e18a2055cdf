package hooks

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// netnsKinds are the hooks whose target is a network namespace itself.
var netnsKinds = map[string]struct {
	prog   ebpf.ProgramType
	attach ebpf.AttachType
}{
	"sk_lookup":      {ebpf.SkLookup, ebpf.AttachSkLookup},
	"flow_dissector": {ebpf.FlowDissector, ebpf.AttachFlowDissector},
}

func init() {
	for name, nk := range netnsKinds {
		register(name, kind{
			variants:    []string{""},
			needsTarget: true,
			make: func(s Spec) (Hook, error) {
				return &netnsHook{spec: s, prog: nk.prog, attach: nk.attach}, nil
			},
			check: func(s Spec) error { _, err := netnsInode(s.Target); return err },
		})
	}
}

// netnsHook attaches an SkLookup or FlowDissector program to a network
// namespace, given by path (/run/netns/NAME, /proc/PID/ns/net), with a netns
// bpf_link. The link can swap its program in place. A namespace takes many
// sk_lookup programs but one flow dissector. A link whose namespace went
// away stays alive but defunct: its info reports inode 0.
type netnsHook struct {
	spec   Spec
	prog   ebpf.ProgramType
	attach ebpf.AttachType
}

func (h *netnsHook) Spec() Spec        { return h.spec }
func (h *netnsHook) Updatable() bool   { return true }
func (h *netnsHook) Mechanism() string { return "bpf_link netns (" + h.spec.Kind + ")" }

func (h *netnsHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != h.prog {
		return fmt.Errorf("hook %s needs a program of type %s; program %s (section %q) is %s: %w",
			h.spec, h.prog, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	return nil
}

func (h *netnsHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, h.prog); err != nil {
		return nil, err
	}
	if _, err := netnsInode(h.spec.Target); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	f, err := os.Open(h.spec.Target)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	defer f.Close()
	l, err := link.AttachNetNs(int(f.Fd()), prog)
	if errors.Is(err, unix.E2BIG) && h.attach == ebpf.AttachFlowDissector {
		return nil, fmt.Errorf("attach %s: the namespace already has a flow dissector (it takes one): %w", h.spec, err)
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

func (h *netnsHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	ni := info.NetNs()
	if info.Type != link.NetNsType || ni == nil || ebpf.AttachType(ni.AttachType) != h.attach {
		return Elsewhere, nil
	}
	if ni.NetnsInode == 0 {
		return Defunct, nil
	}
	ino, err := netnsInode(h.spec.Target)
	if err != nil || ino != uint64(ni.NetnsInode) {
		return Elsewhere, nil
	}
	return Attached, nil
}

// netnsInode returns the inode of the network namespace at path, checking
// that path is one.
func netnsInode(path string) (uint64, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("network namespace %s: %w", path, ErrTargetNotFound)
		}
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is not a namespace (want /run/netns/NAME or /proc/PID/ns/net): %w", path, ErrBadSpec)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return st.Ino, nil
}

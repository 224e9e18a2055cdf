package hooks

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// Inferred is what a program's ELF section name says about its hook.
type Inferred struct {
	// Spec is the hook. Its Target is empty when the section does not name
	// one.
	Spec Spec
	// NeedsTarget says that the section names the kind of hook but not what
	// to attach to (an interface, a cgroup, a namespace, a function...): the
	// attachment must give the target (-a PROG@TARGET). Without it, the hook
	// is complete and the program can be attached as it is.
	NeedsTarget bool
}

// sectionKinds maps libbpf section names, up to their first '/' or as a
// whole, to the kind of hook they name. The part after the '/' is the
// target, as libbpf and cilium/ebpf read it.
var sectionKinds = map[string]string{
	"tp":             "tracepoint",
	"tracepoint":     "tracepoint",
	"raw_tp":         "raw_tp",
	"raw_tracepoint": "raw_tp",
	"tp_btf":         "tp_btf",
	"fentry":         "fentry",
	"fexit":          "fexit",
	"fmod_ret":       "fmod_ret",
	"lsm":            "lsm",
	"uprobe":         "uprobe",
	"uretprobe":      "uretprobe",
	"kprobe":         "kprobe",
	"kretprobe":      "kretprobe",
	"sk_lookup":      "sk_lookup",
	"flow_dissector": "flow_dissector",
	"netfilter":      "netfilter",
	// Sleepable programs attach as the others do.
	"fentry.s":    "fentry",
	"fexit.s":     "fexit",
	"fmod_ret.s":  "fmod_ret",
	"lsm.s":       "lsm",
	"uprobe.s":    "uprobe",
	"uretprobe.s": "uretprobe",
}

// sectionWhole maps section names that name a hook with its variant but
// without a target.
var sectionWhole = map[string]Spec{
	"xdp":                {Kind: "xdp"},
	"xdp.frags":          {Kind: "xdp"},
	"tcx/ingress":        {Kind: "tcx", Variant: "ingress"},
	"tcx/egress":         {Kind: "tcx", Variant: "egress"},
	"tc/ingress":         {Kind: "tcx", Variant: "ingress"},
	"tc/egress":          {Kind: "tcx", Variant: "egress"},
	"netkit/primary":     {Kind: "netkit", Variant: "primary"},
	"netkit/peer":        {Kind: "netkit", Variant: "peer"},
	"cgroup_skb/ingress": {Kind: "cgroup", Variant: "ingress"},
	"cgroup_skb/egress":  {Kind: "cgroup", Variant: "egress"},
	"cgroup/sock":        {Kind: "cgroup", Variant: "sock_create"},
	"cgroup/dev":         {Kind: "cgroup", Variant: "device"},
	"sockops":            {Kind: "cgroup", Variant: "sockops"},
}

// sectionNoHook says why sections that name a program type but no hook
// bpfsup can attach are left alone.
var sectionNoHook = map[string]string{
	"tc":         "does not say ingress or egress; write the whole hook, tcx/ingress:IFACE or tcx/egress:IFACE",
	"classifier": "does not say ingress or egress; write the whole hook, tcx/ingress:IFACE or tcx/egress:IFACE",
	"cgroup/skb": "does not say ingress or egress; write the whole hook, cgroup/ingress:CGROUP or cgroup/egress:CGROUP",
	"socket":     "is a socket filter, which the application attaches to its own socket",
}

// FromSection infers the hook of a program from its libbpf ELF section name
// ("tp/syscalls/sys_enter_openat", "xdp", "cgroup/connect4"). A section that
// names no hook bpfsup can attach is an error wrapping ErrUnknownHook that
// says why.
func FromSection(section string) (Inferred, error) {
	sec := strings.TrimPrefix(section, "?")
	if why, ok := sectionNoHook[sec]; ok {
		return Inferred{}, fmt.Errorf("section %q %s: %w", section, why, ErrUnknownHook)
	}
	if s, ok := sectionWhole[sec]; ok {
		return Inferred{Spec: s, NeedsTarget: true}, nil
	}
	head, target, _ := strings.Cut(sec, "/")
	if head == "cgroup" {
		// libbpf spells the skb directions, device and sockops otherwise
		// (sectionWhole).
		_, ok := cgroupVariants[target]
		if ok && target != "ingress" && target != "egress" && target != "device" && target != "sockops" {
			return Inferred{Spec: Spec{Kind: "cgroup", Variant: target}, NeedsTarget: true}, nil
		}
		return Inferred{}, fmt.Errorf("section %q names no cgroup attach type bpfsup knows: %w", section, ErrUnknownHook)
	}
	k, ok := sectionKinds[head]
	if !ok {
		return Inferred{}, fmt.Errorf("section %q names no hook bpfsup attaches: %w", section, ErrUnknownHook)
	}
	spec := Spec{Kind: k}
	switch k {
	case "uprobe", "uretprobe":
		// libbpf's uprobe/BINARY:FUNCTION; uprobe/BINARY alone says too little.
		if !strings.Contains(target, ":") {
			target = ""
		}
	case "sk_lookup", "flow_dissector", "netfilter":
		// The section's tail, if any, is not a target.
		target = ""
	}
	spec.Target = target
	if target == "" {
		return Inferred{Spec: spec, NeedsTarget: true}, nil
	}
	if _, err := New(spec); err != nil {
		return Inferred{}, fmt.Errorf("section %q: %w", section, err)
	}
	return Inferred{Spec: spec}, nil
}

// Resolve turns what an attachment says after '@' into a hook spec for the
// program ps (called name): a whole spec ("xdp:veth0"), or only a target
// ("veth0") where the program's section names the kind of hook. The error
// says what is missing.
func Resolve(hook, name string, ps *ebpf.ProgramSpec) (Spec, error) {
	spec, err := Parse(hook)
	if err == nil {
		return spec, nil
	}
	head, _, _ := strings.Cut(hook, ":")
	kindName, _, _ := strings.Cut(head, "/")
	if _, known := kinds[kindName]; known || !errors.Is(err, ErrUnknownHook) {
		// A hook spec, misspelt or incomplete: say what is wrong with it.
		return Spec{}, err
	}
	// The parse error lists every known hook, which would bury the point.
	inf, ierr := FromSection(ps.SectionName)
	if ierr != nil {
		return Spec{}, fmt.Errorf("hook %q is not a hook spec (KIND[/VARIANT]:TARGET), nor a target for program %s: its %w",
			hook, name, ierr)
	}
	if !inf.NeedsTarget {
		return Spec{}, fmt.Errorf("hook %q is not a hook spec (KIND[/VARIANT]:TARGET), nor a target for program %s: its section %q names the whole hook, %s; leave out -a, or give a whole hook spec: %w",
			hook, name, ps.SectionName, inf.Spec, ErrUnknownHook)
	}
	spec = inf.Spec
	spec.Target = hook
	if k := kinds[spec.Kind]; k.network && k.check == nil && strings.ContainsAny(hook, ":/ \t\n") {
		// No interface name has these (dev_valid_name): "xdq:veth0" is a
		// misspelt hook, not an interface called that. (Netfilter, a network
		// hook, has no interface for a target.)
		return Spec{}, err
	}
	if _, err := Parse(spec.String()); err != nil {
		return Spec{}, fmt.Errorf("program %s: %w", name, err)
	}
	return spec, nil
}

// Prepare shapes and checks the program ps (called name) for the hook h
// before it is loaded: hooks whose target the kernel binds at load time
// (fentry, fexit, fmod_ret, lsm) set it, cgroup hooks set the expected attach
// type, and every hook of this package checks the program type and what it
// can of the system (the kernel has kprobes, the BPF LSM is active, the
// binary has the symbol...), so that such errors show before anything is
// made. Hooks without such needs accept any program here.
func Prepare(h Hook, name string, ps *ebpf.ProgramSpec) error {
	p, ok := h.(interface {
		prepare(name string, ps *ebpf.ProgramSpec) error
	})
	if !ok {
		return nil
	}
	return p.prepare(name, ps)
}

// NeedsSpec reports whether h takes anything from its program's spec
// (Prepare): a hook that does not (xdp, tc, tcx) checks and attaches from
// its Spec alone.
func NeedsSpec(h Hook) bool {
	_, ok := h.(interface {
		prepare(name string, ps *ebpf.ProgramSpec) error
	})
	return ok
}

package hooks

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
)

// Errors returned by this package.
var (
	// ErrUnknownHook: a hook spec names a kind of hook bpfsup does not know.
	ErrUnknownHook = errors.New("unknown hook")
	// ErrBadSpec: a hook spec is malformed.
	ErrBadSpec = errors.New("invalid hook spec")
	// ErrTargetNotFound: the hook's target (an interface, a cgroup) does not exist.
	ErrTargetNotFound = errors.New("target not found")
	// ErrWrongProgramType: the program cannot be attached to the hook.
	ErrWrongProgramType = errors.New("wrong program type for hook")
	// ErrNotSupported: the kernel lacks the hook. Re-exported from cilium/ebpf.
	ErrNotSupported = ebpf.ErrNotSupported
)

// Spec is a parsed hook spec: KIND[/VARIANT][:TARGET].
type Spec struct {
	// Kind is the kind of hook: "xdp", "tcx", ...
	Kind string
	// Variant refines the kind: the XDP mode, the tcx direction, the cgroup
	// attach type. May be empty where the kind has a default.
	Variant string
	// Target is what the hook attaches to: an interface, a cgroup path...
	Target string
	// Netns is the path of the network namespace Target lives in, for network
	// hooks; empty for bpfsup's own.
	Netns string
}

// String is the canonical spelling of the spec, without the namespace.
func (s Spec) String() string {
	k := s.Kind
	if s.Variant != "" {
		k += "/" + s.Variant
	}
	if s.Target != "" {
		k += ":" + s.Target
	}
	return k
}

// Name is the hook without its target, e.g. "tcx/ingress".
func (s Spec) Name() string {
	if s.Variant != "" {
		return s.Kind + "/" + s.Variant
	}
	return s.Kind
}

// State is what a pinned link says about its hook.
type State int

const (
	// Attached: the link sits on this hook.
	Attached State = iota
	// Defunct: the link's target went away (an interface was deleted).
	Defunct
	// Elsewhere: the link is alive but on another target, or of another kind.
	Elsewhere
	// Unknown: the link is alive and of the hook's kind, but the kernel does
	// not say where it sits (perf_event links before Linux 6.6 report no
	// event). The caller decides from its own record of the link.
	Unknown
)

func (s State) String() string {
	switch s {
	case Attached:
		return "attached"
	case Defunct:
		return "defunct"
	case Unknown:
		return "unknown"
	default:
		return "elsewhere"
	}
}

// Hook is one attach point, resolved from a Spec.
type Hook interface {
	// Spec is the spec the hook was made from.
	Spec() Spec
	// Attach attaches prog; the new attachment is the caller's.
	Attach(prog *ebpf.Program) (Attachment, error)
	// Updatable reports whether a link of this hook can swap its program in
	// place (BPF_LINK_UPDATE); otherwise an upgrade is make-before-break.
	Updatable() bool
	// Mechanism says how the program is attached, for status.
	Mechanism() string
	// Check says whether the attachment a sits on this hook.
	Check(a Attachment) (State, error)
}

// kind is one kind of hook: its variants and how to make a Hook.
type kind struct {
	// variants lists the accepted variants; "" means the kind takes none (or
	// has a default, when listed with others).
	variants []string
	// needsTarget says whether a target is required.
	needsTarget bool
	// network says whether the target lives in a network namespace.
	network bool
	make    func(Spec) (Hook, error)
	// check, when set, replaces CheckTarget's interface lookup: for kinds
	// whose target is not an interface (a cgroup, a binary, a namespace).
	check func(Spec) error
}

var kinds = map[string]kind{}

func register(name string, k kind) { kinds[name] = k }

// Known lists every hook name bpfsup knows ("xdp", "xdp/generic", ...).
func Known() []string {
	var out []string
	for name, k := range kinds {
		for _, v := range k.variants {
			if v == "" {
				out = append(out, name)
			} else {
				out = append(out, name+"/"+v)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Parse parses a hook spec KIND[/VARIANT][:TARGET] without looking at the
// system. It checks that the kind and variant exist and that a target is
// given where one is needed.
func Parse(s string) (Spec, error) {
	if s == "" {
		return Spec{}, fmt.Errorf("empty hook spec: %w", ErrBadSpec)
	}
	head, target, _ := strings.Cut(s, ":")
	kindName, variant, slash := strings.Cut(head, "/")
	if slash && variant == "" {
		// "xdp/:veth0" would mean "xdp:veth0" but not say so.
		return Spec{}, fmt.Errorf("hook %q: empty variant after '/': %w", s, ErrBadSpec)
	}
	k, ok := kinds[kindName]
	if !ok {
		return Spec{}, fmt.Errorf("hook %q: %w %q; known hooks: %s", s, ErrUnknownHook, kindName, strings.Join(Known(), ", "))
	}
	if !containsString(k.variants, variant) {
		return Spec{}, fmt.Errorf("hook %q: %w %q; known hooks: %s", s, ErrUnknownHook, head, strings.Join(Known(), ", "))
	}
	if k.needsTarget && target == "" {
		return Spec{}, fmt.Errorf("hook %q: %s needs a target (%s:TARGET): %w", s, head, head, ErrBadSpec)
	}
	if strings.ContainsAny(target, "\x00\n") {
		return Spec{}, fmt.Errorf("hook %q: target has a control character: %w", s, ErrBadSpec)
	}
	return Spec{Kind: kindName, Variant: variant, Target: target}, nil
}

// IsNetwork reports whether the spec's target lives in a network namespace.
func (s Spec) IsNetwork() bool { return kinds[s.Kind].network }

// New resolves spec into a Hook.
func New(spec Spec) (Hook, error) {
	k, ok := kinds[spec.Kind]
	if !ok {
		return nil, fmt.Errorf("hook %q: %w", spec, ErrUnknownHook)
	}
	if spec.Netns != "" && !k.network {
		return nil, fmt.Errorf("hook %q: a network namespace was given but %s is not a network hook: %w", spec, spec.Kind, ErrBadSpec)
	}
	return k.make(spec)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func checkType(spec Spec, prog *ebpf.Program, want ...ebpf.ProgramType) error {
	for _, t := range want {
		if prog.Type() == t {
			return nil
		}
	}
	return fmt.Errorf("hook %s needs a program of type %v, not %s: %w", spec, want, prog.Type(), ErrWrongProgramType)
}

// CheckTarget reports whether the spec's target exists now, with an error
// that names it when it does not. Hooks whose targets cannot be checked
// before attaching report nil.
func CheckTarget(spec Spec) error {
	k, ok := kinds[spec.Kind]
	if !ok {
		return fmt.Errorf("hook %q: %w", spec, ErrUnknownHook)
	}
	if k.check != nil {
		return k.check(spec)
	}
	if k.network {
		_, err := ifindex(spec.Netns, spec.Target)
		return err
	}
	return nil
}

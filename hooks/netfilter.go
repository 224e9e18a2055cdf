package hooks

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

var netfilterFamilies = map[string]link.NetfilterProtocolFamily{
	"ipv4": link.NetfilterProtoIPv4,
	"ipv6": link.NetfilterProtoIPv6,
	"inet": link.NetfilterProtoInet,
}

var netfilterHooks = map[string]link.NetfilterInetHook{
	"prerouting":  link.NetfilterInetPreRouting,
	"local_in":    link.NetfilterInetLocalIn,
	"forward":     link.NetfilterInetForward,
	"local_out":   link.NetfilterInetLocalOut,
	"postrouting": link.NetfilterInetPostRouting,
}

func init() {
	register("netfilter", kind{
		variants:    []string{""},
		needsTarget: true,
		network:     true,
		make: func(s Spec) (Hook, error) {
			return parseNetfilter(s)
		},
		check: func(s Spec) error {
			if s.Netns == "" {
				return nil
			}
			if _, err := os.Stat(s.Netns); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("hook %s: network namespace %s: %w", s, s.Netns, ErrTargetNotFound)
			} else if err != nil {
				return fmt.Errorf("hook %s: network namespace %s: %w", s, s.Netns, err)
			}
			return nil
		},
	})
}

// netfilterHook attaches a Netfilter program to a netfilter hook of a
// network namespace (bpfsup's own, or Spec.Netns) with a netfilter bpf_link.
// The spec is netfilter:FAMILY/HOOK[/PRIORITY]: FAMILY ipv4, ipv6 (or inet
// where the kernel takes it), HOOK prerouting, local_in, forward, local_out
// or postrouting, PRIORITY a signed integer, 0 by default (iptables' filter
// table sits at 0, conntrack at -200; lower runs first).
//
// Netfilter links cannot swap their program, and the kernel takes one BPF
// program per family, hook and priority (EBUSY). So an upgrade, which is
// make-before-break, attaches the new program one priority away (PRIORITY+1,
// else PRIORITY-1) while the old one still runs, and the next upgrade moves
// it back: the program always sits at PRIORITY or next to it, and Check
// accepts all three. The kernel does not report a link's namespace, so an
// alive link of the right family, hook and priority counts as attached.
type netfilterHook struct {
	spec     Spec
	family   link.NetfilterProtocolFamily
	hook     link.NetfilterInetHook
	priority int32
}

func parseNetfilter(s Spec) (*netfilterHook, error) {
	bad := func(why string) error {
		return fmt.Errorf("hook %q: %s; want netfilter:FAMILY/HOOK[/PRIORITY], e.g. netfilter:ipv4/local_in/-100: %w", s, why, ErrBadSpec)
	}
	parts := strings.Split(s.Target, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, bad("wrong number of parts")
	}
	family, ok := netfilterFamilies[parts[0]]
	if !ok {
		return nil, bad(fmt.Sprintf("family %q is not ipv4, ipv6 or inet", parts[0]))
	}
	hook, ok := netfilterHooks[parts[1]]
	if !ok {
		return nil, bad(fmt.Sprintf("hook %q is not prerouting, local_in, forward, local_out or postrouting", parts[1]))
	}
	h := &netfilterHook{spec: s, family: family, hook: hook}
	if len(parts) == 3 {
		p, err := strconv.ParseInt(parts[2], 10, 32)
		// The kernel keeps the extreme priorities for itself.
		if err != nil || p == math.MinInt32 || p == math.MaxInt32 {
			return nil, bad(fmt.Sprintf("priority %q is not an integer strictly between %d and %d", parts[2], math.MinInt32, math.MaxInt32))
		}
		h.priority = int32(p)
	}
	return h, nil
}

func (h *netfilterHook) Spec() Spec        { return h.spec }
func (h *netfilterHook) Updatable() bool   { return false }
func (h *netfilterHook) Mechanism() string { return "bpf_link netfilter" }

func (h *netfilterHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != ebpf.Netfilter {
		return fmt.Errorf("hook %s needs a program of type %s; program %s (section %q) is %s: %w",
			h.spec, ebpf.Netfilter, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	return nil
}

// priorities are the priorities Attach tries in turn: the configured one,
// then its neighbours (see netfilterHook).
func (h *netfilterHook) priorities() []int32 {
	out := []int32{h.priority}
	if h.priority+1 != math.MaxInt32 {
		out = append(out, h.priority+1)
	}
	if h.priority-1 != math.MinInt32 {
		out = append(out, h.priority-1)
	}
	return out
}

func (h *netfilterHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.Netfilter); err != nil {
		return nil, err
	}
	var l link.Link
	err := InNetns(h.spec.Netns, func() error {
		var err error
		for _, prio := range h.priorities() {
			l, err = link.AttachNetfilter(link.NetfilterOptions{Program: prog, ProtocolFamily: h.family, Hook: h.hook, Priority: prio})
			if !errors.Is(err, unix.EBUSY) {
				break
			}
		}
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("priority %d and its neighbours already hold BPF programs: %w", h.priority, err)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

func (h *netfilterHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	ni := info.Netfilter()
	if info.Type != link.NetfilterType || ni == nil || ni.ProtocolFamily != h.family || ni.Hook != h.hook {
		return Elsewhere, nil
	}
	for _, prio := range h.priorities() {
		if ni.Priority == prio {
			return Attached, nil
		}
	}
	return Elsewhere, nil
}

package hooks

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Hooks that run several programs in an order the kernel keeps (tcx,
// netkit: the kernel's bpf_mprog, Linux 6.6 and 6.7) take a link at a
// place: first, last, or just before or after another link. Each change of
// such a hook moves its revision on; an attach that names the revision it
// read is refused (ESTALE) when anyone changed the hook since, so a plan
// made from what the hook held is never applied to something else.

// Where says where on an ordered hook a link goes.
type Where string

// The places a link can take on an ordered hook.
const (
	// Last: after every program on the hook (the default, and what an
	// attach without a place does).
	Last Where = "last"
	// First: before every program on the hook.
	First Where = "first"
	// Before: just before the anchor link.
	Before Where = "before"
	// After: just after the anchor link.
	After Where = "after"
)

// Position is a place on an ordered hook: Where, and for Before and After
// the id of the anchor link.
type Position struct {
	Where  Where
	Anchor link.ID
}

func (p Position) String() string {
	if p.Where == Before || p.Where == After {
		return fmt.Sprintf("%s link %d", p.Where, p.Anchor)
	}
	return string(p.Where)
}

// ChainEntry is one program on an ordered hook, and the link that holds it
// (0 for a program attached without a link).
type ChainEntry struct {
	Program ebpf.ProgramID
	Link    link.ID
}

// Chain is what an ordered hook runs, first to last, at a revision.
type Chain struct {
	Revision uint64
	Entries  []ChainEntry
}

// Index is the place of the link id in the chain, -1 when it is not there.
func (c Chain) Index(id link.ID) int {
	for i, e := range c.Entries {
		if e.Link == id && id != 0 {
			return i
		}
	}
	return -1
}

// String lists the chain as "rev 3: link 7 (prog 12), link 9 (prog 15)".
func (c Chain) String() string {
	parts := make([]string, len(c.Entries))
	for i, e := range c.Entries {
		if e.Link == 0 {
			parts[i] = fmt.Sprintf("prog %d (no link)", e.Program)
		} else {
			parts[i] = fmt.Sprintf("link %d (prog %d)", e.Link, e.Program)
		}
	}
	if len(parts) == 0 {
		return fmt.Sprintf("revision %d: empty", c.Revision)
	}
	return fmt.Sprintf("revision %d: %s", c.Revision, strings.Join(parts, ", "))
}

// Diff says what changed from c to next: the entries that came and went,
// and the revision.
func (c Chain) Diff(next Chain) string {
	in := func(ch Chain, e ChainEntry) bool {
		for _, x := range ch.Entries {
			if x == e {
				return true
			}
		}
		return false
	}
	var parts []string
	for _, e := range next.Entries {
		if !in(c, e) {
			parts = append(parts, "+"+DescribeEntry(e))
		}
	}
	for _, e := range c.Entries {
		if !in(next, e) {
			parts = append(parts, "-"+DescribeEntry(e))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "same programs (reordered or replaced in place)")
	}
	return fmt.Sprintf("revision %d -> %d: %s", c.Revision, next.Revision, strings.Join(parts, ", "))
}

// Ordered is a hook whose programs run in an order the kernel keeps.
type Ordered interface {
	Hook
	// Chain reads what the hook runs now, and its revision.
	Chain() (Chain, error)
	// AttachAt attaches prog at pos, only if the hook is at revision (0:
	// whatever it is at). ErrStale when the hook moved on.
	AttachAt(prog *ebpf.Program, pos Position, revision uint64) (Attachment, error)
	// LinkOn reports whether the bpf_link of info is on this hook (its
	// interface and direction), whichever place it has.
	LinkOn(info *link.Info) bool
}

// ErrStale means the hook changed since its revision was read.
var ErrStale = errors.New("the hook's programs changed since they were read")

// AsOrdered is h as an Ordered hook, or false when h runs one program, or
// runs several in no order bpfsup can set (a tcx hook that falls back to
// tc on a kernel without tcx).
func AsOrdered(h Hook) (Ordered, bool) {
	o, ok := h.(Ordered)
	return o, ok
}

// anchorOf is cilium/ebpf's anchor for pos.
func anchorOf(pos Position) (link.Anchor, error) {
	switch pos.Where {
	case First:
		return link.Head(), nil
	case Last, "":
		return link.Tail(), nil
	case Before:
		return link.BeforeLinkByID(pos.Anchor), nil
	case After:
		return link.AfterLinkByID(pos.Anchor), nil
	}
	return nil, fmt.Errorf("place %q: want first, last, before or after: %w", pos.Where, ErrBadSpec)
}

// attachError turns the kernel's refusal of an ordered attach into an error
// that says why: ESTALE is ErrStale; ENOENT names the anchor link.
func attachError(spec Spec, pos Position, err error) error {
	switch {
	case errors.Is(err, unix.ESTALE):
		return fmt.Errorf("attach %s at %s: %w: %w", spec, pos, ErrStale, err)
	case errors.Is(err, unix.ENOENT) && pos.Anchor != 0:
		return fmt.Errorf("attach %s %s: the anchor link %d is not on the hook: %w", spec, pos, pos.Anchor, err)
	}
	return fmt.Errorf("attach %s: %w", spec, err)
}

// queryChain reads the chain of the hook of attach type at on the
// interface of spec, in its network namespace.
func queryChain(spec Spec, at ebpf.AttachType) (Chain, error) {
	var c Chain
	err := InNetns(spec.Netns, func() error {
		idx, err := ifindexHere(spec.Netns, spec.Target)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
		if err != nil {
			return err
		}
		c.Revision = res.Revision
		for _, p := range res.Programs {
			id, _ := p.LinkID()
			c.Entries = append(c.Entries, ChainEntry{Program: p.ID, Link: id})
		}
		return nil
	})
	if err != nil {
		return Chain{}, fmt.Errorf("read the programs of %s: %w", spec, err)
	}
	return c, nil
}

// DescribeEntry names a chain entry: "link 12 (program 40 fw_drop)".
func DescribeEntry(e ChainEntry) string {
	prog := fmt.Sprintf("program %d", e.Program)
	if p, err := ebpf.NewProgramFromID(e.Program); err == nil {
		if info, err := p.Info(); err == nil && info.Name != "" {
			prog += " " + info.Name
		}
		p.Close()
	}
	if e.Link == 0 {
		return prog + " (no link)"
	}
	return fmt.Sprintf("link %d (%s)", e.Link, prog)
}

package status

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// LinkOrder is a link's place on a hook that runs several programs in
// order (tcx, netkit): where the configuration puts it, where it is, and
// the whole chain as the kernel reports it.
type LinkOrder struct {
	// Place is the configured place: "first", "last", "before", "after",
	// or "" when the configuration gives none (attached last, not held).
	Place string `json:"place"`
	// Anchor is before's or after's, as configured ("[OBJECT/]PROG" or a
	// pin path); AnchorLink the id of the link pinned for it (0: none).
	Anchor     string `json:"anchor,omitempty"`
	AnchorLink uint32 `json:"anchor_link,omitempty"`
	// Position is the link's place in the chain, from 1; Of is the chain's
	// length.
	Position int `json:"position"`
	Of       int `json:"of"`
	// Revision is the hook's revision (bpf_mprog's), which every change of
	// the hook moves on.
	Revision uint64 `json:"revision"`
	// InPlace says that the link is where Place puts it; Why says why not.
	InPlace bool   `json:"in_place"`
	Why     string `json:"why,omitempty"`
	// Chain is every program on the hook, first to last.
	Chain []ChainEntry `json:"chain"`
}

// ChainEntry is one program on an ordered hook.
type ChainEntry struct {
	// LinkID is the link that holds the program, 0 for one attached
	// without a link.
	LinkID    uint32 `json:"link_id"`
	ProgramID uint32 `json:"program_id"`
	// Program is the program's name as the kernel has it.
	Program string `json:"program,omitempty"`
	// Owner is "bpfsup" for a link a manifest of this state directory
	// records (Object and Link name it), "foreign" for anything else.
	Owner  string `json:"owner"`
	Object string `json:"object,omitempty"`
	Link   string `json:"link,omitempty"`
	// Self marks the entry of the link this order is of.
	Self bool `json:"self,omitempty"`
}

// linkOwners maps every link id the manifests of store record to
// "object/link".
func linkOwners(store pinstore.Store) map[uint32][2]string {
	owners := map[uint32][2]string{}
	for _, name := range store.Manifested() {
		man, err := store.ReadManifest(name)
		if err != nil || man == nil {
			continue
		}
		for ln, rec := range man.Links {
			if rec.ID != 0 {
				owners[rec.ID] = [2]string{name, ln}
			}
		}
	}
	return owners
}

// checkOrder reads the chain of the ordered hook h that the link of ls
// sits on, and says where it is and whether that is its configured place
// (rec's); a link out of place is a problem.
func (o *ObjectStatus) checkOrder(ls *LinkStatus, h hooks.Hook, rec pinstore.LinkRecord, readOwners func() map[uint32][2]string) {
	oh, ok := hooks.AsOrdered(h)
	if !ok || ls.State != "attached" {
		return
	}
	owners := readOwners()
	c, err := oh.Chain()
	if err != nil {
		o.problem("link %s: %v", ls.Name, err)
		return
	}
	ord := &LinkOrder{Place: rec.Place, Anchor: rec.Anchor, Revision: c.Revision, Of: len(c.Entries), Chain: []ChainEntry{}}
	if rec.AnchorPath != "" {
		ord.AnchorLink = uint32(converge.AnchorID(rec.AnchorPath))
	}
	for i, e := range c.Entries {
		ce := ChainEntry{LinkID: uint32(e.Link), ProgramID: uint32(e.Program), Owner: "foreign", Self: uint32(e.Link) == ls.ID && e.Link != 0}
		if own, ok := owners[uint32(e.Link)]; ok && e.Link != 0 {
			ce.Owner, ce.Object, ce.Link = "bpfsup", own[0], own[1]
		}
		if p, err := ebpf.NewProgramFromID(e.Program); err == nil {
			if info, err := p.Info(); err == nil {
				ce.Program = info.Name
			}
			p.Close()
		}
		if ce.Self {
			ord.Position = i + 1
		}
		ord.Chain = append(ord.Chain, ce)
	}
	ours := func(id link.ID) bool { _, ok := owners[uint32(id)]; return ok && id != 0 }
	ord.InPlace, ord.Why = converge.Placement(c, link.ID(ls.ID), hooks.Where(rec.Place), link.ID(ord.AnchorLink), ours)
	if rec.Place == "" {
		ord.InPlace, ord.Why = true, ""
	}
	if !ord.InPlace {
		o.problem("link %s: not at its configured place (%s): %s", ls.Name, placeString(rec), ord.Why)
	}
	ls.Order = ord
}

func placeString(rec pinstore.LinkRecord) string {
	switch {
	case rec.Anchor != "":
		return rec.Place + " " + rec.Anchor
	case rec.Place == "":
		return "last by default, not held"
	}
	return rec.Place
}

// orderLine is the text status's line of a link's order.
func orderLine(l LinkStatus) string {
	ord := l.Order
	s := fmt.Sprintf("    order: %s, position %d of %d, hook revision %d", placeString(pinstore.LinkRecord{Place: ord.Place, Anchor: ord.Anchor}),
		ord.Position, ord.Of, ord.Revision)
	if !ord.InPlace {
		s += ", NOT IN PLACE: " + ord.Why
	}
	return s + "\n"
}

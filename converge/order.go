package converge

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Order on shared hooks. A tcx or netkit hook runs several programs, of
// bpfsup and of others, in an order the kernel keeps. An attachment says
// where its link goes (order = "first" | "last", before = / after = another
// link); planOrder checks every place of a configuration against the
// others (unknown anchors, anchors on another hook, cycles) and reads each
// ordered hook's revision; every attach names the revision it planned
// from, and a change by someone else in between (ESTALE) is read again and
// the attach retried, orderTries times at most. An update in place keeps
// the link's place (BPF_LINK_UPDATE has no revision to name: it swaps the
// program with BPF_F_REPLACE, compare-and-swap on the program). After an
// install, CheckOrder checks every placed link against what the kernel
// runs, and with enforce_order moves a misplaced one back.

// orderTries is how many times an attach is tried on a hook that changes
// under it before bpfsup gives up.
const orderTries = 5

// linkPlace is where a link goes on an ordered hook.
type linkPlace struct {
	// where is "" when the configuration says nothing: the link is
	// attached last, and not held there.
	where hooks.Where
	// anchor is before's or after's, as configured; anchorPath the pin of
	// its link, set by planOrder (or recorded in the manifest).
	anchor, anchorPath string
	// anchorObject and anchorLink name the anchor's link when it is of
	// this configuration.
	anchorObject, anchorLink string
	// revs are the revisions of the configuration's ordered hooks, read
	// when it was planned (nil: read at the attach).
	revs *hookRevisions
}

func (pl linkPlace) String() string {
	if pl.anchor != "" {
		return string(pl.where) + " " + pl.anchor
	}
	if pl.where == "" {
		return "last (default)"
	}
	return string(pl.where)
}

// placeOf is the place an attachment a configures for its link on hook h.
func placeOf(a config.Attach, h hooks.Hook) (linkPlace, error) {
	where, anchor, err := a.Place()
	if err != nil {
		return linkPlace{}, err
	}
	if where == "" {
		return linkPlace{}, nil
	}
	if _, ok := hooks.AsOrdered(h); !ok {
		why := "runs one program, or several in no order bpfsup can set"
		if h.Spec().Kind == "tcx" {
			why = "falls back to tc on this kernel (tcx, with its order, needs Linux 6.6)"
		}
		return linkPlace{}, fmt.Errorf("%s on hook %s, which %s: only tcx and netkit hooks take a place", placeKey(where), h.Spec(), why)
	}
	if anchor != "" && strings.HasPrefix(anchor, "/") && filepath.Clean(anchor) != anchor {
		return linkPlace{}, fmt.Errorf("%s = %q: want a clean absolute path of a pinned link", where, anchor)
	}
	return linkPlace{where: hooks.Where(where), anchor: anchor}, nil
}

func placeKey(where string) string {
	if where == "first" || where == "last" {
		return fmt.Sprintf("order = %q", where)
	}
	return where + " ="
}

// hookRevisions are the chains of a configuration's ordered hooks as last
// read or changed by bpfsup, by hookKey.
type hookRevisions struct{ chains map[string]hooks.Chain }

func hookKey(s hooks.Spec) string { return s.String() + "\x00" + s.Netns }

// planOrder checks the places of every link of plans (one configuration,
// in its order) against each other, resolves anchors to the pins of their
// links under store, orders each plan's links so that an anchor is attached
// before the links placed by it, and reads the revision of every ordered
// hook.
func planOrder(plans []*Plan, store pinstore.Store) error {
	revs := &hookRevisions{chains: map[string]hooks.Chain{}}
	type ref struct {
		plan int
		pl   *plannedLink
	}
	byProg := map[string][]ref{}
	for i, p := range plans {
		for j := range p.links {
			pl := &p.links[j]
			byProg[pl.program] = append(byProg[pl.program], ref{i, pl})
		}
	}
	edges := map[string]string{} // object/link -> object/link of its anchor
	for i, p := range plans {
		for j := range p.links {
			pl := &p.links[j]
			pl.place.revs = revs
			if pl.place.anchor == "" {
				continue
			}
			if strings.HasPrefix(pl.place.anchor, "/") {
				pl.place.anchorPath = pl.place.anchor
				continue
			}
			obj, prog, scoped := strings.Cut(pl.place.anchor, "/")
			if !scoped {
				obj, prog = "", pl.place.anchor
			}
			var all, same []ref
			for _, r := range byProg[prog] {
				if obj != "" && plans[r.plan].name != obj {
					continue
				}
				all = append(all, r)
				if hookKey(r.pl.hook.Spec()) == hookKey(pl.hook.Spec()) {
					same = append(same, r)
				}
			}
			what := fmt.Sprintf("object %s: link %s: %s %q", p.name, pl.name, pl.place.where, pl.place.anchor)
			switch {
			case len(all) == 0:
				return fmt.Errorf("%s: unknown anchor: no attachment of this configuration is [OBJECT/]PROG %q (attached: %s)", what, pl.place.anchor, attachedList(plans))
			case len(same) == 0:
				return fmt.Errorf("%s: the anchor is on hook %s, not on %s: a link is placed only among the links of its own hook", what, all[0].pl.hook.Spec(), pl.hook.Spec())
			case len(same) > 1:
				return fmt.Errorf("%s: ambiguous anchor: %s/%s and %s/%s are both attached there; write OBJECT/PROG, or name the links apart", what,
					plans[same[0].plan].name, same[0].pl.name, plans[same[1].plan].name, same[1].pl.name)
			case same[0].pl == pl:
				return fmt.Errorf("%s: a link cannot be placed relative to itself", what)
			case same[0].plan > i:
				return fmt.Errorf("%s: the anchor's object %s is installed after %s: list object %s first in the configuration", what, plans[same[0].plan].name, p.name, plans[same[0].plan].name)
			}
			a := same[0]
			pl.place.anchorPath = filepath.Join(store.ObjectDir(plans[a.plan].name), string(pinstore.Links), a.pl.name)
			pl.place.anchorObject, pl.place.anchorLink = plans[a.plan].name, a.pl.name
			edges[p.name+"/"+pl.name] = plans[a.plan].name + "/" + a.pl.name
		}
	}
	if err := findCycle(edges, plans); err != nil {
		return err
	}
	for _, p := range plans {
		sortByAnchor(p)
	}
	readRevisions(plans, revs)
	return nil
}

// findCycle reports a cycle of anchors, naming every link of it.
func findCycle(edges map[string]string, plans []*Plan) error {
	starts := make([]string, 0, len(edges))
	for k := range edges {
		starts = append(starts, k)
	}
	sort.Strings(starts)
	for _, start := range starts {
		seen := map[string]bool{}
		path := []string{}
		for cur, ok := start, true; ok; cur, ok = edges[cur] {
			if seen[cur] {
				if cur == start {
					return fmt.Errorf("links placed in a cycle: %s -> %s: each is placed relative to the next; break the cycle with order = \"first\" or \"last\"",
						strings.Join(path, " -> "), start)
				}
				break
			}
			seen[cur] = true
			path = append(path, cur)
		}
	}
	return nil
}

// sortByAnchor orders p's links so that a link placed relative to another
// of p comes after it (stable otherwise). planOrder found no cycle.
func sortByAnchor(p *Plan) {
	idx := map[string]int{}
	for k, pl := range p.links {
		idx[pl.name] = k
	}
	depth := map[string]int{}
	for _, pl := range p.links {
		d := 0
		for cur := pl; cur.place.anchorObject == p.name && d <= len(p.links); d++ {
			cur = p.links[idx[cur.place.anchorLink]]
		}
		depth[pl.name] = d
	}
	sort.SliceStable(p.links, func(i, j int) bool { return depth[p.links[i].name] < depth[p.links[j].name] })
}

// readRevisions reads the chain of every ordered hook of plans whose
// target exists now: what the attaches will name.
func readRevisions(plans []*Plan, revs *hookRevisions) {
	for _, p := range plans {
		for _, pl := range p.links {
			o, ok := hooks.AsOrdered(pl.hook)
			if !ok {
				continue
			}
			key := hookKey(pl.hook.Spec())
			if _, done := revs.chains[key]; done {
				continue
			}
			if c, err := o.Chain(); err == nil {
				revs.chains[key] = c
			}
		}
	}
}

func attachedList(plans []*Plan) string {
	var out []string
	for _, p := range plans {
		for _, pl := range p.links {
			out = append(out, p.name+"/"+pl.program+"@"+pl.hook.Spec().String())
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// chain is the chain the next change of hook h should name: the one planned
// (moved on by bpfsup's own changes since), or the hook's now.
func (r *hookRevisions) chain(h hooks.Ordered) (hooks.Chain, error) {
	if r != nil {
		if c, ok := r.chains[hookKey(h.Spec())]; ok {
			return c, nil
		}
	}
	return h.Chain()
}

// changed records that bpfsup itself moved hook h on by one revision from
// c (its attach, or its update in place).
func (r *hookRevisions) changed(h hooks.Ordered, c hooks.Chain) {
	if r == nil {
		return
	}
	// What the hook runs now, with bpfsup's change; at the revision of
	// that change alone, so that anyone else's since is still caught by
	// the next attach.
	if now, err := h.Chain(); err == nil {
		c.Entries = now.Entries
	}
	c.Revision++
	r.chains[hookKey(h.Spec())] = c
}

// forget drops what is known of hook h: the next change reads it again.
func (r *hookRevisions) forget(h hooks.Hook) {
	if r != nil {
		delete(r.chains, hookKey(h.Spec()))
	}
}

// position is where place puts a link on the hook h whose chain is c: the
// anchor's link is opened by its pin and must sit on h. An anchor that is
// not there (no link pinned at its path, or its link defunct: another
// supervisor not started yet, or its interface being made again) puts
// before's link first and after's last, which keeps the order once the
// anchor is attached at a place of its own; the log says so.
func (pl linkPlace) position(h hooks.Ordered, c hooks.Chain, log *slog.Logger) (hooks.Position, error) {
	switch pl.where {
	case "", hooks.Last:
		return hooks.Position{Where: hooks.Last}, nil
	case hooks.First:
		return hooks.Position{Where: hooks.First}, nil
	}
	id, err := anchorLinkID(h, pl, c)
	if errors.Is(err, errAnchorAbsent) {
		fallback := hooks.Position{Where: hooks.Last}
		if pl.where == hooks.Before {
			fallback.Where = hooks.First
		}
		log.Warn("the anchor's link is not on the hook; attaching at the place that keeps the order once it is", "hook", h.Spec().String(),
			"place", pl.String(), "attached", string(fallback.Where), "why", err)
		return fallback, nil
	}
	if err != nil {
		return hooks.Position{}, err
	}
	return hooks.Position{Where: pl.where, Anchor: id}, nil
}

// errAnchorAbsent: no link is pinned for the anchor, or its link is on no
// hook (its interface went away).
var errAnchorAbsent = errors.New("the anchor's link is absent")

// anchorLinkID is the id of the link pinned at the anchor's path, which
// must be on h (in its chain c).
func anchorLinkID(h hooks.Ordered, pl linkPlace, c hooks.Chain) (link.ID, error) {
	what := fmt.Sprintf("%s %q", pl.where, pl.anchor)
	a, err := hooks.LoadPinned(pl.anchorPath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%s: no link pinned at %s: %w", what, pl.anchorPath, errAnchorAbsent)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %s: %w", what, pl.anchorPath, err)
	}
	defer a.Close()
	info, err := a.Info()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if info.Link == nil {
		return 0, fmt.Errorf("%s: %s holds a %s, not a bpf_link", what, pl.anchorPath, info.TypeName())
	}
	if h.LinkOn(info.Link) && c.Index(info.Link.ID) >= 0 {
		return info.Link.ID, nil
	}
	if defunct(info.Link) {
		return 0, fmt.Errorf("%s: link %d at %s is on no interface: %w", what, info.Link.ID, pl.anchorPath, errAnchorAbsent)
	}
	return 0, fmt.Errorf("%s: the anchor is on another hook: link %d at %s (%s) is not on %s (%s)", what, info.Link.ID, pl.anchorPath,
		info.TypeName(), h.Spec(), c)
}

// defunct says that a tcx or netkit link is on no interface.
func defunct(li *link.Info) bool {
	if t := li.TCX(); t != nil {
		return t.Ifindex == 0
	}
	if n := li.Netkit(); n != nil {
		return n.Ifindex == 0
	}
	return false
}

// ErrHookChanging means an ordered hook kept changing under bpfsup's attaches.
var ErrHookChanging = errors.New("the hook kept changing")

// attachPlaced attaches prog for the link pl at its place, naming the
// revision planned; on a change by someone else in between it reads the
// hook again and retries, orderTries times in all.
func attachPlaced(h hooks.Ordered, pl plannedLink, prog *ebpf.Program, log *slog.Logger) (hooks.Attachment, error) {
	c, err := pl.place.revs.chain(h)
	if err != nil {
		return nil, err
	}
	var changes []string
	for try := 1; ; try++ {
		pos, err := pl.place.position(h, c, log)
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", pl.name, err)
		}
		a, err := h.AttachAt(prog, pos, c.Revision)
		if err == nil {
			pl.place.revs.changed(h, c)
			return a, nil
		}
		if !errors.Is(err, hooks.ErrStale) {
			pl.place.revs.forget(h)
			return nil, err
		}
		next, rerr := h.Chain()
		if rerr != nil {
			return nil, rerr
		}
		changes = append(changes, c.Diff(next))
		log.Info("the hook changed since bpfsup read it; reading it again", "link", pl.name, "hook", h.Spec().String(),
			"try", try, "change", c.Diff(next))
		c = next
		if try == orderTries {
			pl.place.revs.forget(h)
			return nil, fmt.Errorf("link %s: hook %s: %w while bpfsup attached at %s (%d tries): %s",
				pl.name, h.Spec(), ErrHookChanging, pl.place, orderTries, strings.Join(changes, "; "))
		}
	}
}

// attachLink attaches prog for pl: at its place on an ordered hook.
func attachLink(pl plannedLink, prog *ebpf.Program, log *slog.Logger) (hooks.Attachment, error) {
	if o, ok := hooks.AsOrdered(pl.hook); ok {
		return attachPlaced(o, pl, prog, log)
	}
	return pl.hook.Attach(prog)
}

// updated records that bpfsup updated a link of pl's hook in place (the
// hook's revision moved on by one).
func updated(pl plannedLink) {
	if o, ok := hooks.AsOrdered(pl.hook); ok && pl.place.revs != nil {
		if c, known := pl.place.revs.chains[hookKey(pl.hook.Spec())]; known {
			pl.place.revs.changed(o, c)
		}
	}
}

// Placement says whether the link id sits in chain where the place where
// (with the anchor link's id, for before and after) puts it, and if not
// why. ours says which links are of this configuration: "first" is kept
// while only those run before it, "last" while only those run after it.
func Placement(chain hooks.Chain, id link.ID, where hooks.Where, anchor link.ID, ours func(link.ID) bool) (ok bool, why string) {
	idx := chain.Index(id)
	if idx < 0 {
		return false, fmt.Sprintf("link %d is not on the hook", id)
	}
	switch where {
	case hooks.First:
		for _, e := range chain.Entries[:idx] {
			if !ours(e.Link) {
				return false, fmt.Sprintf("foreign %s runs before it", hooks.DescribeEntry(e))
			}
		}
	case hooks.Last:
		for _, e := range chain.Entries[idx+1:] {
			if !ours(e.Link) {
				return false, fmt.Sprintf("foreign %s runs after it", hooks.DescribeEntry(e))
			}
		}
	case hooks.Before, hooks.After:
		ai := chain.Index(anchor)
		switch {
		case ai < 0:
			return false, "its anchor is not on the hook"
		case where == hooks.Before && idx > ai:
			return false, fmt.Sprintf("it runs after its anchor, link %d", anchor)
		case where == hooks.After && idx < ai:
			return false, fmt.Sprintf("it runs before its anchor, link %d", anchor)
		}
	}
	return true, ""
}

// AnchorID is the id of the link pinned at path, 0 when there is none.
func AnchorID(path string) link.ID {
	a, err := hooks.LoadPinned(path)
	if err != nil {
		return 0
	}
	defer a.Close()
	info, err := a.Info()
	if err != nil || info.Link == nil {
		return 0
	}
	return info.Link.ID
}

// CheckOrder checks every placed link of ins (one configuration) against
// what its hook runs now, and says which are out of place; with enforce it
// moves each of those back, make-before-break (MoveLink). It reports
// whether a link moved.
func CheckOrder(ins []*Installed, enforce bool, log *slog.Logger) bool {
	ours := ownLinkIDs(ins)
	moved := false
	for _, in := range ins {
		for _, pl := range in.plan.links {
			a := in.links[pl.name]
			o, ok := hooks.AsOrdered(pl.hook)
			if pl.place.where == "" || a == nil || in.defunct[pl.name] || !ok {
				continue
			}
			info, err := a.Info()
			if err != nil || info.Link == nil {
				continue
			}
			chain, err := o.Chain()
			if err != nil {
				continue
			}
			anchor := AnchorID(pl.place.anchorPath)
			fine, why := Placement(chain, info.Link.ID, pl.place.where, anchor, ours)
			said := in.orderSaid[pl.name]
			if fine {
				delete(in.orderSaid, pl.name)
				continue
			}
			if !enforce || (pl.place.anchor != "" && chain.Index(anchor) < 0) {
				if said == why {
					continue // said already: a periodic check repeats nothing
				}
				in.orderSaid[pl.name] = why
				log.Warn("link is not at its configured place (enforce_order = true would move it back)", "object", in.plan.name,
					"link", pl.name, "hook", pl.hook.Spec().String(), "place", pl.place.String(), "why", why, "chain", chain.String())
				continue
			}
			log.Warn("link is not at its configured place; moving it back", "object", in.plan.name, "link", pl.name,
				"hook", pl.hook.Spec().String(), "place", pl.place.String(), "why", why, "chain", chain.String())
			if err := in.moveLink(pl, o, chain, log); err != nil {
				log.Error("could not move the link back to its place", "object", in.plan.name, "link", pl.name, "err", err)
				continue
			}
			delete(in.orderSaid, pl.name)
			moved = true
		}
	}
	return moved
}

// Placed reports whether a link of the object has a place on an ordered
// hook (order, before or after), which CheckOrder checks.
func (in *Installed) Placed() bool {
	for _, pl := range in.plan.links {
		if _, ok := hooks.AsOrdered(pl.hook); ok && pl.place.where != "" {
			return true
		}
	}
	return false
}

// ownLinkIDs says which link ids are those of ins.
func ownLinkIDs(ins []*Installed) func(link.ID) bool {
	ids := map[link.ID]bool{}
	for _, in := range ins {
		for _, a := range in.links {
			if info, err := a.Info(); err == nil && info.Link != nil {
				ids[info.Link.ID] = true
			}
		}
	}
	return func(id link.ID) bool { return id != 0 && ids[id] }
}

// moveLink moves pl's link to its place, make-before-break: a hook runs a
// program once at most, so a twin of the program (loaded again from the
// object, with the object's maps) is attached at the place (naming the
// revision of chain, as read for the check), pinned over the old link, the
// old link detached, and then the new link swapped in place to the
// program itself. Both run for an instant, never neither.
func (in *Installed) moveLink(pl plannedLink, h hooks.Ordered, chain hooks.Chain, log *slog.Logger) error {
	old := in.links[pl.name]
	oldInfo, err := old.Info()
	if err != nil {
		return err
	}
	prog := in.progs[pl.program]
	twin, err := in.loadTwin(pl.program)
	if err != nil {
		return fmt.Errorf("load program %s again to attach it beside itself: %w", pl.program, err)
	}
	defer twin.Close()
	// Write-ahead: a crash before the program itself is swapped back in
	// leaves the pinned link running the twin, which the next start must
	// know for bpfsup's.
	if err := in.recordTwin(pl.program, twin); err != nil {
		return err
	}
	pl.place.revs = &hookRevisions{chains: map[string]hooks.Chain{hookKey(h.Spec()): chain}}
	a, err := attachPlaced(h, pl, twin, log)
	if err != nil {
		return err
	}
	path := in.obj.Path(pinstore.Links, pl.name)
	if err := in.obj.Pin(pinstore.Links, path, a); err != nil {
		a.Close()
		return err
	}
	// Detached, not only closed: the application may hold the old link's
	// fd (handoff_links).
	if err := old.Detach(); err != nil {
		log.Warn("could not detach the old link", "object", in.plan.name, "link", pl.name, "id", oldInfo.ID, "err", err)
	}
	old.Close()
	in.links[pl.name] = a
	if err := a.Update(prog, twin); err != nil {
		log.Error("the moved link runs a twin of its program: could not swap the program itself back in", "object", in.plan.name, "link", pl.name, "err", err)
	}
	after, _ := h.Chain()
	newInfo, _ := a.Info()
	var newID uint32
	if newInfo != nil {
		newID = newInfo.ID
	}
	log.Info("moved link back to its configured place, make-before-break", "object", in.plan.name, "link", pl.name,
		"hook", h.Spec().String(), "place", pl.place.String(), "old_link", oldInfo.ID, "new_link", newID, "chain", after.String())
	m := newManifest(in.plan, in.manifest, in)
	if in.manifest != nil {
		m.Generation = in.manifest.Generation
	}
	if err := in.obj.WriteManifest(m); err != nil {
		log.Warn("could not write manifest", "object", in.plan.name, "err", err)
	}
	in.manifest = m
	return nil
}

// loadTwin loads the program name of the object again, from its file, with
// the object's maps: a second program that does what the first does.
func (in *Installed) loadTwin(name string) (*ebpf.Program, error) {
	p := in.plan
	spec := p.spec
	if spec == nil {
		// Read again (and verified as at install, where the configuration
		// asks for a digest or signature): it must be the file installed.
		data, err := ReadObject(p.cfg)
		if err != nil {
			return nil, err
		}
		if sha := ObjectSHA256(data); p.sha256 != "" && sha != p.sha256 {
			return nil, fmt.Errorf("the object file %s changed since it was installed (sha256 %s, installed %s): reload first", p.cfg.Path, sha, p.sha256)
		}
		if spec, err = loadSpec(p.cfg.Path, data); err != nil {
			return nil, err
		}
		q := &Plan{cfg: p.cfg, name: p.name, spec: spec}
		if err := q.setVariables(); err != nil {
			return nil, err
		}
	}
	spec = spec.Copy()
	for n := range spec.Programs {
		if n != name {
			delete(spec.Programs, n)
		}
	}
	if _, ok := spec.Programs[name]; !ok {
		return nil, fmt.Errorf("program %s is not in %s", name, p.cfg.Path)
	}
	repl := map[string]*ebpf.Map{}
	for n, m := range in.maps {
		if _, ok := spec.Maps[n]; ok {
			repl[n] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(name), nil
}

// recordTwin writes the manifest with the twin's id among the earlier ids
// of program name.
func (in *Installed) recordTwin(name string, twin *ebpf.Program) error {
	if in.manifest == nil {
		return nil
	}
	id, err := pinstore.ProgramID(twin)
	if err != nil {
		return err
	}
	m := *in.manifest
	m.Programs = maps.Clone(in.manifest.Programs)
	rec := m.Programs[name]
	rec.PreviousIDs = append(slices.Clone(rec.PreviousIDs), uint32(id))
	m.Programs[name] = rec
	if err := in.obj.WriteManifest(&m); err != nil {
		return fmt.Errorf("write manifest ahead of the move: %w", err)
	}
	in.manifest = &m
	return nil
}

package converge

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// removeStale unpins links and programs of the object that the configuration
// no longer has. Maps stay: their contents may be wanted again.
func removeStale(obj *pinstore.Object, p *Plan, own owned, log *slog.Logger) {
	want := map[string]bool{}
	for _, pl := range p.links {
		want[pl.name] = true
	}
	names, _ := obj.Pins(pinstore.Links)
	for _, n := range names {
		if !want[n] && staleIsOurs(obj, pinstore.Links, n, p, own, log) {
			log.Info("removing link no longer configured", "object", p.name, "link", n)
			if err := hooks.Unpin(obj.Path(pinstore.Links, n)); err != nil {
				log.Warn("could not remove link", "object", p.name, "link", n, "err", err)
			}
		}
	}
	names, _ = obj.Pins(pinstore.Programs)
	for _, n := range names {
		if !contains(p.progList, n) && staleIsOurs(obj, pinstore.Programs, n, p, own, log) {
			log.Info("removing program no longer in the object", "object", p.name, "program", n)
			os.Remove(obj.Path(pinstore.Programs, n))
		}
	}
}

// inodeCache keeps the inodes of network namespaces by path, for one
// manifest.
type inodeCache map[string]uint64

func (c inodeCache) of(path string) uint64 {
	ino, ok := c[path]
	if !ok {
		ino, _ = hooks.NetnsInode(path)
		c[path] = ino
	}
	return ino
}

// nextGeneration is the generation of an install after old: one more when
// a program changed, unless old recorded none (a first install that a
// crash cut short, or maps seeded before it).
func nextGeneration(old *pinstore.Manifest, changed bool) uint64 {
	switch {
	case old == nil:
		return 0
	case changed && len(old.Programs) > 0:
		return old.Generation + 1
	}
	return old.Generation
}

func newManifest(p *Plan, old *pinstore.Manifest, in *Installed) *pinstore.Manifest {
	netnsInodes := inodeCache{}
	m := &pinstore.Manifest{
		Source:       p.cfg.Path,
		ObjectSHA256: p.sha256,
		Signer:       p.signer,
		ConfigHash:   p.cfg.Hash(),
		Maps:         map[string]pinstore.MapRecord{},
		Programs:     map[string]pinstore.ProgramRecord{},
		Links:        map[string]pinstore.LinkRecord{},
	}
	if old != nil {
		m.Generation = old.Generation
		m.Supervisor = old.Supervisor
	}
	if p.key != "" {
		m.Plan = &pinstore.PlanRecord{Key: p.key, Links: make([]string, 0, len(p.links))}
		for _, pl := range p.links {
			m.Plan.Links = append(m.Plan.Links, pl.name)
		}
	}
	for name, mp := range in.maps {
		rec := pinstore.MapRecord{Path: in.obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath})}
		if id, err := pinstore.MapID(mp); err == nil {
			rec.ID = uint32(id)
		}
		// A map in the object's directory is adopted only when the manifest
		// records it: bpfsup made it. One at a pin path of its own may be
		// another tool's, adopted there (see MapRecord.Made).
		rec.Made = in.made[name] || p.mapCfg[name].PinPath == ""
		if old != nil {
			if o, ok := old.Maps[name]; ok {
				rec.PreviousIDs = carryIDs(o.PreviousIDs, o.ID, rec.ID, mapAlive)
				rec.Made = rec.Made || (o.Made && o.ID == rec.ID)
			}
		}
		m.Maps[name] = rec
	}
	for name, pr := range in.progs {
		rec := pinstore.ProgramRecord{Type: pr.Type().String()}
		if b, ok := in.briefs[name]; ok {
			rec.ID, rec.Tag = uint32(b.ID), b.Tag
		} else if b, err := pinstore.BriefProgram(pr); err == nil {
			rec.ID, rec.Tag = uint32(b.ID), b.Tag
		}
		if d, ok := p.digests[name]; ok {
			rec.Source, rec.Data, rec.Target = d.Source, d.Data, d.Target
		}
		if old != nil {
			if o, ok := old.Programs[name]; ok {
				rec.PreviousIDs = carryIDs(o.PreviousIDs, o.ID, rec.ID, programAlive)
				if _, planned := p.digests[name]; !planned && o.ID == rec.ID {
					// Written without the object's spec (adoptUnchanged,
					// a re-attach): what was recorded still holds.
					rec.Source, rec.Data, rec.Target = o.Source, o.Data, o.Target
				}
			}
		}
		m.Programs[name] = rec
	}
	for _, pl := range p.links {
		spec := pl.hook.Spec()
		rec := pinstore.LinkRecord{Program: pl.program, Hook: spec.String(), Netns: spec.Netns,
			Mechanism: pl.hook.Mechanism(), Updatable: pl.hook.Updatable(),
			Place: string(pl.place.where), Anchor: pl.place.anchor, AnchorPath: pl.place.anchorPath}
		if spec.IsNetwork() {
			rec.NetnsInode = netnsInodes.of(spec.Netns)
		}
		if l, ok := in.links[pl.name]; ok {
			rec.Kind = string(l.Kind())
			if id, ok := in.linkIDs[pl.name]; ok {
				rec.ID = id
			} else if info, err := l.Info(); err == nil {
				rec.ID = info.ID
			}
		}
		if old != nil {
			if o, ok := old.Links[pl.name]; ok {
				kind := hooks.AttachmentKind(rec.Kind)
				rec.PreviousIDs = carryIDs(o.PreviousIDs, o.ID, rec.ID, func(id uint32) bool { return hooks.Alive(kind, id) })
			}
		}
		m.Links[pl.name] = rec
	}
	return m
}

// carryIDs is the list of earlier ids of a program or link: the previous
// list and the old id, without the current id, without ids the kernel no
// longer has (they cannot be pinned or attached any more) and without
// duplicates. Dropping only dead ids, rather than keeping the last few, means
// that a pin left by any number of crashed upgrades is still recognised.
func carryIDs(prev []uint32, oldID, cur uint32, alive func(uint32) bool) []uint32 {
	var out []uint32
	for _, id := range append(append([]uint32(nil), prev...), oldID) {
		if id == 0 || id == cur || slices.Contains(out, id) || !alive(id) {
			continue
		}
		out = append(out, id)
	}
	return out
}

// alive says whether an object opened by its id (obj, err) is still in the
// kernel; it closes obj.
func alive[T io.Closer](obj T, err error) bool {
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	obj.Close()
	return true
}

func mapAlive(id uint32) bool { return alive(ebpf.NewMapFromID(ebpf.MapID(id))) }

func programAlive(id uint32) bool { return alive(ebpf.NewProgramFromID(ebpf.ProgramID(id))) }

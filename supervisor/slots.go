package supervisor

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/pinstore"
)

// Prog arrays and maps of maps whose declaration fills slots by name
// (libbpf's `.values = { [0] = (void *)&tail }`, the usual way to set up
// tail calls) are created empty, since the programs and maps they name exist
// only later in the install (pinstore.WithoutReferences). fillSlots fills
// them once the programs are loaded or adopted:
//
//   - a prog array slot is made to hold the object's program of that name
//     whenever it holds anything else: on the first install, and on an
//     upgrade, where it moves from the old program to the new one before
//     the links swap (the new entry program tail-calls the new programs; the
//     old one, still attached for that instant, does too, as when Cilium
//     replaces its tail calls). A rollback puts the old program back.
//   - a map-of-maps slot is filled only when bpfsup creates the outer map: on
//     an adopted one the slots are the application's data.
//
// Slots the declaration does not name are never touched: an application may
// fill them itself.
func fillSlots(p *plan, in *installed, fresh map[string]bool, rollback *undo, log *slog.Logger) error {
	for _, name := range p.maps {
		ms := p.spec.Maps[name]
		refs := pinstore.References(ms)
		if len(refs) == 0 {
			continue
		}
		m := in.maps[name]
		switch ms.Type {
		case ebpf.ProgramArray:
			for _, ref := range refs {
				if err := fillProgSlot(p.name, name, m, ref, in.progs[ref.Name], rollback, log); err != nil {
					return err
				}
			}
		case ebpf.ArrayOfMaps, ebpf.HashOfMaps:
			if !fresh[name] {
				continue
			}
			for _, ref := range refs {
				inner := in.maps[ref.Name]
				if inner == nil {
					return fmt.Errorf("object %s: map %s: slot %v names map %s, which bpfsup does not hold", p.name, name, ref.Key, ref.Name)
				}
				if err := m.Put(ref.Key, inner); err != nil {
					return fmt.Errorf("object %s: map %s: put map %s in slot %v: %w", p.name, name, ref.Name, ref.Key, err)
				}
			}
		}
	}
	return nil
}

func fillProgSlot(object, name string, m *ebpf.Map, ref pinstore.Reference, prog *ebpf.Program, rollback *undo, log *slog.Logger) error {
	if prog == nil {
		// Left out (a type this kernel lacks, see skipUnsupported).
		log.Warn("prog array slot left empty: its program is not loaded", "object", object, "map", name, "slot", ref.Key, "program", ref.Name)
		return nil
	}
	info, err := prog.Info()
	if err != nil {
		return fmt.Errorf("object %s: program %s: %w", object, ref.Name, err)
	}
	want, _ := info.ID()
	var had uint32
	err = m.Lookup(ref.Key, &had)
	switch {
	case err == nil && ebpf.ProgramID(had) == want:
		return nil
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("object %s: prog array %s: read slot %v: %w", object, name, ref.Key, err)
	}
	existed := err == nil
	if err := m.Put(ref.Key, prog); err != nil {
		return fmt.Errorf("object %s: prog array %s: put program %s in slot %v: %w", object, name, ref.Name, ref.Key, err)
	}
	log.Info("prog array slot filled", "object", object, "map", name, "slot", ref.Key, "program", ref.Name, "id", want, "was", had)
	rollback.push(func() {
		if !existed {
			_ = m.Delete(ref.Key)
			return
		}
		old, err := ebpf.NewProgramFromID(ebpf.ProgramID(had))
		if err != nil {
			_ = m.Delete(ref.Key)
			return
		}
		defer old.Close()
		if err := m.Put(ref.Key, old); err != nil {
			log.Error("could not put the old program back in its prog array slot", "map", name, "slot", ref.Key, "err", err)
		}
	})
	return nil
}

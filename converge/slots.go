package converge

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
// only later in the install (pinstore.WithoutReferences). The install fills
// them:
//
//   - a map bpfsup creates, before it is pinned (fillNewMaps): nothing uses
//     it yet, and a crash never leaves it pinned and empty;
//   - a prog array adopted from its pin, after the install's gate and before
//     the links swap (moveProgSlots): each declared slot is made to hold the
//     object's program of that name whenever it holds anything else, so an
//     upgrade moves it from the old program to the new one (the new entry
//     program tail-calls the new programs; the old one, still attached for
//     that instant, does too, as when Cilium replaces its tail calls). A
//     rollback puts the old program back.
//
// An adopted map of maps is left alone: its slots are the application's
// data. Slots the declaration does not name are never touched: an
// application may fill them itself.

// fillNewMaps fills the declared slots of the maps the install created.
func fillNewMaps(p *Plan, in *Installed, fresh map[string]bool, log *slog.Logger) error {
	for _, name := range p.maps {
		ms := p.spec.Maps[name]
		refs := pinstore.References(ms)
		if len(refs) == 0 || !fresh[name] {
			continue
		}
		m := in.maps[name]
		for _, ref := range refs {
			var value any
			switch ms.Type {
			case ebpf.ProgramArray:
				prog := in.progs[ref.Name]
				if prog == nil {
					logSlotLeftEmpty(log, p.name, name, ref)
					continue
				}
				value = prog
			case ebpf.ArrayOfMaps, ebpf.HashOfMaps:
				inner := in.maps[ref.Name]
				if inner == nil {
					return fmt.Errorf("object %s: map %s: slot %v names map %s, which bpfsup does not hold", p.name, name, ref.Key, ref.Name)
				}
				value = inner
			default:
				continue
			}
			if err := m.Put(ref.Key, value); err != nil {
				return fmt.Errorf("object %s: map %s: put %s in slot %v: %w", p.name, name, ref.Name, ref.Key, err)
			}
		}
	}
	return nil
}

// moveProgSlots makes the declared slots of the adopted prog arrays hold the
// object's programs. What a rollback needs stays open until release runs.
func moveProgSlots(tx *Tx) error {
	p := tx.plan
	for _, name := range p.maps {
		ms := p.spec.Maps[name]
		if ms.Type != ebpf.ProgramArray || tx.fresh[name] {
			continue
		}
		for _, ref := range pinstore.References(ms) {
			if err := tx.moveProgSlot(name, ref); err != nil {
				return err
			}
		}
	}
	return nil
}

// moveProgSlot makes slot ref of prog array name hold the object's program
// of ref's name.
func (tx *Tx) moveProgSlot(name string, ref pinstore.Reference) error {
	object, m, prog, log := tx.plan.name, tx.in.maps[name], tx.in.progs[ref.Name], tx.log
	if prog == nil {
		logSlotLeftEmpty(log, object, name, ref)
		return nil
	}
	want, err := pinstore.ProgramID(prog)
	if err != nil {
		return fmt.Errorf("object %s: program %s: %w", object, ref.Name, err)
	}
	var had uint32
	err = m.Lookup(ref.Key, &had)
	switch {
	case err == nil && ebpf.ProgramID(had) == want:
		return nil
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("object %s: prog array %s: read slot %v: %w", object, name, ref.Key, err)
	}
	// The program the slot held, open until the install is done: its pin
	// may go before a rollback needs it back.
	var old *ebpf.Program
	if err == nil {
		if old, err = ebpf.NewProgramFromID(ebpf.ProgramID(had)); err != nil {
			return fmt.Errorf("object %s: prog array %s: open program %d of slot %v: %w", object, name, had, ref.Key, err)
		}
		tx.release.push(func() { old.Close() })
	}
	if err := m.Put(ref.Key, prog); err != nil {
		return fmt.Errorf("object %s: prog array %s: put program %s in slot %v: %w", object, name, ref.Name, ref.Key, err)
	}
	log.Info("prog array slot moved", "object", object, "map", name, "slot", ref.Key, "program", ref.Name, "id", want, "was", had)
	tx.rollback.push(func() {
		var err error
		if old == nil {
			err = m.Delete(ref.Key)
		} else {
			err = m.Put(ref.Key, old)
		}
		if err != nil {
			log.Error("could not put back what a prog array slot held", "map", name, "slot", ref.Key, "err", err)
		}
	})
	return nil
}

func logSlotLeftEmpty(log *slog.Logger, object, name string, ref pinstore.Reference) {
	// Left out: a type this kernel lacks (see skipUnsupported).
	log.Warn("slot left empty: its program is not loaded", "object", object, "map", name, "slot", ref.Key, "program", ref.Name)
}

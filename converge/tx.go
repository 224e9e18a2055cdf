package converge

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Tx converges one object to its plan, in phases: Prepare, then Swap, then
// Commit, or Rollback after any of the first two. Until Commit, everything
// it did can be undone, and Rollback undoes it; a crash at any point leaves
// what the next start converges from (see the package doc).
//
// A Tx is used by one goroutine. It takes over the object's lock (the
// caller's until Commit or Rollback) and the pins opened for it.
type Tx struct {
	obj  *pinstore.Object
	plan *Plan
	pins *Pins
	log  *slog.Logger

	in  *Installed
	old *pinstore.Manifest // the manifest of the last install, nil if none
	own owned

	// fresh names the maps created, which Prepare pins.
	fresh map[string]bool
	// migrated are the maps that migrated maps replace, which the attached
	// programs write until their links swap.
	migrated map[string]*ebpf.Map
	progs    map[string]*pinstore.ProgramResult
	// changed says that a program was loaded anew.
	changed bool
	// asides are the foreign pins moved out of the way (--force), and
	// foreignMaps the maps that are not bpfsup's, replaced (--force).
	asides      []foreignPin
	foreignMaps map[string]bool
	// rollback undoes what the Tx did, last first; release closes what the
	// rollback would need, once the Tx is done either way.
	rollback, release undo
	done              bool
}

// Begin starts converging the object obj (opened and locked by the caller)
// to p. pins, when not nil, holds what Prefetch opened for it; the Tx
// takes it over.
func Begin(obj *pinstore.Object, p *Plan, pins *Pins, log *slog.Logger) *Tx {
	if pins == nil {
		pins = newPins()
	}
	return &Tx{obj: obj, plan: p, pins: pins, log: log, fresh: map[string]bool{}, migrated: map[string]*ebpf.Map{},
		in: newInstalled(p, obj)}
}

// Name is the name of the object the Tx converges.
func (tx *Tx) Name() string { return tx.plan.name }

// Prepare makes everything the object needs beside what runs, and changes
// nothing that runs: it refuses foreign pins (or with --force moves those
// of the wrong kind aside), adopts or creates the maps, adopts or loads the
// programs (the verifier runs here), writes the manifest ahead of the pins
// it is about to make, and pins the new maps and the programs that have no
// pin yet. On error, Rollback.
func (tx *Tx) Prepare() error {
	if err := tx.checkBefore(); err != nil {
		return err
	}
	if err := tx.prepareMaps(); err != nil {
		return err
	}
	if err := tx.preparePrograms(); err != nil {
		return err
	}
	if err := fillNewMaps(tx.plan, tx.in, tx.fresh, tx.log); err != nil {
		return err
	}
	foreign, err := checkPinsAfterLoad(tx.obj, tx.plan, tx.own, tx.progs, tx.pins)
	if err != nil {
		return fmt.Errorf("object %s: %w", tx.plan.name, err)
	}
	if len(foreign) > 0 && !tx.plan.force {
		return foreignError(tx.plan.name, foreign)
	}
	logForeign(tx.log, tx.plan.name, foreign)
	if err := tx.writeAhead(); err != nil {
		return err
	}
	if err := tx.pinFreshMaps(); err != nil {
		return err
	}
	return tx.pinNewPrograms()
}

// checkBefore reads the manifest of the last install and finds the foreign
// pins before anything is made (see ownership.go).
func (tx *Tx) checkBefore() error {
	p := tx.plan
	old, err := tx.pins.readManifest(tx.obj.Store(), p.name)
	if err != nil {
		tx.log.Warn("ignoring unreadable manifest", "object", p.name, "err", err)
		old = nil
	}
	tx.old = old
	tx.pins.manifest, tx.pins.manifestErr, tx.pins.manifestRead = old, nil, true
	tx.own = ownedBy(old)
	foreign, resetMaps, err := checkPinsBefore(tx.obj, p, tx.own, tx.pins)
	if err != nil {
		return fmt.Errorf("object %s: %w", p.name, err)
	}
	if len(foreign) > 0 && !p.force {
		return foreignError(p.name, foreign)
	}
	logForeign(tx.log, p.name, foreign)
	for _, f := range foreign {
		if !f.aside {
			continue
		}
		back, err := moveAside(tx.obj, f)
		if err != nil {
			return fmt.Errorf("object %s: %w", p.name, err)
		}
		tx.rollback.push(back)
		tx.asides = append(tx.asides, f)
	}
	tx.foreignMaps = resetMaps
	return nil
}

// prepareMaps adopts the pinned maps or creates new ones (not pinned yet).
func (tx *Tx) prepareMaps() error {
	p, in := tx.plan, tx.in
	for _, name := range p.maps {
		mc := p.mapCfg[name]
		pol := pinstore.MapPolicy{PinPath: mc.PinPath, Reset: mc.Reset, Migrate: string(mc.Migrate), Foreign: tx.foreignMaps[name]}
		res, err := tx.obj.AdoptOrCreateMap(name, p.spec.Maps[name], pol)
		if err != nil {
			return fmt.Errorf("object %s: %w", p.name, err)
		}
		if res.Migrated != nil {
			tx.migrated[name] = res.Migrated
		}
		in.maps[name] = res.Map
		if res.Replaced != "" {
			tx.log.Warn("replacing incompatible pinned map", "object", p.name, "map", name, "diff", res.Replaced)
		}
		if !res.Adopted {
			tx.fresh[name] = true
			in.made[name] = true
		}
	}
	return nil
}

// preparePrograms adopts the pinned programs that are what the object
// would load, and loads the others.
func (tx *Tx) preparePrograms() error {
	p, in := tx.plan, tx.in
	loadStart := time.Now()
	adopt := pinstore.Adoption{Opened: tx.pins.takeProgram, Want: p.digests}
	if tx.old != nil {
		adopt.Recorded = tx.old.Programs
	}
	progs, err := tx.obj.AdoptOrLoadPrograms(p.spec, in.maps, ebpf.ProgramOptions{}, adopt)
	in.loadTook = time.Since(loadStart)
	if err != nil {
		if vlog := pinstore.VerifierLog(err, 20); vlog != "" {
			return fmt.Errorf("%w\nverifier log (last lines):\n%s", err, vlog)
		}
		return err
	}
	tx.progs = progs
	for name, r := range progs {
		in.progs[name] = r.Program
		if r.Adopted {
			in.adopted++
			in.briefs[name] = r.Brief
			continue
		}
		in.loaded++
		tx.changed = true
		if r.Pinned != nil {
			tx.log.Info("pinned program differs from the object, loading it anew", "object", p.name, "program", name, "reason", r.Mismatch)
			pinned := r.Pinned
			tx.release.push(func() { pinned.Close() })
		}
	}
	return nil
}

// writeAhead writes the manifest that names what is about to be pinned, so
// that a crash between here and the renames leaves pins the next start
// knows. When every program and map was adopted, nothing new is pinned but
// links, which the next start recognises by their programs.
func (tx *Tx) writeAhead() error {
	if !tx.changed && len(tx.fresh) == 0 {
		return nil
	}
	man := newManifest(tx.plan, tx.old, tx.in)
	man.Generation = nextGeneration(tx.old, tx.changed)
	carryStale(man, tx.old)
	if err := tx.obj.WriteManifest(man); err != nil {
		return err
	}
	old := tx.old
	tx.rollback.push(func() {
		if old != nil {
			_ = tx.obj.WriteManifest(old)
		}
	})
	return nil
}

// pinFreshMaps pins the maps Prepare created. A reset or migrated map
// replaces a pinned one: a rollback pins the old one (and its contents)
// back.
func (tx *Tx) pinFreshMaps() error {
	p, obj := tx.plan, tx.obj
	for _, name := range p.maps {
		if !tx.fresh[name] {
			continue
		}
		path := obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath})
		existed := pinstore.Exists(path)
		var prev *ebpf.Map
		if existed {
			if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
				prev, _ = m.Clone() // without m's pin path, which Pin would rename
				m.Close()
			}
		}
		if err := obj.Pin(pinstore.Maps, path, tx.in.maps[name]); err != nil {
			prev.Close()
			return err
		}
		switch {
		case !existed:
			tx.rollback.push(func() { os.Remove(path) })
		case prev != nil:
			tx.release.push(func() { prev.Close() })
			tx.rollback.push(func() {
				if err := obj.Pin(pinstore.Maps, path, prev); err != nil {
					tx.log.Error("could not pin the replaced map back", "map", path, "err", err)
				}
			})
		}
	}
	return nil
}

// pinNewPrograms pins the programs that have no pin yet, before their
// links; programs that replace a pinned one move into place in Swap, after
// the links.
func (tx *Tx) pinNewPrograms() error {
	for _, name := range tx.plan.progList {
		r := tx.progs[name]
		if r.Adopted || r.Pinned != nil {
			continue
		}
		path := r.Path
		if err := tx.obj.Pin(pinstore.Programs, path, r.Program); err != nil {
			return err
		}
		tx.rollback.push(func() { os.Remove(path) })
	}
	return nil
}

// Swap makes what runs the new state: it catches migrated maps up with
// what the running programs wrote since their copy, moves the slots of
// adopted prog arrays to the new programs, makes every link run its
// program (in place where the hook allows, make-before-break elsewhere,
// never leaving a hook without a program), and moves the pins of replaced
// programs into place. On error, Rollback.
func (tx *Tx) Swap() error {
	start := time.Now()
	tx.syncMigrated()
	if err := moveProgSlots(tx); err != nil {
		return err
	}
	if err := tx.swapLinks(); err != nil {
		return err
	}
	tx.in.swapped = time.Now()
	tx.in.swapTook = tx.in.swapped.Sub(start)
	return tx.moveProgramPins()
}

// syncMigrated catches each migrated map up with what the running programs
// wrote since its copy was taken (before the loads), just before they are
// swapped out.
func (tx *Tx) syncMigrated() {
	p := tx.plan
	for _, name := range p.maps {
		was := tx.migrated[name]
		if was == nil {
			continue
		}
		put, deleted, err := pinstore.SyncEntries(was, tx.in.maps[name])
		if err != nil {
			// The copy stands; what changed since it may be missing.
			tx.log.Warn("migrated map not caught up with the writes since its copy", "object", p.name, "map", name, "err", err)
			continue
		}
		tx.log.Info("migrated map caught up", "object", p.name, "map", name, "entries", put, "deleted", deleted)
	}
}

// swapLinks makes every link of the plan run its program.
func (tx *Tx) swapLinks() error {
	p, in := tx.plan, tx.in
	// One rtnetlink socket per namespace for all the links' checks.
	endBatch := hooks.Batch()
	defer endBatch()
	for _, pl := range p.links {
		if from := renamedLink(tx.obj, p, pl, tx.old); from != "" {
			// The same hook under another name (a second attachment of its
			// program names both after their targets): the link moves to
			// the new name instead of a second one being attached, which an
			// XDP hook would refuse.
			if err := tx.obj.RenamePin(pinstore.Links, from, pl.name); err != nil {
				return fmt.Errorf("object %s: %w", p.name, err)
			}
			tx.rollback.push(func() { _ = tx.obj.RenamePin(pinstore.Links, pl.name, from) })
			tx.log.Info("link renamed", "object", p.name, "from", from, "to", pl.name, "hook", pl.hook.Spec().String())
		}
		var progID ebpf.ProgramID
		if r := tx.progs[pl.program]; r != nil && r.Adopted {
			progID = r.Brief.ID
		}
		rl := linkReconcile{obj: tx.obj, pl: pl, prog: in.progs[pl.program], progID: progID, pins: tx.pins,
			rollback: &tx.rollback, release: &tx.release, force: p.force, log: tx.log}
		res, err := rl.run()
		if err != nil {
			return fmt.Errorf("object %s: %w", p.name, err)
		}
		if res.a != nil {
			in.links[pl.name] = res.a
		}
		if res.adoptedID != 0 {
			in.linkIDs[pl.name] = res.adoptedID
		}
		if res.defunct {
			in.defunct[pl.name] = true
		}
	}
	return nil
}

// moveProgramPins moves the pins of the programs that replace pinned ones
// into place, once their links run them.
func (tx *Tx) moveProgramPins() error {
	p := tx.plan
	for _, name := range p.progList {
		r := tx.progs[name]
		if r.Adopted || r.Pinned == nil {
			continue
		}
		// A clone, without r.Pinned's pin path (which Pin would move), open
		// until after a rollback: r.Pinned is closed before it runs.
		prev, err := r.Pinned.Clone()
		if err != nil {
			return fmt.Errorf("object %s: program %s: %w", p.name, name, err)
		}
		tx.release.push(func() { prev.Close() })
		if err := tx.obj.Pin(pinstore.Programs, r.Path, r.Program); err != nil {
			return err
		}
		path := r.Path
		tx.rollback.push(func() {
			if err := tx.obj.Pin(pinstore.Programs, path, prev); err != nil {
				tx.log.Error("could not pin the replaced program back", "program", path, "err", err)
			}
		})
	}
	return nil
}

// Commit keeps what the Tx did: it removes the foreign pins it moved
// aside, and the pins of programs and links the configuration no longer
// has (bpfsup's own only), and writes the manifest. It returns the object
// as installed, which owns the object's lock from here on. Nothing fails
// past this point in a way that needs undoing.
func (tx *Tx) Commit() *Installed {
	p, in := tx.plan, tx.in
	tx.rollback = nil
	for _, f := range tx.asides {
		os.Remove(asidePath(tx.obj, f))
	}
	removeStale(tx.obj, p, tx.own, tx.log)
	for _, u := range p.unattached {
		tx.log.Info("program loaded and pinned, not attached", "object", p.name, "program", u.program, "why", u.why)
	}
	for _, u := range p.skipped {
		tx.log.Warn("program not loaded: nothing attaches it and the kernel cannot load it", "object", p.name, "program", u.program, "why", u.why)
	}
	man := newManifest(p, tx.old, in)
	man.Generation = nextGeneration(tx.old, tx.changed)
	// Links may change later (re-attached when an interface comes back):
	// the manifest asks the kernel from here on.
	in.briefs, in.linkIDs = nil, nil
	if _, err := tx.obj.WriteManifestUnlessSame(man, tx.old); err != nil {
		tx.log.Warn("could not write manifest", "object", p.name, "err", err)
	}
	in.manifest = man
	// The object's parsed ELF (its instructions and BTF, often a few MiB)
	// served the install; a reload parses the file again.
	p.spec = nil
	tx.finish()
	return in
}

// Rollback undoes what Prepare and Swap did, last first: the object is
// as it was before Begin. The object's lock stays the caller's.
func (tx *Tx) Rollback() {
	if tx.done {
		return
	}
	tx.rollback.run()
	tx.in.obj = nil // the caller's
	tx.in.Close()
	tx.finish()
}

// finish closes what the Tx held for a rollback, and the pins it took.
func (tx *Tx) finish() {
	tx.done = true
	tx.release.run()
	tx.release = nil
	for name, m := range tx.migrated {
		m.Close()
		delete(tx.migrated, name)
	}
	tx.pins.close()
}

// Apply converges several objects together, all or nothing: every Tx is
// prepared in order; then each swaps in order; then all commit. When a
// Prepare fails, that Tx and those prepared before it roll back, last
// first, and nothing changed. When a Swap fails, the Txs after it roll back,
// then it, then those swapped before it, last first, as one rollback goes
// (objects may share a map, through pin_path), and nothing changed. op
// names the operation in the log ("start", "reload"). It returns an
// Installed per Tx, or the error of the one that failed.
func Apply(op string, txs []*Tx, log *slog.Logger) ([]*Installed, error) {
	ps := make([]phases, len(txs))
	for i, tx := range txs {
		ps[i] = tx
	}
	if err := apply(op, ps, log); err != nil {
		return nil, err
	}
	ins := make([]*Installed, len(txs))
	for i, tx := range txs {
		ins[i] = tx.Commit()
	}
	return ins, nil
}

// phases is a Tx as Apply orders it.
type phases interface {
	Name() string
	Prepare() error
	Swap() error
	Rollback()
}

// apply runs the phases of Apply up to the commits, and the rollbacks of a
// failure.
func apply(op string, txs []phases, log *slog.Logger) error {
	// rollBack rolls back the Txs of txs in reverse, saying why.
	rollBack := func(txs []phases, how string, failed phases) {
		for j := len(txs) - 1; j >= 0; j-- {
			txs[j].Rollback()
			log.Info(how+": another object of the "+op+" failed", "object", txs[j].Name(), "failed", failed.Name())
		}
	}
	for i, tx := range txs {
		if err := tx.Prepare(); err != nil {
			log.Error(op+" of object failed; it is as it was", "object", tx.Name(), "err", err)
			for _, later := range txs[i+1:] {
				later.Rollback() // not begun: closes what it holds
			}
			tx.Rollback()
			rollBack(txs[:i], "object not upgraded", tx)
			return err
		}
	}
	for i, tx := range txs {
		if err := tx.Swap(); err != nil {
			log.Error(op+" of object failed; it is as it was", "object", tx.Name(), "err", err)
			rollBack(txs[i+1:], "object not upgraded", tx)
			tx.Rollback()
			rollBack(txs[:i], "object swapped back", tx)
			return err
		}
	}
	return nil
}

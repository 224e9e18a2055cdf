package converge

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/pinstore"
)

// repinRecordedLink pins again the link the manifest records for pl when
// its pin is gone (removed by hand) but the link lives on the hook, held by
// a running bpfsup: that link is bpfsup's, and attaching another beside it
// would be refused (XDP) or run the program twice. It reports whether it
// pinned it. A tc filter, which only its record names, cannot be found so.
func repinRecordedLink(obj *pinstore.Object, pl plannedLink, man *pinstore.Manifest, path string, log *slog.Logger) bool {
	if man == nil {
		return false
	}
	rec, ok := man.Links[pl.name]
	if !ok || rec.ID == 0 || rec.Kind == string(hooks.KindTCFilter) {
		return false
	}
	l, err := link.NewFromID(link.ID(rec.ID))
	if err != nil {
		return false
	}
	a := hooks.FromLink(l)
	defer a.Close()
	if state, err := pl.hook.Check(a); err != nil || state != hooks.Attached {
		return false
	}
	if err := obj.Pin(pinstore.Links, path, a); err != nil {
		log.Warn("could not pin the recorded link again", "object", obj.Name, "link", pl.name, "id", rec.ID, "err", err)
		return false
	}
	log.Warn("link pin was gone; pinned the link bpfsup recorded again", "object", obj.Name, "link", pl.name, "id", rec.ID, "path", path)
	return true
}

// recordedState decides for a link whose hook the kernel does not describe
// (hooks.Unknown): it is Attached when the manifest records it on spec, and
// Elsewhere (replaced make-before-break) when the manifest says otherwise or
// says nothing.
//
// m is the manifest of what was installed before this install began: not
// the write-ahead one an install may have written since, which already
// names the hooks it is about to attach.
func recordedState(m *pinstore.Manifest, name string, spec hooks.Spec) hooks.State {
	if m == nil {
		return hooks.Elsewhere
	}
	if rec, ok := m.Links[name]; ok && rec.Hook == spec.String() && rec.Netns == spec.Netns {
		return hooks.Attached
	}
	return hooks.Elsewhere
}

// RecordedState is recordedState, for status.
func RecordedState(m *pinstore.Manifest, name string, spec hooks.Spec) hooks.State {
	return recordedState(m, name, spec)
}

// reconcileLink makes the link pl exist, pinned, with prog attached, for a
// re-attach (no rollback). It returns the attachment, or nil when it is
// kept defunct because its target is gone. recorded is the object's
// manifest (see recordedState).
func reconcileLink(obj *pinstore.Object, pl plannedLink, prog *ebpf.Program, recorded *pinstore.Manifest, log *slog.Logger) (hooks.Attachment, error) {
	var rollback, release undo
	defer func() { release.run() }()
	pins := newPins()
	defer pins.close()
	pins.manifest, pins.manifestRead = recorded, true
	// The hook is read again for the attach: what the plan read is old.
	pl.place.revs = nil
	rl := linkReconcile{obj: obj, pl: pl, prog: prog, pins: pins, rollback: &rollback, release: &release, log: log}
	res, err := rl.run()
	return res.a, err
}

// linkReconcile makes one link of a plan exist, pinned, running its
// program: for an install that may roll back, what the rollback needs
// stays open until the caller runs release.
type linkReconcile struct {
	obj  *pinstore.Object
	pl   plannedLink
	prog *ebpf.Program
	// progID is prog's id when the caller knows it (else 0).
	progID ebpf.ProgramID
	// pins has the link's pin open if the install looked at it already.
	pins              *Pins
	rollback, release *undo
	// force replaces what bpfsup did not make (ErrForeignPin,
	// ErrLinkChanged otherwise).
	force bool
	log   *slog.Logger

	path string
	spec hooks.Spec
	// heldOld: the attachment replaced make-before-break is closed by
	// release, not at once (a tc filter's Close detaches it).
	heldOld bool
}

// linkResult is what a reconcile made of a link: the attachment (nil when
// it is kept defunct and not held), its id when it is the pinned one
// adopted as it was (else 0), and whether it was kept defunct.
type linkResult struct {
	a         hooks.Attachment
	adoptedID uint32
	defunct   bool
}

func (r *linkReconcile) run() (linkResult, error) {
	pl, obj := r.pl, r.obj
	r.path, r.spec = obj.Path(pinstore.Links, pl.name), pl.hook.Spec()
	// A hook without bpf_links (tcx's tc fallback) names its attachment
	// after the pin, and says what it cannot promise on this kernel.
	hooks.BindPin(pl.hook, r.path)
	if c := hooks.Caveat(pl.hook); c != "" {
		r.log.Warn(c, "object", obj.Name, "link", pl.name, "hook", r.spec.String(), "mechanism", pl.hook.Mechanism())
	}
	pinned, info, err := r.pins.loadLink(r.path)
	if errors.Is(err, os.ErrNotExist) && repinRecordedLink(obj, pl, r.pins.manifest, r.path, r.log) {
		path := r.path
		r.rollback.push(func() { hooks.Unpin(path) })
		pinned, info, err = r.pins.loadLink(r.path)
	}
	if errors.Is(err, os.ErrNotExist) {
		a, err := r.attach()
		return linkResult{a: a}, err
	}
	if err != nil {
		return linkResult{}, fmt.Errorf("link %s: load pin %s: %w", pl.name, r.path, err)
	}
	r.pins.takeLink(r.path) // returned, or closed, or released below
	res, err := r.reconcile(pinned, info)
	if err != nil || (res.a != pinned && !r.heldOld) {
		pinned.Close()
	}
	return res, err
}

// attach attaches a new link and pins it.
func (r *linkReconcile) attach() (hooks.Attachment, error) {
	a, err := attachLink(r.pl, r.prog, r.log)
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", r.pl.program, err)
	}
	crash.At("links/attached")
	if err := r.obj.Pin(pinstore.Links, r.path, a); err != nil {
		a.Close()
		return nil, err
	}
	path := r.path
	r.rollback.push(func() { hooks.Unpin(path) })
	return a, nil
}

// reconcile decides for the attachment pinned at the link's path: adopt it,
// update it in place, keep it defunct, or replace it make-before-break. It
// returns pinned itself when that is kept; the caller closes it otherwise.
func (r *linkReconcile) reconcile(pinned hooks.Attachment, info *hooks.AttachmentInfo) (linkResult, error) {
	pl := r.pl
	state, err := pl.hook.Check(pinned)
	if err != nil {
		return linkResult{}, fmt.Errorf("link %s: %w", pl.name, err)
	}
	if state == hooks.Unknown {
		state = recordedState(r.pins.manifest, pl.name, r.spec)
	}
	if r.progID == 0 {
		if r.progID, err = pinstore.ProgramID(r.prog); err != nil {
			return linkResult{}, err
		}
	}
	// A link pin that holds what bpfsup did not make is never replaced
	// without --force: an install finds it before this (checkPinsAfterLoad),
	// a re-attach (an interface or namespace back) finds it here.
	if !r.force && !linkIsOurs(r.pins.manifest, pl.name, info, r.progID) {
		return linkResult{}, fmt.Errorf("link %s: %w: %s holds %s, which bpfsup did not make; left alone (remove it, or run with --force)",
			pl.name, ErrForeignPin, r.path, DescribeAttachment(pinned))
	}
	switch state {
	case hooks.Attached:
		if info.Program == r.progID {
			return linkResult{a: pinned, adoptedID: info.ID}, nil
		}
		if pl.hook.Updatable() {
			if err := r.update(pinned, info); err != nil {
				return linkResult{}, err
			}
			return linkResult{a: pinned}, nil
		}
	case hooks.Defunct:
		if hooks.CheckTarget(r.spec) != nil {
			r.log.Warn("link is defunct and its target is gone; keeping it until the target is back", "link", pl.name, "hook", r.spec.String())
			return linkResult{a: pinned, defunct: true}, nil
		}
	}
	a, err := r.replace(pinned, info, state)
	return linkResult{a: a}, err
}

// update swaps the program of pinned, which runs another program of
// bpfsup's, in place (compare-and-swap).
func (r *linkReconcile) update(pinned hooks.Attachment, info *hooks.AttachmentInfo) error {
	pl := r.pl
	if err := checkLinkProgram(r.obj, pl.name, pl.program, info.Program, r.force); err != nil {
		return err
	}
	oldProg, err := openProgram(r.obj, info.Program)
	if err != nil {
		return fmt.Errorf("link %s: open its program %d: %w", pl.name, info.Program, err)
	}
	if err := pinned.Update(r.prog, oldProg); err != nil {
		err = fmt.Errorf("link %s: swap program %d for %d: %w", pl.name, info.Program, r.progID, replaceRefused(err, oldProg))
		oldProg.Close()
		return err
	}
	crash.At("links/updated")
	updated(pl)
	r.release.push(func() { oldProg.Close() })
	prog, log := r.prog, r.log
	r.rollback.push(func() {
		if err := pinned.Update(oldProg, prog); err != nil {
			log.Error("could not swap link back", "link", pl.name, "err", err)
		}
	})
	r.log.Info("swapped program in place", "link", pl.name, "hook", r.spec.String(), "old_program", info.Program, "new_program", r.progID)
	return nil
}

// openProgram opens program id: by its id, or, where that is refused (it
// takes CAP_SYS_ADMIN, which a container given only CAP_BPF, CAP_PERFMON
// and CAP_NET_ADMIN lacks), from one of obj's program pins that holds it,
// which is where the program a link of bpfsup's runs is pinned.
func openProgram(obj *pinstore.Object, id ebpf.ProgramID) (*ebpf.Program, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err == nil || !errors.Is(err, unix.EPERM) {
		return p, err
	}
	names, lerr := obj.Pins(pinstore.Programs)
	if lerr != nil {
		return nil, err
	}
	for _, name := range names {
		pinned, perr := ebpf.LoadPinnedProgram(obj.Path(pinstore.Programs, name), nil)
		if perr != nil {
			continue
		}
		if pid, ierr := pinstore.ProgramID(pinned); ierr == nil && pid == id {
			return pinned, nil
		}
		pinned.Close()
	}
	return nil, fmt.Errorf("%w (and no program pin of object %s holds it)", err, obj.Name)
}

// replace attaches a new link make-before-break: the new one first, then
// the pin moves onto it, then the old one goes. Both may run for a moment,
// never neither. The old one stays open until the install is done (a
// reload's old state holds it that long anyway): a rollback pins it back,
// and the new one goes.
func (r *linkReconcile) replace(pinned hooks.Attachment, info *hooks.AttachmentInfo, was hooks.State) (hooks.Attachment, error) {
	a, err := attachLink(r.pl, r.prog, r.log)
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", r.pl.program, err)
	}
	crash.At("links/attached")
	if err := r.obj.Pin(pinstore.Links, r.path, a); err != nil {
		a.Close()
		return nil, err
	}
	r.log.Info("replaced link", "link", r.pl.name, "hook", r.spec.String(), "was", was.String(), "old_link", info.ID)
	r.heldOld = true
	r.release.push(func() { pinned.Close() })
	// A handle of its own to pin back: pinned's would move the new pin (it
	// remembers the path it came from).
	back, err := hooks.Reopen(pinned)
	if err != nil {
		r.log.Warn("cannot keep the old link for a rollback", "link", r.pl.name, "err", err)
		return a, nil
	}
	r.release.push(func() { back.Close() })
	obj, path, name, log := r.obj, r.path, r.pl.name, r.log
	r.rollback.push(func() {
		if err := obj.Pin(pinstore.Links, path, back); err != nil {
			log.Error("could not pin the old link back", "link", name, "err", err)
		}
	})
	return a, nil
}

// linkIsOurs says whether the link pinned for link name, with info, is
// bpfsup's: the manifest records it or the program it runs, or it runs
// prog, the program about to be attached (adopted, as bpfsup would install
// it, where the manifest was lost).
func linkIsOurs(m *pinstore.Manifest, name string, info *hooks.AttachmentInfo, prog ebpf.ProgramID) bool {
	if info.Program == prog {
		return true
	}
	kind := bpffs.Link
	if info.Kind == hooks.KindTCFilter {
		kind = bpffs.Map // a tc filter's record
	}
	pi := bpffs.PinInfo{Kind: kind, ID: info.ID, Program: uint32(info.Program)}
	return m.Owns(pinstore.Links, name, pi) || m.OwnsProgramID(uint32(info.Program))
}

// ErrLinkChanged means a link bpfsup pinned runs a program bpfsup did not put
// there. Someone swapped it behind bpfsup's back; an upgrade stops rather
// than overwrite their change (bpfsup run --force replaces it).
var ErrLinkChanged = errors.New("link's program was changed behind bpfsup's back")

// checkLinkProgram makes sure that the program a pinned link runs now
// (running) is one bpfsup put there for program name: the one pinned at the
// program's path, or one the manifest names for it (its id now, or an
// earlier id that a crashed upgrade may have left attached). Anything else
// was swapped in behind bpfsup's back, and an upgrade that replaced it
// would destroy someone's change without a word: that is ErrLinkChanged,
// unless force. The swap that follows names the program checked here as the
// one to replace (BPF_F_REPLACE), so a change between the check and the swap
// is caught by the kernel.
func checkLinkProgram(obj *pinstore.Object, linkName, name string, running ebpf.ProgramID, force bool) error {
	known := map[uint32]bool{}
	if p, err := ebpf.LoadPinnedProgram(obj.Path(pinstore.Programs, name), nil); err == nil {
		if info, err := p.Info(); err == nil {
			id, _ := info.ID()
			known[uint32(id)] = true
		}
		p.Close()
	}
	if m, err := obj.Store().ReadManifest(obj.Name); err == nil && m != nil {
		if rec, ok := m.Programs[name]; ok {
			known[rec.ID] = true
			for _, id := range rec.PreviousIDs {
				known[id] = true
			}
		}
	}
	if known[uint32(running)] || force {
		return nil
	}
	ids := make([]uint32, 0, len(known))
	for id := range known {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	what := fmt.Sprintf("program id %d", running)
	if p, err := ebpf.NewProgramFromID(running); err == nil {
		what = DescribeProgram(p)
		p.Close()
	}
	return fmt.Errorf("link %s: %w: it runs %s, not bpfsup's %s (ids %s); "+
		"not overwriting it: put bpfsup's program back, or run bpfsup with --force to replace it", linkName, ErrLinkChanged, what, name, IDList(ids))
}

// replaceRefused turns the kernel's refusal of a BPF_F_REPLACE update
// (EPERM: the link no longer runs the program named as the one to replace)
// into ErrLinkChanged.
func replaceRefused(err error, old *ebpf.Program) error {
	if !errors.Is(err, unix.EPERM) {
		return err
	}
	id := "?"
	if info, ierr := old.Info(); ierr == nil {
		if n, ok := info.ID(); ok {
			id = fmt.Sprint(n)
		}
	}
	return fmt.Errorf("%w: it no longer runs program %s, which the swap named to replace (BPF_F_REPLACE): %w", ErrLinkChanged, id, err)
}

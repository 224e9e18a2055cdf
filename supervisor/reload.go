package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/pinstore"
)

// ErrLinkChanged: a link bpfsup pinned runs a program bpfsup did not put
// there. Someone swapped it behind bpfsup's back; an upgrade stops rather
// than overwrite their change (bpfsup run --force replaces it).
var ErrLinkChanged = errors.New("link's program was changed behind bpfsup's back")

// ReloadReport is what a reload did, for the caller of `bpfsup reload`.
type ReloadReport struct {
	// Objects holds one entry per object, in configuration order.
	Objects []ObjectReport `json:"objects"`
	// Load is the time spent loading programs, the verifier's time
	// included, over every object.
	Load time.Duration `json:"load_ns"`
	// Swap is the time spent swapping links (from the first swap to the
	// last), over every object.
	Swap time.Duration `json:"swap_ns"`
	// Swapped is the time from the start of the reload until every link of
	// every object ran its new program.
	Swapped time.Duration `json:"swapped_ns"`
	// Took is the whole reload, manifests and the child included.
	Took time.Duration `json:"took_ns"`
	// Child says what happened to the child: "restarted", "signalled
	// SIGHUP", "left running", "unchanged" or "none".
	Child string `json:"child,omitempty"`
}

// ObjectReport is what a reload did to one object.
type ObjectReport struct {
	Name string `json:"name"`
	// Generation is the object's generation after the reload; it grows by
	// one when a program changed.
	Generation uint64 `json:"generation"`
	Changed    bool   `json:"changed"`
	// Loaded lists the programs loaded anew (the verifier ran).
	Loaded []string `json:"loaded,omitempty"`
	// Swapped lists the links whose program was swapped in place: same
	// link id, BPF_LINK_UPDATE with BPF_F_REPLACE.
	Swapped []string `json:"swapped,omitempty"`
	// Replaced lists the links replaced make-before-break: new link id.
	Replaced []string `json:"replaced,omitempty"`
	// Maps lists the maps replaced by new ones (reset or migrated).
	Maps []string `json:"maps_replaced,omitempty"`
}

// String says it in one line per object.
func (r *ReloadReport) String() string {
	var b strings.Builder
	for i, o := range r.Objects {
		if i > 0 {
			b.WriteString("\n")
		}
		if !o.Changed {
			fmt.Fprintf(&b, "object %s: unchanged, generation %d", o.Name, o.Generation)
			continue
		}
		fmt.Fprintf(&b, "object %s: generation %d", o.Name, o.Generation)
		list := func(what string, names []string) {
			if len(names) > 0 {
				fmt.Fprintf(&b, "; %s: %s", what, strings.Join(names, ", "))
			}
		}
		list("loaded", o.Loaded)
		list("swapped in place", o.Swapped)
		list("replaced make-before-break", o.Replaced)
		list("maps replaced", o.Maps)
	}
	fmt.Fprintf(&b, "\nload %s, links swapped %s after the request (swap phase %s), child %s",
		r.Load.Round(time.Microsecond), r.Swapped.Round(time.Microsecond), r.Swap.Round(time.Microsecond), r.Child)
	return b.String()
}

// handleReload runs one reload request for the loop and answers it.
func (s *supervisor) handleReload(req reloadRequest, upgradeSig syscall.Signal) {
	rep, err := s.reload(req.reason, upgradeSig)
	if s.metrics != nil {
		s.metrics.setReload(err)
	}
	if req.report != nil && rep != nil {
		*req.report = *rep
	}
	req.reply <- err
}

// reload re-reads the configuration and the object files and installs them
// over the running state: compatible maps are adopted with their contents,
// links swap to the new programs in place where the hook allows (the link
// ids stay), make-before-break elsewhere. An object that fails is rolled
// back by install and keeps running as it was; the error says why. Then the
// child is restarted with the new fds, signalled, or left alone.
//
// Every object is loaded before any link of any object swaps (stageInstalls):
// when one fails to load (the verifier refuses it, a map does not fit), none
// is upgraded. The objects then swap one after the other and are kept once
// all have (swapStaged): a swap that fails (the kernel refusing a link
// update, a link changed behind bpfsup's back) swaps back those before it,
// and the error names the one that failed.
func (s *supervisor) reload(reason string, upgradeSig syscall.Signal) (*ReloadReport, error) {
	start := time.Now()
	s.log.Info("reloading", "reason", reason)
	_, _ = notifyReloading()
	defer s.notifyReady()
	fail := func(err error) (*ReloadReport, error) {
		s.log.Error("reload failed; everything keeps running as it was", "err", err)
		return nil, fmt.Errorf("reload: %w", err)
	}

	for _, in := range s.objects {
		// Nothing may be pinned or made where bpffs was unmounted.
		if err := in.obj.CheckDir(); err != nil {
			return fail(fmt.Errorf("%w; bpfsup pins everything again once bpffs is back at the pin root", err))
		}
	}
	cfgs := s.opts.Objects
	if s.opts.Reconfigure != nil {
		c, err := s.opts.Reconfigure()
		if err != nil {
			return fail(err)
		}
		cfgs = c
	}
	plans, err := s.planAll(cfgs)
	if err != nil {
		return fail(err)
	}
	if len(plans) != len(s.objects) {
		return fail(errors.New("adding or removing objects needs a restart of bpfsup"))
	}
	byName := map[string]*installed{}
	for _, in := range s.objects {
		byName[in.plan.name] = in
	}
	for _, p := range plans {
		if byName[p.name] == nil {
			return fail(fmt.Errorf("object %s is new; adding or removing objects needs a restart of bpfsup", p.name))
		}
		if err := hooksPrecheck(s.opts.Store, p); err != nil {
			return fail(err)
		}
	}

	rep := &ReloadReport{Child: "unchanged"}
	var errs []error
	changed := false
	befores := make([]idSnapshot, len(plans))
	for i, p := range plans {
		befores[i] = snapshotIDs(byName[p.name])
	}
	objs := make([]*pinstore.Object, len(plans))
	for i, p := range plans {
		objs[i] = byName[p.name].obj
	}
	ins, err := installStaged("reload", plans, objs, nil, s.log)
	if ins == nil {
		return fail(err)
	}
	if err != nil {
		errs = append(errs, err)
	}
	for i, p := range plans {
		old, before, in := byName[p.name], befores[i], ins[i]
		if in == nil {
			continue // failed after its swap, and rolled back
		}
		or := objectReport(p, before, snapshotIDs(in), in)
		rep.Objects = append(rep.Objects, or)
		rep.Load += in.loadTook
		rep.Swap += in.swapTook
		if d := in.swapped.Sub(start); d > rep.Swapped {
			rep.Swapped = d
		}
		changed = changed || or.Changed
		old.obj = nil // now owned by in
		old.close()
		for i := range s.objects {
			if s.objects[i] == old {
				s.objects[i] = in
			}
		}
	}
	if len(errs) == 0 {
		s.opts.Objects = cfgs
		if s.up.watch != nil {
			if err := s.up.watch.setFiles(s.watchedFiles()); err != nil {
				s.log.Warn("cannot watch the files of the new configuration", "err", err)
			}
		}
	}
	s.recordSupervisor()
	s.updateMetrics()
	if changed {
		if err := s.openFiles(); err != nil {
			errs = append(errs, err)
		} else {
			rep.Child = s.upgradeChild(upgradeSig)
			if rep.Child == "restarted" && s.notify != nil && s.ready {
				// --notify=child: the reload is done when the new child
				// says READY=1, which childNotified passes on.
				s.ready = false
				s.log.Info("READY=1 after the restarted child's own")
			}
		}
	}
	rep.Took = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	s.log.Info("reloaded", "changed", changed, "took", rep.Took.Round(time.Microsecond),
		"load", rep.Load.Round(time.Microsecond), "swap", rep.Swap.Round(time.Microsecond), "child", rep.Child)
	return rep, nil
}

// stagedInstall is an install on a goroutine of its own, held at its
// gates: first with everything loaded and pinned beside what runs and no
// link changed yet, then with its links swapped and the rollback possible.
type stagedInstall struct {
	proceed chan error    // at the first gate: nil to swap, an error to roll back
	commit  chan error    // at the second: nil to keep, an error to roll back
	swapped chan struct{} // closed at the second gate
	failed  chan error    // its swap failed; it waits on undo to roll back
	undo    chan struct{} // closed to let a failed swap roll back
	done    chan stagedResult
}

func newStagedInstall() *stagedInstall {
	return &stagedInstall{proceed: make(chan error), commit: make(chan error), swapped: make(chan struct{}),
		failed: make(chan error), undo: make(chan struct{}), done: make(chan stagedResult, 1)}
}

// gates are the install's side of st.
func (st *stagedInstall) gates(atFirst chan<- struct{}) *installGates {
	return &installGates{
		beforeSwap: func() error {
			close(atFirst)
			return <-st.proceed
		},
		afterSwap: func() error {
			close(st.swapped)
			return <-st.commit
		},
		failed: func(err error) {
			st.failed <- err
			<-st.undo
		},
	}
}

type stagedResult struct {
	in  *installed
	err error
}

// swap lets the install swap its links, and waits until it did (it is then
// at its second gate) or failed (held before its rollback when held, see
// rollBackFailed; rolled back otherwise).
func (st *stagedInstall) swap() (held bool, err error) {
	st.proceed <- nil
	select {
	case <-st.swapped:
		return false, nil
	case err := <-st.failed:
		return true, err
	case r := <-st.done:
		return false, r.err
	}
}

// rollBackFailed lets an install whose swap failed roll back.
func (st *stagedInstall) rollBackFailed() {
	close(st.undo)
	<-st.done
}

// keep lets a swapped install finish, and returns what it returns.
func (st *stagedInstall) keep() (*installed, error) {
	st.commit <- nil
	r := <-st.done
	return r.in, r.err
}

// rollBack makes an install held at either gate undo everything it did.
func (st *stagedInstall) rollBack(atSecond bool) {
	if atSecond {
		st.commit <- errOtherFailed
	} else {
		st.proceed <- errOtherFailed
	}
	<-st.done
}

// errOtherFailed rolls back the objects staged beside one that failed.
var errOtherFailed = errors.New("another object of the reload failed")

// installStaged installs the plans together: each up to its first gate,
// then each swap, then all kept (stageInstalls, swapStaged). objs[i] is
// plans[i]'s object, pins[i] (when pins is not nil) what prefetchPins
// opened for it, which the install takes over. op names the operation in
// the log ("reload", "start"). It returns an install per plan, or an
// error and nothing changed.
func installStaged(op string, plans []*plan, objs []*pinstore.Object, pins []*pinSet, log *slog.Logger) ([]*installed, error) {
	stages, err := stageInstalls(op, plans, objs, pins, log)
	if err != nil {
		return nil, err
	}
	return swapStaged(op, plans, stages, log)
}

// stageInstalls runs the install of each plan, one after the other, up to
// its first gate. When one fails before it, those staged so far roll back and
// the error is that failure: nothing changed.
func stageInstalls(op string, plans []*plan, objs []*pinstore.Object, pins []*pinSet, log *slog.Logger) ([]*stagedInstall, error) {
	stages := make([]*stagedInstall, 0, len(plans))
	for i, p := range plans {
		st := newStagedInstall()
		atGate := make(chan struct{})
		gates := st.gates(atGate)
		var ps *pinSet
		if pins != nil {
			ps, pins[i] = pins[i], nil // the install closes it
		}
		go func() {
			in, err := install(objs[i], p, ps, gates, log)
			st.done <- stagedResult{in, err}
		}()
		select {
		case <-atGate:
			stages = append(stages, st)
		case r := <-st.done:
			// Failed before its gate, and rolled back.
			log.Error(op+" of object failed; it is as it was", "object", p.name, "err", r.err)
			// The last staged first, as a rollback goes: objects may
			// share a map (pin_path).
			for i := len(stages) - 1; i >= 0; i-- {
				stages[i].rollBack(false)
			}
			for _, q := range plans[:len(stages)] {
				log.Info("object not upgraded: another object of the "+op+" failed", "object", q.name, "failed", p.name)
			}
			return nil, r.err
		}
	}
	return stages, nil
}

// swapStaged swaps the links of the staged installs one object after the
// other, and keeps them all once every one swapped. When a swap fails (the
// kernel refusing an update, a link changed behind bpfsup's back), that
// object has rolled itself back; the objects swapped before it are swapped
// back, last first, and those after it never swap: nothing changed, and
// swapStaged returns no installs. Otherwise an install is nil where it
// failed after its swap, which nothing past the second gate does.
func swapStaged(op string, plans []*plan, stages []*stagedInstall, log *slog.Logger) ([]*installed, error) {
	for i, st := range stages {
		held, err := st.swap()
		if err == nil {
			continue
		}
		log.Error(op+" of object failed; it is as it was", "object", plans[i].name, "err", err)
		// Last staged first, as one rollback goes.
		for j := len(stages) - 1; j > i; j-- {
			stages[j].rollBack(false)
			log.Info("object not upgraded: another object of the "+op+" failed", "object", plans[j].name, "failed", plans[i].name)
		}
		if held {
			st.rollBackFailed()
		}
		for j := i - 1; j >= 0; j-- {
			stages[j].rollBack(true)
			log.Info("object swapped back: another object of the "+op+" failed", "object", plans[j].name, "failed", plans[i].name)
		}
		return nil, err
	}
	ins := make([]*installed, len(stages))
	var errs []error
	for i, st := range stages {
		in, err := st.keep()
		if err != nil {
			// Nothing fails past the second gate; should it, the object
			// rolled back and the others stay upgraded.
			log.Error(op+" of object failed after its swap", "object", plans[i].name, "err", err)
			errs = append(errs, err)
			continue
		}
		ins[i] = in
	}
	return ins, errors.Join(errs...)
}

// upgradeChild does what OnUpgrade says to the child after an upgrade that
// changed something, and says what it did.
func (s *supervisor) upgradeChild(upgradeSig syscall.Signal) string {
	switch {
	case s.child == nil:
		return "none"
	case s.stopping || s.restartNow:
		return "stopping"
	case s.opts.OnUpgrade == OnUpgradeNone:
		return "left running"
	case upgradeSig != 0:
		s.log.Info("signalling child after the upgrade", "pid", s.child.Pid, "signal", upgradeSig.String())
		_ = unix.Kill(s.child.Pid, upgradeSig)
		return "signalled " + unix.SignalName(upgradeSig)
	default:
		// Restart with the new fds: stop it; the exit handler starts it again
		// at once because a reload asked for it, and the start limit does not
		// count that start.
		s.log.Info("restarting child with the new objects", "pid", s.child.Pid)
		s.restartNow = true
		s.up.forUpgrade = true
		_ = unix.Kill(s.child.Pid, unix.SIGTERM)
		s.killTimer.Reset(s.opts.StopTimeout)
		return "restarted"
	}
}

// idSnapshot is the kernel ids of an installed object's maps, programs,
// links and the links' programs, by name.
type idSnapshot struct {
	maps, progs, links, linkProgs map[string]uint32
}

func snapshotIDs(in *installed) idSnapshot {
	s := idSnapshot{maps: map[string]uint32{}, progs: map[string]uint32{}, links: map[string]uint32{}, linkProgs: map[string]uint32{}}
	for name, m := range in.maps {
		if info, err := m.Info(); err == nil {
			id, _ := info.ID()
			s.maps[name] = uint32(id)
		}
	}
	for name, p := range in.progs {
		if info, err := p.Info(); err == nil {
			id, _ := info.ID()
			s.progs[name] = uint32(id)
		}
	}
	for name, l := range in.links {
		if info, err := l.Info(); err == nil {
			s.links[name], s.linkProgs[name] = uint32(info.ID), uint32(info.Program)
		}
	}
	return s
}

func objectReport(p *plan, before, after idSnapshot, in *installed) ObjectReport {
	r := ObjectReport{Name: p.name, Generation: in.manifest.Generation}
	for _, name := range p.progList {
		if before.progs[name] != after.progs[name] {
			r.Loaded = append(r.Loaded, name)
		}
	}
	for _, pl := range p.links {
		switch id := after.links[pl.name]; {
		case id == 0:
		case before.links[pl.name] == 0 || before.links[pl.name] != id:
			r.Replaced = append(r.Replaced, pl.name)
		case before.linkProgs[pl.name] != after.linkProgs[pl.name]:
			r.Swapped = append(r.Swapped, pl.name)
		}
	}
	for _, name := range p.maps {
		if before.maps[name] != after.maps[name] {
			r.Maps = append(r.Maps, name)
		}
	}
	sort.Strings(r.Swapped)
	sort.Strings(r.Replaced)
	r.Changed = len(r.Loaded)+len(r.Swapped)+len(r.Replaced)+len(r.Maps) > 0
	return r
}

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
		what = describeProgram(p)
		p.Close()
	}
	return fmt.Errorf("link %s: %w: it runs %s, not bpfsup's %s (ids %s); "+
		"not overwriting it: put bpfsup's program back, or run bpfsup with --force to replace it", linkName, ErrLinkChanged, what, name, idList(ids))
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

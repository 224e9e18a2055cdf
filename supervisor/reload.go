package supervisor

import (
	"errors"
	"fmt"
	"time"

	"github.com/bpfsup/bpfsup/control"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/converge"
)

// handleReload runs one reload request for the loop and answers it.
func (s *supervisor) handleReload(req reloadRequest) {
	rep, err := s.reload(req.reason)
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
// ids stay), make-before-break elsewhere. Every object is prepared before
// any link of any object swaps, and the objects are kept only once all
// have swapped (converge.Apply): when one fails, none is upgraded, and the
// error names it. Then the child is restarted with the new fds, signalled,
// or left alone.
func (s *supervisor) reload(reason string) (*control.ReloadReport, error) {
	start := time.Now()
	s.log.Info("reloading", "reason", reason)
	_, _ = notifyReloading()
	defer s.notifyReady()
	fail := func(err error) (*control.ReloadReport, error) {
		s.log.Error("reload failed; everything keeps running as it was", "err", err)
		return nil, fmt.Errorf("reload: %w", err)
	}
	cfgs, txs, err := s.prepareReload()
	if err != nil {
		return fail(err)
	}
	befores := make([]converge.IDs, len(txs))
	for i, tx := range txs {
		befores[i] = s.object(tx.Name()).IDs()
	}
	ins, err := converge.Apply("reload", txs, s.log)
	if err != nil {
		return fail(err)
	}
	defer s.releaseMemory()
	rep := &control.ReloadReport{Child: "unchanged"}
	changed := false
	for i, in := range ins {
		or := objectReport(in, befores[i].Diff(in.IDs()))
		rep.Objects = append(rep.Objects, or)
		load, swap, swapped := in.Times()
		rep.Load += load
		rep.Swap += swap
		rep.Swapped = max(rep.Swapped, swapped.Sub(start))
		changed = changed || or.Changed
		old := s.object(in.Name())
		old.Handover()
		for j := range s.objects {
			if s.objects[j] == old {
				s.objects[j] = in
			}
		}
	}
	s.opts.Objects = cfgs
	converge.CheckOrder(s.objects, s.opts.EnforceOrder, s.log)
	if s.up.watch != nil {
		if err := s.up.watch.setFiles(s.watchedFiles()); err != nil {
			s.log.Warn("cannot watch the files of the new configuration", "err", err)
		}
	}
	s.recordSupervisor()
	s.updateMetrics()
	if changed {
		if err := s.openFiles(); err != nil {
			return fail(err)
		}
		rep.Child = s.upgradeChild()
		if rep.Child == "restarted" && s.notify != nil && s.ready {
			// --notify=child: the reload is done when the new child says
			// READY=1, which childNotified passes on.
			s.ready = false
			s.log.Info("READY=1 after the restarted child's own")
		}
	}
	rep.Took = time.Since(start)
	s.log.Info("reloaded", "changed", changed, "took", rep.Took.Round(time.Microsecond),
		"load", rep.Load.Round(time.Microsecond), "swap", rep.Swap.Round(time.Microsecond), "child", rep.Child)
	return rep, nil
}

// prepareReload reads the configuration again (it may have changed),
// plans its objects, and begins a converge.Tx for each; nothing is changed
// yet. It returns the configuration's objects and the Txs, in its order.
func (s *supervisor) prepareReload() ([]config.Object, []*converge.Tx, error) {
	for _, in := range s.objects {
		// Nothing may be pinned or made where bpffs was unmounted.
		if err := in.Object().CheckDir(); err != nil {
			return nil, nil, fmt.Errorf("%w; bpfsup pins everything again once bpffs is back at the pin root", err)
		}
	}
	cfgs := s.opts.Objects
	if s.opts.Reconfigure != nil {
		c, err := s.opts.Reconfigure()
		if err != nil {
			return nil, nil, err
		}
		cfgs = c
	}
	plans, err := converge.PlanAll(cfgs, s.planOptions())
	if err != nil {
		return nil, nil, err
	}
	if len(plans) != len(s.objects) {
		return nil, nil, errors.New("adding or removing objects needs a restart of bpfsup")
	}
	for _, p := range plans {
		if s.object(p.Name()) == nil {
			return nil, nil, fmt.Errorf("object %s is new; adding or removing objects needs a restart of bpfsup", p.Name())
		}
		if err := p.Precheck(s.opts.Store); err != nil {
			return nil, nil, err
		}
	}
	txs := make([]*converge.Tx, len(plans))
	for i, p := range plans {
		txs[i] = converge.Begin(s.object(p.Name()).Object(), p, nil, s.log)
	}
	return cfgs, txs, nil
}

// object is the installed object of that name, or nil.
func (s *supervisor) object(name string) *converge.Installed {
	for _, in := range s.objects {
		if in.Name() == name {
			return in
		}
	}
	return nil
}

// objectReport is what a reload did to the object in.
func objectReport(in *converge.Installed, c converge.Changes) control.ObjectReport {
	return control.ObjectReport{Name: in.Name(), Generation: in.Manifest().Generation, Changed: c.Any(),
		Loaded: c.Loaded, Swapped: c.Swapped, Replaced: c.Replaced, Maps: c.Maps}
}

// upgradeChild does what OnUpgrade says to the child after an upgrade that
// changed something, and says what it did.
func (s *supervisor) upgradeChild() string {
	upgradeSig := s.opts.OnUpgrade.Signal
	switch {
	case s.child == nil:
		return "none"
	case s.stopping || s.restartNow:
		return "stopping"
	case s.opts.OnUpgrade.Action == config.UpgradeNone:
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

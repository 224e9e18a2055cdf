package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// reload re-reads the configuration and the object files and installs them
// over the running state: compatible maps are adopted with their contents,
// links swap to the new programs in place where the hook allows (the link
// ids stay), make-before-break elsewhere. An object that fails is rolled
// back by install and keeps running as it was; the error says why. Then the
// child is restarted with the new fds, signalled, or left alone.
func (s *supervisor) reload(reason string, upgradeSig syscall.Signal) error {
	start := time.Now()
	s.log.Info("reloading", "reason", reason)
	_, _ = notifyReloading()
	defer s.notifyReady()

	cfgs := s.opts.Objects
	if s.opts.Reconfigure != nil {
		c, err := s.opts.Reconfigure()
		if err != nil {
			s.log.Error("reload failed", "err", err)
			return fmt.Errorf("reload: %w", err)
		}
		cfgs = c
	}
	plans, err := s.planAll(cfgs)
	if err != nil {
		s.log.Error("reload failed", "err", err)
		return fmt.Errorf("reload: %w", err)
	}
	byName := map[string]*installed{}
	for _, in := range s.objects {
		byName[in.plan.name] = in
	}
	for _, p := range plans {
		if byName[p.name] == nil {
			return fmt.Errorf("reload: object %s is new; adding or removing objects needs a restart of bpfsup", p.name)
		}
		if err := hooksPrecheck(s.opts.Store, p); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
	}
	if len(plans) != len(s.objects) {
		return errors.New("reload: adding or removing objects needs a restart of bpfsup")
	}

	var errs []error
	changed := false
	for _, p := range plans {
		old := byName[p.name]
		in, err := install(old.obj, p, s.log)
		if err != nil {
			s.log.Error("reload of object failed; it keeps running as it was", "object", p.name, "err", err)
			errs = append(errs, err)
			continue
		}
		if in.manifest.Generation != old.manifest.Generation || in.loaded > 0 {
			changed = true
		}
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
	}
	s.recordSupervisor()
	s.updateMetrics()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	s.log.Info("reloaded", "changed", changed, "took", time.Since(start).Round(time.Microsecond))

	if err := s.openFiles(); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	switch {
	case s.child == nil:
	case s.opts.OnUpgrade == OnUpgradeNone || !changed:
	case upgradeSig != 0:
		_ = unix.Kill(s.child.Pid, upgradeSig)
	default:
		// Restart with the new fds: stop it; the exit handler restarts it
		// at once because a reload asked for it.
		s.log.Info("restarting child with the new objects", "pid", s.child.Pid)
		s.restartNow = true
		_ = unix.Kill(s.child.Pid, unix.SIGTERM)
		s.killTimer.Reset(s.opts.StopTimeout)
	}
	return nil
}

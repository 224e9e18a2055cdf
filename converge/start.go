package converge

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Install installs every object of cfgs, as a start does: bpffs is mounted
// if need be (pinstore.EnsureBPFFS); an object nothing changed for since the
// last install is adopted as its manifest records it (without reading its
// programs: the fast path of a restart); the others are planned from their
// files, every plan checked before anything is made, and installed
// together, all or nothing (Apply). It returns the objects in the order of
// cfgs.
func Install(store pinstore.Store, cfgs []config.Object, opts PlanOptions, log *slog.Logger) (_ []*Installed, err error) {
	if len(cfgs) == 0 {
		return nil, errors.New("no BPF object given (-o OBJECT or [[object]] in the config)")
	}
	start := time.Now()
	if mounted, err := pinstore.EnsureBPFFS(store.RootDir()); err != nil {
		return nil, err
	} else if mounted {
		log.Info("mounted bpffs", "path", pinstore.DefaultBPFFS)
	}
	opts.Store = store
	s := &starting{store: store, cfgs: cfgs, opts: opts, log: log}
	defer s.close()
	if err := s.read(); err != nil {
		return nil, err
	}
	if err := s.plan(); err != nil {
		return nil, err
	}
	if err := s.installPlanned(); err != nil {
		return nil, err
	}
	ins := s.result()
	CheckOrder(ins, opts.EnforceOrder, log)
	adopted, loaded := 0, 0
	for _, in := range ins {
		adopted += in.adopted
		loaded += in.loaded
	}
	// From the configuration read to every hook converged: what a restart
	// costs beyond starting the process and the application.
	log.Info("objects installed", "objects", len(ins), "adopted", adopted, "loaded", loaded,
		"took", time.Since(start).Round(time.Microsecond))
	return ins, nil
}

// starting is the state of an Install, object by object (the index of
// cfgs).
type starting struct {
	store pinstore.Store
	cfgs  []config.Object
	opts  PlanOptions
	log   *slog.Logger

	files    []objectFile
	readErrs []error
	pins     []*Pins
	// ready are the objects adopted unchanged; installs those installed
	// from their plans.
	ready, installs []*Installed
	plans           []*Plan
}

// read reads every object's file and opens what is pinned for it, and
// adopts the objects nothing changed for. The objects are independent
// (each its own file, lock, pins and manifest), and each is a few dozen
// system calls that mostly wait in the kernel: several at once keep the
// CPUs busy.
func (s *starting) read() error {
	n := len(s.cfgs)
	s.files, s.readErrs, s.pins = make([]objectFile, n), make([]error, n), make([]*Pins, n)
	s.ready, s.installs, s.plans = make([]*Installed, n), make([]*Installed, n), make([]*Plan, n)
	names := map[string]string{}
	for _, c := range s.cfgs {
		name := ObjectName(c)
		if prev, ok := names[name]; ok {
			return fmt.Errorf("objects %s and %s are both named %q; give one a name", prev, c.Path, name)
		}
		names[name] = c.Path
	}
	// One rtnetlink socket per network namespace for every object's checks.
	endBatch := hooks.Batch()
	defer endBatch()
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(n, 2*runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			var buf []byte
			for i := range work {
				buf = s.readOne(i, buf)
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return nil
}

// readOne reads object i's file and adopts it unchanged when it can
// (adoptUnchanged), or else opens its pins for its plan (Prefetch; the
// plan reads the file's bytes, the adopt only their digest). The file is read into buf's
// memory; it returns the memory for the worker's next object, or nil when
// the object's plan keeps it (the object was not adopted unchanged).
func (s *starting) readOne(i int, buf []byte) []byte {
	c := s.cfgs[i]
	name := ObjectName(c)
	s.files[i], s.readErrs[i] = readObjectInto(c, buf)
	if s.readErrs[i] == nil && !s.opts.Force && pinstore.CheckName("object", name) == nil {
		if s.adopt(i); s.ready[i] != nil {
			// Adopted: nothing parses the bytes, only their digest was
			// wanted.
			data := s.files[i].data
			s.files[i].data = nil
			return data[:0]
		}
	}
	s.pins[i] = Prefetch(s.store, name)
	return nil
}

// adopt adopts object i unchanged when it can (adoptUnchanged).
func (s *starting) adopt(i int) {
	c := s.cfgs[i]
	in, why := adoptUnchanged(s.store, c, s.files[i].digest(), s.opts.Key, s.log)
	if in == nil {
		s.log.Debug("planning the object from its file", "object", ObjectName(c), "why", why)
		return
	}
	s.ready[i] = in
}

// plan plans the objects not adopted unchanged, and checks every plan's
// hooks before anything is made.
func (s *starting) plan() error {
	for i, c := range s.cfgs {
		if s.ready[i] != nil {
			continue
		}
		if s.readErrs[i] != nil {
			return s.readErrs[i]
		}
		p, err := planObjectData(c, s.files[i], s.opts)
		if err != nil {
			return err
		}
		s.plans[i] = p
	}
	// Anchors may name the links of objects adopted unchanged.
	all := make([]*Plan, len(s.cfgs))
	for i := range s.cfgs {
		if all[i] = s.plans[i]; all[i] == nil {
			all[i] = s.ready[i].plan
		}
	}
	if err := planOrder(all, s.store); err != nil {
		return err
	}
	for _, p := range s.plans {
		if p == nil {
			continue
		}
		if err := p.Precheck(s.store); err != nil {
			return err
		}
	}
	return nil
}

// installPlanned installs the planned objects together, as a reload does:
// all loaded up to their first link change, then swapped, then kept; one
// that fails leaves every one as it was (Apply).
func (s *starting) installPlanned() error {
	var todo []int
	var txs []*Tx
	var objs []*pinstore.Object
	for i, p := range s.plans {
		if p == nil {
			continue
		}
		obj, err := s.store.Open(p.name)
		if err != nil {
			for _, tx := range txs {
				tx.Rollback()
			}
			closeNew(objs)
			return err
		}
		todo = append(todo, i)
		objs = append(objs, obj)
		txs = append(txs, Begin(obj, p, s.pins[i], s.log))
		s.pins[i] = nil // the Tx closes it
	}
	if len(txs) == 0 {
		return nil
	}
	ins, err := Apply("start", txs, s.log)
	if err != nil {
		closeNew(objs)
		return err
	}
	for k, i := range todo {
		s.installs[i] = ins[k]
	}
	return nil
}

// closeNew lets go of objects a failed start opened: what it made for
// them (their directories) goes when nothing is pinned there.
func closeNew(objs []*pinstore.Object) {
	for _, obj := range objs {
		obj.RemoveIfEmpty()
		obj.Close()
	}
}

// result hands over the objects, in the order of the configuration.
func (s *starting) result() []*Installed {
	ins := make([]*Installed, len(s.cfgs))
	for i := range s.cfgs {
		in := s.ready[i]
		if in != nil {
			s.log.Info("nothing changed since the last install: adopted as recorded, without reading the object's programs",
				"object", in.plan.name)
		} else {
			in = s.installs[i]
		}
		s.ready[i], s.installs[i] = nil, nil // the caller's from here
		ins[i] = in
		s.log.Info("object ready", "object", in.plan.name, "maps", len(in.maps), "programs", len(in.progs),
			"links", len(in.links), "adopted", in.adopted, "loaded", in.loaded, "generation", in.manifest.Generation)
	}
	return ins
}

// close closes what an Install that failed holds: the pins it opened, the
// objects it adopted or installed.
func (s *starting) close() {
	for i := range s.cfgs {
		if i < len(s.pins) && s.pins[i] != nil {
			s.pins[i].close()
		}
		if i < len(s.ready) && s.ready[i] != nil {
			s.ready[i].Close()
		}
		if i < len(s.installs) && s.installs[i] != nil {
			s.installs[i].Close()
		}
	}
}

package converge

import (
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Installed is an object as installed: its lock held, every map, program
// and attachment open. It is used by one goroutine (the supervisor's loop).
type Installed struct {
	plan     *Plan
	obj      *pinstore.Object
	maps     map[string]*ebpf.Map
	progs    map[string]*ebpf.Program
	links    map[string]hooks.Attachment
	manifest *pinstore.Manifest
	// defunct names the links kept defunct, their targets gone: the first
	// look at the interfaces (Reattach) attaches them.
	defunct map[string]bool
	// briefs and linkIDs are what the install learnt of adopted programs
	// and links, so that the manifest need not ask the kernel again.
	briefs  map[string]pinstore.ProgramBrief
	linkIDs map[string]uint32
	// made names the maps this install created (rather than adopted).
	made map[string]bool
	// orderSaid is, per link, why CheckOrder last said it is out of place.
	orderSaid map[string]string
	// pinsLost says that the pin directory went with its bpffs (CheckPins).
	pinsLost bool
	adopted  int // programs adopted without loading
	loaded   int
	// loadTook is the time spent loading programs (the verifier's);
	// swapTook the time spent reconciling links; swapped when that ended.
	loadTook, swapTook time.Duration
	swapped            time.Time
}

func newInstalled(p *Plan, obj *pinstore.Object) *Installed {
	return &Installed{plan: p, obj: obj, maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{},
		links: map[string]hooks.Attachment{}, defunct: map[string]bool{},
		briefs: map[string]pinstore.ProgramBrief{}, linkIDs: map[string]uint32{}, made: map[string]bool{},
		orderSaid: map[string]string{}}
}

// Close releases every fd of the object and its lock. The pins stay.
func (in *Installed) Close() {
	for _, m := range in.maps {
		m.Close()
	}
	for _, p := range in.progs {
		p.Close()
	}
	for _, l := range in.links {
		l.Close()
	}
	if in.obj != nil {
		in.obj.Close()
	}
}

// Name is the object's name.
func (in *Installed) Name() string { return in.plan.name }

// Config is the object's configuration, as installed.
func (in *Installed) Config() config.Object { return in.plan.cfg }

// Object is the object's place in the store, locked.
func (in *Installed) Object() *pinstore.Object { return in.obj }

// Manifest is the object's manifest as last written.
func (in *Installed) Manifest() *pinstore.Manifest { return in.manifest }

// Hooks are the specs of the object's attachments, in the plan's order.
func (in *Installed) Hooks() []hooks.Spec {
	specs := make([]hooks.Spec, len(in.plan.links))
	for i, pl := range in.plan.links {
		specs[i] = pl.hook.Spec()
	}
	return specs
}

// ProgramHooks are the hook specs each program is attached to, by program
// name, in the plan's order; programs attached nowhere are absent.
func (in *Installed) ProgramHooks() map[string][]string {
	hooks := map[string][]string{}
	for _, pl := range in.plan.links {
		hooks[pl.program] = append(hooks[pl.program], pl.hook.Spec().String())
	}
	return hooks
}

// Counts says how many maps, programs and links the object has, and how
// many programs were adopted and loaded.
func (in *Installed) Counts() (maps, progs, links, adopted, loaded int) {
	return len(in.maps), len(in.progs), len(in.links), in.adopted, in.loaded
}

// Times says how long the install loaded programs and swapped links, and
// when the swap ended.
func (in *Installed) Times() (load, swap time.Duration, swapped time.Time) {
	return in.loadTook, in.swapTook, in.swapped
}

// RecordSupervisor writes the supervisor's record into the manifest,
// unless the manifest has it already.
func (in *Installed) RecordSupervisor(rec *pinstore.SupervisorRecord) error {
	if old := in.manifest.Supervisor; old != nil && sameRecord(*old, *rec) {
		return nil
	}
	cp := *rec
	in.manifest.Supervisor = &cp
	return in.obj.WriteManifest(in.manifest)
}

func sameRecord(a, b pinstore.SupervisorRecord) bool {
	started := a.Started.Equal(b.Started)
	a.Started, b.Started = time.Time{}, time.Time{}
	return started && a == b
}

// undo is a stack of actions that roll back an install that failed half-way.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// HandoffFiles opens the fds the child gets for this object, in a stable
// order: maps, then programs and links where asked for. The caller closes
// them.
func (in *Installed) HandoffFiles() (_ []handoff.NamedFile, err error) {
	var files []handoff.NamedFile
	defer func() {
		if err != nil {
			for _, f := range files {
				f.File.Close()
			}
		}
	}()
	add := func(fname string, fd int) {
		files = append(files, handoff.NamedFile{Name: fname, File: os.NewFile(uintptr(fd), fname)})
	}
	p := in.plan
	for _, name := range p.maps {
		fd, err := in.mapFD(name)
		if err != nil {
			return nil, err
		}
		if fd >= 0 {
			add(p.name+"/maps/"+name, fd)
		}
	}
	for _, name := range p.progList {
		if !p.progCfg[name].Handoff {
			continue
		}
		fd, err := dupFD(in.progs[name].FD())
		if err != nil {
			return nil, err
		}
		add(p.name+"/programs/"+name, fd)
	}
	if p.cfg.HandoffLinks {
		for _, pl := range p.links {
			a, ok := in.links[pl.name]
			if !ok {
				continue
			}
			fd, err := linkFD(pl.name, a)
			if err != nil {
				return nil, err
			}
			add(p.name+"/links/"+pl.name, fd)
		}
	}
	return files, nil
}

// HandoffCount is how many fds HandoffFiles makes.
func (in *Installed) HandoffCount() int {
	p, n := in.plan, 0
	for _, name := range p.maps {
		if p.mapCfg[name].Access != config.AccessNone {
			n++
		}
	}
	for _, name := range p.progList {
		if p.progCfg[name].Handoff {
			n++
		}
	}
	if p.cfg.HandoffLinks {
		n += len(in.links)
	}
	return n
}

// mapFD is a new fd of map name for the child, as its access says; -1
// when it gets none. A read-only or write-only fd cannot be made from a
// read-write one: it is opened from the pin.
func (in *Installed) mapFD(name string) (int, error) {
	p := in.plan
	switch access := p.mapCfg[name].Access; access {
	case config.AccessNone:
		return -1, nil
	case config.AccessRO, config.AccessWO:
		path := in.obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath})
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: access == config.AccessRO, WriteOnly: access == config.AccessWO})
		if err != nil {
			return -1, fmt.Errorf("open map %s/maps/%s %s for the child: %w", p.name, name, access, err)
		}
		defer m.Close()
		return dupFD(m.FD())
	}
	return dupFD(in.maps[name].FD())
}

// linkFD is a new fd of the link a, opened by its id (as bpfsup handed
// links before: the application's fd is its own, not a duplicate of
// bpfsup's).
func linkFD(name string, a hooks.Attachment) (int, error) {
	if _, ok := a.FD(); !ok {
		return -1, fmt.Errorf("link %s: a %s is not a bpf_link and has no fd to hand over", name, a.Kind())
	}
	fresh, err := hooks.Reopen(a)
	if err != nil {
		return -1, fmt.Errorf("link %s: %w", name, err)
	}
	defer fresh.Close()
	fd, _ := fresh.FD()
	return dupFD(fd)
}

func dupFD(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	return nfd, nil
}

// LogDefunct says, for each link of a hook match picks, that it is defunct
// and why.
func (in *Installed) LogDefunct(match func(hooks.Spec) bool, why string, log *slog.Logger) {
	for _, pl := range in.plan.links {
		if spec := pl.hook.Spec(); match(spec) {
			log.Warn(why, "object", in.plan.name, "link", pl.name, "hook", spec.String(), "netns", spec.Netns)
		}
	}
}

// Reattach attaches anew the links of the hooks match picks that are not
// attached while their target exists (an interface, a cgroup, a network
// namespace made again); with onlyDefunct (the first look after an
// install, which just checked the others) only those the install kept
// defunct. A link pin that is not bpfsup's is left alone. It reports
// whether a link changed, after writing the manifest.
func (in *Installed) Reattach(match func(hooks.Spec) bool, onlyDefunct bool, log *slog.Logger) bool {
	changed := false
	for _, pl := range in.plan.links {
		spec := pl.hook.Spec()
		if !match(spec) {
			continue
		}
		cur := in.links[pl.name]
		if onlyDefunct && cur != nil && !in.defunct[pl.name] {
			continue
		}
		if cur != nil {
			if st, err := pl.hook.Check(cur); err == nil && st == hooks.Attached {
				continue
			}
		}
		if hooks.CheckTarget(spec) != nil {
			continue
		}
		start := time.Now()
		l, err := reconcileLink(in.obj, pl, in.progs[pl.program], in.manifest, log)
		if err != nil {
			log.Error("could not re-attach link", "object", in.plan.name, "link", pl.name, "hook", spec.String(), "err", err)
			continue
		}
		if cur != nil && cur != l {
			cur.Close()
		}
		if l == nil {
			delete(in.links, pl.name)
			continue
		}
		in.links[pl.name] = l
		delete(in.defunct, pl.name)
		changed = true
		log.Info("re-attached link", "object", in.plan.name, "link", pl.name, "hook", spec.String(),
			"netns", spec.Netns, "took", time.Since(start).Round(time.Microsecond))
	}
	if changed {
		m := newManifest(in.plan, in.manifest, in)
		if in.manifest != nil {
			m.Generation = in.manifest.Generation
		}
		if err := in.obj.WriteManifest(m); err != nil {
			log.Warn("could not write manifest", "object", in.plan.name, "err", err)
		}
		in.manifest = m
	}
	return changed
}

// CheckPins checks that the object's pin directory is still the one
// bpfsup locked: after bpffs was unmounted (umount -l), nothing may be
// pinned or made there, and a restart would find nothing to adopt; bpfsup
// holds every map, program and link open, so the data path does not
// notice. Once bpffs is mounted at the pin root again, it pins them all
// again. It logs what it finds when that changes.
func (in *Installed) CheckPins(log *slog.Logger) {
	dirErr := in.obj.CheckDir()
	if dirErr == nil {
		in.pinsLost = false
		return
	}
	if !in.pinsLost {
		in.pinsLost = true
		log.Error("the object's pins are gone with their bpffs: the links stay attached while bpfsup runs, "+
			"but a restart of bpfsup would find nothing to adopt; reloads are refused until bpffs is back at the pin root, "+
			"and then everything is pinned again", "object", in.plan.name, "err", dirErr)
	}
	if in.obj.Rehome() != nil {
		return // not back yet
	}
	if err := in.repin(); err != nil {
		log.Error("bpffs is back at the pin root, and pinning the object again failed", "object", in.plan.name, "err", err)
		return
	}
	in.pinsLost = false
	log.Warn("bpffs is back at the pin root: pinned every map, program and link of the object again", "object", in.plan.name, "dir", in.obj.Dir)
}

// PinsLost says that the pin directory went with its bpffs, as CheckPins
// last found.
func (in *Installed) PinsLost() bool { return in.pinsLost }

// repin pins every map, program and link again, from the fds held, after
// the pin directory was made anew (pinstore.Object.Rehome).
func (in *Installed) repin() error {
	p := in.plan
	for name, m := range in.maps {
		clone, err := m.Clone() // without the old pin path, which Pin would move
		if err != nil {
			return err
		}
		err = in.obj.Pin(pinstore.Maps, in.obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath}), clone)
		clone.Close()
		if err != nil {
			return err
		}
	}
	for name, pr := range in.progs {
		clone, err := pr.Clone()
		if err != nil {
			return err
		}
		err = in.obj.Pin(pinstore.Programs, in.obj.Path(pinstore.Programs, name), clone)
		clone.Close()
		if err != nil {
			return err
		}
	}
	for name, l := range in.links {
		if err := in.obj.Pin(pinstore.Links, in.obj.Path(pinstore.Links, name), l); err != nil {
			return err
		}
	}
	return in.obj.WriteManifest(in.manifest)
}

// IDs are the kernel ids of an installed object's maps, programs, links
// and the links' programs, by name: what a reload compares.
type IDs struct {
	Maps, Programs, Links, LinkPrograms map[string]uint32
}

// IDs reads the ids of what the object holds.
func (in *Installed) IDs() IDs {
	s := IDs{Maps: map[string]uint32{}, Programs: map[string]uint32{}, Links: map[string]uint32{}, LinkPrograms: map[string]uint32{}}
	for name, m := range in.maps {
		if id, err := pinstore.MapID(m); err == nil {
			s.Maps[name] = uint32(id)
		}
	}
	for name, p := range in.progs {
		if id, err := pinstore.ProgramID(p); err == nil {
			s.Programs[name] = uint32(id)
		}
	}
	for name, l := range in.links {
		if info, err := l.Info(); err == nil {
			s.Links[name], s.LinkPrograms[name] = info.ID, uint32(info.Program)
		}
	}
	return s
}

// Changes is what differs between two IDs of an object, by name: programs
// loaded anew, links swapped in place (same link, another program) or
// replaced (another link), maps replaced. Each list is sorted.
type Changes struct {
	Loaded, Swapped, Replaced, Maps []string
}

// Any says whether anything changed.
func (c Changes) Any() bool {
	return len(c.Loaded)+len(c.Swapped)+len(c.Replaced)+len(c.Maps) > 0
}

// Diff is what changed from before to after.
func (before IDs) Diff(after IDs) Changes {
	var c Changes
	for name, id := range after.Programs {
		if before.Programs[name] != id {
			c.Loaded = append(c.Loaded, name)
		}
	}
	for name, id := range after.Links {
		switch {
		case id == 0:
		case before.Links[name] != id:
			c.Replaced = append(c.Replaced, name)
		case before.LinkPrograms[name] != after.LinkPrograms[name]:
			c.Swapped = append(c.Swapped, name)
		}
	}
	for name, id := range after.Maps {
		if before.Maps[name] != id {
			c.Maps = append(c.Maps, name)
		}
	}
	for _, l := range [][]string{c.Loaded, c.Swapped, c.Replaced, c.Maps} {
		sort.Strings(l)
	}
	return c
}

// Handover closes the fds of an object a reload replaced, and lets its lock
// go to the object that replaced it (which holds the same lock).
func (in *Installed) Handover() {
	in.obj = nil
	in.Close()
}

package converge

import (
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"syscall"

	"github.com/bpfsup/bpfsup/config"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/pinstore"
)

// A restart of bpfsup most often finds everything as it left it: the same
// object file, the same configuration, every pin in place and every link
// attached. Planning such a restart from the object means parsing the ELF
// file, its BTF and every instruction, which for a large object takes longer
// than everything else the restart does together (25 ms of 55 for 100
// programs of 1,100 instructions on the benchmark VM). adoptUnchanged makes
// such a restart without the object's programs: from the manifest of the last
// install, which recorded the object's hash, the configuration's hash and what
// it installed, it checks that the kernel still holds exactly that, and adopts
// it. Anything else (a hash that differs, a pin missing or replaced, a link
// not attached to its hook, a hook that needs the program's spec) and it
// returns nil having changed nothing, and the install plans from the object.

// PlannerKey names what a plan depends on besides the object and its
// configuration: this build of bpfsup (its version and its executable file,
// since two builds may carry one version string) and the default network
// namespace (--netns) that attachments without one of their own take.
func PlannerKey(version, defaultNetns string) string {
	key := fmt.Sprintf("bpfsup %s netns %q", version, defaultNetns)
	if exe, err := os.Executable(); err == nil {
		if fi, err := os.Stat(exe); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				key += fmt.Sprintf(" exe %d:%d %d %d", st.Dev, st.Ino, st.Size, fi.ModTime().UnixNano())
			}
		}
	}
	return key
}

// adoptUnchanged adopts the object of cfg as its manifest records it, when
// nothing changed since: its file's content has the hash sha, and it was
// planned under key (PlannerKey). It returns nil, with the reason, when it
// cannot; the caller then installs from the object's plan.
//
// It locks the object first and reads the manifest once, under the lock
// (pinstore.Store.OpenRead), and opens only the pins the manifest records,
// by their paths: no listing of the pin directories, no second read of the
// manifest, which at a hundred objects were a fifth of the start's system
// calls. Where no manifest or no pin directory exists (a first install)
// it makes nothing and takes no lock. Where they exist and the object
// changed, the lock and what Open does with it (bpfsup's own crash debris
// cleared, ClearStaging) come before the object is planned, and the lock is
// taken again for the install.
func adoptUnchanged(store pinstore.Store, cfg config.Object, sha, key string, log *slog.Logger) (_ *Installed, why string) {
	name := ObjectName(cfg)
	if !pinstore.Exists(store.ManifestPath(name)) {
		return nil, "no manifest"
	}
	if !pinstore.Exists(store.ObjectDir(name)) {
		return nil, "no pin directory"
	}
	obj, m, err := store.OpenRead(name)
	if err != nil {
		return nil, err.Error() // the install says it again, with context
	}
	pins := newPins()
	defer pins.close()
	var p *Plan
	switch {
	case m == nil:
		why = "no manifest"
	case m.Plan == nil || m.Plan.Key != key:
		why = "planned by another build of bpfsup or with another --netns"
	case m.ObjectSHA256 != sha:
		why = "the object changed"
	case m.ConfigHash != cfg.Hash():
		why = "the configuration changed"
	case len(m.Plan.Links) != len(m.Links):
		why = "the manifest's links and plan differ"
	default:
		p, why = planFromManifest(cfg, sha, key, m)
	}
	if p == nil {
		obj.Close()
		return nil, why
	}
	in := newInstalled(p, obj)
	in.manifest = m
	ok := false
	defer func() {
		if !ok {
			in.Close() // closes obj too
		}
	}()

	for mname, rec := range m.Maps {
		mp, id, err := openPinnedMap(rec.Path)
		if err != nil {
			return nil, "map " + mname + ": " + err.Error()
		}
		in.maps[mname] = mp
		if id != rec.ID {
			return nil, "map " + mname + " is not the one recorded"
		}
		p.maps = append(p.maps, mname)
	}
	sort.Strings(p.maps)

	progIDs := map[string]uint32{}
	for pname, rec := range m.Programs {
		if pinstore.CheckName("program", pname) != nil {
			return nil, "the manifest records a program named " + strconv.Quote(pname) // never a path of its own
		}
		path := obj.Path(pinstore.Programs, pname)
		pins.open(path, bpffs.Program)
		pr := pins.takeProgram(path)
		if pr == nil {
			return nil, "program " + pname + " is not pinned"
		}
		in.progs[pname] = pr
		if id, err := pinstore.ProgramID(pr); err != nil || uint32(id) != rec.ID {
			return nil, "program " + pname + " is not the one recorded"
		}
		progIDs[pname] = rec.ID
		p.progList = append(p.progList, pname)
	}
	sort.Strings(p.progList)

	endBatch := hooks.Batch()
	defer endBatch()
	for _, pl := range p.links {
		path := obj.Path(pinstore.Links, pl.name)
		hooks.BindPin(pl.hook, path)
		pins.open(path, bpffs.Link) // or, when it is not a bpf_link, loadLink reads it (a tc filter's record)
		l, info, err := pins.loadLink(path)
		if err != nil {
			return nil, "link " + pl.name + ": " + err.Error()
		}
		pins.takeLink(path)
		in.links[pl.name] = l
		rec := m.Links[pl.name]
		if info.ID != rec.ID || uint32(info.Program) != progIDs[pl.program] || progIDs[pl.program] == 0 {
			return nil, "link " + pl.name + " is not the one recorded"
		}
		state, err := pl.hook.Check(l)
		if err != nil {
			return nil, "link " + pl.name + ": " + err.Error()
		}
		if state == hooks.Unknown {
			state = recordedState(m, pl.name, pl.hook.Spec())
		}
		if state != hooks.Attached {
			return nil, "link " + pl.name + " is " + state.String()
		}
	}
	for _, pl := range p.links {
		if c := hooks.Caveat(pl.hook); c != "" {
			log.Warn(c, "object", name, "link", pl.name, "hook", pl.hook.Spec().String(), "mechanism", pl.hook.Mechanism())
		}
	}
	in.adopted = len(in.progs)
	ok = true
	return in, ""
}

// planFromManifest is the plan the manifest m recorded for the object of
// cfg, without its programs' specs, or nil and why it cannot be.
func planFromManifest(cfg config.Object, sha, key string, m *pinstore.Manifest) (*Plan, string) {
	p := &Plan{cfg: cfg, name: ObjectName(cfg), sha256: sha, mapCfg: cfg.Maps, progCfg: cfg.Programs, key: key}
	for _, lname := range m.Plan.Links {
		rec, ok := m.Links[lname]
		if !ok {
			return nil, "the manifest's links and plan differ"
		}
		if pinstore.CheckName("link", lname) != nil {
			return nil, "the manifest records a link named " + strconv.Quote(lname)
		}
		spec, err := hooks.Parse(rec.Hook)
		if err != nil {
			return nil, err.Error()
		}
		spec.Netns = rec.Netns
		h, err := hooks.New(spec)
		if err != nil {
			return nil, err.Error()
		}
		if hooks.NeedsSpec(h) {
			return nil, "hook " + spec.String() + " is set up from its program's spec"
		}
		place := linkPlace{where: hooks.Where(rec.Place), anchor: rec.Anchor, anchorPath: rec.AnchorPath}
		p.links = append(p.links, plannedLink{name: lname, program: rec.Program, hook: h, place: place})
	}
	return p, ""
}

// openPinnedMap opens the map pinned at path, with its id. It is
// ebpf.LoadPinnedMap without the walk of the path /proc/self/fd/N by which
// that learns what the pin holds: bpffs.OpenPin reads the fd's link
// through a directory opened once. At a thousand maps that walk was a
// third of an adopt's time.
func openPinnedMap(path string) (*ebpf.Map, uint32, error) {
	fd, kind, err := bpffs.OpenPin(path)
	if err != nil {
		return nil, 0, err
	}
	if kind != bpffs.Map {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s holds a %s, not a map", path, kind)
	}
	info, err := bpffs.MapInfo(fd)
	if err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	m, err := ebpf.NewMapFromFD(fd) // owns fd, also on error
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return m, info.ID, nil
}

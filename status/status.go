package status

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/pinstore"
)

// StatusSchema is the version of the JSON that `bpfsup status --json`
// prints, documented in docs/status-schema.md. Fields are only ever added; a
// change of meaning or a removal bumps it.
const StatusSchema = 1

// Status is what `bpfsup status` reports, read from the pins, the kernel and
// the manifests, with or without a running supervisor.
type Status struct {
	Schema   int    `json:"schema"`
	PinRoot  string `json:"pin_root"`
	StateDir string `json:"state_dir"`
	// Healthy says that every object is healthy (ObjectStatus.Healthy).
	Healthy bool           `json:"healthy"`
	Objects []ObjectStatus `json:"objects"`
}

// ObjectStatus is one object.
type ObjectStatus struct {
	Name         string `json:"name"`
	Dir          string `json:"dir"`
	Source       string `json:"source,omitempty"`
	ObjectSHA256 string `json:"object_sha256,omitempty"`
	// Signer names the key that signed the object file, when the
	// configuration had its signature checked.
	Signer     string `json:"signer,omitempty"`
	Generation uint64 `json:"generation"`
	// PinsVia is where the pins are seen from here when the supervisor
	// pins on a bpffs of its own (pins = false): "/proc/PID/root", which
	// Dir and the paths below begin with.
	PinsVia    string            `json:"pins_via,omitempty"`
	Supervisor *SupervisorStatus `json:"supervisor"`
	Maps       []MapStatus       `json:"maps"`
	Programs   []ProgramStatus   `json:"programs"`
	Links      []LinkStatus      `json:"links"`
	// Healthy says that every link is attached where the configuration
	// says and runs the program bpfsup installed, every pin is the one
	// bpfsup made, and there are no problems.
	Healthy bool `json:"healthy"`
	// Problems lists what does not add up: pins the kernel refuses, pins
	// bpfsup did not make, a link running another program, a manifest that
	// disagrees with the pins, debris of a crash.
	Problems []string `json:"problems,omitempty"`
}

// SupervisorStatus is the supervisor managing an object, when one runs.
type SupervisorStatus struct {
	// PID holds the object's lock.
	PID     int       `json:"pid"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// ChildPID is the running child's pid; 0 (omitted) while no child runs.
	ChildPID int `json:"child_pid,omitempty"`
	// Restarts counts the child's restarts since the supervisor started.
	Restarts int `json:"restarts"`
	// Ready says that the application runs and is ready: started, or, with
	// notify = "child", it said READY=1.
	Ready bool `json:"ready"`
	// ProgramStats says that the supervisor has the kernel count its
	// programs' runs and run time (program_stats = true).
	ProgramStats bool `json:"program_stats,omitempty"`
}

// MapStatus is one pinned map.
type MapStatus struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	ID         uint32 `json:"id"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	// Entries in use, for hash-like maps up to 65536 (-1 when not counted).
	Entries int `json:"entries"`
	// MemoryBytes is the memory the kernel charges for the map (its
	// fdinfo's memlock); 0 where it does not say.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
}

// ProgramStatus is one pinned program.
type ProgramStatus struct {
	Name     string    `json:"name"`
	ID       uint32    `json:"id"`
	Type     string    `json:"type"`
	Tag      string    `json:"tag"`
	LoadedAt time.Time `json:"loaded_at"`
	// RunCount and RunTimeNs are the times the program ran and the time it
	// took, counted by the kernel while run-time statistics are on (a
	// supervisor with program_stats = true, or anyone else who asked);
	// RecursionMisses the runs it missed because another BPF program ran
	// on the CPU.
	RunCount        uint64 `json:"run_count"`
	RunTimeNs       uint64 `json:"run_time_ns"`
	RecursionMisses uint64 `json:"recursion_misses"`
}

// LinkStatus is one pinned link.
type LinkStatus struct {
	Name      string `json:"name"`
	ID        uint32 `json:"id"`
	Type      string `json:"type"`
	ProgramID uint32 `json:"program_id"`
	// Program is the name of the program the link runs, when it is one of
	// the object's pinned programs.
	Program string `json:"program,omitempty"`
	// Hook is the configured hook spec ("xdp:veth0"), from the manifest.
	Hook string `json:"hook,omitempty"`
	// Target is the hook's target ("veth0"), from the manifest.
	Target string `json:"target,omitempty"`
	Netns  string `json:"netns,omitempty"`
	// NetnsInode is the inode of the network namespace the link is in, for
	// network links: that of Netns (or bpfsup's own) while the link is
	// attached there, else the one it was attached in.
	NetnsInode uint64 `json:"netns_inode,omitempty"`
	// Ifindex is the interface the link is on, for network links.
	Ifindex uint32 `json:"ifindex,omitempty"`
	// State is attached; defunct (its target is gone); elsewhere (alive,
	// but not on the configured hook: its network namespace was made again,
	// say); or unknown.
	State string `json:"state"`
	// Mechanism says how the program is attached, e.g. "bpf_link xdp".
	Mechanism string `json:"mechanism,omitempty"`
	// Upgrade is "in-place" or "make-before-break".
	Upgrade string `json:"upgrade,omitempty"`
	// Order is the link's place on a hook that runs several programs in
	// order (tcx, netkit); nil on other hooks.
	Order *LinkOrder `json:"order,omitempty"`
}

// ReadStatus reads the status of every object under the store's pin root,
// or only of the named ones.
func ReadStatus(store pinstore.Store, only ...string) (*Status, error) {
	// A pin root that exists elsewhere than on bpffs holds no pins: its
	// directories are not objects (run refuses such a root).
	if _, err := os.Stat(store.RootDir()); err == nil {
		if ok, err := pinstore.IsBPFFS(store.RootDir()); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("pin root %s: %w", store.RootDir(), pinstore.ErrNotBPFFS)
		}
	}
	names, err := store.Objects()
	if err != nil {
		return nil, err
	}
	// Objects that a manifest of this pin root records and that have no
	// directory under it: those of a supervisor with pins = false, which
	// pins nothing here, and those whose pins were removed (by hand, or by
	// another tool), whose links may be gone with them: shown, with what is
	// missing as problems, rather than left out of a health check.
	for _, name := range store.Manifested() {
		if slices.Contains(names, name) {
			continue
		}
		if man, err := store.ReadManifest(name); err == nil && man != nil && man.PinRoot == store.RootDir() {
			names = append(names, name)
		}
	}
	// Objects a live supervisor holds by their lock file in the state
	// directory while neither their manifest nor their pins are there (both
	// removed under it): shown, with that as a problem, rather than left
	// out of the health check.
	locks, state := pinstore.ReadLocks(), store.StateEntries()
	for _, e := range state {
		name, ok := strings.CutSuffix(e, ".lock")
		if !ok || slices.Contains(names, name) || pinstore.CheckName("object", name) != nil {
			continue
		}
		if _, held := locks.Holder(store.LockPath(name)); held {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(only) > 0 {
		for _, name := range only {
			if err := pinstore.CheckName("object", name); err != nil {
				return nil, err
			}
			if !pinstore.Exists(store.ObjectDir(name)) && !pinstore.Exists(store.ManifestPath(name)) {
				have := strings.Join(names, ", ")
				if have == "" {
					have = "none"
				}
				return nil, fmt.Errorf("object %s: nothing pinned at %s and no manifest in %s (objects: %s)",
					name, store.ObjectDir(name), store.StateDirectory(), have)
			}
		}
		names = only
	}
	st := &Status{Schema: StatusSchema, PinRoot: store.RootDir(), StateDir: store.StateDirectory(), Objects: []ObjectStatus{}, Healthy: true}
	endBatch := hooks.Batch()
	defer endBatch()
	r := &reader{store: store, locks: locks, state: state,
		owners: sync.OnceValue(func() map[uint32][2]string { return linkOwners(store) })}
	st.Objects = make([]ObjectStatus, len(names))
	// The objects are read side by side: the work is system calls, a few
	// per pin, which run on every CPU at once.
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(runtime.GOMAXPROCS(0), len(names)) {
		wg.Go(func() {
			for i := range next {
				st.Objects[i] = r.objectStatus(names[i])
			}
		})
	}
	for i := range names {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, o := range st.Objects {
		st.Healthy = st.Healthy && o.Healthy
	}
	return st, nil
}

// reader reads objects' status from one store, with what every object's
// status needs read once: the kernel's table of locks and the state
// directory's listing.
type reader struct {
	store pinstore.Store
	locks *pinstore.Locks
	state []string
	// owners are the links every manifest records, by id (ordered hooks'
	// chains name them), read once and only when a chain is.
	owners func() map[uint32][2]string

	mu       sync.Mutex
	runtimes map[int]*pinstore.SupervisorRecord // by pid, read once
}

// runtime is the record of the running supervisor pid (see
// pinstore.WriteRuntime), nil when it has none.
func (r *reader) runtime(pid int) *pinstore.SupervisorRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.runtimes[pid]
	if !ok {
		if k, ok := pinstore.RuntimeKeyOf(pid); ok {
			rec = r.store.ReadRuntime(k)
		}
		if r.runtimes == nil {
			r.runtimes = map[int]*pinstore.SupervisorRecord{}
		}
		r.runtimes[pid] = rec
	}
	return rec
}

func (r *reader) objectStatus(name string) ObjectStatus {
	store := r.store
	o := ObjectStatus{Name: name, Dir: store.ObjectDir(name), Maps: []MapStatus{}, Programs: []ProgramStatus{}, Links: []LinkStatus{}}
	man, err := store.ReadManifest(name)
	if err != nil {
		o.problem("%v", err)
	} else if man == nil {
		o.problem("no manifest of bpfsup's in %s records this object: bpfsup did not make it, or its state directory is elsewhere", store.StateDirectory())
	}
	if man != nil {
		o.Source, o.ObjectSHA256, o.Generation, o.Signer = man.Source, man.ObjectSHA256, man.Generation, man.Signer
	}
	o.Supervisor = r.supervisorStatus(name, man, &o)
	if man != nil && man.Supervisor != nil && man.Supervisor.PrivatePins {
		// A manifest of a bpfsup before supervisor.NS.PID.json names the pid.
		if o.Supervisor == nil || (man.Supervisor.PID != 0 && o.Supervisor.PID != man.Supervisor.PID) {
			o.problem("pins = false: nothing is pinned and no supervisor runs; the objects live in systemd's fd store alone until bpfsup starts again")
			o.Healthy = false
			return o
		}
		// Pinned on the supervisor's private bpffs, in its mount namespace.
		o.PinsVia = fmt.Sprintf("/proc/%d/root", o.Supervisor.PID)
		o.Dir = o.PinsVia + o.Dir
	}
	if man != nil && !pinstore.Exists(o.Dir) {
		o.problem("the object's pin directory %s is gone (removed by hand, or by another tool): the links are attached only while a process holds them, and the next start pins them again, or loads", o.Dir)
	}
	// Each directory is listed once: the programs and links found are
	// also what readMissing compares with the manifest.
	progs, links := pinNames(o.Dir, pinstore.Programs), pinNames(o.Dir, pinstore.Links)
	progNames := o.readPrograms(man, progs)
	o.readMaps(man)
	o.readLinks(man, links, progNames, r.owners)
	o.readMissing(man, progs, links)
	sort.Strings(o.Problems)
	o.readDebris(r, man)
	o.Healthy = len(o.Problems) == 0
	for _, l := range o.Links {
		o.Healthy = o.Healthy && l.State == "attached"
	}
	return o
}

func (o *ObjectStatus) problem(format string, args ...any) {
	o.Problems = append(o.Problems, fmt.Sprintf(format, args...))
}

// supervisorStatus finds the supervisor that holds the object: by its lock
// file, or by the lock of its pin directory when the lock file is gone (the
// state directory removed under a running supervisor).
func (r *reader) supervisorStatus(name string, man *pinstore.Manifest, o *ObjectStatus) *SupervisorStatus {
	store := r.store
	pid, ok := r.locks.Holder(store.LockPath(name))
	if !ok {
		if dirPID, held := r.locks.Holder(store.ObjectDir(name)); held {
			o.problem("supervisor pid %d holds the pins, but its lock file %s is gone (was the state directory removed?); a second supervisor with this state directory is still refused",
				dirPID, store.LockPath(name))
			return &SupervisorStatus{PID: dirPID}
		}
		return nil
	}
	sup := &SupervisorStatus{PID: pid}
	rec := r.runtime(pid)
	if rec == nil && man != nil && man.Supervisor != nil && man.Supervisor.PID == pid {
		rec = man.Supervisor // a bpfsup before supervisor.NS.PID.json
	}
	if rec != nil {
		sup.Version, sup.Started, sup.Restarts, sup.ProgramStats = rec.Version, rec.Started, rec.Restarts, rec.ProgramStats
		if processRuns(rec.ChildPID) {
			sup.ChildPID, sup.Ready = rec.ChildPID, rec.Ready
		}
	}
	return sup
}

// readPrograms reads the pinned programs; it returns their names by id.
func (o *ObjectStatus) readPrograms(man *pinstore.Manifest, pinned []string) map[uint32]string {
	progNames := map[uint32]string{}
	for _, pn := range pinned {
		// One BPF_OBJ_GET and one BPF_OBJ_GET_INFO_BY_FD: status reads
		// every pin of every object, hundreds of them.
		f, err := readPinned(o.Dir+"/programs/"+pn, bpffs.Program, func(fd int) (bpffs.ProgFacts, error) { return bpffs.ProgInfo(fd, false) })
		if err != nil {
			o.problem("program %s: %v", pn, err)
			continue
		}
		ps := ProgramStatus{Name: pn, ID: f.ID, Type: ebpf.ProgramType(f.Type).String(), Tag: hex.EncodeToString(f.Tag[:]),
			RunCount: f.RunCount, RunTimeNs: f.RunTimeNs, RecursionMisses: f.RecursionMisses}
		if f.LoadTime != 0 {
			ps.LoadedAt = pinstore.WallTime(time.Duration(f.LoadTime))
		}
		progNames[ps.ID] = pn
		if man != nil && !man.Owns(pinstore.Programs, pn, bpffs.PinInfo{Kind: bpffs.Program, ID: ps.ID}) {
			if _, ok := man.Programs[pn]; ok {
				o.problem("program %s: pinned id %d is not the program bpfsup installed (id %d)", pn, ps.ID, man.Programs[pn].ID)
			} else {
				o.problem("program %s: pinned id %d is not bpfsup's: the manifest records no program %s", pn, ps.ID, pn)
			}
		}
		o.Programs = append(o.Programs, ps)
	}
	return progNames
}

// readMaps reads the pinned maps: those in the object's directory and those
// the manifest records at paths of their own.
func (o *ObjectStatus) readMaps(man *pinstore.Manifest) {
	mapPaths := map[string]string{}
	for _, mn := range pinNames(o.Dir, pinstore.Maps) {
		mapPaths[mn] = o.Dir + "/maps/" + mn
	}
	if man != nil {
		for mn, rec := range man.Maps {
			if rec.Path != "" {
				mapPaths[mn] = o.PinsVia + rec.Path
			}
		}
	}
	mapNames := make([]string, 0, len(mapPaths))
	for mn := range mapPaths {
		mapNames = append(mapNames, mn)
	}
	sort.Strings(mapNames)
	for _, mn := range mapNames {
		ms, err := readMap(mn, mapPaths[mn])
		if err != nil {
			o.problem("map %s: %v", mn, err)
			continue
		}
		if man != nil && !man.Owns(pinstore.Maps, mn, bpffs.PinInfo{Kind: bpffs.Map, ID: ms.ID}) {
			if rec, ok := man.Maps[mn]; ok {
				o.problem("map %s: %s holds map id %d, not the map bpfsup made (id %d): replaced by another tool? a start or reload refuses it", mn, ms.Path, ms.ID, rec.ID)
			} else {
				o.problem("map %s: %s holds map id %d, which is not bpfsup's: the manifest records no map %s", mn, ms.Path, ms.ID, mn)
			}
		}
		o.Maps = append(o.Maps, ms)
	}
}

// readLinks reads the pinned links and asks the kernel where each one is:
// on the hook the manifest records (in the network namespace now at its
// path), and running the program bpfsup installed.
func (o *ObjectStatus) readLinks(man *pinstore.Manifest, pinned []string, progNames map[uint32]string, owners func() map[uint32][2]string) {
	for _, ln := range pinned {
		path := o.Dir + "/links/" + ln
		ls := LinkStatus{Name: ln, State: "unknown"}
		var rec pinstore.LinkRecord
		recorded := false
		if man != nil {
			rec, recorded = man.Links[ln]
		}
		if recorded {
			ls.Hook, ls.Netns, ls.Mechanism, ls.NetnsInode = rec.Hook, rec.Netns, rec.Mechanism, rec.NetnsInode
			if _, target, ok := strings.Cut(rec.Hook, ":"); ok {
				ls.Target = target
			}
			ls.Upgrade = "make-before-break"
			if rec.Updatable {
				ls.Upgrade = "in-place"
			}
		}
		l, err := hooks.LoadPinned(path)
		if err != nil {
			o.problem("link %s: %v", ln, err)
			o.Links = append(o.Links, ls)
			continue
		}
		if info, err := l.Info(); err == nil {
			ls.ID, ls.ProgramID, ls.Type = info.ID, uint32(info.Program), info.TypeName()
			ls.Program = progNames[ls.ProgramID]
			ls.State = "attached"
			if li := info.Link; li != nil {
				switch {
				case li.XDP() != nil:
					ls.Ifindex = li.XDP().Ifindex
				case li.TCX() != nil:
					ls.Ifindex = li.TCX().Ifindex
				case li.Netkit() != nil:
					ls.Ifindex = li.Netkit().Ifindex
				}
				// The kernel keeps a link whose target went away, on none.
				switch {
				case (li.XDP() != nil || li.TCX() != nil || li.Netkit() != nil) && ls.Ifindex == 0,
					li.Cgroup() != nil && li.Cgroup().CgroupId == 0,
					li.NetNs() != nil && li.NetNs().NetnsInode == 0:
					ls.State = "defunct"
				}
			}
			if ls.State == "attached" && recorded {
				if h := o.checkLinkHook(&ls, l, path, man); h != nil {
					o.checkOrder(&ls, h, rec, owners)
				}
			}
			o.checkLinkProgram(&ls, rec, recorded, man)
		}
		l.Close()
		o.Links = append(o.Links, ls)
	}
}

// checkLinkHook asks the kernel whether the link sits on the hook the
// manifest records: for a network hook, on the interface of that name in
// the network namespace now at the recorded path. It returns the hook
// (nil when the record names none bpfsup can make).
func (o *ObjectStatus) checkLinkHook(ls *LinkStatus, l hooks.Attachment, path string, man *pinstore.Manifest) hooks.Hook {
	spec, err := hooks.Parse(ls.Hook)
	if err != nil {
		return nil
	}
	spec.Netns = ls.Netns
	h, err := hooks.New(spec)
	if err != nil {
		return nil
	}
	hooks.BindPin(h, path)
	state, err := h.Check(l)
	if err != nil {
		// Not known to be on its hook is not healthy: a health check that
		// could not look says so rather than passing.
		ls.State = "unchecked"
		o.problem("link %s: could not check its hook %s: %v", ls.Name, ls.Hook, err)
		return nil
	}
	if state == hooks.Unknown {
		state = converge.RecordedState(man, ls.Name, spec)
	}
	if !spec.IsNetwork() {
		if state != hooks.Attached {
			ls.State = state.String()
			o.problem("link %s: not on its hook %s (%s)", ls.Name, ls.Hook, state)
		}
		return h
	}
	now, err := hooks.NetnsInode(spec.Netns)
	switch {
	case state == hooks.Attached:
		ls.NetnsInode = now
	case err != nil:
		ls.State = "defunct"
		o.problem("link %s: its network namespace %s is gone: %v", ls.Name, spec.Netns, err)
	case ls.NetnsInode != 0 && ls.NetnsInode != now:
		ls.State = "elsewhere"
		o.problem("link %s: it is in network namespace inode %d, and %s is now inode %d (deleted and made again?): %s there has no program of bpfsup's",
			ls.Name, ls.NetnsInode, netnsName(spec.Netns), now, spec.Target)
	default:
		ls.State = "elsewhere"
		o.problem("link %s: not on %s in %s", ls.Name, spec.Target, netnsName(spec.Netns))
	}
	return h
}

// netnsName names the network namespace at path for people.
func netnsName(path string) string {
	if path == "" {
		return "this network namespace"
	}
	return "network namespace " + path
}

// checkLinkProgram compares the program the link runs with the one bpfsup
// installed for it: a link swapped to another program (BPF_LINK_UPDATE
// behind bpfsup's back) leaves the hook without bpfsup's filter.
func (o *ObjectStatus) checkLinkProgram(ls *LinkStatus, rec pinstore.LinkRecord, recorded bool, man *pinstore.Manifest) {
	if man == nil {
		return
	}
	if !recorded {
		// Every link bpfsup pins is under a name its manifest records, the
		// write-ahead one included: this one is another tool's, even when
		// it runs one of bpfsup's programs.
		runs := "not one of bpfsup's"
		if man.OwnsProgramID(ls.ProgramID) {
			runs = "one of bpfsup's programs, through a link bpfsup did not make"
		}
		o.problem("link %s: not bpfsup's: the manifest records no link %s; it runs program id %d, %s", ls.Name, ls.Name, ls.ProgramID, runs)
		return
	}
	ids := man.ProgramIDs(rec.Program)
	if slices.Contains(ids, ls.ProgramID) {
		return
	}
	what := fmt.Sprintf("program id %d", ls.ProgramID)
	if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(ls.ProgramID)); err == nil {
		what = converge.DescribeProgram(p)
		p.Close()
	}
	o.problem("link %s: runs %s, not the program bpfsup installed (%s, id %s): swapped behind bpfsup's back", ls.Name, what, rec.Program, converge.IDList(ids))
}

// readMissing reports what the manifest says bpfsup pinned and is not there
// (removed by hand, or by a `bpfsup down` that took the pins from under it).
func (o *ObjectStatus) readMissing(man *pinstore.Manifest, progs, links []string) {
	if man == nil {
		return
	}
	for _, k := range []struct {
		kind pinstore.Kind
		recs map[string]uint32
		have []string
	}{{pinstore.Programs, programIDs(man), progs}, {pinstore.Links, linkIDs(man), links}} {
		for n, id := range k.recs {
			if !slices.Contains(k.have, n) {
				o.problem("%s %s: bpfsup installed id %d, and nothing is pinned at %s/%s/%s",
					strings.TrimSuffix(string(k.kind), "s"), n, id, o.Dir, k.kind, n)
			}
		}
	}
}

// readDebris reports debris of crashes, and what is in the object's
// directory that bpfsup did not put there.
func (o *ObjectStatus) readDebris(r *reader, man *pinstore.Manifest) {
	store := r.store
	for _, n := range pinNames(o.Dir, "staging") {
		path := o.Dir + "/staging/" + n
		pi, err := bpffs.ReadPin(path)
		switch {
		case err == nil && man.OwnsAny(pi):
			o.problem("staging debris %s (bpfsup's: the next start removes it)", path)
		case strings.HasPrefix(n, "foreign-"):
			o.problem("staging %s: a foreign pin a start with --force moved aside and did not remove (the next start puts it back where its place is free)", path)
		default:
			o.problem("staging %s: not bpfsup's (left alone)", path)
		}
	}
	for _, l := range store.Strangers(o.Name) {
		o.problem("%s: not bpfsup's (left alone)", l.Path)
	}
	// A running supervisor removed the debris when it started; what is
	// there now may be its own write under way.
	if o.Supervisor != nil && processRuns(o.Supervisor.PID) {
		return
	}
	for _, p := range store.ManifestDebrisIn(r.state, o.Name) {
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			// bpfsup writes files there; a start leaves a directory alone.
			o.problem("%s: a directory named like manifest debris, not bpfsup's (left alone)", p)
			continue
		}
		o.problem("manifest debris %s (a write cut short; the next start removes it)", p)
	}
}

// processRuns reports whether pid is a process that has not exited.
func processRuns(pid int) bool { return pinstore.ProcessRuns(pid) }

func pinNames(dir string, kind pinstore.Kind) []string {
	entries, err := os.ReadDir(dir + "/" + string(kind))
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

// readPinned opens the pin at path, which must hold an object of kind, and
// reads it with info.
func readPinned[T any](path, kind string, info func(fd int) (T, error)) (T, error) {
	var zero T
	fd, got, err := bpffs.OpenPin(path)
	if err != nil {
		return zero, err
	}
	defer unix.Close(fd)
	if got != kind {
		return zero, fmt.Errorf("%s holds a %s, not a %s", path, got, kind)
	}
	return info(fd)
}

// readMap reads the map pinned at path: its shape from one info call, and
// its entries, counted for hash-like maps.
func readMap(name, path string) (MapStatus, error) {
	fd, kind, err := bpffs.OpenPin(path)
	if err != nil {
		return MapStatus{}, err
	}
	if kind != bpffs.Map {
		unix.Close(fd)
		return MapStatus{}, fmt.Errorf("%s holds a %s, not a map", path, kind)
	}
	f, err := bpffs.MapInfo(fd)
	if err != nil {
		unix.Close(fd)
		return MapStatus{}, err
	}
	typ := ebpf.MapType(f.Type)
	ms := MapStatus{Name: name, Path: path, ID: f.ID, Type: typ.String(), KeySize: f.KeySize, ValueSize: f.ValueSize, MaxEntries: f.MaxEntries, Entries: -1}
	ms.MemoryBytes, _ = bpffs.MapMemlock(fd)
	switch typ {
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
		m, err := ebpf.NewMapFromFD(fd) // takes fd
		if err != nil {
			return ms, nil
		}
		ms.Entries = countEntries(m, 65536)
		m.Close()
	default:
		unix.Close(fd)
	}
	return ms, nil
}

func countEntries(m *ebpf.Map, limit int) int {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	n := 0
	var cur any // nil: first key
	for n < limit {
		if err := m.NextKey(cur, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n
			}
			return -1
		}
		n++
		copy(key, next)
		cur = key
	}
	return n
}

// Render writes st to w for people, an object at a time: the text of a
// thousand objects is over a megabyte, which a string built whole would
// first have the process allocate, page by page, several times over.
func (st *Status) Render(w io.Writer) error {
	b := bufio.NewWriterSize(w, 32<<10)
	if len(st.Objects) == 0 {
		fmt.Fprintf(b, "no objects under %s\n", st.PinRoot)
		return b.Flush()
	}
	for _, o := range st.Objects {
		fmt.Fprintf(b, "object %s (%s) generation %d\n", o.Name, o.Dir, o.Generation)
		if o.ObjectSHA256 != "" {
			fmt.Fprintf(b, "  file    %s sha256 %s", o.Source, o.ObjectSHA256)
			if o.Signer != "" {
				fmt.Fprintf(b, " signed by %s", o.Signer)
			}
			b.WriteString("\n")
		}
		if sup := o.Supervisor; sup != nil {
			fmt.Fprintf(b, "  supervisor pid %d", sup.PID)
			if sup.Version != "" {
				fmt.Fprintf(b, " version %s", sup.Version)
			}
			if sup.ChildPID != 0 {
				fmt.Fprintf(b, ", child pid %d", sup.ChildPID)
			}
			fmt.Fprintf(b, ", restarts %d", sup.Restarts)
			if sup.ProgramStats {
				b.WriteString(", program stats on")
			}
			if sup.Ready {
				b.WriteString(", ready")
			}
			b.WriteString("\n")
		} else {
			fmt.Fprintf(b, "  supervisor: none running\n")
		}
		for _, m := range o.Maps {
			entries := ""
			if m.Entries >= 0 {
				entries = fmt.Sprintf(" entries %d", m.Entries)
			}
			if m.MemoryBytes > 0 {
				entries += fmt.Sprintf(" memory %d", m.MemoryBytes)
			}
			fmt.Fprintf(b, "  map     %-20s id %-6d %s key %d value %d max %d%s\n", m.Name, m.ID, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, entries)
		}
		for _, p := range o.Programs {
			fmt.Fprintf(b, "  program %-20s id %-6d %s tag %s loaded %s", p.Name, p.ID, p.Type, p.Tag, p.LoadedAt.Format(time.RFC3339))
			if p.RunCount > 0 {
				fmt.Fprintf(b, " runs %d, %d ns/run", p.RunCount, p.RunTimeNs/p.RunCount)
			}
			b.WriteString("\n")
		}
		for _, l := range o.Links {
			fmt.Fprintf(b, "  link    %-20s id %-6d %s program %d hook %s %s", l.Name, l.ID, l.Type, l.ProgramID, l.Hook, l.State)
			if l.NetnsInode != 0 {
				where := "own netns"
				if l.Netns != "" {
					where = "netns " + l.Netns
				}
				fmt.Fprintf(b, " in %s (inode %d)", where, l.NetnsInode)
			}
			if l.Upgrade != "" {
				fmt.Fprintf(b, " (%s, upgrade %s)", l.Mechanism, l.Upgrade)
			}
			b.WriteString("\n")
			if l.Order != nil {
				b.WriteString(orderLine(l))
			}
		}
		for _, p := range o.Problems {
			fmt.Fprintf(b, "  problem: %s\n", p)
		}
		if !o.Healthy {
			b.WriteString("  NOT HEALTHY\n")
		}
	}
	return b.Flush()
}

// Ready says why st is not ready, or nil when every object is healthy and
// a supervisor runs it with its application ready (`status --ready`).
func (st *Status) Ready() error {
	if len(st.Objects) == 0 {
		return fmt.Errorf("not ready: no objects under %s", st.PinRoot)
	}
	var why []string
	for _, o := range st.Objects {
		switch {
		case !o.Healthy && len(o.Problems) > 0:
			why = append(why, fmt.Sprintf("object %s: %s", o.Name, o.Problems[0]))
		case !o.Healthy:
			for _, l := range o.Links {
				if l.State != "attached" {
					why = append(why, fmt.Sprintf("object %s: link %s is %s", o.Name, l.Name, l.State))
					break
				}
			}
		case o.Supervisor == nil:
			why = append(why, fmt.Sprintf("object %s: no supervisor runs", o.Name))
		case !o.Supervisor.Ready:
			why = append(why, fmt.Sprintf("object %s: supervisor pid %d: the application is not ready", o.Name, o.Supervisor.PID))
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("not ready: %s", strings.Join(why, "; "))
	}
	return nil
}

// WriteJSON writes st to w as `bpfsup status --json` prints it: the bytes of
// json.MarshalIndent(st, "", "  ") and a newline, marshalled an object at a
// time (see Render).
func (st *Status) WriteJSON(w io.Writer) error {
	head := *st
	head.Objects = []ObjectStatus{}
	top, err := json.MarshalIndent(&head, "", "  ")
	if err != nil {
		return err
	}
	// Objects is the last field: the objects go where its [] is.
	const empty = "[]\n}"
	if !bytes.HasSuffix(top, []byte(empty)) {
		return fmt.Errorf("status JSON: objects are not the last field: %s", top)
	}
	b := bufio.NewWriterSize(w, 32<<10)
	b.Write(top[:len(top)-len(empty)])
	if len(st.Objects) == 0 {
		b.WriteString(empty)
	} else {
		b.WriteString("[\n")
		for i := range st.Objects {
			o, err := json.MarshalIndent(&st.Objects[i], "    ", "  ")
			if err != nil {
				return err
			}
			b.WriteString("    ")
			b.Write(o)
			if i < len(st.Objects)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString("  ]\n}")
	}
	b.WriteString("\n")
	return b.Flush()
}

func programIDs(m *pinstore.Manifest) map[string]uint32 {
	ids := map[string]uint32{}
	for n, r := range m.Programs {
		ids[n] = r.ID
	}
	return ids
}

func linkIDs(m *pinstore.Manifest) map[string]uint32 {
	ids := map[string]uint32{}
	for n, r := range m.Links {
		ids[n] = r.ID
	}
	return ids
}

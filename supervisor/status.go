package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// StatusSchema is the version of the JSON that `bpfsup status --json`
// prints, documented in docs/status-schema.md. Fields are only ever added; a
// change of meaning or a removal bumps it.
const StatusSchema = 1

// Status is what `bpfsup status` reports, read from the pins, the kernel and
// the manifests, with or without a running supervisor.
type Status struct {
	Schema   int            `json:"schema"`
	PinRoot  string         `json:"pin_root"`
	StateDir string         `json:"state_dir"`
	Objects  []ObjectStatus `json:"objects"`
}

// ObjectStatus is one object.
type ObjectStatus struct {
	Name         string            `json:"name"`
	Dir          string            `json:"dir"`
	Source       string            `json:"source,omitempty"`
	ObjectSHA256 string            `json:"object_sha256,omitempty"`
	Generation   uint64            `json:"generation"`
	Supervisor   *SupervisorStatus `json:"supervisor"`
	Maps         []MapStatus       `json:"maps"`
	Programs     []ProgramStatus   `json:"programs"`
	Links        []LinkStatus      `json:"links"`
	// Problems lists what does not add up: pins the kernel refuses, a
	// manifest that disagrees with the pins.
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
}

// ProgramStatus is one pinned program.
type ProgramStatus struct {
	Name     string    `json:"name"`
	ID       uint32    `json:"id"`
	Type     string    `json:"type"`
	Tag      string    `json:"tag"`
	LoadedAt time.Time `json:"loaded_at"`
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
	// Ifindex is the interface the link is on, for network links.
	Ifindex uint32 `json:"ifindex,omitempty"`
	// State is attached, defunct (its target is gone) or unknown.
	State string `json:"state"`
	// Mechanism says how the program is attached, e.g. "bpf_link xdp".
	Mechanism string `json:"mechanism,omitempty"`
	// Upgrade is "in-place" or "make-before-break".
	Upgrade string `json:"upgrade,omitempty"`
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
	st := &Status{Schema: StatusSchema, PinRoot: store.RootDir(), StateDir: store.StateDirectory(), Objects: []ObjectStatus{}}
	for _, name := range names {
		st.Objects = append(st.Objects, objectStatus(store, name))
	}
	return st, nil
}

func objectStatus(store pinstore.Store, name string) ObjectStatus {
	os := ObjectStatus{Name: name, Dir: store.ObjectDir(name), Maps: []MapStatus{}, Programs: []ProgramStatus{}, Links: []LinkStatus{}}
	man, err := store.ReadManifest(name)
	if err != nil {
		os.Problems = append(os.Problems, err.Error())
	}
	if man != nil {
		os.Source, os.ObjectSHA256, os.Generation = man.Source, man.ObjectSHA256, man.Generation
		if sup := man.Supervisor; sup != nil {
			if pid, ok := pinstore.LockHolder(store.LockPath(name)); ok && pid == sup.PID {
				os.Supervisor = &SupervisorStatus{PID: sup.PID, Version: sup.Version, Started: sup.Started, Restarts: sup.Restarts}
				if processRuns(sup.ChildPID) {
					os.Supervisor.ChildPID = sup.ChildPID
				}
			}
		}
	}
	if os.Supervisor == nil {
		if pid, ok := pinstore.LockHolder(store.LockPath(name)); ok {
			os.Supervisor = &SupervisorStatus{PID: pid}
		}
	}

	progNames := map[uint32]string{}
	for _, pn := range pinNames(os.Dir, pinstore.Programs) {
		path := os.Dir + "/programs/" + pn
		p, err := ebpf.LoadPinnedProgram(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			os.Problems = append(os.Problems, fmt.Sprintf("program %s: %v", pn, err))
			continue
		}
		ps := ProgramStatus{Name: pn, Type: p.Type().String()}
		if info, err := p.Info(); err == nil {
			id, _ := info.ID()
			ps.ID, ps.Tag = uint32(id), info.Tag
			if lt, ok := info.LoadTime(); ok {
				ps.LoadedAt = bootToWall(lt)
			}
		}
		p.Close()
		progNames[ps.ID] = pn
		if man != nil {
			if rec, ok := man.Programs[pn]; ok && rec.ID != ps.ID && !containsID(rec.PreviousIDs, ps.ID) {
				os.Problems = append(os.Problems, fmt.Sprintf("program %s: pinned id %d is not the id %d bpfsup installed", pn, ps.ID, rec.ID))
			}
		}
		os.Programs = append(os.Programs, ps)
	}

	mapPaths := map[string]string{}
	for _, mn := range pinNames(os.Dir, pinstore.Maps) {
		mapPaths[mn] = os.Dir + "/maps/" + mn
	}
	if man != nil {
		for mn, rec := range man.Maps {
			if rec.Path != "" {
				mapPaths[mn] = rec.Path
			}
		}
	}
	mapNames := make([]string, 0, len(mapPaths))
	for mn := range mapPaths {
		mapNames = append(mapNames, mn)
	}
	sort.Strings(mapNames)
	for _, mn := range mapNames {
		m, err := ebpf.LoadPinnedMap(mapPaths[mn], &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			os.Problems = append(os.Problems, fmt.Sprintf("map %s: %v", mn, err))
			continue
		}
		ms := MapStatus{Name: mn, Path: mapPaths[mn], Type: m.Type().String(), KeySize: m.KeySize(), ValueSize: m.ValueSize(), MaxEntries: m.MaxEntries(), Entries: -1}
		if info, err := m.Info(); err == nil {
			id, _ := info.ID()
			ms.ID = uint32(id)
		}
		if m.Type() == ebpf.Hash || m.Type() == ebpf.PerCPUHash || m.Type() == ebpf.LRUHash || m.Type() == ebpf.LRUCPUHash || m.Type() == ebpf.LPMTrie {
			ms.Entries = countEntries(m, 65536)
		}
		m.Close()
		os.Maps = append(os.Maps, ms)
	}

	for _, ln := range pinNames(os.Dir, pinstore.Links) {
		path := os.Dir + "/links/" + ln
		ls := LinkStatus{Name: ln, State: "unknown"}
		if man != nil {
			if rec, ok := man.Links[ln]; ok {
				ls.Hook, ls.Netns, ls.Mechanism = rec.Hook, rec.Netns, rec.Mechanism
				if _, target, ok := strings.Cut(rec.Hook, ":"); ok {
					ls.Target = target
				}
				ls.Upgrade = "make-before-break"
				if rec.Updatable {
					ls.Upgrade = "in-place"
				}
			}
		}
		l, err := hooks.LoadPinned(path)
		if err != nil {
			os.Problems = append(os.Problems, fmt.Sprintf("link %s: %v", ln, err))
			os.Links = append(os.Links, ls)
			continue
		}
		if info, err := l.Info(); err == nil {
			ls.ID, ls.ProgramID, ls.Type = uint32(info.ID), uint32(info.Program), linkTypeName(info.Type)
			ls.Program = progNames[ls.ProgramID]
			ls.State = "attached"
			switch {
			case info.XDP() != nil:
				ls.Ifindex = info.XDP().Ifindex
			case info.TCX() != nil:
				ls.Ifindex = info.TCX().Ifindex
			}
			// The kernel keeps a link whose target went away, on none.
			switch {
			case (info.XDP() != nil || info.TCX() != nil) && ls.Ifindex == 0,
				info.Cgroup() != nil && info.Cgroup().CgroupId == 0,
				info.NetNs() != nil && info.NetNs().NetnsInode == 0:
				ls.State = "defunct"
			}
		}
		l.Close()
		os.Links = append(os.Links, ls)
	}
	// What the manifest says bpfsup pinned and is not there (removed by
	// hand, or by a `bpfsup down` that took the pins from under it).
	if man != nil {
		for _, k := range []struct {
			kind pinstore.Kind
			recs map[string]uint32
		}{{pinstore.Programs, programIDs(man)}, {pinstore.Links, linkIDs(man)}} {
			have := pinNames(os.Dir, k.kind)
			for n, id := range k.recs {
				if !slices.Contains(have, n) {
					os.Problems = append(os.Problems, fmt.Sprintf("%s %s: bpfsup installed id %d, and nothing is pinned at %s/%s/%s",
						strings.TrimSuffix(string(k.kind), "s"), n, id, os.Dir, k.kind, n))
				}
			}
		}
	}
	sort.Strings(os.Problems)
	for _, n := range pinNames(os.Dir, "staging") {
		os.Problems = append(os.Problems, fmt.Sprintf("staging debris %s/staging/%s (the next start removes it)", os.Dir, n))
	}
	return os
}

// processRuns reports whether pid is a process that has not exited: a
// zombie has exited even though kill(pid, 0) still succeeds on it.
func processRuns(pid int) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command, which is in parentheses and may hold
	// spaces and parentheses itself.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	state := data[i+2]
	return state != 'Z' && state != 'X'
}

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

func linkTypeName(t link.Type) string {
	switch t {
	case link.XDPType:
		return "xdp"
	case link.TCXType:
		return "tcx"
	case link.CgroupType:
		return "cgroup"
	case link.RawTracepointType:
		return "raw_tracepoint"
	case link.TracingType:
		return "tracing"
	case link.PerfEventType:
		return "perf_event"
	case link.NetNsType:
		return "netns"
	case link.NetfilterType:
		return "netfilter"
	case link.KprobeMultiType:
		return "kprobe_multi"
	case link.UprobeMultiType:
		return "uprobe_multi"
	}
	return fmt.Sprintf("type %d", t)
}

func containsID(ids []uint32, id uint32) bool {
	for _, v := range ids {
		if v == id {
			return true
		}
	}
	return false
}

// bootToWall turns a time since boot (CLOCK_BOOTTIME) into wall-clock time.
func bootToWall(sinceBoot time.Duration) time.Time {
	// From the boot time in /proc/stat rather than from two clock reads, so
	// that every status of the same program says the same time.
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}
			}
			return time.Unix(secs, 0).Add(sinceBoot).UTC().Truncate(time.Millisecond)
		}
	}
	return time.Time{}
}

// statusJSON is the supervisor's runtime status for the control socket.
func (s *supervisor) statusJSON() []byte {
	if b := s.runtime.Load(); b != nil {
		return *b
	}
	return []byte("{}")
}

// Render prints st for people.
func (st *Status) Render() string {
	var b strings.Builder
	if len(st.Objects) == 0 {
		fmt.Fprintf(&b, "no objects under %s\n", st.PinRoot)
		return b.String()
	}
	for _, o := range st.Objects {
		fmt.Fprintf(&b, "object %s (%s) generation %d\n", o.Name, o.Dir, o.Generation)
		if sup := o.Supervisor; sup != nil {
			fmt.Fprintf(&b, "  supervisor pid %d", sup.PID)
			if sup.Version != "" {
				fmt.Fprintf(&b, " version %s", sup.Version)
			}
			if sup.ChildPID != 0 {
				fmt.Fprintf(&b, ", child pid %d", sup.ChildPID)
			}
			fmt.Fprintf(&b, ", restarts %d\n", sup.Restarts)
		} else {
			fmt.Fprintf(&b, "  supervisor: none running\n")
		}
		for _, m := range o.Maps {
			entries := ""
			if m.Entries >= 0 {
				entries = fmt.Sprintf(" entries %d", m.Entries)
			}
			fmt.Fprintf(&b, "  map     %-20s id %-6d %s key %d value %d max %d%s\n", m.Name, m.ID, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, entries)
		}
		for _, p := range o.Programs {
			fmt.Fprintf(&b, "  program %-20s id %-6d %s tag %s loaded %s\n", p.Name, p.ID, p.Type, p.Tag, p.LoadedAt.Format(time.RFC3339))
		}
		for _, l := range o.Links {
			fmt.Fprintf(&b, "  link    %-20s id %-6d %s program %d hook %s %s", l.Name, l.ID, l.Type, l.ProgramID, l.Hook, l.State)
			if l.Upgrade != "" {
				fmt.Fprintf(&b, " (%s, upgrade %s)", l.Mechanism, l.Upgrade)
			}
			b.WriteString("\n")
		}
		for _, p := range o.Problems {
			fmt.Fprintf(&b, "  problem: %s\n", p)
		}
	}
	return b.String()
}

// JSON is st as `bpfsup status --json` prints it.
func (st *Status) JSON() ([]byte, error) {
	return json.MarshalIndent(st, "", "  ")
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

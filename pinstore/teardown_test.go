package pinstore

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// xdpProgOn asks the kernel (through iproute2) for the id of the XDP
// program on iface in ns; 0 when there is none.
func xdpProgOn(tb testing.TB, ns *testutil.Netns, iface string) ebpf.ProgramID {
	tb.Helper()
	out, err := exec.Command("ip", "-n", ns.Name, "-j", "link", "show", "dev", iface).Output()
	if err != nil {
		tb.Fatalf("ip link show %s: %v", iface, err)
	}
	var links []struct {
		XDP *struct {
			Prog struct {
				ID uint32 `json:"id"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		tb.Fatalf("ip -j link show %s: %q (%v)", iface, out, err)
	}
	if links[0].XDP == nil {
		return 0
	}
	return ebpf.ProgramID(links[0].XDP.Prog.ID)
}

// installDropfilter installs the dropfilter object as a supervisor would,
// its drop_count map at its own pin path (shared), with an XDP link on
// iface in ns, and writes the manifest; it then lets go of every fd, so that
// what stays is only what is pinned. It returns the ids it made.
func installDropfilter(t *testing.T, o *Object, ns *testutil.Netns, ifindex int, shared string) (linkID link.ID, progIDs []ebpf.ProgramID, mapIDs []ebpf.MapID) {
	t.Helper()
	spec := mustSpec(t, "dropfilter")
	man := &Manifest{Maps: map[string]MapRecord{}, Programs: map[string]ProgramRecord{}, Links: map[string]LinkRecord{}}
	maps := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		pol := MapPolicy{}
		if name == "drop_count" {
			pol.PinPath = shared
		}
		r, err := o.AdoptOrCreateMap(name, ms, pol)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Map.Close()
		if err := o.Pin(Maps, r.Path, r.Map); err != nil {
			t.Fatal(err)
		}
		maps[name] = r.Map
		man.Maps[name] = MapRecord{ID: uint32(mapID(t, r.Map)), Path: r.Path, Made: true}
		mapIDs = append(mapIDs, mapID(t, r.Map))
	}
	progs, err := o.AdoptOrLoadPrograms(spec, maps, ebpf.ProgramOptions{}, Adoption{})
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range progs {
		defer r.close()
		if err := o.Pin(Programs, r.Path, r.Program); err != nil {
			t.Fatal(err)
		}
		progIDs = append(progIDs, progID(t, r.Program))
		man.Programs[name] = ProgramRecord{ID: uint32(progID(t, r.Program))}
	}
	l := attachXDP(t, ns, progs["xdp_drop"].Program, ifindex)
	defer l.Close()
	if err := o.Pin(Links, o.Path(Links, "xdp_drop"), l); err != nil {
		t.Fatal(err)
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	linkID = info.ID
	man.Links["xdp_drop"] = LinkRecord{ID: uint32(linkID), Program: "xdp_drop"}
	if err := o.WriteManifest(man); err != nil {
		t.Fatal(err)
	}
	return linkID, progIDs, mapIDs
}

func released(linkID link.ID, progIDs []ebpf.ProgramID, mapIDs []ebpf.MapID) bool {
	if l, err := link.NewFromID(linkID); err == nil {
		l.Close()
		return false
	}
	for _, id := range progIDs {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			return false
		}
	}
	for _, id := range mapIDs {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			m.Close()
			return false
		}
	}
	return true
}

// Teardown takes away everything of the object that its manifest records:
// the link pin (which detaches the program), programs, maps, a map pinned
// outside the object's directory that bpfsup made, the directory, the
// manifest and the lock.
func TestTeardown(t *testing.T) {
	s := mustStore(t)
	ns := testutil.MustNetns(t, "pinstore")
	veth, _ := testutil.MustVethPair(t, ns, ns)
	o := mustOpen(t, s, "fw")
	shared := filepath.Join(s.Root, "shared", "drop_count")
	linkID, progIDs, mapIDs := installDropfilter(t, o, ns, veth.Index, shared)
	if xdpProgOn(t, ns, veth.Name) == 0 {
		t.Fatal("no XDP program on the interface after install")
	}

	man, err := s.ReadManifest("fw")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := o.Teardown(man, os.Remove, func(string) string { return "" })
	if err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if !rep.Gone || len(rep.Left) != 0 || rep.Links != 1 || rep.Programs != len(progIDs) || rep.Maps != len(mapIDs) {
		t.Fatalf("Teardown report %+v; want everything removed: 1 link, %d programs, %d maps", rep, len(progIDs), len(mapIDs))
	}
	for _, p := range []string{o.Dir, shared, s.ManifestPath("fw"), s.LockPath("fw")} {
		if Exists(p) {
			t.Errorf("%s exists after Teardown", p)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the XDP program to leave the interface", func() bool {
		return xdpProgOn(t, ns, veth.Name) == 0
	})
	testutil.WaitFor(t, 5*time.Second, "the link, programs and maps to be released", func() bool {
		return released(linkID, progIDs, mapIDs)
	})
	// The lock is gone with the object: it can be opened afresh.
	mustOpen(t, s, "fw")
}

// Teardown removes only what the manifest records, whatever else sits
// beside it: another tool's link (its program stays attached), map and
// directory in the object's directory, a pin the manifest records by name
// under another id, a map bpfsup adopted at its own pin path, and one
// another object uses too. It says what it left and why.
func TestTeardownLeavesForeign(t *testing.T) {
	s := mustStore(t)
	ns := testutil.MustNetns(t, "pinstore")
	veth, _ := testutil.MustVethPair(t, ns, ns)
	theirs, _ := testutil.MustVethPair(t, ns, ns)
	o := mustOpen(t, s, "fw")
	shared := filepath.Join(s.Root, "shared", "drop_count")
	installDropfilter(t, o, ns, veth.Index, shared)

	// Another tool's XDP program, link, map and notes, in fw's directory.
	foreignProg, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer foreignProg.Close()
	fl := attachXDP(t, ns, foreignProg, theirs.Index)
	defer fl.Close()
	// Another tool's link that runs bpfsup's own program, on an interface
	// of its own, pinned under a name bpfsup's manifest does not record.
	ours, err := ebpf.LoadPinnedProgram(o.Path(Programs, "xdp_drop"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	borrowedIface, _ := testutil.MustVethPair(t, ns, ns)
	bl := attachXDP(t, ns, ours, borrowedIface.Index)
	defer bl.Close()
	foreign := map[string]func(string) error{
		o.Path(Links, "their_link"): fl.Pin,
		o.Path(Links, "borrowed"):   bl.Pin,
		o.Path(Maps, "their_map"):   mustArray(t).Pin,
		// A name the manifest records, holding something else.
		o.Path(Programs, "tc_drop"): foreignProg.Pin,
	}
	if err := os.Remove(o.Path(Programs, "tc_drop")); err != nil {
		t.Fatal(err)
	}
	for path, pin := range foreign {
		if err := pin(path); err != nil {
			t.Fatal(err)
		}
	}
	notes := filepath.Join(o.Dir, "notes")
	if err := os.Mkdir(notes, 0o700); err != nil {
		t.Fatal(err)
	}

	man, err := s.ReadManifest("fw")
	if err != nil {
		t.Fatal(err)
	}
	// The shared map: first another object records it too, then bpfsup
	// only adopted it there.
	rep, err := o.Teardown(man, os.Remove, func(p string) string {
		if p == shared {
			return "other"
		}
		return ""
	})
	if err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	leftPaths := map[string]string{}
	for _, l := range rep.Left {
		leftPaths[l.Path] = l.Why
	}
	for _, p := range []string{o.Path(Links, "their_link"), o.Path(Links, "borrowed"), o.Path(Maps, "their_map"), o.Path(Programs, "tc_drop"), notes, shared} {
		if !Exists(p) {
			t.Errorf("Teardown removed %s, which is not bpfsup's", p)
		}
		if _, ok := leftPaths[p]; !ok {
			t.Errorf("Teardown did not report %s as left alone: %v", p, rep.Left)
		}
	}
	if rep.Gone || !Exists(o.Dir) {
		t.Errorf("Teardown removed the object's directory with another tool's things in it (gone %v)", rep.Gone)
	}
	if Exists(o.Path(Links, "xdp_drop")) || Exists(o.Path(Programs, "xdp_drop")) {
		t.Error("Teardown left bpfsup's own link or program")
	}
	if Exists(s.ManifestPath("fw")) {
		t.Error("Teardown left the manifest, though every pin it records is gone")
	}
	// Another tool's program still filters its interface.
	if got := xdpProgOn(t, ns, theirs.Name); got != progID(t, foreignProg) {
		t.Errorf("the foreign interface runs XDP program %d after Teardown, want the foreign %d", got, progID(t, foreignProg))
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup's XDP program to leave its interface", func() bool {
		return xdpProgOn(t, ns, veth.Name) == 0
	})
	if why := leftPaths[shared]; !strings.Contains(why, "object other") {
		t.Errorf("the shared map was left for %q, want: object other uses it", why)
	}
}

// A map that bpfsup adopted at its own pin path (another tool made it) is
// left by Teardown.
func TestTeardownLeavesAdoptedSharedMap(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	shared := filepath.Join(s.Root, "shared", "counters")
	m := mustArray(t)
	if err := os.MkdirAll(filepath.Dir(shared), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(shared); err != nil {
		t.Fatal(err)
	}
	man := &Manifest{Maps: map[string]MapRecord{"counters": {ID: uint32(mapID(t, m)), Path: shared}}}
	rep, err := o.Teardown(man, os.Remove, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if !Exists(shared) || len(rep.Left) != 1 || !strings.Contains(rep.Left[0].Why, "another tool made it") {
		t.Fatalf("Teardown of an adopted shared map: exists %v, left %v", Exists(shared), rep.Left)
	}
}

func TestRemoveIfEmpty(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	if !o.RemoveIfEmpty() {
		t.Fatal("RemoveIfEmpty of an empty object did nothing")
	}
	for _, p := range []string{o.Dir, s.LockPath("fw")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after RemoveIfEmpty: %v", p, err)
		}
	}

	o = mustOpen(t, s, "fw")
	if err := o.Pin(Maps, o.Path(Maps, "m"), mustArray(t)); err != nil {
		t.Fatal(err)
	}
	if o.RemoveIfEmpty() {
		t.Fatal("RemoveIfEmpty removed an object with a pin")
	}
	if !Exists(o.Path(Maps, "m")) || !Exists(s.LockPath("fw")) {
		t.Fatal("RemoveIfEmpty of a non-empty object removed something")
	}
}

// attachXDP attaches prog to interface ifindex in ns (generic mode). The
// caller closes the link: a pinned one stays attached only while its pin
// or an fd holds it, which is what these tests look at.
func attachXDP(t *testing.T, ns *testutil.Netns, prog *ebpf.Program, ifindex int) link.Link {
	t.Helper()
	var l link.Link
	if err := ns.Do(func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
		return err
	}); err != nil {
		t.Fatalf("attach xdp: %v", err)
	}
	return l
}

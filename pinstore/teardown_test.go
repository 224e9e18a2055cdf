package pinstore

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
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

// Remove takes away everything of the object: the link pin (which detaches
// the program), programs, maps, a map pinned outside the object's directory
// that the manifest records, the directory, the manifest and the lock.
func TestRemove(t *testing.T) {
	s := mustStore(t)
	ns := testutil.MustNetns(t, "pinstore")
	veth, _ := testutil.MustVethPair(t, ns, ns)

	o, err := s.Open("fw")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	spec := mustSpec(t, "dropfilter")
	shared := filepath.Join(s.Root, "shared", "drop_count")

	// Install, as a supervisor would, then let go of every fd: what stays
	// is only what is pinned.
	var linkID link.ID
	var progIDs []ebpf.ProgramID
	var mapIDs []ebpf.MapID
	func() {
		man := &Manifest{Maps: map[string]MapRecord{}}
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
			man.Maps[name] = MapRecord{ID: uint32(mapID(t, r.Map)), Path: r.Path}
			mapIDs = append(mapIDs, mapID(t, r.Map))
		}
		progs, err := o.AdoptOrLoadPrograms(spec, maps, ebpf.ProgramOptions{}, Adoption{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range progs {
			defer r.close()
			if err := o.Pin(Programs, r.Path, r.Program); err != nil {
				t.Fatal(err)
			}
			progIDs = append(progIDs, progID(t, r.Program))
		}
		var l link.Link
		err = ns.Do(func() (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: progs["xdp_drop"].Program, Interface: veth.Index, Flags: link.XDPGenericMode})
			return err
		})
		if err != nil {
			t.Fatalf("attach xdp: %v", err)
		}
		defer l.Close()
		if err := o.Pin(Links, o.Path(Links, "xdp_drop"), l); err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		linkID = info.ID
		if err := o.WriteManifest(man); err != nil {
			t.Fatal(err)
		}
	}()
	if xdpProgOn(t, ns, veth.Name) == 0 {
		t.Fatal("no XDP program on the interface after install")
	}

	if err := o.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, p := range []string{o.Dir, shared, s.ManifestPath("fw"), s.LockPath("fw")} {
		if Exists(p) {
			t.Errorf("%s exists after Remove", p)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "the XDP program to leave the interface", func() bool {
		return xdpProgOn(t, ns, veth.Name) == 0
	})
	testutil.WaitFor(t, 5*time.Second, "the link, programs and maps to be released", func() bool {
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
	})
	// The lock is gone with the object: it can be opened afresh.
	again := mustOpen(t, s, "fw")
	if err := again.Remove(); err != nil {
		t.Fatal(err)
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

package crashtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// foreignCounter loads counter.bpf.o's count_packets (an XDP program that
// passes everything), as another tool would, and returns it with its tag.
func foreignCounter(t *testing.T) (*ebpf.Program, string) {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject("counter"))
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load counter: %v", err)
	}
	defer coll.Close()
	p := coll.DetachProgram("count_packets")
	t.Cleanup(func() { p.Close() })
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	return p, info.Tag
}

// attachXDP attaches prog to ifname in ns with an XDP link and pins the link.
func attachXDP(t *testing.T, ns *testutil.Netns, ifname string, prog *ebpf.Program, pin string) uint32 {
	t.Helper()
	var l link.Link
	err := ns.Do(func() error {
		iface, err := e2e.IfIndex(ifname)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface})
		return err
	})
	if err != nil {
		t.Fatalf("attach XDP to %s: %v", ifname, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := l.Pin(pin); err != nil {
		t.Fatal(err)
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return uint32(info.ID)
}

func pinObject(t *testing.T, obj interface{ Pin(string) error }, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := obj.Pin(path); err != nil {
		t.Fatalf("pin %s: %v", path, err)
	}
}

// runExpectFailure runs bpfsup and expects it to stop with an error at once.
func (r *rig) runExpectFailure(t *testing.T, extra ...string) string {
	t.Helper()
	p := r.start(t, nil, extra...)
	if code := exitCode(t, p, 20*time.Second); code == 0 || diedOfSIGKILL(p) {
		t.Fatalf("bpfsup exited with %v, want an error:\n%s", p.Cmd.ProcessState, p.Output())
	}
	if strings.Contains(p.Output(), "child started") {
		t.Fatalf("bpfsup started its child:\n%s", p.Output())
	}
	return p.Output()
}

// TestForeignProgramAndLink: another tool pinned its own program and an XDP
// link running it at bpfsup's paths, on bpfsup's hook. bpfsup refuses to
// start, naming the pins and both programs, and changes nothing; with --force
// it swaps its program in behind the link, and the hook never goes empty.
func TestForeignProgramAndLink(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	prog, tag := foreignCounter(t)
	progPin := r.pinPath("programs", "xdp_drop")
	linkPin := r.pinPath("links", "xdp_drop")
	pinObject(t, prog, progPin)
	linkID := attachXDP(t, n.nsB, n.ifB.Name, prog, linkPin)
	foreignID := uint32(e2e.ProgramID(t, prog))
	s := n.startSampler(t, r.linkPins()...)
	testutil.WaitFor(t, 5*time.Second, "the foreign program on the hook", func() bool { return n.progID(t) == foreignID })
	r.seedDropPorts(t)

	out := r.runExpectFailure(t)
	e2e.WantAll(t, out, "foreign pin", "--force", progPin, linkPin, fmt.Sprintf("program id %d", foreignID),
		`"count_packets"`, "tag "+tag, "xdp_drop", fmt.Sprintf("link id %d", linkID))
	if got := n.progID(t); got != foreignID {
		t.Errorf("after the refusal %s runs program %d, not the foreign %d", n.ifB.Name, got, foreignID)
	}
	p, err := ebpf.LoadPinnedProgram(progPin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id := uint32(e2e.ProgramID(t, p)); id != foreignID {
		t.Errorf("after the refusal %s holds program %d, not the foreign %d", progPin, id, foreignID)
	}
	p.Close()

	sup := r.startReady(t, "--force")
	st := r.checkConverged(t)
	e2e.WantAll(t, sup.Output(), "replacing foreign pin", progPin, linkPin)
	if st.link != linkID {
		t.Errorf("link is %d, want the foreign link %d with bpfsup's program swapped in", st.link, linkID)
	}
	mark := n.traffic.seq.Load()
	n.traffic.waitPassing(t)
	if got := n.traffic.dropMax.Load(); got > mark {
		t.Errorf("datagram %d to the dropped port arrived after bpfsup took over (from %d)", got, mark)
	}
	s.halt()
	if s.empties > 0 || !s.latched {
		t.Errorf("the hook had no program in %d of %d samples (latched: %v)", s.empties, s.samples, s.latched)
	}
	stop(t, sup)
}

// TestForeignPins: pins bpfsup did not make, of the wrong kind or
// incompatible, at its paths. Each stops bpfsup with an error naming the pin
// and what it holds; --force replaces it and logs what it replaced.
func TestForeignPins(t *testing.T) {
	n := newNetRig(t)
	for _, tt := range []struct {
		name  string
		place func(t *testing.T, r *rig) string // returns the pin
		words []string
		seed  bool
	}{
		{
			name: "map-where-a-program-goes", seed: true,
			place: func(t *testing.T, r *rig) string {
				m := newArray(t)
				path := r.pinPath("programs", "xdp_drop")
				pinObject(t, m, path)
				return path
			},
			words: []string{"holds map id", "bpfsup pins a program there"},
		},
		{
			name: "program-where-a-map-goes", seed: true,
			place: func(t *testing.T, r *rig) string {
				p, _ := foreignCounter(t)
				path := r.pinPath("maps", "drop_count")
				pinObject(t, p, path)
				return path
			},
			words: []string{"holds program id", `"count_packets"`, "bpfsup pins a map there"},
		},
		{
			name: "map-where-a-link-goes", seed: true,
			place: func(t *testing.T, r *rig) string {
				path := r.pinPath("links", "xdp_drop")
				pinObject(t, newArray(t), path)
				return path
			},
			words: []string{"holds map id", "bpfsup pins a link there"},
		},
		{
			name: "incompatible-map",
			place: func(t *testing.T, r *rig) string {
				spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject("dropfilter_bigmap"))
				if err != nil {
					t.Fatal(err)
				}
				ms := spec.Maps["drop_ports"].Copy()
				ms.Pinning = ebpf.PinNone
				m, err := ebpf.NewMap(ms)
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				path := r.pinPath("maps", "drop_ports")
				pinObject(t, m, path)
				return path
			},
			words: []string{"holds map id", "max entries 128", "incompatible", "MaxEntries"},
		},
		{
			name: "link-on-another-interface", seed: true,
			place: func(t *testing.T, r *rig) string {
				// Another interface of the same namespace: hooks tell
				// interfaces apart by ifindex, which is only unique within
				// a namespace.
				p, _ := foreignCounter(t)
				other, _ := testutil.MustVethPair(t, r.nsB, r.nsB)
				path := r.pinPath("links", "xdp_drop")
				attachXDP(t, r.nsB, other.Name, p, path)
				return path
			},
			words: []string{"holds link id", `"count_packets"`, "its program is not one bpfsup installed"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, n)
			if tt.seed {
				r.seedDropPorts(t)
			}
			pin := tt.place(t, r)
			out := r.runExpectFailure(t)
			e2e.WantAll(t, out, append([]string{"foreign pin", "--force", pin}, tt.words...)...)
			if !pinstore.Exists(pin) {
				t.Errorf("%s is gone after the refusal", pin)
			}
			if got := n.progID(t); got != 0 {
				t.Errorf("after the refusal %s runs XDP program %d", n.ifB.Name, got)
			}
			sup := r.startReady(t, "--force")
			r.checkConverged(t)
			e2e.WantAll(t, sup.Output(), "replacing foreign pin", pin)
			stop(t, sup)
		})
	}
}

func newArray(t *testing.T) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "foreign", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestForeignPinUnderUnconfiguredName: a program pinned among bpfsup's
// programs under a name the object does not have is not bpfsup's to remove
// as stale: it is left, with a warning, and --force leaves it too (it
// replaces foreign pins only where bpfsup's own go).
func TestForeignPinUnderUnconfiguredName(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	prog, _ := foreignCounter(t)
	path := r.pinPath("programs", "somebody_elses")
	pinObject(t, prog, path)

	for _, flags := range [][]string{nil, {"--force"}} {
		sup := r.startReady(t, flags...)
		e2e.WantAll(t, sup.Output(), "leaving a pin bpfsup did not make", path)
		if !pinstore.Exists(path) {
			t.Fatalf("%s was removed (flags %v)", path, flags)
		}
		stop(t, sup)
	}
}

// TestForeignMapOfTheSameShape: another tool pinned a map exactly like the
// object's, with contents of its own, where bpfsup pins its map. bpfsup does
// not adopt it, at a start or at a reload (someone swapped the pin under a
// running supervisor): it refuses, naming the map, and changes nothing;
// --force replaces it with a new map.
func TestForeignMapOfTheSameShape(t *testing.T) {
	n := newNetRig(t)
	foreignDropPorts := func(t *testing.T) *ebpf.Map {
		spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(v1))
		if err != nil {
			t.Fatal(err)
		}
		ms := spec.Maps["drop_ports"].Copy()
		ms.Pinning = ebpf.PinNone
		m, err := ebpf.NewMap(ms)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		if err := m.Put(uint16(4242), uint8(1)); err != nil {
			t.Fatal(err)
		}
		return m
	}
	t.Run("start", func(t *testing.T) {
		r := newRig(t, n)
		m := foreignDropPorts(t)
		path := r.pinPath("maps", "drop_ports")
		pinObject(t, m, path)
		out := r.runExpectFailure(t)
		e2e.WantAll(t, out, "foreign pin", "--force", path, fmt.Sprintf("map id %d", e2e.MapID(t, m)), "made it")
		if got := e2e.PinnedMapID(t, path); got != e2e.MapID(t, m) {
			t.Errorf("after the refusal %s holds map %d, want the foreign %d", path, got, e2e.MapID(t, m))
		}
		sup := r.startReady(t, "--force")
		e2e.WantAll(t, sup.Output(), "replacing foreign pin", path)
		if got := e2e.PinnedMapID(t, path); got == e2e.MapID(t, m) {
			t.Errorf("with --force, %s still holds the foreign map %d", path, got)
		}
		stop(t, sup)
	})
	t.Run("reload", func(t *testing.T) {
		r := newRig(t, n)
		r.seedDropPorts(t)
		sup := r.startReady(t)
		st := r.checkConverged(t)
		m := foreignDropPorts(t)
		path := r.pinPath("maps", "drop_ports")
		remove(t, path)
		pinObject(t, m, path)
		out, code := r.env.Run(t, "reload")
		if code == 0 || !strings.Contains(out, "foreign pin") || !strings.Contains(out, path) {
			t.Errorf("bpfsup reload over a foreign map of the same shape: exit %d, want it refused naming %s:\n%s", code, path, out)
		}
		if got := e2e.PinnedMapID(t, path); got != e2e.MapID(t, m) {
			t.Errorf("after the refused reload %s holds map %d, want the foreign %d left alone", path, got, e2e.MapID(t, m))
		}
		if got := r.progID(t); got != st.progs["xdp_drop"] {
			t.Errorf("after the refused reload %s runs program %d, want %d", r.ifB.Name, got, st.progs["xdp_drop"])
		}
		n.traffic.waitPassing(t)
		stop(t, sup)
	})
}

package hooks

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// shownFilter is a BPF filter as iproute2's tc lists it: the oracle the tc
// hook's tests check against, independent of the hook's own netlink code.
type shownFilter struct {
	pref   int
	handle uint32
	name   string
	progID ebpf.ProgramID
}

var tcShowLine = regexp.MustCompile(`pref (\d+) bpf chain \d+ handle (0x[0-9a-f]+) (\S+).* id (\d+)`)

// tcShown lists the BPF filters on one direction of an interface in ns.
func tcShown(tb testing.TB, ns *testutil.Netns, iface, dir string) []shownFilter {
	tb.Helper()
	out, err := exec.Command("tc", "-n", ns.Name, "filter", "show", "dev", iface, dir).CombinedOutput()
	if err != nil {
		tb.Fatalf("tc filter show dev %s %s: %v: %s", iface, dir, err, out)
	}
	var fs []shownFilter
	for _, line := range strings.Split(string(out), "\n") {
		m := tcShowLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		pref, _ := strconv.Atoi(m[1])
		handle, _ := strconv.ParseUint(m[2], 0, 32)
		id, _ := strconv.ParseUint(m[4], 10, 32)
		fs = append(fs, shownFilter{pref: pref, handle: uint32(handle), name: m[3], progID: ebpf.ProgramID(id)})
	}
	return fs
}

// wantShown fails unless tc lists exactly the programs want (in any order)
// in bpfsup's priority.
func wantShown(tb testing.TB, ns *testutil.Netns, iface, dir string, want ...ebpf.ProgramID) []shownFilter {
	tb.Helper()
	fs := tcShown(tb, ns, iface, dir)
	got := map[ebpf.ProgramID]int{}
	for _, f := range fs {
		if f.pref != tcPriority {
			tb.Fatalf("filter %+v is not in bpfsup's priority %d", f, tcPriority)
		}
		got[f.progID]++
	}
	wantM := map[ebpf.ProgramID]int{}
	for _, id := range want {
		wantM[id]++
	}
	if len(got) != len(wantM) {
		tb.Fatalf("tc lists %+v on %s %s, want programs %v", fs, iface, dir, want)
	}
	for id, n := range wantM {
		if got[id] != n {
			tb.Fatalf("tc lists %+v on %s %s, want programs %v", fs, iface, dir, want)
		}
	}
	return fs
}

func TestTCHookLife(t *testing.T) {
	testutil.SkipWithout(t, testutil.TCClsact)
	for _, dir := range []string{"ingress", "egress"} {
		t.Run(dir, func(t *testing.T) {
			pinRoot := testutil.MustPinRoot(t)
			nsA, nsB := testutil.MustNetns(t, "tc"), testutil.MustNetns(t, "tc")
			ifA, ifB := testutil.MustVethPair(t, nsA, nsB)
			progA, maps := mustProgramWithMaps(t, "counter", "count_tc")
			progB := mustProgram(t, "dropfilter", "tc_drop")
			idA, idB := progID(t, progA), progID(t, progB)
			path := filepath.Join(pinRoot, "link")

			h := mustHook(t, "tc/"+dir+":"+ifA.Name, nsA.Path)
			if h.Mechanism() != "tc clsact filter" || !h.Updatable() {
				t.Fatalf("Mechanism() = %q, Updatable() = %v", h.Mechanism(), h.Updatable())
			}
			if c := Caveat(h); !strings.Contains(c, "not a bpf_link") {
				t.Errorf("Caveat() = %q, want it to say a filter is not a link", c)
			}
			BindPin(h, path)
			l, err := h.Attach(progA)
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			fs := wantShown(t, nsA, ifA.Name, dir, idA)
			if want := tcHandle(path); fs[0].handle != want || !strings.HasPrefix(fs[0].name, tcFilterPrefix) {
				t.Fatalf("filter %+v, want handle %#x named after bpfsup", fs[0], want)
			}
			wantState(t, h, l, Attached)
			other := map[string]string{"ingress": "egress", "egress": "ingress"}[dir]
			wantState(t, mustHook(t, "tc/"+other+":"+ifA.Name, nsA.Path), l, Elsewhere)
			wantState(t, mustHook(t, "tc/"+dir+":"+ifB.Name, nsB.Path), l, Elsewhere)
			wantState(t, mustHook(t, "xdp:"+ifA.Name, nsA.Path), l, Elsewhere)
			if info := linkInfo(t, l); info.Program != idA {
				t.Fatalf("Info().Program = %d, want %d", info.Program, idA)
			}

			// The program sees its direction's traffic.
			from, to, dst := nsB, nsA, ifA.Addr
			if dir == "egress" {
				from, to, dst = nsA, nsB, ifB.Addr
			}
			recv := testutil.StartUDPReceiver(t, to, 0)
			send := testutil.StartUDPSender(t, from, netip.AddrPortFrom(dst, uint16(recv.Port())), 200)
			recv.WaitCount(t, 5, 10*time.Second)
			send.Stop()
			var udp uint64
			if err := maps["counters"].Lookup(uint32(unix.IPPROTO_UDP), &udp); err != nil {
				t.Fatal(err)
			}
			if udp < 5 {
				t.Fatalf("the program counted %d UDP packets, the receiver got %d", udp, recv.Count())
			}

			// Pinned and closed, the filter stays; the record loads back.
			// The record's id stands for the link id a filter lacks.
			if err := l.Pin(path); err != nil {
				t.Fatalf("pin: %v", err)
			}
			recordID := linkInfo(t, l).ID
			if recordID == 0 {
				t.Fatal("a pinned attachment has no id")
			}
			if err := l.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			wantShown(t, nsA, ifA.Name, dir, idA)
			l, err = LoadPinned(path)
			if err != nil {
				t.Fatalf("load pinned: %v", err)
			}
			t.Cleanup(func() { l.Close() })
			if _, ok := l.(*tcAttachment); !ok {
				t.Fatalf("LoadPinned gave %T", l)
			}
			if got := linkInfo(t, l).ID; got != recordID {
				t.Fatalf("loaded attachment has id %d, want %d", got, recordID)
			}
			wantState(t, h, l, Attached)

			// Update, compare-and-swap: same filter, new program.
			if err := l.Update(progB, progA); err != nil {
				t.Fatalf("update %d -> %d: %v", idA, idB, err)
			}
			if fs := wantShown(t, nsA, ifA.Name, dir, idB); fs[0].handle != tcHandle(path) {
				t.Fatalf("the update moved the filter: %+v", fs)
			}
			if info := linkInfo(t, l); info.Program != idB || info.ID != recordID {
				t.Fatalf("after update: id %d program %d, want id %d (unchanged) program %d", info.ID, info.Program, recordID, idB)
			}
			if err := l.Update(progA, progA); !errors.Is(err, unix.EPERM) {
				t.Fatalf("update with a stale old program: %v, want EPERM", err)
			}
			wantShown(t, nsA, ifA.Name, dir, idB)

			// An attachment of an unbound hook takes a handle of its own, and
			// closed unpinned, it detaches, as an unpinned link does.
			h2 := mustHook(t, "tc/"+dir+":"+ifA.Name, nsA.Path)
			l2, err := h2.Attach(progA)
			if err != nil {
				t.Fatalf("second attach: %v", err)
			}
			wantShown(t, nsA, ifA.Name, dir, idB, idA)
			l2.Close()
			wantShown(t, nsA, ifA.Name, dir, idB)

			// The interface goes: defunct; an update says ENOLINK.
			if out, err := exec.Command("ip", "-n", nsA.Name, "link", "del", ifA.Name).CombinedOutput(); err != nil {
				t.Fatalf("delete %s: %v: %s", ifA.Name, err, out)
			}
			wantState(t, h, l, Defunct)
			if err := l.Update(progA, nil); !errors.Is(err, unix.ENOLINK) {
				t.Fatalf("update on a deleted interface: %v, want ENOLINK", err)
			}
			if err := CheckTarget(h.Spec()); !errors.Is(err, ErrTargetNotFound) {
				t.Fatalf("CheckTarget: %v", err)
			}

			// Back under the same name: still defunct (the filter went with
			// the old interface) until attached anew; the old attachment,
			// closed once the record names the new filter, does no harm.
			mustIP(t, "-n", nsA.Name, "link", "add", ifA.Name, "type", "veth", "peer", "name", ifA.Name+"p")
			mustIP(t, "-n", nsA.Name, "link", "set", ifA.Name, "up")
			wantState(t, h, l, Defunct)
			l3, err := h.Attach(progA)
			if err != nil {
				t.Fatalf("attach on the new interface: %v", err)
			}
			movePin(t, l3, path)
			if id := linkInfo(t, l3).ID; id == 0 || id == recordID {
				t.Fatalf("the filter attached anew has id %d, the old one %d", id, recordID)
			}
			l3.Close()
			l.Close()
			wantShown(t, nsA, ifA.Name, dir, idA)

			// Unpin detaches and removes the record.
			if err := Unpin(path); err != nil {
				t.Fatalf("unpin: %v", err)
			}
			wantShown(t, nsA, ifA.Name, dir)
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("record still pinned: %v", err)
			}
			if err := Unpin(path); err != nil {
				t.Fatalf("unpin of nothing: %v", err)
			}
		})
	}
}

// A process that attached and died before pinning the record leaves a filter
// behind: the next attach for the same pin path takes it over instead of
// adding a second one.
func TestTCHookAdoptsUnpinnedFilter(t *testing.T) {
	testutil.SkipWithout(t, testutil.TCClsact)
	pinRoot := testutil.MustPinRoot(t)
	ns := testutil.MustNetns(t, "tc")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	progA := mustProgram(t, "counter", "count_tc")
	progB := mustProgram(t, "dropfilter", "tc_drop")
	path := filepath.Join(pinRoot, "link")

	h := mustHook(t, "tc/ingress:"+ifA.Name, ns.Path)
	BindPin(h, path)
	if _, err := h.Attach(progA); err != nil { // never pinned, never closed
		t.Fatal(err)
	}
	wantShown(t, ns, ifA.Name, "ingress", progID(t, progA))

	again := mustHook(t, "tc/ingress:"+ifA.Name, ns.Path)
	BindPin(again, path)
	l, err := again.Attach(progB)
	if err != nil {
		t.Fatal(err)
	}
	wantShown(t, ns, ifA.Name, "ingress", progID(t, progB))
	if err := l.Pin(path); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := Unpin(path); err != nil {
		t.Fatal(err)
	}
	wantShown(t, ns, ifA.Name, "ingress")
}

// A filter bpfsup did not make, on the handle bpfsup would take, is left
// alone and the attach refused.
func TestTCHookLeavesForeignFilter(t *testing.T) {
	testutil.SkipWithout(t, testutil.TCClsact)
	pinRoot := testutil.MustPinRoot(t)
	ns := testutil.MustNetns(t, "tc")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	prog := mustProgram(t, "counter", "count_tc")
	path := filepath.Join(pinRoot, "link")
	err := ns.Do(func() error {
		nl, err := openRtnl()
		if err != nil {
			return err
		}
		defer nl.close()
		if err := nl.addClsact(ifA.Index); err != nil {
			return err
		}
		return nl.replaceFilter(ifA.Index, tcParent(false), tcPriority, tcHandle(path), prog.FD(), "foreign", true)
	})
	if err != nil {
		t.Fatalf("add a foreign filter: %v", err)
	}
	h := mustHook(t, "tc/ingress:"+ifA.Name, ns.Path)
	BindPin(h, path)
	if l, err := h.Attach(mustProgram(t, "dropfilter", "tc_drop")); !errors.Is(err, unix.EEXIST) {
		if err == nil {
			l.Close()
		}
		t.Fatalf("attach over a foreign filter: %v, want EEXIST", err)
	}
	fs := wantShown(t, ns, ifA.Name, "ingress", progID(t, prog))
	if fs[0].name != "foreign" {
		t.Fatalf("the foreign filter changed: %+v", fs[0])
	}
}

// Swapping the program of a filter that drops a port never lets one of that
// port's packets through: cls_bpf replaces the program under RCU.
func TestTCUpdateLeavesNoGap(t *testing.T) {
	testutil.SkipWithout(t, testutil.TCClsact)
	nsA, nsB := testutil.MustNetns(t, "tc"), testutil.MustNetns(t, "tc")
	_, ifB := testutil.MustVethPair(t, nsA, nsB)
	v1, maps := mustProgramWithMaps(t, "dropfilter", "tc_drop")
	// v2 shares v1's maps, as bpfsup's upgrade adopts them.
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject("dropfilter_v2"))
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coll.Close)
	v2 := coll.Programs["tc_drop"]

	recv := testutil.StartUDPReceiver(t, nsB, 0)
	if err := maps["drop_ports"].Put(uint16(recv.Port()), uint8(1)); err != nil {
		t.Fatal(err)
	}
	h := mustHook(t, "tc/ingress:"+ifB.Name, nsB.Path)
	l := mustAttach(t, h, v1)
	send := testutil.StartUDPSender(t, nsA, netip.AddrPortFrom(ifB.Addr, uint16(recv.Port())), 2000)
	dropped := func() uint64 {
		var n uint64
		if err := maps["drop_count"].Lookup(uint32(0), &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	testutil.WaitFor(t, 10*time.Second, "v1 to drop", func() bool { return dropped() > 0 })
	rounds := 20
	if testing.Short() {
		rounds = 6
	}
	for i := 0; i < rounds; i++ {
		next, old := v2, v1
		if i%2 == 1 {
			next, old = v1, v2
		}
		before := dropped()
		if err := l.Update(next, old); err != nil {
			t.Fatalf("swap %d: %v", i, err)
		}
		testutil.WaitFor(t, 10*time.Second, "drops after the swap", func() bool { return dropped() > before })
	}
	send.Stop()
	if n := recv.Count(); n != 0 {
		t.Fatalf("%d datagrams to the dropped port passed during %d swaps (%d sent, %d dropped)", n, rounds, send.Sent(), dropped())
	}
}

// On a kernel without tcx, a tcx hook is the tc hook standing in for it, and
// says so; on one with tcx, it is tcx.
func TestTCXFallback(t *testing.T) {
	ns := testutil.MustNetns(t, "tc")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	h := mustHook(t, "tcx/ingress:"+ifA.Name, ns.Path)
	prog := mustProgram(t, "counter", "count_tc")
	if why := testutil.Missing(t, testutil.TCX); why == "" {
		if HaveTCX() != nil || h.Mechanism() != "bpf_link tcx" || Caveat(h) != "" {
			t.Fatalf("kernel with tcx: HaveTCX() = %v, Mechanism() = %q, Caveat() = %q", HaveTCX(), h.Mechanism(), Caveat(h))
		}
		return
	} else {
		t.Log(why)
	}
	if !errors.Is(HaveTCX(), ErrNotSupported) {
		t.Fatalf("HaveTCX() = %v on a kernel without tcx", HaveTCX())
	}
	if h.Mechanism() != "tc clsact filter (fallback: no tcx)" {
		t.Fatalf("Mechanism() = %q", h.Mechanism())
	}
	if c := Caveat(h); !strings.Contains(c, "no tcx") || !strings.Contains(c, h.Spec().String()) {
		t.Fatalf("Caveat() = %q, want it to name the hook and say there is no tcx", c)
	}
	l := mustAttach(t, h, prog)
	wantShown(t, ns, ifA.Name, "ingress", progID(t, prog))
	wantState(t, h, l, Attached)
}

func TestLoadPinnedKinds(t *testing.T) {
	testutil.RequireRoot(t)
	pinRoot := testutil.MustPinRoot(t)
	if _, err := LoadPinned(filepath.Join(pinRoot, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadPinned of nothing: %v, want ErrNotExist", err)
	}
	// A map that is not a record is refused, not taken for a link.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mapPath := filepath.Join(pinRoot, "map")
	if err := m.Pin(mapPath); err != nil {
		t.Fatal(err)
	}
	if l, err := LoadPinned(mapPath); err == nil {
		l.Close()
		t.Fatal("LoadPinned took a plain map for a link")
	}
	// A real link comes back as the link.
	ns := testutil.MustNetns(t, "tc")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	xl := mustAttach(t, mustHook(t, "xdp:"+ifA.Name, ns.Path), mustProgram(t, "counter", "count_packets"))
	linkPath := filepath.Join(pinRoot, "xdp")
	if err := xl.Pin(linkPath); err != nil {
		t.Fatal(err)
	}
	l, err := LoadPinned(linkPath)
	if err != nil {
		t.Fatalf("LoadPinned of an XDP link: %v", err)
	}
	if got, want := linkInfo(t, l).ID, linkInfo(t, xl).ID; got != want {
		t.Fatalf("loaded link %d, want %d", got, want)
	}
	l.Close()
	if err := Unpin(linkPath); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(linkPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("link still pinned: %v", err)
	}
}

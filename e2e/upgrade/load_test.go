package upgrade

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/bpf"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// reloadsUnderLoad is how many upgrades the test makes under load.
const reloadsUnderLoad = 50

// TestUpgradeUnderLoad upgrades dropfilter between v1 and v2 fifty times,
// by `bpfsup reload` and SIGHUP in turn, while a flood of UDP datagrams to
// a port both versions drop crosses an XDP link and a tcx link: not one of
// them may arrive, the drop counter never goes down, the maps and their
// entries stay, every upgrade swaps in a new program behind the same links. The same flood through a filter
// upgraded naively (detach, then attach the new version) does leak, which
// shows that the flood is dense enough to see a gap.
func TestUpgradeUnderLoad(t *testing.T) {
	e := testutil.MustEnv(t)
	nsS, nsR, nsN := testutil.MustNetns(t, "upg-send"), testutil.MustNetns(t, "upg-recv"), testutil.MustNetns(t, "upg-naive")
	_, x := testutil.MustVethPair(t, nsS, nsR)  // XDP on x
	_, tc := testutil.MustVethPair(t, nsS, nsR) // tcx ingress on tc
	_, n := testutil.MustVethPair(t, nsS, nsN)  // the naive upgrade's XDP on n

	dir := t.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	cfg := filepath.Join(dir, "bpfsup.toml")
	config{object: obj, netns: nsR.Path, attach: []attachment{
		{"xdp_drop", "xdp:" + x.Name}, {"tc_drop", "tcx/ingress:" + tc.Name},
	}}.write(t, cfg)
	p := startBpfsup(t, e, "", "-c", cfg, "--on-upgrade", "none")
	childPID := waitChildren(t, p, 1)
	for _, port := range []uint16{portDropped, 5000, 5001} {
		addDropPort(t, e, port)
	}
	mapsBefore := takeState(t, e)

	dropped := testutil.StartUDPReceiver(t, nsR, portDropped)
	v2only := testutil.StartUDPReceiver(t, nsR, portV2)
	passX, passT := testutil.StartUDPReceiver(t, nsR, portPassX), testutil.StartUDPReceiver(t, nsR, portPassT)
	ctlX := testutil.StartUDPSender(t, nsS, netip.AddrPortFrom(x.Addr, portPassX), 2000)
	ctlT := testutil.StartUDPSender(t, nsS, netip.AddrPortFrom(tc.Addr, portPassT), 2000)
	passX.WaitCount(t, 10, 5*time.Second)
	passT.WaitCount(t, 10, 5*time.Second)

	st := status(t, e, "dropfilter")
	gen := st.Generation
	xdpLink, _ := linkIDs(t, e, "xdp_drop")
	tcLink, _ := linkIDs(t, e, "tc_drop")

	// The versions really differ: v2 drops portV2 on both hooks, v1 does not.
	deploy(t, obj, "dropfilter_v2")
	e2e.MustRun(t, e, "reload")
	gen++
	before := dropCount(t, e)
	sendN(t, nsS, netip.AddrPortFrom(x.Addr, portV2), 20)
	sendN(t, nsS, netip.AddrPortFrom(tc.Addr, portV2), 20)
	testutil.WaitFor(t, 5*time.Second, "v2 to drop 40 datagrams to port 9999", func() bool { return dropCount(t, e) == before+40 })
	deploy(t, obj, "dropfilter")
	e2e.MustRun(t, e, "reload")
	gen++
	sendN(t, nsS, netip.AddrPortFrom(x.Addr, portV2), 20)
	sendN(t, nsS, netip.AddrPortFrom(tc.Addr, portV2), 20)
	v2only.WaitCount(t, 40, 5*time.Second)
	if got := dropCount(t, e); got != before+40 {
		t.Fatalf("v1 dropped datagrams to port 9999: drop_count %d, want %d", got, before+40)
	}

	// The flood, and the upgrades under it.
	fl := startFlood(t, nsS, netip.AddrPortFrom(x.Addr, portDropped), netip.AddrPortFrom(tc.Addr, portDropped))
	base := dropCount(t, e)
	testutil.WaitFor(t, 5*time.Second, "the flood to be dropped", func() bool { return dropCount(t, e) > base+1000 })

	lastCount := dropCount(t, e)
	_, xdpProg := linkIDs(t, e, "xdp_drop")
	_, tcProg := linkIDs(t, e, "tc_drop")
	start := time.Now()
	for i := 0; i < reloadsUnderLoad; i++ {
		version := "dropfilter_v2"
		if i%2 == 1 {
			version = "dropfilter"
		}
		deploy(t, obj, version)
		gen++
		if i%2 == 0 {
			out := e2e.MustRun(t, e, "reload")

			if !strings.Contains(out, "swapped in place: tc_drop, xdp_drop") {
				t.Fatalf("reload %d: the links were not swapped in place:\n%s", i, out)
			}
		} else {
			// The manifest names the new generation before the swap
			// (write-ahead); the log says when the reload is done: the
			// two reloads before the loop and one per iteration so far.
			p.Kill(syscall.SIGHUP)
			// Generous: under a flood in a VM of `make kernels` (software
			// emulation) a reload takes seconds.
			testutil.WaitFor(t, 60*time.Second, fmt.Sprintf("SIGHUP reload %d to end", i), func() bool {
				return countLines(p, "reloaded") >= 2+i+1
			})
		}
		st := status(t, e, "dropfilter")
		if st.Generation != gen {
			t.Fatalf("reload %d: generation %d, want %d", i, st.Generation, gen)
		}
		for _, l := range st.Links {
			if want := map[string]uint32{"xdp_drop": uint32(xdpLink), "tc_drop": uint32(tcLink)}[l.Name]; l.ID != want {
				t.Fatalf("reload %d: link %s has id %d, was %d", i, l.Name, l.ID, want)
			}
		}
		xl, xp := linkIDs(t, e, "xdp_drop")
		tl, tp := linkIDs(t, e, "tc_drop")
		if xl != xdpLink || tl != tcLink {
			t.Fatalf("reload %d: link ids %d, %d; were %d, %d", i, xl, tl, xdpLink, tcLink)
		}
		if xp == xdpProg || tp == tcProg {
			t.Fatalf("reload %d: program ids %d, %d did not change", i, xp, tp)
		}
		if xp != e2e.PinnedProgramID(t, pinPath(e, "programs", "xdp_drop")) || tp != e2e.PinnedProgramID(t, pinPath(e, "programs", "tc_drop")) {
			t.Fatalf("reload %d: the links run programs %d, %d, not the pinned ones", i, xp, tp)
		}
		// The replaced programs are gone, not kept alive by bpfsup.
		for _, id := range []ebpf.ProgramID{xdpProg, tcProg} {
			testutil.WaitFor(t, 2*time.Second, fmt.Sprintf("replaced program %d to be freed", id), func() bool { return e2e.ProgramGone(id) })
		}
		xdpProg, tcProg = xp, tp
		c := dropCount(t, e)
		if c < lastCount {
			t.Fatalf("reload %d: drop_count went down from %d to %d", i, lastCount, c)
		}
		lastCount = c
		if got := dropped.Count(); got != 0 {
			t.Fatalf("reload %d: %d datagrams to the dropped port got through", i, got)
		}
	}
	took := time.Since(start)
	fl.Stop()
	drain(t, ctlX, passX)
	drain(t, ctlT, passT)
	if got := dropped.Count(); got != 0 {
		t.Fatalf("%d datagrams to the dropped port got through during %d upgrades", got, reloadsUnderLoad)
	}
	if final := dropCount(t, e); final < lastCount {
		t.Fatalf("drop_count went down from %d to %d", lastCount, final)
	}
	mapsAfter := takeState(t, e)
	if !mapsEqual(mapsAfter.maps, mapsBefore.maps) || !slices.Equal(mapsAfter.ports, mapsBefore.ports) {
		t.Fatalf("after the upgrades: maps %v, drop_ports %v; were %v, %v", mapsAfter.maps, mapsAfter.ports, mapsBefore.maps, mapsBefore.ports)
	}
	if pids := e2e.PIDs(childLine, p.Output()); len(pids) != 1 || pids[0] != childPID {
		t.Fatalf("the child was restarted (children %v) although --on-upgrade none", pids)
	}
	t.Logf("%d upgrades in %s under a flood of %d datagrams: none leaked, drop_count %d -> %d",
		reloadsUnderLoad, took.Round(time.Millisecond), fl.sent.Load(), base, lastCount)

	leaked, cycles := naiveUpgrade(t, nsS, nsN, n)
	if leaked == 0 {
		t.Fatalf("the naive upgrade (detach, attach) leaked nothing in %d cycles: the flood is too sparse to see a gap", cycles)
	}
	t.Logf("naive detach-and-attach: %d datagrams leaked in %d upgrades", leaked, cycles)
}

// naiveUpgradeCycles bounds the naive upgrade's attempts to leak.
const naiveUpgradeCycles = 2000

// naiveUpgrade loads v1 and v2 by hand with cilium/ebpf onto n (in nsN) and
// upgrades between them by closing the link and attaching the other, under
// the same flood, until a datagram to the dropped port leaks. It returns how
// many leaked and after how many upgrades.
func naiveUpgrade(t *testing.T, nsS, nsN *testutil.Netns, n testutil.Veth) (uint64, int) {
	t.Helper()
	var progs [2]*ebpf.Program
	for i, name := range []string{"dropfilter.bpf.o", "dropfilter_v2.bpf.o"} {
		spec, err := ebpf.LoadCollectionSpecFromReader(strings.NewReader(string(bpf.Object(name))))
		if err != nil {
			t.Fatal(err)
		}
		coll, err := ebpf.NewCollection(spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := coll.Maps["drop_ports"].Put(uint16(portDropped), uint8(1)); err != nil {
			t.Fatal(err)
		}
		progs[i] = coll.DetachProgram("xdp_drop")
		coll.Close()
		t.Cleanup(func() { progs[i].Close() })
	}
	attach := func(prog *ebpf.Program) link.Link {
		var l link.Link
		err := nsN.Do(func() (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: n.Index})
			return err
		})
		if err != nil {
			t.Fatalf("attach naive xdp: %v", err)
		}
		return l
	}
	recv := testutil.StartUDPReceiver(t, nsN, portDropped)
	l := attach(progs[0])
	defer func() { l.Close() }()
	fl := startFlood(t, nsS, netip.AddrPortFrom(n.Addr, portDropped))
	defer fl.Stop()

	cycles := 0
	for ; cycles < naiveUpgradeCycles && recv.Count() == 0; cycles++ {
		l.Close()
		l = attach(progs[(cycles+1)%2])
	}
	// What leaked in the last gap may still be on its way.
	testutil.Poll(2*time.Second, func() bool { return recv.Count() != 0 })
	return recv.Count(), cycles
}

package skeleton

import (
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// dropRig is a UDP stream to two ports across a veth pair: one port that
// dropfilter.bpf.o's xdp_drop on the receiving end must drop, one it must let
// through.
type dropRig struct {
	a, b             *testutil.Netns
	ifB              testutil.Veth
	dropped, allowed *testutil.UDPReceiver
	toDropped        *testutil.UDPSender
	toAllowed        *testutil.UDPSender
}

// datagrams per second to each port
const dropRate = 1000

func newDropRig(t *testing.T) *dropRig {
	t.Helper()
	r := &dropRig{a: testutil.MustNetns(t, "drop-a"), b: testutil.MustNetns(t, "drop-b")}
	_, r.ifB = testutil.MustVethPair(t, r.a, r.b)
	r.dropped = testutil.StartUDPReceiver(t, r.b, 0)
	r.allowed = testutil.StartUDPReceiver(t, r.b, 0)
	return r
}

// startTraffic starts both streams; call it once the drop port is in the map.
func (r *dropRig) startTraffic(t *testing.T) {
	t.Helper()
	r.toDropped = testutil.StartUDPSender(t, r.a, netip.AddrPortFrom(r.ifB.Addr, uint16(r.dropped.Port())), dropRate)
	r.toAllowed = testutil.StartUDPSender(t, r.a, netip.AddrPortFrom(r.ifB.Addr, uint16(r.allowed.Port())), dropRate)
}

// waitAllowed waits until n more datagrams reached the allowed port: the path
// is alive, and time enough passed for n to be sent to the dropped port too.
func (r *dropRig) waitAllowed(t *testing.T, n uint64) {
	t.Helper()
	waitRising(t, "datagrams to the allowed port", n, r.allowed.Count)
}

// putDropPort adds the dropped receiver's port to the drop_ports map m.
func (r *dropRig) putDropPort(t *testing.T, m *ebpf.Map) {
	t.Helper()
	if err := m.Put(uint16(r.dropped.Port()), uint8(1)); err != nil {
		t.Fatalf("put port %d into drop_ports: %v", r.dropped.Port(), err)
	}
}

// restarts is how often the child and bpfsup are each killed and restarted.
const restarts = 20

// While the child and bpfsup are each killed with SIGKILL and started again
// 20 times, not one datagram to the dropped port reaches its receiver, and
// datagrams to the allowed port keep arriving. TestDropUnpinnedLoaderLeaks
// shows that the same traffic, watched the same way, does leak when the
// loader does not pin.
func TestDropSurvivesRestarts(t *testing.T) {
	r := newDropRig(t)
	env := testutil.MustEnv(t)
	cenv, argv := selfChild(t, "drop_ports")
	args := append([]string{"--netns", r.b.Path, "-o", testutil.BPFObject("dropfilter"),
		"-a", "xdp_drop@xdp:" + r.ifB.Name, "--restart", "always", "--restart-delay", "10ms", "--start-limit", "0"}, argv...)
	sup := startRun(t, env, cenv, args...)
	child := waitChild(t, sup, 1)

	dropPorts, err := ebpf.LoadPinnedMap(env.PinRoot+"/dropfilter/maps/drop_ports", nil)
	if err != nil {
		t.Fatalf("open pinned drop_ports: %v", err)
	}
	r.putDropPort(t, dropPorts)
	dropPorts.Close()
	r.startTraffic(t)
	r.waitAllowed(t, 50)
	if c := mapValue(t, env, "dropfilter", "drop_count", 0); c == 0 {
		t.Fatal("xdp_drop dropped nothing while the stream to the dropped port ran")
	}

	leaked := func(when string) {
		t.Helper()
		if n := r.dropped.Count(); n != 0 {
			t.Fatalf("%s: %d datagrams to the dropped port %d reached the receiver", when, n, r.dropped.Port())
		}
	}
	leaked("after the first start")
	for i := 1; i <= restarts; i++ {
		// The child: killed, and restarted by bpfsup. Count the children
		// before the kill: the next one may report before we look again.
		started := len(childLines(sup.Output()))
		if err := syscall.Kill(child.pid, syscall.SIGKILL); err != nil {
			t.Fatalf("round %d: kill child: %v", i, err)
		}
		testutil.WaitProcGone(t, child.pid, waitTimeout)
		r.waitAllowed(t, 20)
		child = waitChild(t, sup, started+1)
		leaked("after the child was killed")

		// bpfsup: killed (its child dies with it), and started again.
		sup.Kill(syscall.SIGKILL)
		<-sup.Done()
		testutil.WaitProcGone(t, child.pid, waitTimeout)
		r.waitAllowed(t, 20)
		sup = startRun(t, env, cenv, args...)
		child = waitChild(t, sup, 1)
		if adopted, loaded := e2e.InstallCounts(t, sup.Output(), "dropfilter"); loaded != 0 || adopted != 2 {
			t.Fatalf("round %d: bpfsup adopted %d and loaded %d programs, want 2 and 0", i, adopted, loaded)
		}
		leaked("after bpfsup was killed")
	}
	// Anything that leaked during the last restart is queued ahead of the
	// next 50 datagrams to the allowed port.
	r.waitAllowed(t, 50)
	leaked("at the end")
	r.toDropped.Stop()
	r.toAllowed.Stop()
	t.Logf("%d datagrams to the dropped port, %d dropped by xdp_drop, 0 received; %d sent to the allowed port, %d received",
		r.toDropped.Sent(), mapValue(t, env, "dropfilter", "drop_count", 0), r.toAllowed.Sent(), r.allowed.Count())
}

// unpinnedRestarts is how often the loader that does not pin restarts: once
// would do.
const unpinnedRestarts = 3

// A loader that does not pin: load, attach with a link, exit (here: close
// everything, which is what exiting does). Watched as TestDropSurvivesRestarts
// watches bpfsup, datagrams to the dropped port leak while it is gone.
func TestDropUnpinnedLoaderLeaks(t *testing.T) {
	testutil.RequireRoot(t)
	r := newDropRig(t)
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject("dropfilter"))
	if err != nil {
		t.Fatal(err)
	}
	load := func() (*ebpf.Collection, link.Link) {
		t.Helper()
		coll, err := ebpf.NewCollection(spec)
		if err != nil {
			t.Fatalf("load dropfilter: %v", err)
		}
		r.putDropPort(t, coll.Maps["drop_ports"])
		var l link.Link
		err = r.b.Do(func() (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: coll.Programs["xdp_drop"], Interface: r.ifB.Index})
			return err
		})
		if err != nil {
			coll.Close()
			t.Fatalf("attach xdp_drop: %v", err)
		}
		return coll, l
	}

	coll, l := load()
	r.startTraffic(t)
	r.waitAllowed(t, 50)
	if n := r.dropped.Count(); n != 0 {
		l.Close()
		coll.Close()
		t.Fatalf("%d datagrams leaked while the loader was running", n)
	}
	for i := 0; i < unpinnedRestarts; i++ {
		l.Close() // the loader exits
		coll.Close()
		r.waitAllowed(t, 20)
		coll, l = load()
		r.waitAllowed(t, 20)
	}
	l.Close()
	coll.Close()
	if n := r.dropped.Count(); n == 0 {
		t.Fatalf("no datagram to the dropped port leaked across %d restarts of a loader that does not pin: the leak check cannot fail", unpinnedRestarts)
	} else {
		t.Logf("%d datagrams to the dropped port leaked across %d restarts of a loader that does not pin", n, unpinnedRestarts)
	}
}

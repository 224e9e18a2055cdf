package skeleton

import (
	"net/netip"
	"syscall"
	"testing"

	"github.com/bpfsup/bpfsup/control"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// counterRig is counter.bpf.o's count_packets on the receiving end of a veth
// pair, under a bpfsup whose child is the test binary, with a UDP stream
// flowing across the pair.
type counterRig struct {
	env   *testutil.Env
	ifB   testutil.Veth
	recv  *testutil.UDPReceiver
	send  *testutil.UDPSender
	args  []string // bpfsup run's arguments
	cenv  []string // the child's environment
	sup   *testutil.Proc
	child childLine
}

func newCounterRig(t *testing.T) *counterRig {
	t.Helper()
	r := &counterRig{env: testutil.MustEnv(t)}
	a, b := testutil.MustNetns(t, "skel-a"), testutil.MustNetns(t, "skel-b")
	_, r.ifB = testutil.MustVethPair(t, a, b)
	r.recv = testutil.StartUDPReceiver(t, b, 0)
	r.send = testutil.StartUDPSender(t, a, netip.AddrPortFrom(r.ifB.Addr, uint16(r.recv.Port())), 1000)

	var argv []string
	r.cenv, argv = selfChild(t, "counters")
	r.args = append([]string{"--netns", b.Path, "-o", testutil.BPFObject("counter"),
		"-a", "count_packets@xdp:" + r.ifB.Name, "--restart", "always"}, argv...)
	r.start(t)
	return r
}

// start starts bpfsup and waits for its child.
func (r *counterRig) start(t *testing.T) {
	t.Helper()
	r.sup = startRun(t, r.env, r.cenv, r.args...)
	r.child = waitChild(t, r.sup, 1)
}

func (r *counterRig) udpCount(t *testing.T) func() uint64 {
	return func() uint64 { return udpCount(t, r.env) }
}

// ids are the kernel ids of what bpfsup installed for counter.bpf.o.
type ids struct {
	counters, countPackets, countTC, link uint32
}

func (r *counterRig) ids(t *testing.T) ids {
	t.Helper()
	o := objectStatus(t, r.env, "counter")
	l := e2e.FindLink(t, o, "count_packets")
	if l.State != "attached" || l.Ifindex != uint32(r.ifB.Index) || l.Hook != "xdp:"+r.ifB.Name {
		t.Fatalf("status of link count_packets: %+v, want attached to %s (ifindex %d)", l, r.ifB.Name, r.ifB.Index)
	}
	got := ids{
		counters:     e2e.FindMap(t, o, "counters").ID,
		countPackets: e2e.FindProgram(t, o, "count_packets").ID,
		countTC:      e2e.FindProgram(t, o, "count_tc").ID,
		link:         l.ID,
	}
	if l.ProgramID != got.countPackets {
		t.Fatalf("link count_packets runs program %d, status says count_packets is %d", l.ProgramID, got.countPackets)
	}
	return got
}

// A child killed with SIGKILL takes nothing with it: the XDP program stays
// attached and keeps counting, and the restarted child gets the same map.
func TestChildKilled(t *testing.T) {
	r := newCounterRig(t)
	before := r.ids(t)
	if r.child.mapID != before.counters {
		t.Fatalf("child got map id %d, status says counters is %d", r.child.mapID, before.counters)
	}
	requireAttached(t, r.ifB, before.link, before.countPackets)
	waitRising(t, "UDP count", 100, r.udpCount(t))

	if err := syscall.Kill(r.child.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill child %d: %v", r.child.pid, err)
	}
	testutil.WaitProcGone(t, r.child.pid, waitTimeout)
	requireAttached(t, r.ifB, before.link, before.countPackets)
	restartedMeanwhile := false
	waitRising(t, "UDP count after the child died", 100, func() uint64 {
		restartedMeanwhile = len(childLines(r.sup.Output())) > 1
		return udpCount(t, r.env)
	})
	if restartedMeanwhile {
		t.Log("the child was restarted before the count had grown (the link never depended on it anyway)")
	}

	second := waitChild(t, r.sup, 2)
	if second.pid == r.child.pid {
		t.Fatalf("second child has the first one's pid %d", second.pid)
	}
	if second.mapID != r.child.mapID {
		t.Fatalf("restarted child got map id %d, the first one had %d", second.mapID, r.child.mapID)
	}
	if after := r.ids(t); after != before {
		t.Fatalf("ids changed when the child died: before %+v, after %+v", before, after)
	}
	requireAttached(t, r.ifB, before.link, before.countPackets)
	waitRising(t, "UDP count with the second child", 100, r.udpCount(t))
}

// bpfsup killed with SIGKILL and started again adopts everything: the same
// programs, link and map, no program loaded anew, the counts kept. While no
// bpfsup runs at all, the program keeps counting.
func TestSupervisorKilled(t *testing.T) {
	r := newCounterRig(t)
	before := r.ids(t)
	requireAttached(t, r.ifB, before.link, before.countPackets)
	if adopted, loaded := e2e.InstallCounts(t, r.sup.Output(), "counter"); adopted != 0 || loaded != 2 {
		t.Fatalf("first install adopted %d and loaded %d programs, want 0 and 2", adopted, loaded)
	}
	waitRising(t, "UDP count", 100, r.udpCount(t))

	r.sup.Kill(syscall.SIGKILL)
	<-r.sup.Done()
	// The child dies with bpfsup (parent-death signal).
	testutil.WaitProcGone(t, r.child.pid, waitTimeout)

	o := objectStatus(t, r.env, "counter")
	if o.Supervisor != nil {
		t.Fatalf("status shows supervisor %+v after it was killed", o.Supervisor)
	}
	requireAttached(t, r.ifB, before.link, before.countPackets)
	waitRising(t, "UDP count with no bpfsup running", 100, r.udpCount(t))
	countBefore := udpCount(t, r.env)

	first, killed := r.child, r.sup.Pid()
	r.start(t)
	adopted, loaded := e2e.InstallCounts(t, r.sup.Output(), "counter")
	if adopted != 2 || loaded != 0 {
		t.Fatalf("restarted bpfsup adopted %d and loaded %d programs, want 2 and 0:\n%s", adopted, loaded, r.sup.Output())
	}
	if r.child.mapID != first.mapID {
		t.Fatalf("child of the restarted bpfsup got map id %d, the first child had %d", r.child.mapID, first.mapID)
	}
	if after := r.ids(t); after != before {
		t.Fatalf("ids changed across the restart of bpfsup: before %+v, after %+v", before, after)
	}
	requireAttached(t, r.ifB, before.link, before.countPackets)
	if c := udpCount(t, r.env); c < countBefore {
		t.Fatalf("UDP count went from %d down to %d across the restart", countBefore, c)
	}
	waitRising(t, "UDP count under the restarted bpfsup", 100, r.udpCount(t))

	// The killed supervisor's debris is gone; only the running one's is left.
	if stale := control.Socket(r.env.StateDir, killed); pinstore.Exists(stale) {
		t.Errorf("the killed supervisor's control socket %s is still there", stale)
	}
}

package order

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/bpf"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

const (
	waitTimeout = 20 * time.Second
	// datagrams per second to each port
	rate = 500
)

// rig is UDP traffic across a veth pair to three ports of the receiving
// end: two that drop filters must drop, one that must pass; and the tcx
// ingress hook of the receiving interface.
type rig struct {
	a, b             *testutil.Netns
	ifA, ifB         testutil.Veth
	drop1, drop2, ok *testutil.UDPReceiver
	senders          []*testutil.UDPSender
	// one: only drop1 is dropped, and only it gets traffic besides ok.
	one bool
}

func newRig(t *testing.T) *rig {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.SkipWithout(t, testutil.TCX)
	r := &rig{a: testutil.MustNetns(t, "order-a"), b: testutil.MustNetns(t, "order-b")}
	r.ifA, r.ifB = testutil.MustVethPair(t, r.a, r.b)
	r.drop1 = testutil.StartUDPReceiver(t, r.b, 0)
	r.drop2 = testutil.StartUDPReceiver(t, r.b, 0)
	r.ok = testutil.StartUDPReceiver(t, r.b, 0)
	return r
}

func (r *rig) startTraffic(t *testing.T) {
	t.Helper()
	rcs := []*testutil.UDPReceiver{r.drop1, r.drop2, r.ok}
	if r.one {
		rcs = []*testutil.UDPReceiver{r.drop1, r.ok}
	}
	for _, rc := range rcs {
		r.senders = append(r.senders, testutil.StartUDPSender(t, r.a, netip.AddrPortFrom(r.ifB.Addr, uint16(rc.Port())), rate))
	}
}

func (r *rig) stopTraffic() {
	for _, s := range r.senders {
		s.Stop()
	}
	r.senders = nil
}

// waitPassing waits until n more datagrams reached the port that must pass.
func (r *rig) waitPassing(t *testing.T, n uint64) {
	t.Helper()
	from := r.ok.Count()
	testutil.WaitFor(t, waitTimeout, "datagrams to the passing port", func() bool { return r.ok.Count() >= from+n })
}

// noLeak fails when a datagram to a dropped port arrived.
func (r *rig) noLeak(t *testing.T, when string) {
	t.Helper()
	if n1, n2 := r.drop1.Count(), r.drop2.Count(); n1 != 0 || n2 != 0 {
		t.Fatalf("%s: %d and %d datagrams reached the ports the two filters drop", when, n1, n2)
	}
}

// chain is what the kernel runs on the receiving interface's tcx ingress.
func (r *rig) chain(t *testing.T) hooks.Chain {
	t.Helper()
	h, err := hooks.New(hooks.Spec{Kind: "tcx", Variant: "ingress", Target: r.ifB.Name, Netns: r.b.Path})
	if err != nil {
		t.Fatal(err)
	}
	o, _ := hooks.AsOrdered(h)
	c, err := o.Chain()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *rig) links(t *testing.T) []link.ID {
	t.Helper()
	c := r.chain(t)
	ids := make([]link.ID, len(c.Entries))
	for i, e := range c.Entries {
		ids[i] = e.Link
	}
	return ids
}

// sup is one bpfsup with its own pin root and state directory, running
// dropfilter (a copy the test can upgrade in place) on the rig's hook.
type sup struct {
	env  *testutil.Env
	obj  string
	args []string
	proc *testutil.Proc
}

func newSup(t *testing.T, r *rig, place string, extra ...string) *sup {
	t.Helper()
	s := &sup{env: testutil.MustEnv(t)}
	s.obj = filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	if err := os.WriteFile(s.obj, bpf.Object("dropfilter.bpf.o"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.args = append([]string{"--netns", r.b.Path, "-o", s.obj, "-a", "tc_drop@tcx/ingress:" + r.ifB.Name + "," + place}, extra...)
	return s
}

func (s *sup) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(s.env.Bin, s.env.Args("run", append(s.args, "--", "/bin/sleep", "1000000")...)...)
	s.proc = testutil.StartProc(t, cmd)
	s.proc.WaitOutput(t, "objects installed", waitTimeout)
}

func (s *sup) kill(t *testing.T) {
	t.Helper()
	s.proc.Kill(syscall.SIGKILL)
	<-s.proc.Done()
}

func (s *sup) linkPath() string {
	return filepath.Join(s.env.PinRoot, "dropfilter", "links", "tc_drop")
}

func (s *sup) linkID(t *testing.T) link.ID {
	t.Helper()
	return e2e.PinnedLinkInfo(t, s.linkPath()).ID
}

func (s *sup) dropPort(t *testing.T, port int) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(s.env.PinRoot, "dropfilter", "maps", "drop_ports"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint16(port), uint8(1)); err != nil {
		t.Fatal(err)
	}
}

func (s *sup) dropped(t *testing.T) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(s.env.PinRoot, "dropfilter", "maps", "drop_count"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint64
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// upgrade replaces the object by dropfilter_v2, as a deploy does, and
// reloads.
func (s *sup) upgrade(t *testing.T) {
	t.Helper()
	tmp := s.obj + ".new"
	if err := os.WriteFile(tmp, bpf.Object("dropfilter_v2.bpf.o"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.obj); err != nil {
		t.Fatal(err)
	}
	e2e.MustRun(t, s.env, "reload")
}

func wantChain(t *testing.T, r *rig, when string, want ...link.ID) {
	t.Helper()
	var got []link.ID
	ok := testutil.Poll(waitTimeout, func() bool {
		got = r.links(t)
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if got[i] != want[i] {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("%s: chain %v, want %v", when, got, want)
	}
	t.Logf("%s: chain as the kernel reports it: %s", when, r.chain(t))
}

// Two supervisors, two pin roots, one hook: the second placed after the
// first's link by its pin path. Each drops one port. Through restarts
// (SIGKILL) and upgrades of either, both ports stay dropped and the chain
// stays; when the interface is made again, both re-attach in their order.
func TestTwoSupervisorsOneHook(t *testing.T) {
	r := newRig(t)
	s1 := newSup(t, r, "first")
	s2 := newSup(t, r, "after="+s1.linkPath())
	s1.start(t)
	s2.start(t)
	s1.dropPort(t, r.drop1.Port())
	s2.dropPort(t, r.drop2.Port())
	l1, l2 := s1.linkID(t), s2.linkID(t)
	wantChain(t, r, "started", l1, l2)

	o := e2e.FindLink(t, e2e.FindObject(t, e2e.Status(t, s2.env), "dropfilter"), "tc_drop").Order
	if o == nil || o.Place != "after" || !o.InPlace || o.Position != 2 || o.AnchorLink != uint32(l1) || len(o.Chain) != 2 ||
		o.Chain[0].Owner != "foreign" || o.Chain[1].Owner != "bpfsup" || !o.Chain[1].Self {
		t.Fatalf("status of the second supervisor's link: %+v", o)
	}

	r.startTraffic(t)
	r.waitPassing(t, 50)
	r.noLeak(t, "started")
	for _, s := range []*sup{s1, s2} {
		s.kill(t)
		r.waitPassing(t, 20)
		s.start(t)
		r.waitPassing(t, 20)
		r.noLeak(t, "after a restart")
		wantChain(t, r, "after a restart", l1, l2)
	}
	for _, s := range []*sup{s1, s2} {
		s.upgrade(t)
		r.waitPassing(t, 20)
		r.noLeak(t, "after an upgrade")
		wantChain(t, r, "after an upgrade", l1, l2)
	}
	if p := e2e.FindLink(t, e2e.FindObject(t, e2e.Status(t, s1.env), "dropfilter"), "tc_drop"); p.Program != "tc_drop" {
		t.Fatalf("first supervisor's link after the upgrade: %+v", p)
	}

	// The interface goes and comes back: both re-attach, each at its place.
	r.stopTraffic()
	sent := r.ok.Count()
	if _, err := exec.Command("ip", "-n", r.b.Name, "link", "del", r.ifB.Name).CombinedOutput(); err != nil {
		t.Fatal(err)
	}
	r.ifA, r.ifB = testutil.MustVethPairLike(t, r.ifA, r.ifB)
	testutil.WaitFor(t, waitTimeout, "both supervisors re-attached", func() bool { return len(r.links(t)) == 2 })
	n1, n2 := s1.linkID(t), s2.linkID(t)
	wantChain(t, r, "after the interface came back", n1, n2)
	before1, before2 := r.drop1.Count(), r.drop2.Count()
	r.startTraffic(t)
	r.waitPassing(t, 50)
	if r.drop1.Count() != before1 || r.drop2.Count() != before2 {
		t.Fatalf("after the re-attachment, %d and %d datagrams reached the dropped ports", r.drop1.Count()-before1, r.drop2.Count()-before2)
	}
	r.stopTraffic()
	t.Logf("passing port: %d received (%d before the interface went); dropped by the first filter %d, by the second %d; received on the dropped ports %d and %d",
		r.ok.Count(), sent, s1.dropped(t), s2.dropped(t), r.drop1.Count(), r.drop2.Count())
}

// foreignFirst attaches a program of another agent before everything on
// the rig's hook, as cilium/ebpf would; it passes every packet on.
func foreignFirst(t *testing.T, r *rig) link.ID {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "intruder", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}}) // TCX_NEXT
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var l link.Link
	err = r.b.Do(func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: r.ifB.Index, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// bpfsup killed with SIGKILL, a foreign program put before its "first"
// link meanwhile: status says so; bpfsup started again with
// --enforce-order adopts, finds the link out of place, and moves it back in
// front make-before-break, with no datagram to the dropped port let
// through.
func TestEnforceOrderAfterKill(t *testing.T) {
	r := newRig(t)
	r.one = true
	s := newSup(t, r, "first", "--enforce-order")
	s.start(t)
	s.dropPort(t, r.drop1.Port())
	r.startTraffic(t)
	r.waitPassing(t, 50)
	old := s.linkID(t)
	s.kill(t)
	intruder := foreignFirst(t, r)
	wantChain(t, r, "intruder attached", intruder, old)

	st := e2e.Status(t, s.env)
	ls := e2e.FindLink(t, e2e.FindObject(t, st, "dropfilter"), "tc_drop")
	if st.Healthy || ls.Order == nil || ls.Order.InPlace || !strings.Contains(ls.Order.Why, "intruder") || ls.Order.Position != 2 {
		t.Fatalf("status with a foreign program before the first link: healthy %v, order %+v", st.Healthy, ls.Order)
	}
	text, _ := s.env.Run(t, "status")
	if !strings.Contains(text, "order: first, position 2 of 2") || !strings.Contains(text, "NOT IN PLACE") {
		t.Fatalf("text status does not say the link is out of place:\n%s", text)
	}

	s.start(t)
	moved := s.linkID(t)
	if moved == old {
		t.Fatalf("the link was not moved:\n%s", s.proc.Output())
	}
	wantChain(t, r, "after enforce_order", moved, intruder)
	if !strings.Contains(s.proc.Output(), "moved link back to its configured place, make-before-break") {
		t.Fatalf("no log of the move:\n%s", s.proc.Output())
	}
	r.waitPassing(t, 50)
	r.noLeak(t, "after the move")
	if st := e2e.Status(t, s.env); !st.Healthy {
		t.Fatalf("not healthy after the move: %+v", st.Objects[0].Problems)
	}
	r.stopTraffic()
	t.Logf("dropped %d, received on the dropped port %d, on the passing port %d", s.dropped(t), r.drop1.Count(), r.ok.Count())
}

// A foreign program put before a "first" link while bpfsup runs with
// --enforce-order: bpfsup finds it within its periodic check and moves its
// link back in front, make-before-break, with no datagram to the dropped
// port let through.
func TestEnforceOrderWhileRunning(t *testing.T) {
	r := newRig(t)
	r.one = true
	s := newSup(t, r, "first", "--enforce-order")
	s.start(t)
	s.dropPort(t, r.drop1.Port())
	r.startTraffic(t)
	r.waitPassing(t, 50)
	old := s.linkID(t)
	intruder := foreignFirst(t, r)
	s.proc.WaitOutput(t, "moved link back to its configured place, make-before-break", waitTimeout)
	moved := s.linkID(t)
	if moved == old {
		t.Fatalf("the log says moved, the pin holds the old link %d:\n%s", old, s.proc.Output())
	}
	wantChain(t, r, "after the periodic check", moved, intruder)
	r.waitPassing(t, 50)
	r.noLeak(t, "after the move")
	if st := e2e.Status(t, s.env); !st.Healthy {
		t.Fatalf("not healthy after the move: %+v", st.Objects[0].Problems)
	}
	r.stopTraffic()
	t.Logf("dropped %d, received on the dropped port %d, on the passing port %d", s.dropped(t), r.drop1.Count(), r.ok.Count())
}

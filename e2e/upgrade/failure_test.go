package upgrade

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/bpf"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// installedState is what an upgrade that fails must leave as it was.
type installedState struct {
	generation uint64
	progs      map[string]uint32    // pinned program ids
	links      map[string][2]uint32 // link id, id of the program it runs
	maps       map[string]uint32
	ports      []uint16 // keys of drop_ports
	maxEntries uint32   // of drop_ports
	drops      uint64
	child      int
}

func takeState(t *testing.T, e *testutil.Env) installedState {
	t.Helper()
	st := status(t, e, "dropfilter")
	s := installedState{generation: st.Generation, progs: map[string]uint32{}, links: map[string][2]uint32{}, maps: map[string]uint32{}}
	for _, p := range st.Programs {
		s.progs[p.Name] = p.ID
	}
	for _, l := range st.Links {
		s.links[l.Name] = [2]uint32{l.ID, l.ProgramID}
	}
	for _, m := range st.Maps {
		s.maps[m.Name] = m.ID
	}
	if st.Supervisor != nil {
		s.child = st.Supervisor.ChildPID
	}
	s.ports, _, s.maxEntries = dropPorts(t, e)
	slices.Sort(s.ports)
	s.drops = dropCount(t, e)
	return s
}

// assertUnchanged fails unless now is before: same programs, links running
// the same programs, same maps with the same entries, a drop counter that
// did not go down, the same child, still running.
func assertUnchanged(t *testing.T, what string, before, now installedState) {
	t.Helper()
	switch {
	case now.generation != before.generation:
		t.Fatalf("%s: generation %d, was %d", what, now.generation, before.generation)
	case !mapsEqual(now.progs, before.progs):
		t.Fatalf("%s: pinned programs %v, were %v", what, now.progs, before.progs)
	case !mapsEqual(now.links, before.links):
		t.Fatalf("%s: links (id, program) %v, were %v", what, now.links, before.links)
	case !mapsEqual(now.maps, before.maps):
		t.Fatalf("%s: maps %v, were %v", what, now.maps, before.maps)
	case !slices.Equal(now.ports, before.ports) || now.maxEntries != before.maxEntries:
		t.Fatalf("%s: drop_ports holds %v (max %d), held %v (max %d)", what, now.ports, now.maxEntries, before.ports, before.maxEntries)
	case now.drops < before.drops:
		t.Fatalf("%s: drop_count went down from %d to %d", what, before.drops, now.drops)
	case now.child != before.child:
		t.Fatalf("%s: child pid %d, was %d", what, now.child, before.child)
	}
	if _, alive := testutil.ProcState(now.child); !alive {
		t.Fatalf("%s: the child %d is gone", what, now.child)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// failReload runs a reload that must fail with an error containing every
// one of want, and checks that nothing changed and bpfsup still runs. When
// swappedFirst names a link, the reload must have swapped it before it
// failed (and so swapped it back).
func failReload(t *testing.T, e *testutil.Env, p *testutil.Proc, what, swappedFirst string, want ...string) {
	t.Helper()
	before := takeState(t, e)
	swapLine := `msg="swapped program in place" link=` + swappedFirst + " "
	swaps := strings.Count(p.Output(), swapLine)
	failed := strings.Count(p.Output(), `msg="reload failed`)
	out, code := reload(t, e)
	if code == 0 {
		t.Fatalf("%s: bpfsup reload succeeded:\n%s", what, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Fatalf("%s: the error does not say %q:\n%s", what, w, out)
		}
	}
	select {
	case <-p.Done():
		t.Fatalf("%s: bpfsup exited", what)
	default:
	}
	assertUnchanged(t, what, before, takeState(t, e))
	// bpfsup's log reaches us through a pipe, maybe after its reply.
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log the failure", func() bool {
		return strings.Count(p.Output(), `msg="reload failed`) > failed
	})
	if swappedFirst != "" && strings.Count(p.Output(), swapLine) != swaps+1 {
		t.Fatalf("%s: link %s was not swapped before the failure: the case tests nothing", what, swappedFirst)
	}
	t.Logf("%s: refused, nothing changed:\n%s", what, strings.TrimSpace(out))
}

// TestUpgradeFailures makes upgrades fail in every way the issue names, before
// the first link is swapped and after, and checks that each leaves the
// running objects, the map contents and the child as they were, tells the
// caller of `bpfsup reload` why, and that bpfsup upgrades fine afterwards.
func TestUpgradeFailures(t *testing.T) {
	e := testutil.MustEnv(t)
	nsS, nsR := testutil.MustNetns(t, "upf-send"), testutil.MustNetns(t, "upf-recv")
	_, x := testutil.MustVethPair(t, nsS, nsR)
	_, y := testutil.MustVethPair(t, nsS, nsR)
	_, z := testutil.MustVethPair(t, nsS, nsR)
	linkX, linkY := "xdp_drop-"+x.Name, "xdp_drop-"+y.Name

	dir := t.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	cfgPath := filepath.Join(dir, "bpfsup.toml")
	cfg := config{object: obj, netns: nsR.Path, attach: []attachment{{"xdp_drop", "xdp:" + x.Name}, {"xdp_drop", "xdp:" + y.Name}}}
	cfg.write(t, cfgPath)
	p := startBpfsup(t, e, "", "-c", cfgPath) // the child is restarted on upgrade
	child := waitChildren(t, p, 1)
	// The child may announce itself before bpfsup records it.
	testutil.WaitFor(t, 5*time.Second, "status to name the child", func() bool {
		st := status(t, e, "dropfilter")
		return st.Supervisor != nil && st.Supervisor.ChildPID == child
	})
	addDropPort(t, e, portDropped)
	sendN(t, nsS, netip.AddrPortFrom(x.Addr, portDropped), 10)
	testutil.WaitFor(t, 5*time.Second, "10 drops", func() bool { return dropCount(t, e) == 10 })

	// Before the first swap.
	deploy(t, obj, "dropfilter_bad")
	failReload(t, e, p, "verifier refuses", "", "verifier log", "invalid access to packet", "xdp_drop")

	deploy(t, obj, "dropfilter_bigmap")
	failReload(t, e, p, "incompatible map", "", "drop_ports", "MaxEntries", "reset = true")

	deploy(t, obj, "dropfilter_v2")
	bad := cfg
	bad.attach = []attachment{{"xdp_drop", "xdp:" + x.Name}, {"xdp_drop", "xdp:nosuchif0"}}
	bad.write(t, cfgPath)
	failReload(t, e, p, "missing interface", "", "nosuchif0", "not found")
	cfg.write(t, cfgPath)

	// After the first swap: the second link was changed behind bpfsup's
	// back. The first, swapped already, is swapped back; the second keeps
	// the program someone else put there.
	foreign := loadForeignXDP(t)
	var foreignID ebpf.ProgramID
	if info, err := foreign.Info(); err == nil {
		foreignID, _ = info.ID()
	}
	ly, err := hooks.LoadPinned(pinPath(e, "links", linkY)) // a link, or tcx's tc fallback
	if err != nil {
		t.Fatal(err)
	}
	defer ly.Close()
	if err := ly.Update(foreign, nil); err != nil {
		t.Fatalf("swap link %s behind bpfsup's back: %v", linkY, err)
	}
	failReload(t, e, p, "link changed behind bpfsup's back", linkX, linkY, "changed behind bpfsup's back", "not overwriting")
	if _, prog := linkIDs(t, e, linkY); prog != foreignID {
		t.Fatalf("link %s runs program %d, not the one put there behind bpfsup's back (%d)", linkY, prog, foreignID)
	}
	mine, err := ebpf.LoadPinnedProgram(pinPath(e, "programs", "xdp_drop"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	if err := ly.Update(mine, nil); err != nil {
		t.Fatal(err)
	}

	// After the first swaps: a third attachment cannot be made (the hook
	// is taken). Both links swapped already go back.
	busy := holdXDP(t, nsR, z, foreign)
	defer busy.Close()
	three := cfg.with(attachment{"xdp_drop", "xdp:" + z.Name})
	three.write(t, cfgPath)
	failReload(t, e, p, "third hook busy", linkY, "xdp:"+z.Name, "device or resource busy")

	// The same with a map reset on the way: the old map goes back in place,
	// with its entries.
	three.dropPorts = []string{"reset = true"}
	three.write(t, cfgPath)
	deploy(t, obj, "dropfilter_bigmap")
	failReload(t, e, p, "map reset, then third hook busy", linkY, "xdp:"+z.Name, "device or resource busy")

	// bpfsup is fine: the upgrade goes through once the causes are gone.
	busy.Close()
	cfg.write(t, cfgPath)
	deploy(t, obj, "dropfilter_v2")
	before := takeState(t, e)
	out := e2e.MustRun(t, e, "reload")
	swapped := []string{linkX, linkY}
	slices.Sort(swapped)
	for _, w := range []string{"generation 1", "swapped in place: " + strings.Join(swapped, ", "), "child restarted"} {
		if !strings.Contains(out, w) {
			t.Fatalf("bpfsup reload does not say %q:\n%s", w, out)
		}
	}
	after := takeState(t, e)
	if after.generation != before.generation+1 || after.links[linkX][0] != before.links[linkX][0] || after.links[linkX][1] == before.links[linkX][1] {
		t.Fatalf("upgrade after the failures: %+v, was %+v", after, before)
	}
	if got := waitChildren(t, p, 2); got == before.child {
		t.Fatalf("child %d was not restarted", got)
	}
}

// holdXDP attaches prog to v in ns with a link of the test's own, so that
// the interface refuses another.
func holdXDP(t *testing.T, ns *testutil.Netns, v testutil.Veth, prog *ebpf.Program) link.Link {
	t.Helper()
	var l link.Link
	if err := ns.Do(func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: v.Index})
		return err
	}); err != nil {
		t.Fatalf("hold xdp:%s: %v", v.Name, err)
	}
	return l
}

// loadForeignXDP loads an XDP program that is not bpfsup's (dropfilter v1
// with maps of its own).
func loadForeignXDP(t *testing.T) *ebpf.Program {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpecFromReader(strings.NewReader(string(bpf.Object("dropfilter.bpf.o"))))
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	prog := coll.DetachProgram("xdp_drop")
	coll.Close()
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestUpgradeRollbackMakeBeforeBreak fails an upgrade after a tracepoint
// link (which cannot swap its program in place) was replaced
// make-before-break: the old program is attached again, and only it runs.
func TestUpgradeRollbackMakeBeforeBreak(t *testing.T) {
	testutil.SkipWithout(t, testutil.PerfLink) // its make-before-break hook is a tracepoint
	e := testutil.MustEnv(t)
	dir := t.TempDir()
	obj := filepath.Join(dir, "hooks.bpf.o")
	writeAtomic(t, obj, bpf.Object("hooks.bpf.o"))
	cfgPath := filepath.Join(dir, "bpfsup.toml")
	tp := attachment{"tp_count", "tracepoint:syscalls/sys_enter_getppid"}
	config{object: obj, attach: []attachment{tp}}.write(t, cfgPath)
	p := startBpfsup(t, e, "", "-c", cfgPath, "--on-upgrade", "none")
	waitChildren(t, p, 1)

	pin := func(kind, name string) string { return filepath.Join(e.PinRoot, "hooks", kind, name) }
	hits, err := ebpf.LoadPinnedMap(pin("maps", "hits"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hits.Close()
	cfgMap, err := ebpf.LoadPinnedMap(pin("maps", "config"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cfgMap.Close()
	if err := cfgMap.Put(uint32(0), uint32(os.Getpid())); err != nil {
		t.Fatal(err)
	}
	// counts makes 10 getppid calls and returns how many events v1 and v2
	// together, and v2 alone, counted.
	counts := func() (all, v2 uint64) {
		for i := 0; i < 10; i++ {
			syscall.Getppid()
		}
		if err := hits.Lookup(uint32(0), &all); err != nil {
			t.Fatal(err)
		}
		if err := hits.Lookup(uint32(16), &v2); err != nil {
			t.Fatal(err)
		}
		return all, v2
	}
	if all, v2 := counts(); all != 10 || v2 != 0 {
		t.Fatalf("v1 counted %d, v2 %d; want 10, 0", all, v2)
	}
	linkPath := pin("links", "tp_count")
	progBefore := e2e.PinnedProgramID(t, pin("programs", "tp_count"))

	// v2, plus a second attachment that cannot be made: the tracepoint link
	// is replaced first, then the raw tracepoint fails.
	writeAtomic(t, obj, bpf.Object("hooks_v2.bpf.o"))
	config{object: obj, attach: []attachment{tp, {"raw_tp_count", "raw_tp:bpfsup_no_such_tracepoint"}}}.write(t, cfgPath)
	out, code := reload(t, e)
	if code == 0 || !strings.Contains(out, "bpfsup_no_such_tracepoint") {
		t.Fatalf("bpfsup reload exited %d:\n%s", code, out)
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log the failure", func() bool {
		return strings.Contains(p.Output(), `msg="replaced link" link=tp_count`) && strings.Contains(p.Output(), `msg="reload failed`)
	})
	info, err := e2e.PinnedAttachmentInfo(linkPath) // a link, or tcx's tc fallback
	if err != nil {
		t.Fatal(err)
	}
	if info.Program != progBefore || e2e.PinnedProgramID(t, pin("programs", "tp_count")) != progBefore {
		t.Fatalf("after the rollback the link runs program %d, the pin holds %d; want the old %d",
			info.Program, e2e.PinnedProgramID(t, pin("programs", "tp_count")), progBefore)
	}
	// Exactly the old program runs: v2's link is gone, v1's counts once.
	if all, v2 := counts(); all != 20 || v2 != 0 {
		t.Fatalf("after the rollback: all %d, v2 %d; want 20, 0", all, v2)
	}

	// Without the failing attachment the upgrade goes through.
	config{object: obj, attach: []attachment{tp}}.write(t, cfgPath)
	if out := e2e.MustRun(t, e, "reload"); !strings.Contains(out, "replaced make-before-break: tp_count") {
		t.Fatalf("bpfsup reload:\n%s", out)
	}
	if all, v2 := counts(); all != 30 || v2 != 10 {
		t.Fatalf("after the upgrade: all %d, v2 %d; want 30, 10", all, v2)
	}
}

// TestUpgradeTwoObjectsAllOrNothing: a reload of two objects where the
// second fails to load (the verifier refuses it) upgrades neither, although
// the first loaded fine and comes first; once both load, both upgrade.
func TestUpgradeTwoObjectsAllOrNothing(t *testing.T) {
	e := testutil.MustEnv(t)
	p, objA, objB := startTwoObjects(t, e)
	state := func(name string) objState { return twoObjectsState(t, e, name) }
	beforeA, beforeB := state("fwa"), state("fwb")

	deploy(t, objA, "dropfilter_v2")
	deploy(t, objB, "dropfilter_bad")
	out, code := reload(t, e)
	if code == 0 || !strings.Contains(out, "invalid access to packet") || !strings.Contains(out, "fwb") {
		t.Fatalf("reload with object fwb refused by the verifier: exit %d, want an error that names fwb and the verifier's reason:\n%s", code, out)
	}
	if a, b := state("fwa"), state("fwb"); a != beforeA || b != beforeB {
		t.Fatalf("after the failed reload: fwa %+v (was %+v), fwb %+v (was %+v): want both unchanged", a, beforeA, b, beforeB)
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log that fwa was not upgraded", func() bool {
		return strings.Contains(p.Output(), `msg="object not upgraded: another object of the reload failed" object=fwa failed=fwb`)
	})

	deploy(t, objB, "dropfilter_v2")
	out = e2e.MustRun(t, e, "reload")
	a, b := state("fwa"), state("fwb")
	if a.generation != beforeA.generation+1 || b.generation != beforeB.generation+1 ||
		a.prog == beforeA.prog || b.prog == beforeB.prog || a.link != beforeA.link || b.link != beforeB.link {
		t.Fatalf("after the reload that loads: fwa %+v (was %+v), fwb %+v (was %+v): want both upgraded in place\n%s", a, beforeA, b, beforeB, out)
	}
}

// startTwoObjects runs bpfsup with two objects, fwa and fwb, each
// dropfilter's xdp_drop on a veth of its own, and returns their files.
func startTwoObjects(t *testing.T, e *testutil.Env) (p *testutil.Proc, objA, objB string) {
	t.Helper()
	tw := newTwoObjects(t)
	p = startBpfsup(t, e, "", "-c", tw.cfgPath)
	waitChildren(t, p, 1)
	return p, tw.objA, tw.objB
}

// twoObjects is startTwoObjects' configuration, not started.
type twoObjects struct {
	cfgPath, objA, objB string
	x, y                testutil.Veth
	nsR                 *testutil.Netns
}

func newTwoObjects(t *testing.T) twoObjects {
	t.Helper()
	tw := twoObjects{nsR: testutil.MustNetns(t, "up2")}
	_, tw.x = testutil.MustVethPair(t, tw.nsR, tw.nsR)
	_, tw.y = testutil.MustVethPair(t, tw.nsR, tw.nsR)
	dir := t.TempDir()
	tw.objA, tw.objB = filepath.Join(dir, "a.bpf.o"), filepath.Join(dir, "b.bpf.o")
	deploy(t, tw.objA, "dropfilter")
	deploy(t, tw.objB, "dropfilter")
	tw.cfgPath = filepath.Join(dir, "bpfsup.toml")
	cfg := fmt.Sprintf("netns = %q\n", tw.nsR.Path)
	for _, o := range []struct{ name, path, iface string }{{"fwa", tw.objA, tw.x.Name}, {"fwb", tw.objB, tw.y.Name}} {
		cfg += fmt.Sprintf("\n[[object]]\nname = %q\npath = %q\n[[object.attach]]\nprogram = \"xdp_drop\"\nhook = \"xdp:%s\"\n", o.name, o.path, o.iface)
	}
	writeAtomic(t, tw.cfgPath, []byte(cfg))
	return tw
}

// TestStartTwoObjectsAllOrNothing: a start whose second object fails (the
// verifier refuses it) leaves the first as it was, as a reload does: not
// upgraded after a restart, not installed at all on a first start.
func TestStartTwoObjectsAllOrNothing(t *testing.T) {
	e := testutil.MustEnv(t)
	tw := newTwoObjects(t)
	runFails := func(what string) string {
		t.Helper()
		out, code := e.Run(t, "run", "-c", tw.cfgPath, "--", "/bin/true")
		if code == 0 || !strings.Contains(out, "invalid access to packet") || !strings.Contains(out, "fwb") {
			t.Fatalf("%s: bpfsup run with fwb refused by the verifier exited %d, want an error that names fwb and the verifier's reason:\n%s", what, code, out)
		}
		return out
	}

	// A first start: nothing of fwa is left behind.
	deploy(t, tw.objB, "dropfilter_bad")
	out := runFails("first start")
	if names, err := os.ReadDir(e.PinRoot); err != nil || len(names) != 0 {
		t.Fatalf("after a failed first start the pin root holds %v (%v):\n%s", names, err, out)
	}
	if link, err := exec.Command("ip", "-n", filepath.Base(tw.nsR.Path), "-d", "link", "show", "dev", tw.x.Name).CombinedOutput(); err != nil || strings.Contains(string(link), "prog/xdp") {
		t.Fatalf("after a failed first start %s (ip link: %v):\n%s\nbpfsup:\n%s", tw.x.Name, err, link, out)
	}

	// A restart with a new fwa and a bad fwb: fwa is not upgraded.
	deploy(t, tw.objB, "dropfilter")
	p := startBpfsup(t, e, "", "-c", tw.cfgPath)
	waitChildren(t, p, 1)
	beforeA, beforeB := twoObjectsState(t, e, "fwa"), twoObjectsState(t, e, "fwb")
	p.Kill(syscall.SIGKILL)
	p.Wait(t, 10*time.Second)
	deploy(t, tw.objA, "dropfilter_v2")
	deploy(t, tw.objB, "dropfilter_bad")
	out = runFails("restart")
	if a, b := twoObjectsState(t, e, "fwa"), twoObjectsState(t, e, "fwb"); a != beforeA || b != beforeB {
		t.Fatalf("after the failed restart: fwa %+v (was %+v), fwb %+v (was %+v): want both as they were\n%s", a, beforeA, b, beforeB, out)
	}
	if !strings.Contains(out, `msg="object not upgraded: another object of the start failed" object=fwa failed=fwb`) {
		t.Fatalf("bpfsup does not say that fwa was left as it was:\n%s", out)
	}
}

// objState is what a reload of startTwoObjects changes in an object.
type objState struct {
	generation uint64
	prog, link uint32
}

func twoObjectsState(t *testing.T, e *testutil.Env, name string) objState {
	t.Helper()
	st := status(t, e, name)
	s := objState{generation: st.Generation}
	for _, pr := range st.Programs {
		if pr.Name == "xdp_drop" {
			s.prog = pr.ID
		}
	}
	for _, l := range st.Links {
		if l.Name == "xdp_drop" {
			if l.ProgramID != s.prog {
				t.Fatalf("object %s: link xdp_drop runs program %d, the pinned one is %d", name, l.ProgramID, s.prog)
			}
			s.link = l.ID
		}
	}
	return s
}

// TestUpgradeTwoObjectsSwapFails: when the swap of the second object of a
// reload fails (here its link was moved to another program behind bpfsup's
// back while bpfsup was stopped right after the first object's swap), the
// first object is swapped back: both run what they ran before.
func TestUpgradeTwoObjectsSwapFails(t *testing.T) {
	e := testutil.MustEnv(t)
	t.Setenv(crash.StopEnvVar, "links/updated")
	p, objA, objB := startTwoObjects(t, e)
	// Runs before p's own clean-up: a stopped bpfsup would not stop.
	t.Cleanup(func() { p.Kill(syscall.SIGCONT) })
	beforeA, beforeB := twoObjectsState(t, e, "fwa"), twoObjectsState(t, e, "fwb")

	deploy(t, objA, "dropfilter_v2")
	deploy(t, objB, "dropfilter_v2")
	var foreign *ebpf.Program
	out, _ := reloadWhileStopped(t, e, p, "right after fwa's swap", func() {
		// The program pin moves after the swap: the link runs the new one.
		if info, err := e2e.PinnedAttachmentInfo(filepath.Join(e.PinRoot, "fwa", "links", "xdp_drop")); err != nil || info.Program == ebpf.ProgramID(beforeA.prog) {
			t.Fatalf("stopped after fwa's swap, fwa's link runs program %v (err %v), was %d", info, err, beforeA.prog)
		}
		foreign = loadForeignXDP(t)
		bLink, err := link.LoadPinnedLink(filepath.Join(e.PinRoot, "fwb", "links", "xdp_drop"), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = bLink.Update(foreign)
		bLink.Close()
		if err != nil {
			t.Fatalf("move fwb's link to another program: %v", err)
		}
	})
	t.Logf("bpfsup reload:\n%s", out)
	if want := fmt.Sprintf("object fwb: link xdp_drop: swap program %d for", beforeB.prog); !strings.Contains(out, want) ||
		!strings.Contains(out, fmt.Sprintf("it no longer runs program %d,", beforeB.prog)) {
		t.Fatalf("the reload does not say that fwb's link no longer runs program %d:\n%s", beforeB.prog, out)
	}
	if a := twoObjectsState(t, e, "fwa"); a != beforeA {
		t.Fatalf("fwa is %+v after the reload whose fwb failed, was %+v: want it swapped back\n%s", a, beforeA, out)
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log that fwa was swapped back", func() bool {
		return strings.Contains(p.Output(), `msg="object swapped back: another object of the reload failed" object=fwa failed=fwb`)
	})
	// fwb's link still runs what it was moved to: bpfsup overwrites no
	// change made behind its back.
	info, err := e2e.PinnedAttachmentInfo(filepath.Join(e.PinRoot, "fwb", "links", "xdp_drop"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := foreign.Info(); err == nil {
		if id, _ := fi.ID(); info.Program != id {
			t.Fatalf("fwb's link runs program %d, not %d it was moved to", info.Program, id)
		}
	}
}

// TestReloadStoppedSupervisor: `bpfsup reload` against a supervisor stopped
// by SIGSTOP says so at once, and against one that stops in the middle of
// the reload (or hangs) it gives up after --timeout, saying that the
// supervisor did not answer. Before, it waited two minutes and then said
// "i/o timeout".
func TestReloadStoppedSupervisor(t *testing.T) {
	e := testutil.MustEnv(t)
	obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	// Stops itself at the reload's swap (a first start attaches, it swaps
	// nothing).
	t.Setenv(crash.StopEnvVar, "links/updated")
	ns := testutil.MustNetns(t, "rstop")
	veth, _ := testutil.MustVethPair(t, ns, ns)
	p := startBpfsup(t, e, "", "--netns", ns.Path, "-o", obj, "-a", "xdp_drop@xdp:"+veth.Name)
	t.Cleanup(func() { p.Kill(syscall.SIGCONT) }) // before p's own clean-up
	waitChildren(t, p, 1)

	p.Kill(syscall.SIGSTOP)
	testutil.WaitFor(t, 5*time.Second, "bpfsup to stop", func() bool {
		st, _ := testutil.ProcState(p.Pid())
		return st == 'T'
	})
	begin := time.Now()
	out, code := e.Run(t, "reload")
	if took := time.Since(begin); code == 0 || !strings.Contains(out, "is stopped") || took > 5*time.Second {
		t.Errorf("bpfsup reload against a stopped supervisor: exit %d after %v, want an error at once saying it is stopped:\n%s", code, took, out)
	}
	p.Kill(syscall.SIGCONT)

	deploy(t, obj, "dropfilter_v2")
	out, code = e.Run(t, "reload", "--timeout", "2s")
	if code == 0 || !strings.Contains(out, "did not answer within 2s (it is stopped") {
		t.Errorf("bpfsup reload --timeout 2s against a supervisor that stops during the reload: exit %d:\n%s", code, out)
	}
	p.Kill(syscall.SIGCONT)
	out, code = e.Run(t, "reload", "--timeout", "0s")
	if code == 0 || !strings.Contains(out, "--timeout 0s") {
		t.Errorf("bpfsup reload --timeout 0s: exit %d, want a usage error:\n%s", code, out)
	}
}

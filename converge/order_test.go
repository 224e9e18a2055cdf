package converge

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// orderEnv is a veth pair's end in a namespace of the test's, a private
// pin root and state directory, and the tcx ingress hook of the interface.
type orderEnv struct {
	store pinstore.Store
	ns    *testutil.Netns
	iface string
	hook  hooks.Ordered
	log   *slog.Logger
	logs  *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newOrderEnv(t *testing.T) *orderEnv {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.SkipWithout(t, testutil.TCX)
	nsA := testutil.MustNetns(t, "order")
	nsB := testutil.MustNetns(t, "order")
	ifA, _ := testutil.MustVethPair(t, nsA, nsB)
	h, err := hooks.New(hooks.Spec{Kind: "tcx", Variant: "ingress", Target: ifA.Name, Netns: nsA.Path})
	if err != nil {
		t.Fatal(err)
	}
	o, ok := hooks.AsOrdered(h)
	if !ok {
		t.Fatal("tcx hook is not ordered")
	}
	logs := &syncBuf{}
	return &orderEnv{
		store: pinstore.Store{Root: testutil.MustPinRoot(t), StateDir: testutil.MustStateDir(t)},
		ns:    nsA, iface: ifA.Name, hook: o, logs: logs,
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// foreign attaches a program of another agent at pos, as cilium/ebpf
// would, and pins its link under the pin root (for an anchor by path).
// Cleanup detaches it.
func (e *orderEnv) foreign(t *testing.T, name string, pos hooks.Position) (link.ID, string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}}) // TCX_NEXT
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	a, err := e.hook.AttachAt(prog, pos, 0)
	if err != nil {
		t.Fatalf("attach foreign %s: %v", name, err)
	}
	path := filepath.Join(e.store.Root, "foreign-"+name)
	if err := a.Pin(path); err != nil {
		t.Fatal(err)
	}
	info, err := a.Info()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Unpin()
		a.Close()
	})
	return link.ID(info.ID), path
}

// install installs cfgs; Cleanup closes what it returns.
func (e *orderEnv) install(t *testing.T, cfgs []config.Object, enforce bool) ([]*Installed, error) {
	t.Helper()
	ins, err := Install(e.store, cfgs, PlanOptions{Netns: e.ns.Path, Key: "test", EnforceOrder: enforce}, e.log)
	t.Cleanup(func() {
		for _, in := range ins {
			in.Close()
		}
	})
	return ins, err
}

// linkID is the id of the link pinned for object/link.
func (e *orderEnv) linkID(t *testing.T, object, name string) link.ID {
	t.Helper()
	id := AnchorID(filepath.Join(e.store.ObjectDir(object), "links", name))
	if id == 0 {
		t.Fatalf("no link pinned for %s/%s", object, name)
	}
	return id
}

// links is the hook's chain as link ids.
func (e *orderEnv) links(t *testing.T) []link.ID {
	t.Helper()
	c, err := e.hook.Chain()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]link.ID, len(c.Entries))
	for i, en := range c.Entries {
		ids[i] = en.Link
	}
	t.Logf("chain as the kernel reports it: %s", c)
	return ids
}

func objCfg(name, file string, attach ...config.Attach) config.Object {
	return config.Object{Path: testutil.BPFObject(file), Name: name, Attach: attach}
}

func sameIDs(a, b []link.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Each configured place ends in the chain the kernel reports: foreign
// programs F1 and F2 attached first, then bpfsup's first, last, before F2
// (by its pin path), and after bpfsup's own first link (by [OBJECT/]PROG).
func TestOrderPlaces(t *testing.T) {
	e := newOrderEnv(t)
	f1, _ := e.foreign(t, "f1", hooks.Position{Where: hooks.Last})
	f2, f2path := e.foreign(t, "f2", hooks.Position{Where: hooks.Last})
	hook := "tcx/ingress:" + e.iface
	cfgs := []config.Object{
		objCfg("head", "counter", config.Attach{Program: "count_tc", Hook: hook, Order: "first"}),
		objCfg("tail", "counter", config.Attach{Program: "count_tc", Hook: hook, Order: "last"}),
		objCfg("mid", "dropfilter",
			config.Attach{Program: "tc_drop", Hook: hook, Before: f2path}),
		objCfg("second", "counter", config.Attach{Program: "count_tc", Hook: hook, After: "head/count_tc"}),
	}
	ins, err := e.install(t, cfgs, false)
	if err != nil {
		t.Fatal(err)
	}
	head, tail := e.linkID(t, "head", "count_tc"), e.linkID(t, "tail", "count_tc")
	mid, second := e.linkID(t, "mid", "tc_drop"), e.linkID(t, "second", "count_tc")
	want := []link.ID{head, second, f1, mid, f2, tail}
	if got := e.links(t); !sameIDs(got, want) {
		t.Fatalf("chain %v, want %v (head, second, f1, mid, f2, tail)", got, want)
	}
	if CheckOrder(ins, true, e.log) {
		t.Fatalf("CheckOrder moved a link of a chain in order:\n%s", e.logs)
	}
}

// Bad places are errors of the plan that name the bad thing, and nothing
// is attached or pinned.
func TestOrderPlanErrors(t *testing.T) {
	e := newOrderEnv(t)
	hook := "tcx/ingress:" + e.iface
	other := "tcx/egress:" + e.iface
	cases := []struct {
		name string
		cfgs []config.Object
		want string
	}{
		{"unknown anchor", []config.Object{objCfg("a", "counter", config.Attach{Program: "count_tc", Hook: hook, Before: "nosuch"})},
			`unknown anchor: no attachment of this configuration is [OBJECT/]PROG "nosuch"`},
		{"anchor on another hook", []config.Object{
			objCfg("a", "counter", config.Attach{Program: "count_tc", Hook: other}),
			objCfg("b", "dropfilter", config.Attach{Program: "tc_drop", Hook: hook, After: "a/count_tc"})},
			"the anchor is on hook tcx/egress:" + e.iface + ", not on tcx/ingress:" + e.iface},
		{"order on a non-tcx hook", []config.Object{objCfg("a", "counter", config.Attach{Program: "count_packets", Hook: "xdp:" + e.iface, Order: "first"})},
			`order = "first" on hook xdp:` + e.iface + ", which runs one program"},
		{"object listed after", []config.Object{
			objCfg("b", "dropfilter", config.Attach{Program: "tc_drop", Hook: hook, After: "a/count_tc"}),
			objCfg("a", "counter", config.Attach{Program: "count_tc", Hook: hook})},
			"list object a first"},
		{"two places", []config.Object{objCfg("a", "counter", config.Attach{Program: "count_tc", Hook: hook, Order: "first", After: "x"})},
			"give one of order, before and after"},
		{"bad order", []config.Object{objCfg("a", "counter", config.Attach{Program: "count_tc", Hook: hook, Order: "middle"})},
			`order "middle"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.install(t, tc.cfgs, false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
			if got := e.links(t); len(got) != 0 {
				t.Fatalf("links left on the hook after a plan error: %v", got)
			}
			if names, _ := e.store.Objects(); len(names) != 0 {
				t.Fatalf("objects left pinned after a plan error: %v", names)
			}
		})
	}
}

// A cycle of anchors is an error naming every link of it. Anchors of other
// objects must be installed earlier, so a cycle is among one object's.
func TestOrderCycle(t *testing.T) {
	e := newOrderEnv(t)
	hook := "tcx/ingress:" + e.iface
	cfg := objCfg("s", "sections",
		config.Attach{Program: "tcx_in", Hook: hook, After: "tc_any"},
		config.Attach{Program: "tc_any", Hook: hook, After: "s/tcx_in"})
	cfg.Programs = map[string]config.Program{}
	_, err := PlanAll([]config.Object{cfg}, PlanOptions{Netns: e.ns.Path, Store: e.store})
	if err == nil || !strings.Contains(err.Error(), "links placed in a cycle: s/tc_any -> s/tcx_in -> s/tc_any") {
		t.Fatalf("err = %v, want a cycle naming s/tc_any -> s/tcx_in -> s/tc_any", err)
	}
	t.Logf("error: %v", err)
}

// racingHook is an Ordered hook whose attaches find the hook changed by
// someone else first, times times: a foreign program attached between
// bpfsup's read of the revision and its attach.
type racingHook struct {
	hooks.Ordered
	t     *testing.T
	e     *orderEnv
	times int
	n     int
}

func (r *racingHook) AttachAt(prog *ebpf.Program, pos hooks.Position, rev uint64) (hooks.Attachment, error) {
	if r.n < r.times {
		r.n++
		r.e.foreign(r.t, "race"+string(rune('a'+r.n)), hooks.Position{Where: hooks.Last})
	}
	return r.Ordered.AttachAt(prog, pos, rev)
}

// A foreign attach racing bpfsup's (the revision moves between the plan
// and the attach) ends in the right chain after a retry, or after too many
// in an error that names what kept changing; never a second link of
// bpfsup's.
func TestOrderRace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		times int
		fail  bool
	}{{"once", 1, false}, {"always", orderTries, true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newOrderEnv(t)
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "ours", Type: ebpf.SchedCLS, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			c, err := e.hook.Chain()
			if err != nil {
				t.Fatal(err)
			}
			revs := &hookRevisions{chains: map[string]hooks.Chain{hookKey(e.hook.Spec()): c}}
			h := &racingHook{Ordered: e.hook, t: t, e: e, times: tc.times}
			pl := plannedLink{name: "ours", program: "ours", hook: h, place: linkPlace{where: hooks.First, revs: revs}}
			a, err := attachPlaced(h, pl, prog, e.log)
			if tc.fail {
				if !errors.Is(err, ErrHookChanging) || !strings.Contains(err.Error(), "+link") {
					t.Fatalf("err = %v, want ErrHookChanging naming the links that came", err)
				}
				t.Logf("error: %v", err)
				if got := e.links(t); len(got) != orderTries {
					t.Fatalf("chain %v: want only the %d racing links", got, orderTries)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			info, _ := a.Info()
			got := e.links(t)
			if len(got) != 2 || got[0] != link.ID(info.ID) {
				t.Fatalf("chain %v: want bpfsup's link %d first, then the racing one", got, info.ID)
			}
			if !strings.Contains(e.logs.String(), "reading it again") {
				t.Fatalf("no log of the retry:\n%s", e.logs)
			}
		})
	}
}

// closeAll lets go of installed objects, as a bpfsup killed would: the pins
// keep everything attached.
func closeAll(ins []*Installed) {
	for _, in := range ins {
		in.Close()
	}
}

// A restart adopts its links and checks their places: a foreign program
// put before a "first" link is reported, and with enforce_order the link
// moves back in front, make-before-break. An upgrade updates the link in
// place: its id and place stay.
func TestOrderRestartEnforceUpgrade(t *testing.T) {
	e := newOrderEnv(t)
	hook := "tcx/ingress:" + e.iface
	cfgs := []config.Object{objCfg("fw", "dropfilter", config.Attach{Program: "tc_drop", Hook: hook, Order: "first"})}
	ins, err := e.install(t, cfgs, false)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ins)
	ours := e.linkID(t, "fw", "tc_drop")
	intruder, _ := e.foreign(t, "intruder", hooks.Position{Where: hooks.First})
	if got := e.links(t); !sameIDs(got, []link.ID{intruder, ours}) {
		t.Fatalf("chain %v, want the intruder %d before bpfsup's %d", got, intruder, ours)
	}

	ins, err = e.install(t, cfgs, false)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ins)
	if !strings.Contains(e.logs.String(), "link is not at its configured place") || !strings.Contains(e.logs.String(), "intruder") {
		t.Fatalf("restart did not say the link is out of place:\n%s", e.logs)
	}
	if got := e.links(t); !sameIDs(got, []link.ID{intruder, ours}) {
		t.Fatalf("without enforce_order the chain changed: %v", got)
	}

	ins, err = e.install(t, cfgs, true)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ins)
	moved := e.linkID(t, "fw", "tc_drop")
	if moved == ours {
		t.Fatalf("enforce_order did not move the link:\n%s", e.logs)
	}
	if got := e.links(t); !sameIDs(got, []link.ID{moved, intruder}) {
		t.Fatalf("chain %v after enforce_order, want bpfsup's new link %d, then the intruder %d", got, moved, intruder)
	}
	if !strings.Contains(e.logs.String(), "moved link back to its configured place, make-before-break") {
		t.Fatalf("no log of the move:\n%s", e.logs)
	}

	cfgs[0].Path = testutil.BPFObject("dropfilter_v2")
	ins, err = e.install(t, cfgs, true)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ins)
	if got := e.links(t); !sameIDs(got, []link.ID{moved, intruder}) {
		t.Fatalf("chain %v after an upgrade, want link %d kept first (updated in place), then %d", got, moved, intruder)
	}
	if !strings.Contains(e.logs.String(), "swapped program in place") {
		t.Fatalf("the upgrade did not update the link in place:\n%s", e.logs)
	}
}

// netkit hooks install at their places and upgrade in place, as tcx's do.
func TestNetkitInstallOrder(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.MustNetns(t, "nkorder")
	testutil.MustNetkitPair(t, ns, "nkp1", "nkq1")
	h, err := hooks.New(hooks.Spec{Kind: "netkit", Variant: "primary", Target: "nkp1", Netns: ns.Path})
	if err != nil {
		t.Fatal(err)
	}
	o, _ := hooks.AsOrdered(h)
	logs := &syncBuf{}
	e := &orderEnv{store: pinstore.Store{Root: testutil.MustPinRoot(t), StateDir: testutil.MustStateDir(t)},
		ns: ns, iface: "nkp1", hook: o, logs: logs, log: slog.New(slog.NewTextHandler(logs, nil))}
	f1, f1path := e.foreign(t, "f1", hooks.Position{Where: hooks.Last})
	cfgs := []config.Object{
		objCfg("head", "counter", config.Attach{Program: "count_tc", Hook: "netkit/primary:nkp1", Order: "first"}),
		objCfg("fw", "dropfilter", config.Attach{Program: "tc_drop", Hook: "netkit/primary:nkp1", Before: f1path}),
	}
	ins, err := e.install(t, cfgs, true)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ins)
	head, fw := e.linkID(t, "head", "count_tc"), e.linkID(t, "fw", "tc_drop")
	if got := e.links(t); !sameIDs(got, []link.ID{head, fw, f1}) {
		t.Fatalf("chain %v, want head %d, fw %d, then the foreign %d", got, head, fw, f1)
	}
	cfgs[1].Path = testutil.BPFObject("dropfilter_v2")
	ins, err = e.install(t, cfgs, true)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ins)
	if got := e.links(t); !sameIDs(got, []link.ID{head, fw, f1}) {
		t.Fatalf("chain %v after an upgrade, want it unchanged", got)
	}
	if !strings.Contains(logs.String(), "swapped program in place") {
		t.Fatalf("the upgrade did not update in place:\n%s", logs)
	}
}

// On a kernel without tcx, tcx hooks fall back to tc, which keeps no
// order: a place there is an error of the plan that says so, and nothing is
// attached.
func TestOrderOnTCFallback(t *testing.T) {
	testutil.RequireRoot(t)
	if testutil.Missing(t, testutil.TCX) == "" {
		t.Skipf("kernel %s has tcx: the tc fallback's refusal of a place runs on kernels without it (6.1 in make kernels)", testutil.KernelRelease())
	}
	ns := testutil.MustNetns(t, "fallback")
	peer := testutil.MustNetns(t, "fallback")
	ifA, _ := testutil.MustVethPair(t, ns, peer)
	store := pinstore.Store{Root: testutil.MustPinRoot(t), StateDir: testutil.MustStateDir(t)}
	cfgs := []config.Object{objCfg("a", "counter", config.Attach{Program: "count_tc", Hook: "tcx/ingress:" + ifA.Name, Order: "first"})}
	_, err := Install(store, cfgs, PlanOptions{Netns: ns.Path, Key: "test"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "falls back to tc on this kernel") {
		t.Fatalf("err = %v, want the place refused on the tc fallback", err)
	}
	if names, _ := store.Objects(); len(names) != 0 {
		t.Fatalf("objects left pinned: %v", names)
	}
}

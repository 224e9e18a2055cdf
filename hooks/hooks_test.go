package hooks

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Spec
		wantErr error
	}{
		{in: "xdp:veth0", want: Spec{Kind: "xdp", Target: "veth0"}},
		{in: "xdp/generic:veth0", want: Spec{Kind: "xdp", Variant: "generic", Target: "veth0"}},
		{in: "xdp/native:eth1", want: Spec{Kind: "xdp", Variant: "native", Target: "eth1"}},
		{in: "tcx/ingress:veth0", want: Spec{Kind: "tcx", Variant: "ingress", Target: "veth0"}},
		{in: "tcx/egress:veth0", want: Spec{Kind: "tcx", Variant: "egress", Target: "veth0"}},
		// Only the first ':' separates the target, which may hold more
		// (uprobe:BINARY:SYMBOL).
		{in: "xdp:a:b", want: Spec{Kind: "xdp", Target: "a:b"}},

		{in: "", wantErr: ErrBadSpec},
		{in: "xdp", wantErr: ErrBadSpec},
		{in: "xdp:", wantErr: ErrBadSpec},
		{in: "xdp/generic", wantErr: ErrBadSpec},
		{in: "tcx/ingress", wantErr: ErrBadSpec},
		{in: "xdp/:veth0", wantErr: ErrBadSpec},
		{in: "xdp:veth\n0", wantErr: ErrBadSpec},
		{in: "xdp:veth\x000", wantErr: ErrBadSpec},

		{in: "bogus:veth0", wantErr: ErrUnknownHook},
		{in: "XDP:veth0", wantErr: ErrUnknownHook},
		{in: "xdp/turbo:veth0", wantErr: ErrUnknownHook},
		{in: "tcx:veth0", wantErr: ErrUnknownHook}, // tcx needs a direction
		{in: "tcx/sideways:veth0", wantErr: ErrUnknownHook},
		{in: ":veth0", wantErr: ErrUnknownHook},
	} {
		t.Run(strings.ReplaceAll(tc.in, "/", "_"), func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Parse(%q) = %+v, %v; want error %v", tc.in, got, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), strings.ReplaceAll(strings.ReplaceAll(tc.in, "\n", `\n`), "\x00", `\x00`)) {
					t.Errorf("error %q does not quote the spec %q", err, tc.in)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			// The canonical spelling parses back to the same spec.
			if s := got.String(); s != tc.in {
				t.Errorf("String() = %q, want %q", s, tc.in)
			}
			again, err := Parse(got.String())
			if err != nil || again != got {
				t.Errorf("Parse(String()) = %+v, %v; want %+v", again, err, got)
			}
			if !got.IsNetwork() {
				t.Errorf("%s: IsNetwork() = false", tc.in)
			}
		})
	}
}

func TestParseUnknownListsKnownHooks(t *testing.T) {
	_, err := Parse("bogus:x")
	if err == nil {
		t.Fatal("no error")
	}
	for _, k := range []string{"xdp/generic", "tcx/ingress"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not list %s", err, k)
		}
	}
}

func TestSpecName(t *testing.T) {
	for in, want := range map[string]string{
		"xdp:veth0":         "xdp",
		"xdp/native:veth0":  "xdp/native",
		"tcx/egress:veth0":  "tcx/egress",
		"tcx/ingress:veth0": "tcx/ingress",
	} {
		s, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if s.Name() != want {
			t.Errorf("Parse(%q).Name() = %q, want %q", in, s.Name(), want)
		}
	}
	// The namespace is not part of the spelling.
	s := Spec{Kind: "xdp", Target: "veth0", Netns: "/run/netns/blue"}
	if s.String() != "xdp:veth0" {
		t.Errorf("String() = %q with a netns", s.String())
	}
}

func TestKnown(t *testing.T) {
	known := Known()
	for _, want := range []string{"xdp", "xdp/generic", "xdp/native", "tcx/ingress", "tcx/egress"} {
		if !slices.Contains(known, want) {
			t.Errorf("Known() = %v lacks %s", known, want)
		}
	}
	if slices.Contains(known, "tcx") {
		t.Errorf("Known() = %v has tcx without a direction", known)
	}
	if !slices.IsSorted(known) {
		t.Errorf("Known() = %v is not sorted", known)
	}
	if len(slices.Compact(slices.Clone(known))) != len(known) {
		t.Errorf("Known() = %v has duplicates", known)
	}
	// Everything listed parses, with a target where the kind needs one.
	for _, k := range known {
		if _, err := Parse(k + ":target"); err != nil {
			t.Errorf("known hook %s does not parse: %v", k, err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Spec{Kind: "bogus", Target: "x"}); !errors.Is(err, ErrUnknownHook) {
		t.Errorf("New(bogus) = %v, want ErrUnknownHook", err)
	}
	// A namespace makes sense for network hooks only.
	for _, name := range Known() {
		spec, err := Parse(name + ":target")
		if err != nil || spec.IsNetwork() {
			continue
		}
		spec.Netns = "/run/netns/blue"
		if _, err := New(spec); !errors.Is(err, ErrBadSpec) {
			t.Errorf("New(%s with a netns) = %v, want ErrBadSpec", name, err)
		}
	}
	if err := CheckTarget(Spec{Kind: "bogus"}); !errors.Is(err, ErrUnknownHook) {
		t.Errorf("CheckTarget(bogus) = %v, want ErrUnknownHook", err)
	}
}

// mustProgram loads program prog of the committed object obj ("counter",
// "dropfilter"...), alone, and closes it when the test ends.
func mustProgram(tb testing.TB, obj, prog string) *ebpf.Program {
	tb.Helper()
	p, _ := mustProgramWithMaps(tb, obj, prog)
	return p
}

// mustProgramWithMaps is mustProgram that also returns the maps the program
// uses, by name; they are closed when the test ends.
func mustProgramWithMaps(tb testing.TB, obj, prog string) (*ebpf.Program, map[string]*ebpf.Map) {
	tb.Helper()
	testutil.RequireRoot(tb)
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(obj))
	if err != nil {
		tb.Fatalf("load %s: %v", obj, err)
	}
	ps, ok := spec.Programs[prog]
	if !ok {
		tb.Fatalf("object %s has no program %s", obj, prog)
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{prog: ps}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		tb.Fatalf("load %s from %s: %v", prog, obj, err)
	}
	p := coll.DetachProgram(prog)
	maps := make(map[string]*ebpf.Map)
	for name := range coll.Maps {
		maps[name] = coll.DetachMap(name)
	}
	coll.Close()
	tb.Cleanup(func() {
		p.Close()
		for _, m := range maps {
			m.Close()
		}
	})
	return p, maps
}

// mustHook parses spec and resolves it in the network namespace at netns.
func mustHook(tb testing.TB, spec, netns string) Hook {
	tb.Helper()
	s, err := Parse(spec)
	if err != nil {
		tb.Fatalf("parse %s: %v", spec, err)
	}
	s.Netns = netns
	h, err := New(s)
	if err != nil {
		tb.Fatalf("hook %s: %v", spec, err)
	}
	if h.Spec() != s {
		tb.Fatalf("hook's Spec() = %+v, want %+v", h.Spec(), s)
	}
	return h
}

// mustAttach attaches prog to h; the attachment is closed when the test ends.
func mustAttach(tb testing.TB, h Hook, prog *ebpf.Program) Attachment {
	tb.Helper()
	l, err := h.Attach(prog)
	if err != nil {
		tb.Fatalf("attach to %s: %v", h.Spec(), err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

func progID(tb testing.TB, p *ebpf.Program) ebpf.ProgramID {
	tb.Helper()
	info, err := p.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("program info has no id")
	}
	return id
}

// linkInfo is the kernel's info of a as a link's: a tc filter's says its
// record's id and its program.
func linkInfo(tb testing.TB, a Attachment) *link.Info {
	tb.Helper()
	info, err := a.Info()
	if err != nil {
		tb.Fatalf("attachment info: %v", err)
	}
	if info.Link != nil {
		return info.Link
	}
	return &link.Info{ID: link.ID(info.ID), Program: info.Program}
}

// wantState checks what h says about l. Before Linux 6.6 the kernel
// reports nothing about a perf_event link's event, so a tracepoint, kprobe or
// uprobe hook must say Unknown for every perf_event link there, whatever the
// answer would be on a newer kernel.
func wantState(tb testing.TB, h Hook, l Attachment, want State) {
	tb.Helper()
	switch h.Spec().Kind {
	case "tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe":
		if linkInfo(tb, l).Type == link.PerfEventType && !testutil.KernelAtLeast("6.6") {
			want = Unknown
		}
	}
	got, err := h.Check(l)
	if err != nil {
		tb.Fatalf("check link on %s: %v", h.Spec(), err)
	}
	if got != want {
		tb.Fatalf("check link on %s: %s, want %s", h.Spec(), got, want)
	}
}

// movePin pins l at path the way pinstore does: under a staging name first,
// then renamed over whatever is pinned at path, in one step.
func movePin(tb testing.TB, l Attachment, path string) {
	tb.Helper()
	staging := filepath.Join(filepath.Dir(path), "staging-"+filepath.Base(path))
	if err := l.Pin(staging); err != nil {
		tb.Fatalf("pin at %s: %v", staging, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, path, 0); err != nil {
		os.Remove(staging)
		tb.Fatalf("move pin onto %s: %v", path, err)
	}
}

// conformanceTarget is one target of a link-based hook, made for the
// conformance test.
type conformanceTarget struct {
	// hook is the hook under test.
	hook Hook
	// other is a hook of the same kind on another target: a link on hook is
	// Elsewhere for it.
	other Hook
	// attached lists the programs the kernel runs on hook's target now, as
	// the kernel reports them (not as the links do).
	attached func(tb testing.TB) []ebpf.ProgramID
	// remove deletes the target, which leaves links on it defunct.
	remove func(tb testing.TB)
	// recreate makes a target of the same name again.
	recreate func(tb testing.TB)
}

// linkHookCase is one link-based hook for testLinkHook.
type linkHookCase struct {
	name string
	// objA, progA and objB, progB name two different programs that the hook
	// takes.
	objA, progA, objB, progB string
	// exclusive: the kernel allows one link per target, so a second link
	// cannot be attached while the first is, and make-before-break works
	// only once the old link is defunct.
	exclusive bool
	target    func(tb testing.TB, spec string) conformanceTarget
}

// TestLinkHookConformance runs every link-based hook through the same life:
// attach, pin, load from the pin, update in place, make-before-break,
// defunct when the target goes away, re-attach when it is back, detach.
func TestLinkHookConformance(t *testing.T) {
	for _, tc := range []linkHookCase{
		{name: "xdp", objA: "counter", progA: "count_packets", objB: "dropfilter", progB: "xdp_drop", exclusive: true, target: vethTarget(xdpAttached)},
		{name: "xdp/generic", objA: "counter", progA: "count_packets", objB: "dropfilter", progB: "xdp_drop", exclusive: true, target: vethTarget(xdpAttached)},
		{name: "xdp/native", objA: "counter", progA: "count_packets", objB: "dropfilter", progB: "xdp_drop", exclusive: true, target: vethTarget(xdpAttached)},
		{name: "tcx/ingress", objA: "counter", progA: "count_tc", objB: "dropfilter", progB: "tc_drop", target: vethTarget(tcxAttached(ebpf.AttachTCXIngress))},
		{name: "tcx/egress", objA: "counter", progA: "count_tc", objB: "dropfilter", progB: "tc_drop", target: vethTarget(tcxAttached(ebpf.AttachTCXEgress))},
	} {
		t.Run(tc.name, func(t *testing.T) { testLinkHook(t, tc) })
	}
}

func testLinkHook(t *testing.T, tc linkHookCase) {
	testutil.RequireRoot(t)
	if strings.HasPrefix(tc.name, "tcx/") {
		testutil.SkipWithout(t, testutil.TCX) // tc_test.go tests the fallback
	}
	pinRoot := testutil.MustPinRoot(t)
	progA := mustProgram(t, tc.objA, tc.progA)
	progB := mustProgram(t, tc.objB, tc.progB)
	idA, idB := progID(t, progA), progID(t, progB)
	target := tc.target(t, tc.name)
	h := target.hook
	path := filepath.Join(pinRoot, "link")

	wantAttached := func(what string, want ...ebpf.ProgramID) {
		t.Helper()
		var got []ebpf.ProgramID
		testutil.WaitFor(t, 5*time.Second, what, func() bool {
			got = target.attached(t)
			return slices.Equal(got, want)
		})
	}

	if h.Mechanism() == "" {
		t.Error("Mechanism() is empty")
	}

	// Attach.
	l := mustAttach(t, h, progA)
	wantState(t, h, l, Attached)
	wantState(t, target.other, l, Elsewhere)
	info := linkInfo(t, l)
	linkID := info.ID
	if info.Program != idA {
		t.Fatalf("link runs program %d, want %d", info.Program, idA)
	}
	wantAttached("the first program on the hook", idA)

	// Pin, drop the fd: the pin keeps the link; load it back from the pin.
	if err := l.Pin(path); err != nil {
		t.Fatalf("pin link: %v", err)
	}
	l.Close()
	wantAttached("the pinned link to stay without its fd", idA)
	l, err := LoadPinned(path)
	if err != nil {
		t.Fatalf("load pinned link: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	if got := linkInfo(t, l).ID; got != linkID {
		t.Fatalf("pinned link has id %d, want %d", got, linkID)
	}
	wantState(t, h, l, Attached)

	// Update in place, compare-and-swap: the link stays, its program changes.
	if !h.Updatable() {
		t.Fatalf("%s: Updatable() = false", tc.name)
	}
	if err := l.Update(progB, progA); err != nil {
		t.Fatalf("update link from %d to %d: %v", idA, idB, err)
	}
	info = linkInfo(t, l)
	if info.ID != linkID || info.Program != idB {
		t.Fatalf("after update: link %d runs %d, want link %d running %d", info.ID, info.Program, linkID, idB)
	}
	wantAttached("the updated program on the hook", idB)
	// A swap that expects a program no longer there must fail and change nothing.
	if err := l.Update(progA, progA); err == nil {
		t.Fatal("update with a stale old program succeeded")
	}
	if got := linkInfo(t, l).Program; got != idB {
		t.Fatalf("after a refused update the link runs %d, want %d", got, idB)
	}

	// Make-before-break: the new link is attached before the old one goes.
	if tc.exclusive {
		l2, err := h.Attach(progA)
		if err == nil {
			l2.Close()
			t.Fatalf("%s took a second link on the same target", tc.name)
		}
		if !errors.Is(err, unix.EBUSY) {
			t.Fatalf("second link on %s: %v, want EBUSY", tc.name, err)
		}
		wantAttached("the refused link to change nothing", idB)
	} else {
		l2 := mustAttach(t, h, progA)
		wantState(t, h, l2, Attached)
		wantAttached("both links on the hook", idB, idA)
		movePin(t, l2, path)
		l.Close()
		wantAttached("the old link gone once its pin moved and its fd closed", idA)
		moved, err := LoadPinned(path)
		if err != nil {
			t.Fatalf("load moved pin: %v", err)
		}
		movedID := linkInfo(t, moved).ID
		moved.Close()
		if want := linkInfo(t, l2).ID; movedID != want {
			t.Fatalf("pin holds link %d, want the new link %d", movedID, want)
		}
		l = l2
	}

	// The target goes away: the link lives on, defunct, and can still be
	// loaded from its pin.
	target.remove(t)
	testutil.WaitFor(t, 5*time.Second, "the link to turn defunct", func() bool {
		st, err := h.Check(l)
		return err == nil && st == Defunct
	})
	if err := l.Update(progB, nil); !errors.Is(err, unix.ENOLINK) {
		t.Errorf("update of a defunct link: %v, want ENOLINK", err)
	}
	defunct, err := LoadPinned(path)
	if err != nil {
		t.Fatalf("load defunct link from its pin: %v", err)
	}
	defunctID := linkInfo(t, defunct).ID
	wantState(t, h, defunct, Defunct)
	defunct.Close()
	if err := CheckTarget(h.Spec()); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("CheckTarget with the target gone: %v, want ErrTargetNotFound", err)
	}

	// The target is back: a defunct link stays defunct; make-before-break
	// onto a new link works for every hook, exclusive or not.
	target.recreate(t)
	if err := CheckTarget(h.Spec()); err != nil {
		t.Fatalf("CheckTarget with the target back: %v", err)
	}
	wantState(t, h, l, Defunct)
	l3 := mustAttach(t, h, progB)
	wantState(t, h, l3, Attached)
	movePin(t, l3, path)
	l.Close()
	wantAttached("the new link on the new target", idB)
	l3ID := linkInfo(t, l3).ID
	if l3ID == defunctID {
		t.Fatalf("the new link has the defunct link's id %d", l3ID)
	}
	testutil.WaitFor(t, 5*time.Second, "the defunct link to be released", func() bool {
		return linkGone(defunctID)
	})

	// Detach: unpin and close, and the hook is empty.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	l3.Close()
	wantAttached("an empty hook after detach")
	testutil.WaitFor(t, 5*time.Second, "the link to be released", func() bool { return linkGone(l3ID) })
}

// linkGone reports whether no link has id any more.
func linkGone(id link.ID) bool {
	l, err := link.NewFromID(id)
	if err == nil {
		l.Close()
		return false
	}
	return errors.Is(err, os.ErrNotExist)
}

// vethTarget makes conformance targets on a veth pair inside a fresh
// network namespace; attached reports what the kernel runs on an interface.
func vethTarget(attached func(tb testing.TB, ns *testutil.Netns, iface string) []ebpf.ProgramID) func(testing.TB, string) conformanceTarget {
	return func(tb testing.TB, name string) conformanceTarget {
		tb.Helper()
		ns := testutil.MustNetns(tb, "hooks")
		ifA, ifB := testutil.MustVethPair(tb, ns, ns)
		return conformanceTarget{
			hook:     mustHook(tb, name+":"+ifA.Name, ns.Path),
			other:    mustHook(tb, name+":"+ifB.Name, ns.Path),
			attached: func(tb testing.TB) []ebpf.ProgramID { return attached(tb, ns, ifA.Name) },
			// Deleting one end of a veth pair deletes both.
			remove: func(tb testing.TB) { mustIP(tb, "-n", ns.Name, "link", "del", ifA.Name) },
			recreate: func(tb testing.TB) {
				peer := ifA.Name + "p"
				mustIP(tb, "-n", ns.Name, "link", "add", ifA.Name, "type", "veth", "peer", "name", peer)
				mustIP(tb, "-n", ns.Name, "link", "set", ifA.Name, "up")
				mustIP(tb, "-n", ns.Name, "link", "set", peer, "up")
			},
		}
	}
}

// mustIP runs iproute2's ip and returns its output.
func mustIP(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// refusedWithout checks, on a kernel that lacks f, that attaching prog to
// h is refused with an error that names what it needs (want), and skips
// the test; on a kernel with f it does nothing.
func refusedWithout(t *testing.T, f *testutil.Feature, h Hook, prog *ebpf.Program, want string) {
	t.Helper()
	why := testutil.Missing(t, f)
	if why == "" {
		return
	}
	if err := attachErr(h, prog); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), want) {
		t.Fatalf("attach %s on a kernel without %s: %v, want ErrNotSupported saying %q", h.Spec(), f.Name, err, want)
	}
	t.Skipf("%s: checked that the hook says so", why)
}

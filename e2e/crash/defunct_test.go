package crashtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestDefunctLinkReattached deletes the filtered interface under a running
// bpfsup and its child, and creates an interface of the same name again: the
// link is defunct meanwhile (and status says so), and bpfsup attaches the
// filter to the new interface within a second, from a netlink notification,
// without touching the child.
func TestDefunctLinkReattached(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	sup := r.startReady(t)
	before := r.checkConverged(t)
	child := childPID(t, sup.Output())

	for round := 1; round <= 2; round++ {
		ip(t, "-n", n.nsA.Name, "link", "del", n.ifA.Name)
		testutil.WaitFor(t, 5*time.Second, "the link to go defunct in status", func() bool {
			o := r.status(t)
			return len(o.Links) == 1 && o.Links[0].State == "defunct"
		})
		sup.WaitOutput(t, "interface deleted", 5*time.Second)

		idx, attachedAfter := recreate(t, n, before.progs["xdp_drop"])
		t.Logf("round %d: filter attached to the new interface %v after it was created", round, attachedAfter.Round(time.Millisecond))
		if attachedAfter > time.Second {
			t.Errorf("round %d: the filter took %v to be attached again, want under a second", round, attachedAfter)
		}
		// Logged once the pin moved, a moment after the attach.
		testutil.WaitFor(t, 5*time.Second, "the re-attachment in the log", func() bool {
			return strings.Count(sup.Output(), "re-attached link") == round
		})
		o := r.status(t)
		if len(o.Links) != 1 || o.Links[0].State != "attached" || int(o.Links[0].Ifindex) != idx || o.Links[0].Target != n.ifB.Name {
			t.Errorf("round %d: status links after re-attach: %+v (new ifindex %d)", round, o.Links, idx)
		}
		if got := childPID(t, sup.Output()); got != child || strings.Count(sup.Output(), "child started") != 1 {
			t.Errorf("round %d: the child was restarted (pid %d, was %d)", round, got, child)
		}
		if o.Supervisor == nil || o.Supervisor.ChildPID != child {
			t.Errorf("round %d: status supervisor %+v, want child pid %d", round, o.Supervisor, child)
		}
	}
	stop(t, sup)
}

// recreate creates the veth pair of n again under the same names, as a
// container restart would, and waits for the filter (program prog) on the
// new ifB. It returns the new ifindex and how long after the creation began
// the filter ran on it.
func recreate(t testing.TB, n *netRig, prog uint32) (int, time.Duration) {
	t.Helper()
	created := time.Now()
	ip(t, "link", "add", n.ifA.Name, "netns", n.nsA.Name, "type", "veth", "peer", "name", n.ifB.Name, "netns", n.nsB.Name)
	var idx int
	var after time.Duration
	testutil.WaitFor(t, 5*time.Second, "the filter on the new "+n.ifB.Name, func() bool {
		if idx == 0 {
			if err := n.nsB.Do(func() (err error) { idx, err = e2e.IfIndex(n.ifB.Name); return err }); err != nil {
				idx = 0
				return false
			}
		}
		id, err := n.xdp.progID(idx)
		after = time.Since(created)
		return err == nil && id == prog
	})
	return idx, after
}

// BenchmarkDefunctReattach measures how long after an interface of the
// filtered name is created again bpfsup's filter runs on it (the interface's
// creation included): one deletion and re-creation per iteration.
func BenchmarkDefunctReattach(b *testing.B) {
	n := newNetRig(b)
	r := newRig(b, n)
	r.seedDropPorts(b)
	sup := r.startReady(b)
	st := r.checkConverged(b)
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ip(b, "-n", n.nsA.Name, "link", "del", n.ifA.Name)
		b.StartTimer()
		_, after := recreate(b, n, st.progs["xdp_drop"])
		total += after
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/reattach")
	stop(b, sup)
}

// childPID is the pid of the last child bpfsup logged it started in out.
func childPID(t testing.TB, out string) int {
	t.Helper()
	pids := e2e.PIDs(e2e.ChildStartedRE, out)
	if len(pids) == 0 {
		t.Fatalf("no child started in the output:\n%s", out)
	}
	return pids[len(pids)-1]
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestRelinkLeavesForeignLink: while bpfsup's link is defunct (its
// interface deleted), another tool pins a link of its own at the link's
// path, on an interface of its own. When the interface is back, bpfsup does
// not replace that pin (which would release the other tool's link and
// unfilter its interface): it says so, and status reports the pin as not
// bpfsup's. Before, the re-attach moved bpfsup's new link over it.
func TestRelinkLeavesForeignLink(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	sup := r.startReady(t)
	r.checkConverged(t)

	ip(t, "-n", n.nsA.Name, "link", "del", n.ifA.Name)
	sup.WaitOutput(t, "interface deleted", 5*time.Second)
	prog, _ := foreignCounter(t)
	other, _ := testutil.MustVethPair(t, n.nsB, n.nsB)
	pin := r.pinPath("links", "xdp_drop")
	remove(t, pin)
	foreignLink := attachXDP(t, n.nsB, other.Name, prog, pin)

	ip(t, "link", "add", n.ifA.Name, "netns", n.nsA.Name, "type", "veth", "peer", "name", n.ifB.Name, "netns", n.nsB.Name)
	testutil.WaitFor(t, 10*time.Second, "bpfsup to leave the foreign link pin alone, and say so", func() bool {
		return strings.Contains(sup.Output(), "which bpfsup did not make; left alone")
	})
	if got := uint32(e2e.PinnedLinkInfo(t, pin).ID); got != foreignLink {
		t.Errorf("%s holds link %d, want the other tool's %d", pin, got, foreignLink)
	}
	if o := r.status(t); o.Healthy {
		t.Errorf("status calls it healthy with another tool's link at bpfsup's path: %+v", o)
	}
	stop(t, sup)
}

// TestReattachLeavesForeignBeside: another tool's things beside bpfsup's
// (its own directory under the pin root with an XDP link it pinned, on an
// interface of its own; a map it pinned in bpfsup's maps directory under a
// name the manifest does not record; a directory of its own in bpfsup's object
// directory) come through a re-attachment as they were: bpfsup replaces its
// own link pin and nothing else.
func TestReattachLeavesForeignBeside(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	sup := r.startReady(t)
	before := r.checkConverged(t)

	ip(t, "-n", n.nsA.Name, "link", "del", n.ifA.Name)
	sup.WaitOutput(t, "interface deleted", 5*time.Second)
	intact := foreignBeside(t, r.env.PinRoot, r.objDir(), n.nsB)
	recreate(t, n, before.progs["xdp_drop"])
	testutil.WaitFor(t, 5*time.Second, "the re-attachment in the log", func() bool {
		return strings.Contains(sup.Output(), "re-attached link")
	})
	intact("after the re-attachment")
	o := r.status(t)
	if len(o.Links) != 1 || o.Links[0].State != "attached" {
		t.Errorf("bpfsup's link after the re-attachment: %+v", o.Links)
	}
	stop(t, sup)
	intact("after bpfsup stopped")
}

// foreignBeside puts what another tool would keep beside bpfsup's object:
// its own directory under pinRoot holding an XDP link it attached to an
// interface of its own in ns and pinned; and, when objDir is not empty, a
// map pinned in objDir's maps directory under a name no manifest records,
// and a directory of its own in objDir. The returned check fails the test
// when any of it changed.
func foreignBeside(t *testing.T, pinRoot, objDir string, ns *testutil.Netns) (intact func(when string)) {
	t.Helper()
	prog, _ := foreignCounter(t)
	theirs, _ := testutil.MustVethPair(t, ns, ns)
	linkPin := filepath.Join(pinRoot, "othertool", "links", "fw")
	linkID := attachXDP(t, ns, theirs.Name, prog, linkPin)
	var mapPin, notes string
	var mapID ebpf.MapID
	if objDir != "" {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "theirs", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		mapPin = filepath.Join(objDir, "maps", "theirs")
		if err := m.Pin(mapPin); err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		mapID, _ = info.ID()
		// bpffs holds directories and pins, no files.
		notes = filepath.Join(objDir, "notes", "2026")
		if err := os.MkdirAll(notes, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return func(when string) {
		t.Helper()
		if got := uint32(e2e.PinnedLinkInfo(t, linkPin).ID); got != linkID {
			t.Errorf("%s: %s holds link %d, want the other tool's %d", when, linkPin, got, linkID)
		}
		if objDir == "" {
			return
		}
		m, err := ebpf.LoadPinnedMap(mapPin, nil)
		if err != nil {
			t.Errorf("%s: the other tool's map at %s: %v", when, mapPin, err)
		} else {
			info, _ := m.Info()
			if id, _ := info.ID(); id != mapID {
				t.Errorf("%s: %s holds map %d, want the other tool's %d", when, mapPin, id, mapID)
			}
			m.Close()
		}
		if fi, err := os.Stat(notes); err != nil || !fi.IsDir() {
			t.Errorf("%s: the other tool's directory %s: %v", when, notes, err)
		}
	}
}

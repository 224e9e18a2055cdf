package crashtest

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The fd store's tests run bpfsup under a stand-in for systemd's notify
// socket that keeps a file descriptor store as systemd does
// (testutil.NotifyListener), and start it again the way systemd starts a
// service with a store: the stored fds from 3 on, named in LISTEN_FDNAMES.
// make systemd runs the same under systemd itself.

// storeNames is what the store holds for the rig's object: every pin.
var storeNames = []string{
	"dropfilter/links/xdp_drop",
	"dropfilter/maps/drop_count", "dropfilter/maps/drop_ports",
	"dropfilter/programs/tc_drop", "dropfilter/programs/xdp_drop",
}

// startStored starts bpfsup as systemd would: NOTIFY_SOCKET is ln's, and
// what ln's store holds is handed back.
func (r *rig) startStored(t testing.TB, ln *testutil.NotifyListener, extra ...string) *testutil.Proc {
	t.Helper()
	cmd := exec.Command(r.env.Bin, r.runArgs(extra...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ln.Path)
	stored := ln.Stored(t)
	testutil.HandBack(cmd, stored)
	p := testutil.StartProc(t, cmd)
	for _, s := range stored {
		s.File.Close()
	}
	p.WaitOutput(t, "child started", 20*time.Second)
	return p
}

// waitStore waits until ln's store holds exactly storeNames.
func waitStore(t testing.TB, ln *testutil.NotifyListener) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("the fd store to hold %q", storeNames), func() bool {
		names := ln.StoreNames()
		slices.Sort(names)
		return slices.Equal(names, storeNames)
	})
}

// childEnviron is the environment of the supervisor's child.
func (r *rig) childEnviron(t testing.TB) map[string]string {
	t.Helper()
	var pid int
	testutil.WaitFor(t, 10*time.Second, "the child's pid in status", func() bool {
		if s := r.status(t).Supervisor; s != nil {
			pid = s.ChildPID
		}
		return pid != 0
	})
	return e2e.Environ(t, pid)
}

// With the fd store, every pin of bpfsup's may go while bpfsup is down:
// the store keeps the link, and so the filter, and the next start pins
// everything again from the fds systemd hands back and adopts it, the same
// link, programs and maps. The fds are bpfsup's: the child gets only its
// own, named as always.
func TestFDStoreOutlivesPins(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	ln := testutil.ListenNotify(t)
	sup := r.startStored(t, ln, "--fd-store")
	ln.WaitFor(t, "READY=1")
	waitStore(t, ln)
	before := r.checkConverged(t)
	s := n.startSampler(t, r.linkPins()...)
	n.traffic.waitPassing(t)

	kill(t, sup)
	if err := os.RemoveAll(r.objDir()); err != nil {
		t.Fatal(err)
	}
	n.traffic.waitPassing(t) // the filter filters with nothing pinned

	sup = r.startStored(t, ln, "--fd-store")
	if !strings.Contains(sup.Output(), "pinned again from systemd's fd store") {
		t.Errorf("bpfsup did not say it pinned again from the fd store:\n%s", sup.Output())
	}
	if adopted, loaded := e2e.InstallCounts(t, sup.Output(), objName); loaded != 0 || adopted != 2 {
		t.Errorf("the start adopted %d programs and loaded %d, want 2 and 0", adopted, loaded)
	}
	after := r.checkConverged(t)
	if after.link != before.link || !maps.Equal(after.progs, before.progs) || !maps.Equal(after.maps, before.maps) {
		t.Errorf("after the store's restore: link %d, programs %v, maps %v; before: %d, %v, %v",
			after.link, after.progs, after.maps, before.link, before.progs, before.maps)
	}
	n.traffic.waitPassing(t)
	s.check(t)
	waitStore(t, ln)

	cenv := r.childEnviron(t)
	names := strings.Split(cenv["LISTEN_FDNAMES"], ":")
	want := []string{"dropfilter/maps/drop_count", "dropfilter/maps/drop_ports"}
	if !slices.Equal(names, want) || cenv["LISTEN_FDS"] != "2" {
		t.Errorf("the child has LISTEN_FDS=%s LISTEN_FDNAMES=%s, want its own two maps only", cenv["LISTEN_FDS"], cenv["LISTEN_FDNAMES"])
	}
	stop(t, sup)
}

// A unit that turned the store off: what systemd hands back is dropped
// from the store once the objects are installed, and the pins hold them.
func TestFDStoreTurnedOff(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	ln := testutil.ListenNotify(t)
	sup := r.startStored(t, ln, "--fd-store")
	waitStore(t, ln)
	before := r.checkConverged(t)
	kill(t, sup)

	sup = r.startStored(t, ln)
	testutil.WaitFor(t, 10*time.Second, "the fd store to be emptied", func() bool { return len(ln.StoreNames()) == 0 })
	if after := r.checkConverged(t); after.link != before.link {
		t.Errorf("link %d after the store was dropped, want %d", after.link, before.link)
	}
	stop(t, sup)
}

// pins = false: nothing on the system's bpffs, ever; the objects live in
// the fd store, and their pins on a bpffs of bpfsup's own, which status
// reads through /proc/PID/root. A reload upgrades in place and the store
// follows; a crash of bpfsup adopts from the store what it held.
func TestFDStoreWithoutPins(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	ln := testutil.ListenNotify(t)
	cfg := filepath.Join(t.TempDir(), "bpfsup.toml")
	config := fmt.Sprintf("fd_store = true\npins = false\n[[object]]\npath = %q\n[[object.attach]]\nprogram = \"xdp_drop\"\nhook = \"xdp:%s\"\n",
		r.objPath, r.ifB.Name)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	r.config = cfg
	nothingPinned := func(when string) {
		t.Helper()
		if got := e2e.DirEntries(t, r.env.PinRoot); len(got) != 0 {
			t.Errorf("%s: the pin root %s holds %v, want nothing (pins = false)", when, r.env.PinRoot, got)
		}
	}

	sup := r.startStored(t, ln)
	ln.WaitFor(t, "READY=1")
	waitStore(t, ln)
	nothingPinned("running")
	o := r.status(t)
	via := fmt.Sprintf("/proc/%d/root", sup.Pid())
	if o.PinsVia != via || !o.Healthy || len(o.Links) != 1 {
		t.Fatalf("status: pins_via %q (want %q), healthy %v, links %+v, problems %q", o.PinsVia, via, o.Healthy, o.Links, o.Problems)
	}
	e2e.PutPinned(t, via+r.pinPath("maps", "drop_ports"), uint16(n.traffic.dropPort), uint8(1))
	link, prog := o.Links[0].ID, o.Links[0].ProgramID
	s := n.startSampler(t, via+r.pinPath("links", "xdp_drop"))
	n.traffic.waitPassing(t)

	// An upgrade: the same link, a new program, and the store follows.
	r.setObject(t, v2)
	e2e.MustRun(t, r.env, "reload")
	o = r.status(t)
	if len(o.Links) != 1 || o.Links[0].ID != link || o.Links[0].ProgramID == prog {
		t.Fatalf("after the reload: links %+v; want link %d running a new program", o.Links, link)
	}
	prog = o.Links[0].ProgramID
	testutil.WaitFor(t, 10*time.Second, "the store to hold the new program", func() bool {
		for _, sf := range ln.Stored(t) {
			defer sf.File.Close()
			if sf.Name == "dropfilter/programs/xdp_drop" {
				fd := int(sf.File.Fd())
				kind, _ := bpffs.FDKind(fd)
				return bpffs.FDInfo(fd, kind).ID == prog
			}
		}
		return false
	})
	waitStore(t, ln)

	// A self-upgrade re-executes bpfsup in its mount namespace: the pins
	// stay where it sees them, and nothing new goes to the store.
	storeLines := ln.Count("FDSTORE=1")
	sup.Kill(syscall.SIGUSR2)
	testutil.WaitFor(t, 20*time.Second, "bpfsup to re-execute and install", func() bool {
		return strings.Count(sup.Output(), "msg=re-executed") == 1 && strings.Count(sup.Output(), "objects installed") == 2
	})
	if out := sup.Output(); !strings.Contains(out[strings.LastIndex(out, "objects installed"):], "adopted=2 loaded=0") {
		t.Errorf("the re-executed bpfsup did not adopt both programs:\n%s", out)
	}
	if o = r.status(t); !o.Healthy || len(o.Links) != 1 || o.Links[0].ID != link {
		t.Errorf("after the re-exec: healthy %v, links %+v, problems %q", o.Healthy, o.Links, o.Problems)
	}
	if n := ln.Count("FDSTORE=1"); n != storeLines {
		t.Errorf("the re-executed bpfsup stored %d fds again; the store held them", n-storeLines)
	}
	nothingPinned("re-executed")

	kill(t, sup)
	nothingPinned("bpfsup killed")
	n.traffic.waitPassing(t)

	sup = r.startStored(t, ln)
	if adopted, loaded := e2e.InstallCounts(t, sup.Output(), objName); loaded != 0 || adopted != 2 {
		t.Errorf("the start adopted %d programs and loaded %d, want 2 and 0", adopted, loaded)
	}
	o = r.status(t)
	if len(o.Links) != 1 || o.Links[0].ID != link || o.Links[0].ProgramID != prog || !o.Healthy {
		t.Errorf("after the restart: links %+v, problems %q; want link %d running program %d", o.Links, o.Problems, link, prog)
	}
	nothingPinned("restarted")
	n.traffic.waitPassing(t)
	s.check(t)
	stop(t, sup)

	// Stopped, with the store still holding the objects: status says so.
	o = r.status(t)
	if o.Healthy || !strings.Contains(strings.Join(o.Problems, "\n"), "fd store alone") {
		t.Errorf("status of a stopped pins = false object: healthy %v, problems %q", o.Healthy, o.Problems)
	}
	// down cannot reach the store, and says so.
	if out := e2e.MustRun(t, r.env, "down"); !strings.Contains(out, "still attached: dropfilter was kept in the fd store") {
		t.Errorf("bpfsup down of a stored object says\n%s", out)
	}
}

// The store needs systemd, and pins = false needs the store: both said
// before anything is done.
func TestFDStoreMisuse(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	cases := []struct {
		name  string
		env   []string
		flags []string
		want  string
	}{
		{"no notify socket", nil, []string{"--fd-store"}, "NOTIFY_SOCKET is not set"},
		{"no pins, no store", nil, []string{"--pins=false"}, "pins = false needs fd_store = true"},
		{"store too small", []string{"FDSTORE=3"}, []string{"--fd-store"}, "FileDescriptorStoreMax=3 is too small"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ln := testutil.ListenNotify(t)
			env := append([]string{"NOTIFY_SOCKET=" + ln.Path}, c.env...)
			if c.name == "no notify socket" {
				env = []string{"NOTIFY_SOCKET="}
			}
			p := r.start(t, env, c.flags...)
			if code := exitCode(t, p, 20*time.Second); code == 0 {
				t.Fatalf("bpfsup run %v exited 0:\n%s", c.flags, p.Output())
			}
			if !strings.Contains(p.Output(), c.want) {
				t.Errorf("bpfsup run %v says\n%s\nwant %q", c.flags, p.Output(), c.want)
			}
		})
	}
}

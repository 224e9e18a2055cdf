package skeleton

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// `bpfsup down` detaches and unpins: afterwards no pin, no attached program,
// no link, no lock or manifest remains, whether the supervisor stopped
// cleanly or was killed.
func TestDown(t *testing.T) {
	for _, stop := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(stop.String(), func(t *testing.T) {
			r := newCounterRig(t)
			before := r.ids(t)
			requireAttached(t, r.ifB, before.link, before.countPackets)

			// Not while a supervisor holds the object.
			out, code := r.env.Run(t, "down")
			if code == 0 || !strings.Contains(out, "counter") || !strings.Contains(out, "locked") {
				t.Fatalf("bpfsup down with a supervisor running: exit %d, want an error naming the object and the lock:\n%s", code, out)
			}
			requireAttached(t, r.ifB, before.link, before.countPackets)

			// Nor given another state directory, where neither the lock
			// file nor the manifest of the running supervisor is: nothing
			// there says the pins are bpfsup's, and they are locked too.
			other := t.TempDir()
			out, code = r.env.Run(t, "down", "--state-dir", other)
			if code != 0 || !strings.Contains(out, "left alone: "+filepath.Join(r.env.PinRoot, "counter")) || !strings.Contains(out, "held by pid "+strconv.Itoa(r.sup.Pid())) {
				t.Fatalf("bpfsup down with another state directory: exit %d, want the object left alone, naming the supervisor's pid %d:\n%s", code, r.sup.Pid(), out)
			}
			out, code = r.env.Run(t, "down", "--state-dir", other, "counter")
			if code == 0 || !strings.Contains(out, "not bpfsup's") {
				t.Fatalf("bpfsup down counter with another state directory: exit %d, want an error: not bpfsup's:\n%s", code, out)
			}
			out, code = r.env.Run(t, "run", "--state-dir", other, "-o", testutil.BPFObject("counter"), "--", "/bin/true")
			if code == 0 || !strings.Contains(out, "held by pid "+strconv.Itoa(r.sup.Pid())) {
				t.Fatalf("a second bpfsup run with another state directory: exit %d, want it refused:\n%s", code, out)
			}
			requireAttached(t, r.ifB, before.link, before.countPackets)

			r.sup.Kill(stop)
			<-r.sup.Done()
			testutil.WaitProcGone(t, r.child.pid, waitTimeout)
			requireAttached(t, r.ifB, before.link, before.countPackets)

			e2e.MustRun(t, r.env, "down")
			if left := e2e.TreeEntries(t, r.env.PinRoot); len(left) > 0 {
				t.Errorf("left under the pin root: %v", left)
			}
			for _, name := range e2e.TreeEntries(t, r.env.StateDir) {
				if strings.HasPrefix(name, "counter.") {
					t.Errorf("left in the state directory: %s", filepath.Join(r.env.StateDir, name))
				}
			}
			// The kernel frees a link and its programs once the last
			// reference is gone, a little later than the unpinning.
			testutil.WaitFor(t, waitTimeout, "the link, the programs and the map to be freed", func() bool {
				return e2e.LinkGone(link.ID(before.link)) &&
					e2e.ProgramGone(ebpf.ProgramID(before.countPackets)) &&
					e2e.ProgramGone(ebpf.ProgramID(before.countTC)) &&
					e2e.MapGone(ebpf.MapID(before.counters))
			})
			if id := e2e.IPLinkXDP(t, r.ifB.Netns, r.ifB.Name); id != 0 {
				t.Errorf("ip link shows XDP program %d on %s after down", id, r.ifB.Name)
			}
			if got := netAttachments(t, r.ifB.Netns, r.ifB.Name); len(got) > 0 {
				t.Errorf("bpftool net shows %v on %s after down", got, r.ifB.Name)
			}
			if out, err := exec.Command("bpftool", "link", "show", "id", strconv.FormatUint(uint64(before.link), 10)).CombinedOutput(); err == nil {
				t.Errorf("bpftool still shows link %d:\n%s", before.link, out)
			}
			if st := e2e.Status(t, r.env); len(st.Objects) != 0 {
				t.Errorf("status after down: %+v", st.Objects)
			}
		})
	}
}

// `bpfsup down` removes only what bpfsup's manifests record, and lists the
// rest as left alone: the files of a pin root that is a plain directory (a
// typo), the whole of /sys/fs/bpf given as the pin root, another tool's
// pinned XDP link beside bpfsup's object (its interface stays filtered), and
// another tool's map and notes inside bpfsup's object directory. Named, what
// is not bpfsup's is an error.
func TestDownLeavesForeign(t *testing.T) {
	r := newCounterRig(t)
	before := r.ids(t)

	// A plain directory: refused, nothing removed.
	plain := t.TempDir()
	thesis := filepath.Join(plain, "docs", "thesis.txt")
	if err := os.MkdirAll(filepath.Dir(thesis), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(thesis, []byte("years of work\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := r.env.Run(t, "down", "--pin-root", plain)
	if code == 0 || !strings.Contains(out, "not on bpffs") {
		t.Errorf("bpfsup down on a plain directory: exit %d, want it refused as not on bpffs:\n%s", code, out)
	}
	if _, err := os.Stat(thesis); err != nil {
		t.Fatalf("bpfsup down on a plain directory removed a file in it: %v", err)
	}

	// Another tool's pinned XDP link, on an interface of its own, beside
	// bpfsup's object; its map and notes in bpfsup's object directory.
	a, b := testutil.MustNetns(t, "down-fa"), testutil.MustNetns(t, "down-fb")
	_, theirIf := testutil.MustVethPair(t, a, b)
	theirProg, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer theirProg.Close()
	var theirLink link.Link
	if err := b.Do(func() (err error) {
		theirLink, err = link.AttachXDP(link.XDPOptions{Program: theirProg, Interface: theirIf.Index, Flags: link.XDPGenericMode})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	theirDir := filepath.Join(r.env.PinRoot, "theirs")
	if err := os.MkdirAll(theirDir, 0o700); err != nil {
		t.Fatal(err)
	}
	theirPin := filepath.Join(theirDir, "xdp_link")
	if err := theirLink.Pin(theirPin); err != nil {
		t.Fatal(err)
	}
	theirLink.Close() // the pin holds it now, as another tool's would
	theirMap, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer theirMap.Close()
	theirMapPin := filepath.Join(r.env.PinRoot, "counter", "maps", "their_map")
	if err := theirMap.Pin(theirMapPin); err != nil {
		t.Fatal(err)
	}
	theirNotes := filepath.Join(r.env.PinRoot, "counter", "notes")
	if err := os.Mkdir(theirNotes, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(theirPin)
		os.Remove(theirDir)
		os.Remove(theirMapPin)
		os.Remove(theirNotes)
	})
	theirProgID := e2e.IPLinkXDP(t, b, theirIf.Name)

	// All of /sys/fs/bpf, a typo for the pin root: no manifest in the state
	// directory names it, so nothing at all is removed.
	out, code = r.env.Run(t, "down", "--pin-root", testutil.MustBPFFS(t))
	if code != 0 {
		t.Errorf("bpfsup down --pin-root /sys/fs/bpf: exit %d, want 0 with everything left alone:\n%s", code, out)
	}
	if !strings.Contains(out, "left alone: "+r.env.PinRoot) {
		t.Errorf("bpfsup down --pin-root /sys/fs/bpf does not list %s as left alone:\n%s", r.env.PinRoot, out)
	}
	requireAttached(t, r.ifB, before.link, before.countPackets)

	r.sup.Kill(syscall.SIGTERM)
	<-r.sup.Done()
	out, code = r.env.Run(t, "down", "theirs")
	if code == 0 || !strings.Contains(out, "not bpfsup's") {
		t.Errorf("bpfsup down theirs: exit %d, want an error: not bpfsup's:\n%s", code, out)
	}
	out = e2e.MustRun(t, r.env, "down")
	e2e.WantAll(t, out, "removed counter", "left alone: "+theirDir, "left alone: "+theirMapPin, "left alone: "+theirNotes)
	for _, p := range []string{theirPin, theirMapPin, theirNotes} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("bpfsup down removed %s, which is another tool's: %v", p, err)
		}
	}
	if id := e2e.IPLinkXDP(t, b, theirIf.Name); id != theirProgID || id == 0 {
		t.Errorf("after bpfsup down, %s runs XDP program %d, want the other tool's %d", theirIf.Name, id, theirProgID)
	}
	testutil.WaitFor(t, waitTimeout, "bpfsup's XDP program to leave its interface", func() bool {
		return e2e.IPLinkXDP(t, r.ifB.Netns, r.ifB.Name) == 0
	})
}

// Two pin roots with one state directory: a start under the second pin root
// is refused, naming the first, and leaves the first's manifest and pins as
// they were. Before, it overwrote the manifest, and the first root's
// programs were left attached with nothing saying bpfsup made them (down
// left them alone).
func TestOneStateDirOnePinRoot(t *testing.T) {
	a := testutil.MustEnv(t)
	ns := testutil.MustNetns(t, "onestate")
	v1, v2 := testutil.MustVethPair(t, ns, ns)
	obj := testutil.BPFObject("counter")
	if out, code := a.Run(t, "run", "--netns", ns.Path, "--restart", "never", "-o", obj, "-a", "count_packets@xdp:"+v1.Name, "--", "true"); code != 0 {
		t.Fatalf("first start: exit %d\n%s", code, out)
	}
	manifest := filepath.Join(a.StateDir, "counter.json")
	before, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}

	b := testutil.MustEnv(t)
	b.StateDir = a.StateDir
	out, code := b.Run(t, "run", "--netns", ns.Path, "--restart", "never", "-o", obj, "-a", "count_packets@xdp:"+v2.Name, "--", "true")
	if code == 0 || !strings.Contains(out, "the state directory serves another pin root") || !strings.Contains(out, a.PinRoot) {
		t.Fatalf("a start under another pin root with the same state directory: exit %d, want a refusal naming %s:\n%s", code, a.PinRoot, out)
	}
	if after, _ := os.ReadFile(manifest); string(after) != string(before) {
		t.Errorf("the refused start changed %s", manifest)
	}
	if entries, _ := os.ReadDir(b.PinRoot); len(entries) != 0 {
		t.Errorf("the refused start made %v under %s", entries, b.PinRoot)
	}
	if o := e2e.ObjectStatus(t, a, "counter"); !o.Healthy {
		t.Errorf("the first pin root's object after the refused start: %+v", o.Problems)
	}
}

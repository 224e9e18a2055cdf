package crashtest

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestNetnsRecreatedReattached: bpfsup runs on the host with --netns X and
// filters an interface in X. X is deleted (ip netns del) and made again
// with an interface of the same name (a container restart does this): the
// new interface gets the filter, with traffic to the dropped port and to an
// open port counted on it, without a restart of bpfsup. Meanwhile status
// does not call the old link attached, and afterwards it names the new
// namespace's inode. Before, bpfsup's watch kept the old namespace alive,
// nothing was attached in the new one, and status said attached.
func TestNetnsRecreatedReattached(t *testing.T) {
	e := testutil.MustEnv(t)
	a, x := testutil.MustNetns(t, "nsre-a"), testutil.MustNetns(t, "nsre-x")
	ifA, ifX := testutil.MustVethPair(t, a, x)
	const dropPort, openPort = 7001, 7002
	obj := testutil.BPFObject(v1)
	sup := e.Start(t, "run", "--netns", x.Path, "-o", obj, "-a", "xdp_drop@xdp:"+ifX.Name, "--", "sleep", "3600")
	sup.WaitOutput(t, "child started", 20*time.Second)
	dropPorts, err := ebpf.LoadPinnedMap(e.PinRoot+"/"+objName+"/maps/drop_ports", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dropPorts.Close()
	if err := dropPorts.Put(uint16(dropPort), uint8(1)); err != nil {
		t.Fatal(err)
	}
	oldInode := x.Inode(t)
	// Another tool's link beside bpfsup's, on an interface in a namespace
	// that stays: the re-attachment in the new namespace leaves it be.
	intact := foreignBeside(t, e.PinRoot, "", a)

	// traffic sends to both ports of x's end until the returned stop, and
	// counts what arrives.
	traffic := func(ifX testutil.Veth) (dropped, open *testutil.UDPReceiver, stop func()) {
		dropped = testutil.StartUDPReceiver(t, x, dropPort)
		open = testutil.StartUDPReceiver(t, x, openPort)
		s1 := testutil.StartUDPSender(t, a, netip.AddrPortFrom(ifX.Addr, dropPort), 500)
		s2 := testutil.StartUDPSender(t, a, netip.AddrPortFrom(ifX.Addr, openPort), 500)
		return dropped, open, func() {
			s1.Stop()
			s2.Stop()
			dropped.Stop()
			open.Stop()
		}
	}
	dropped, open, stopTraffic := traffic(ifX)
	open.WaitCount(t, 200, 10*time.Second)
	stopTraffic()
	if n := dropped.Count(); n != 0 {
		t.Fatalf("%d datagrams to the dropped port arrived before the namespace was touched", n)
	}

	x.Delete(t)
	testutil.WaitFor(t, 10*time.Second, "status to stop calling the link attached", func() bool {
		o := e2e.ObjectStatus(t, e, objName)
		return len(o.Links) == 1 && o.Links[0].State != "attached" && !o.Healthy
	})
	sup.WaitOutput(t, "network namespace is gone", 10*time.Second)
	// Nothing holds the old namespace once bpfsup let go of it: it goes,
	// and the veth pair with it (its end in a too).
	testutil.WaitFor(t, 20*time.Second, "the old namespace to go, with its veth pair", func() bool {
		return exec.Command("ip", "-n", a.Name, "link", "show", "dev", ifA.Name).Run() != nil
	})

	x.Add(t)
	_, ifX = testutil.MustVethPairLike(t, ifA, ifX)
	// The kernel may give the new namespace the old one's inode number,
	// now that the old one is gone.
	newInode := x.Inode(t)
	testutil.WaitFor(t, 10*time.Second, "the filter to run on the interface of the new namespace", func() bool {
		o := e2e.ObjectStatus(t, e, objName)
		return len(o.Links) == 1 && o.Links[0].State == "attached" && o.Links[0].NetnsInode == newInode && o.Healthy
	})
	dropped, open, stopTraffic = traffic(ifX)
	open.WaitCount(t, 500, 10*time.Second)
	stopTraffic()
	if n := dropped.Count(); n != 0 {
		t.Errorf("%d datagrams to the dropped port arrived on the interface of the namespace made again", n)
	}
	intact("after the re-attachment in the new namespace")
	t.Logf("re-attached in the new namespace (inode %d, was %d); %d datagrams to the open port, 0 to the dropped one",
		newInode, oldInode, open.Count())
	if strings.Count(sup.Output(), "child started") != 1 {
		t.Errorf("the child was restarted:\n%s", sup.Output())
	}
}

// TestBPFFSUnmountedUnderSupervisor: the bpffs of the pin root is unmounted
// (umount -l: bpfsup holds its directories open) under a running bpfsup.
// bpfsup says so at once; the filter keeps filtering (bpfsup holds the
// link); a reload fails with an error that says why and makes nothing on
// the file system beneath; and once a bpffs is mounted there again, every
// pin is made again from what bpfsup holds, the same link among them.
// Before, nothing was logged until a reload failed, and that reload made
// directories on the file system beneath.
func TestBPFFSUnmountedUnderSupervisor(t *testing.T) {
	e := testutil.MustEnv(t)
	mnt := t.TempDir()
	mountBPFFS := func() {
		if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
			t.Fatalf("mount bpffs at %s: %v", mnt, err)
		}
	}
	mountBPFFS()
	t.Cleanup(func() {
		// Every bpffs mounted there, before TempDir's clean-up removes it.
		for unix.Unmount(mnt, unix.MNT_DETACH) == nil {
		}
	})
	e.PinRoot = mnt + "/root"
	a, x := testutil.MustNetns(t, "bpffs-a"), testutil.MustNetns(t, "bpffs-x")
	_, ifX := testutil.MustVethPair(t, a, x)
	sup := e.Start(t, "run", "--netns", x.Path, "-o", testutil.BPFObject(v1), "-a", "xdp_drop@xdp:"+ifX.Name, "--", "sleep", "3600")
	sup.WaitOutput(t, "child started", 20*time.Second)
	before := e2e.ObjectStatus(t, e, objName)
	if len(before.Links) != 1 || !before.Healthy {
		t.Fatalf("status before: %+v", before)
	}
	linkID := before.Links[0].ID

	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil { // umount -l
		t.Fatalf("umount -l %s: %v", mnt, err)
	}
	sup.WaitOutput(t, "pins are gone with their bpffs", 10*time.Second)
	if got := xdpProgOn(t, x, ifX.Name); got == 0 {
		t.Errorf("%s runs no XDP program after the unmount: the link went with the pins", ifX.Name)
	}
	out, code := e.Run(t, "reload")
	if code == 0 || !strings.Contains(out, "no longer") {
		t.Errorf("bpfsup reload with bpffs gone: exit %d, want an error that says the pin directory is gone:\n%s", code, out)
	}
	if entries, _ := os.ReadDir(mnt); len(entries) != 0 {
		t.Errorf("with bpffs gone, %s (the file system beneath) holds %d entries: bpfsup made something there", mnt, len(entries))
	}

	mountBPFFS()
	sup.WaitOutput(t, "bpffs is back at the pin root", 10*time.Second)
	after := e2e.ObjectStatus(t, e, objName)
	if len(after.Links) != 1 || after.Links[0].ID != linkID || !after.Healthy || len(after.Maps) != 2 || len(after.Programs) != 2 {
		t.Errorf("status once bpffs is back: %+v; want healthy, link %d, 2 maps, 2 programs", after, linkID)
	}
	if out, code := e.Run(t, "reload"); code != 0 {
		t.Errorf("bpfsup reload once bpffs is back: exit %d\n%s", code, out)
	}
}

// xdpProgOn is the id of the XDP program on ifname in ns, 0 for none.
func xdpProgOn(t *testing.T, ns *testutil.Netns, ifname string) uint32 {
	t.Helper()
	q := newXDPQuery(t, ns)
	defer q.close()
	var idx int
	if err := ns.Do(func() (err error) { idx, err = e2e.IfIndex(ifname); return err }); err != nil {
		t.Fatal(err)
	}
	id, err := q.progID(idx)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

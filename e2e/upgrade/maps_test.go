package upgrade

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestUpgradeIncompatibleMap upgrades dropfilter to dropfilter_bigmap, whose
// drop_ports has 128 entries instead of 64, with reset = true (a new, empty
// map) and with migrate = "copy" (a new map with the old entries). Without
// either the upgrade is refused (see TestUpgradeFailures).
func TestUpgradeIncompatibleMap(t *testing.T) {
	for _, mode := range []string{"reset = true", `migrate = "copy"`} {
		t.Run(strings.Fields(mode)[0], func(t *testing.T) { testIncompatibleMap(t, mode) })
	}
}

// xdpDropfilter deploys dropfilter in a directory of the test and writes a
// configuration that attaches its xdp_drop to a veth in a namespace pair
// (named after prefix), with drop_ports configured by mode (when not "").
func xdpDropfilter(t *testing.T, prefix, mode string) (nsS, nsR *testutil.Netns, x testutil.Veth, obj, cfgPath string) {
	t.Helper()
	nsS, nsR = testutil.MustNetns(t, prefix+"-send"), testutil.MustNetns(t, prefix+"-recv")
	_, x = testutil.MustVethPair(t, nsS, nsR)
	dir := t.TempDir()
	obj = filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	cfgPath = filepath.Join(dir, "bpfsup.toml")
	c := config{object: obj, netns: nsR.Path, attach: []attachment{{"xdp_drop", "xdp:" + x.Name}}}
	if mode != "" {
		c.dropPorts = []string{mode}
	}
	c.write(t, cfgPath)
	return nsS, nsR, x, obj, cfgPath
}

func testIncompatibleMap(t *testing.T, mode string) {
	e := testutil.MustEnv(t)
	nsS, nsR, x, obj, cfgPath := xdpDropfilter(t, "upm", mode)
	p := startBpfsup(t, e, "", "-c", cfgPath)
	firstChild := waitChildren(t, p, 1)
	addDropPort(t, e, portDropped)
	dst := netip.AddrPortFrom(x.Addr, portDropped)
	sendN(t, nsS, dst, 10)
	testutil.WaitFor(t, 5*time.Second, "10 drops", func() bool { return dropCount(t, e) == 10 })
	before := takeState(t, e)
	linkBefore, progBefore := linkIDs(t, e, "xdp_drop")

	deploy(t, obj, "dropfilter_bigmap")
	out := e2e.MustRun(t, e, "reload")
	for _, w := range []string{"maps replaced: drop_ports", "loaded: tc_drop, xdp_drop", "swapped in place: xdp_drop", "child restarted"} {
		if !strings.Contains(out, w) {
			t.Fatalf("bpfsup reload does not say %q:\n%s", w, out)
		}
	}
	ports, portsID, maxEntries := dropPorts(t, e)
	if uint32(portsID) == before.maps["drop_ports"] || maxEntries != 128 {
		t.Fatalf("drop_ports is map %d with %d entries; was %d with 64, want a new one with 128", portsID, maxEntries, before.maps["drop_ports"])
	}
	after := takeState(t, e)
	if after.maps["drop_count"] != before.maps["drop_count"] || after.drops != 10 {
		t.Fatalf("drop_count is map %d holding %d, was %d holding 10: the compatible map was not kept", after.maps["drop_count"], after.drops, before.maps["drop_count"])
	}
	linkAfter, progAfter := linkIDs(t, e, "xdp_drop")
	if linkAfter != linkBefore || progAfter == progBefore {
		t.Fatalf("link %d runs program %d; was link %d with program %d", linkAfter, progAfter, linkBefore, progBefore)
	}
	// The new program uses the new map, not the old one: a pinned program
	// is reloaded when the map it used is replaced.
	info := e2e.ProgramInfo(t, progAfter)
	if used, _ := info.MapIDs(); !slices.Contains(used, portsID) {
		t.Fatalf("the new program uses maps %v, not the new drop_ports %d", used, portsID)
	}
	// The restarted child got the new map.
	child := waitChildren(t, p, 2)
	if child == firstChild {
		t.Fatal("the child was not restarted")
	}
	if !strings.Contains(p.Output(), "dropfilter/maps/drop_ports="+strconv.Itoa(int(portsID))) {
		t.Fatalf("the restarted child did not get the new drop_ports %d:\n%s", portsID, p.Output())
	}

	recv := testutil.StartUDPReceiver(t, nsR, portDropped)
	switch mode {
	case "reset = true":
		if len(ports) != 0 {
			t.Fatalf("reset drop_ports holds %v, want nothing", ports)
		}
		sendN(t, nsS, dst, 5)
		recv.WaitCount(t, 5, 5*time.Second)
		addDropPort(t, e, portDropped)
		sendN(t, nsS, dst, 5)
		testutil.WaitFor(t, 5*time.Second, "5 more drops through the new map", func() bool { return dropCount(t, e) == 15 })
	default:
		if !slices.Equal(ports, []uint16{portDropped}) {
			t.Fatalf("migrated drop_ports holds %v, want [%d]", ports, portDropped)
		}
		sendN(t, nsS, dst, 5)
		testutil.WaitFor(t, 5*time.Second, "5 more drops through the migrated map", func() bool { return dropCount(t, e) == 15 })
	}
	if recv.Count() > 5 {
		t.Fatalf("%d datagrams to the dropped port arrived", recv.Count())
	}

	// The next reload of the same objects adopts the new map: no reset again.
	out = e2e.MustRun(t, e, "reload")
	if !strings.Contains(out, "object dropfilter: unchanged") {
		t.Fatalf("a second reload changed something:\n%s", out)
	}
}

// TestMigrateCatchesUp: a migrated map is copied when the new map is made,
// before the loads; what the running programs write to the old map between
// that copy and the swap (here a port added and one removed, while bpfsup is
// stopped right after the copy) is in the new map once the links swapped.
func TestMigrateCatchesUp(t *testing.T) {
	e := testutil.MustEnv(t)
	nsS, nsR, x, obj, cfgPath := xdpDropfilter(t, "upc", `migrate = "copy"`)
	t.Setenv(crash.StopEnvVar, "maps/migrated")
	p := startBpfsup(t, e, "", "-c", cfgPath)
	// Runs before p's own clean-up: a stopped bpfsup would not stop.
	t.Cleanup(func() { p.Kill(syscall.SIGCONT) })
	waitChildren(t, p, 1)
	addDropPort(t, e, portDropped)
	_, oldID, _ := dropPorts(t, e)
	oldMap, err := ebpf.NewMapFromID(oldID)
	if err != nil {
		t.Fatal(err)
	}
	defer oldMap.Close()

	deploy(t, obj, "dropfilter_bigmap")
	out, code := reloadWhileStopped(t, e, p, "right after copying drop_ports", func() {
		// What the running programs would write meanwhile.
		if err := oldMap.Put(uint16(portLate), uint8(1)); err != nil {
			t.Fatal(err)
		}
		if err := oldMap.Delete(uint16(portDropped)); err != nil {
			t.Fatal(err)
		}
	})
	if code != 0 {
		t.Fatalf("bpfsup reload exited %d:\n%s", code, out)
	}
	ports, newID, maxEntries := dropPorts(t, e)
	if newID == oldID || maxEntries != 128 {
		t.Fatalf("drop_ports is map %d with %d entries, want a new map (not %d) with 128", newID, maxEntries, oldID)
	}
	if !slices.Equal(ports, []uint16{portLate}) {
		t.Fatalf("migrated drop_ports holds %v, want [%d]: the writes between the copy and the swap are lost", ports, portLate)
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log that it caught drop_ports up", func() bool {
		return strings.Contains(p.Output(), `msg="migrated map caught up" object=dropfilter map=drop_ports entries=1 deleted=1`)
	})

	// And the data path goes by the caught-up map.
	recvLate := testutil.StartUDPReceiver(t, nsR, portLate)
	recvOpen := testutil.StartUDPReceiver(t, nsR, portDropped)
	sendN(t, nsS, netip.AddrPortFrom(x.Addr, portDropped), 5)
	recvOpen.WaitCount(t, 5, 5*time.Second)
	before := dropCount(t, e)
	sendN(t, nsS, netip.AddrPortFrom(x.Addr, portLate), 5)
	testutil.WaitFor(t, 5*time.Second, "5 drops of the port added after the copy", func() bool { return dropCount(t, e) == before+5 })
	if n := recvLate.Count(); n != 0 {
		t.Fatalf("%d datagrams to port %d arrived; it was added to drop_ports before the swap", n, portLate)
	}
}

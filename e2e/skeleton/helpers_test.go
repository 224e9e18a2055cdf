package skeleton

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	bpfstatus "github.com/bpfsup/bpfsup/status"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The test binary's child mode: childModeEnv says what it does, childMapEnv
// which handed map it opens.
const (
	childModeEnv = "BPFSUP_SKELETON_CHILD"
	childMapEnv  = "BPFSUP_SKELETON_MAP"
)

// Timeouts for conditions that take milliseconds when all is well; generous
// because two cores run everything.
const (
	startTimeout = 20 * time.Second
	waitTimeout  = 10 * time.Second
)

// runChild is the test binary run by bpfsup as its application.
//
// Mode "map" opens the handed map named by childMapEnv with handoff.Map,
// prints one line "child pid=P map=NAME map_id=ID" and waits for SIGTERM or
// SIGINT, then exits 0.
func runChild(mode string) int {
	switch mode {
	case "map":
		name := os.Getenv(childMapEnv)
		m, err := handoff.Map(name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "child: %v\n", err)
			return 1
		}
		info, err := m.Info()
		if err != nil {
			fmt.Fprintf(os.Stderr, "child: map %s info: %v\n", name, err)
			return 1
		}
		id, _ := info.ID()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		fmt.Printf("child pid=%d map=%s map_id=%d\n", os.Getpid(), name, id)
		<-sig
		m.Close()
		return 0
	}
	fmt.Fprintf(os.Stderr, "child: unknown mode %q\n", mode)
	return 2
}

// selfChild returns the environment and the command line (from "--" on)
// that make bpfsup run this test binary as its child, opening map mapName.
func selfChild(t *testing.T, mapName string) (env, argv []string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("find test binary: %v", err)
	}
	return []string{childModeEnv + "=map", childMapEnv + "=" + mapName}, []string{"--", exe}
}

// startRun starts `bpfsup run` with the env's pin root and state dir, args,
// and extraEnv added to the test's environment (bpfsup passes it on to the
// child). exec.Cmd hands bpfsup fds 0, 1 and 2 only.
func startRun(t *testing.T, e *testutil.Env, extraEnv []string, args ...string) *testutil.Proc {
	t.Helper()
	cmd := exec.Command(e.Bin, e.Args("run", args...)...)
	cmd.Env = append(os.Environ(), extraEnv...)
	return testutil.StartProc(t, cmd)
}

// childLine is what a "map" child printed.
type childLine struct {
	pid   int
	name  string
	mapID uint32
}

var childLineRE = regexp.MustCompile(`(?m)^child pid=(\d+) map=(\S+) map_id=(\d+)$`)

func childLines(out string) []childLine {
	var lines []childLine
	for _, m := range childLineRE.FindAllStringSubmatch(out, -1) {
		pid, _ := strconv.Atoi(m[1])
		id, _ := strconv.ParseUint(m[3], 10, 32)
		lines = append(lines, childLine{pid: pid, name: m[2], mapID: uint32(id)})
	}
	return lines
}

// waitChild waits until the n-th child started by p has printed its line,
// and returns that line.
func waitChild(t *testing.T, p *testutil.Proc, n int) childLine {
	t.Helper()
	e2e.WaitPIDs(t, p, childLineRE, n, startTimeout)
	return childLines(p.Output())[n-1]
}

// objectStatus is the status of one object, which must be there, without
// problems.
func objectStatus(t *testing.T, e *testutil.Env, name string) bpfstatus.ObjectStatus {
	t.Helper()
	o := e2e.FindObject(t, e2e.Status(t, e), name)
	if len(o.Problems) > 0 {
		t.Errorf("status of %s has problems: %v", name, o.Problems)
	}
	return o
}

// mapValue reads key of the map pinned at <pin root>/<object>/maps/<name>.
// A missing key reads as 0.
func mapValue(t *testing.T, e *testutil.Env, object, name string, key uint32) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.PinRoot, object, "maps", name), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open pinned map %s/%s: %v", object, name, err)
	}
	defer m.Close()
	var v uint64
	if err := m.Lookup(key, &v); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("map %s/%s key %d: %v", object, name, key, err)
	}
	return v
}

// ipProtoUDP is the key of UDP packets in counter.bpf.o's counters map.
const ipProtoUDP = 17

// udpCount is counter.bpf.o's count of UDP packets.
func udpCount(t *testing.T, e *testutil.Env) uint64 {
	t.Helper()
	return mapValue(t, e, "counter", "counters", ipProtoUDP)
}

// waitRising waits until read() has grown by at least n.
func waitRising(t *testing.T, what string, n uint64, read func() uint64) {
	t.Helper()
	from := read()
	testutil.WaitFor(t, waitTimeout, fmt.Sprintf("%s to grow by %d from %d", what, n, from), func() bool {
		return read() >= from+n
	})
}

// linkTarget reads the kernel's view of link id: its program and, for an XDP
// link, its interface.
func linkTarget(id uint32) (prog uint32, ifindex uint32, err error) {
	l, err := link.NewFromID(link.ID(id))
	if err != nil {
		return 0, 0, fmt.Errorf("open link %d: %w", id, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, 0, fmt.Errorf("link %d info: %w", id, err)
	}
	if xdp := info.XDP(); xdp != nil {
		ifindex = xdp.Ifindex
	}
	return uint32(info.Program), ifindex, nil
}

// netAttachments lists what `bpftool net show` sees attached to ifname
// inside ns: "xdp:<prog id>" and "tc:<prog id>" entries.
func netAttachments(t *testing.T, ns *testutil.Netns, ifname string) []string {
	t.Helper()
	// bpftool net speaks netlink, so the private /sys of `ip netns exec`
	// does not matter here.
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "bpftool", "-j", "net", "show", "dev", ifname).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool net show dev %s in %s: %v\n%s", ifname, ns.Name, err, out)
	}
	var nets []struct {
		XDP []struct {
			ID int `json:"id"`
		} `json:"xdp"`
		TC []struct {
			ID int `json:"id"`
		} `json:"tc"`
	}
	if err := json.Unmarshal(out, &nets); err != nil {
		t.Fatalf("bpftool net show: %v\n%s", err, out)
	}
	var got []string
	for _, n := range nets {
		for _, x := range n.XDP {
			got = append(got, fmt.Sprintf("xdp:%d", x.ID))
		}
		for _, c := range n.TC {
			got = append(got, fmt.Sprintf("tc:%d", c.ID))
		}
	}
	return got
}

// requireAttached checks, three ways, that XDP program progID runs on veth
// through link linkID: the link's info, ip link and bpftool net.
func requireAttached(t *testing.T, v testutil.Veth, linkID, progID uint32) {
	t.Helper()
	prog, ifindex, err := linkTarget(linkID)
	if err != nil {
		t.Fatalf("link %d: %v", linkID, err)
	}
	if prog != progID || ifindex != uint32(v.Index) {
		t.Fatalf("link %d runs program %d on ifindex %d, want program %d on %s (ifindex %d)", linkID, prog, ifindex, progID, v.Name, v.Index)
	}
	if id := e2e.IPLinkXDP(t, v.Netns, v.Name); id != progID {
		t.Fatalf("ip link shows XDP program %d on %s, want %d", id, v.Name, progID)
	}
	want := fmt.Sprintf("xdp:%d", progID)
	if got := netAttachments(t, v.Netns, v.Name); len(got) != 1 || got[0] != want {
		t.Fatalf("bpftool net shows %v on %s, want [%s]", got, v.Name, want)
	}
}

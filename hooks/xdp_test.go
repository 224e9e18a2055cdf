package hooks

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// XDP attach modes as the kernel reports them (IFLA_XDP_ATTACHED).
const (
	xdpModeDriver  = 1
	xdpModeGeneric = 2
)

// xdpProg is one XDP program on an interface, as `ip -j link` reports it.
type xdpProg struct {
	Mode int
	ID   ebpf.ProgramID
}

// xdpProgs asks the kernel (through iproute2) which XDP programs run on
// iface in ns, and in which mode.
func xdpProgs(tb testing.TB, ns *testutil.Netns, iface string) []xdpProg {
	tb.Helper()
	out := mustIP(tb, "-n", ns.Name, "-j", "link", "show", "dev", iface)
	var links []struct {
		XDP *struct {
			Attached []struct {
				Mode int `json:"mode"`
				Prog struct {
					ID uint32 `json:"id"`
				} `json:"prog"`
			} `json:"attached"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		tb.Fatalf("ip -j link show dev %s: %q (%v)", iface, out, err)
	}
	var progs []xdpProg
	if links[0].XDP != nil {
		for _, a := range links[0].XDP.Attached {
			progs = append(progs, xdpProg{Mode: a.Mode, ID: ebpf.ProgramID(a.Prog.ID)})
		}
	}
	return progs
}

// xdpAttached lists the ids of the XDP programs on iface in ns.
func xdpAttached(tb testing.TB, ns *testutil.Netns, iface string) []ebpf.ProgramID {
	tb.Helper()
	var ids []ebpf.ProgramID
	for _, p := range xdpProgs(tb, ns, iface) {
		ids = append(ids, p.ID)
	}
	return ids
}

// skipIfNativeXDPRefused skips the test when the kernel refuses native XDP
// on the interface, with the kernel's reason; any other error is not a skip.
func skipIfNativeXDPRefused(tb testing.TB, spec Spec, err error) {
	tb.Helper()
	if spec.Kind == "xdp" && spec.Variant == "native" && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, ErrNotSupported)) {
		tb.Skipf("the kernel refuses native XDP here: %v", err)
	}
}

func TestXDPModes(t *testing.T) {
	for _, tc := range []struct {
		variant   string
		wantMode  int
		mechanism string
	}{
		// veth has a native XDP driver, so the kernel's default is native.
		{"", xdpModeDriver, "bpf_link xdp"},
		{"generic", xdpModeGeneric, "bpf_link xdp (generic)"},
		{"native", xdpModeDriver, "bpf_link xdp (native)"},
	} {
		name := "xdp"
		if tc.variant != "" {
			name += "/" + tc.variant
		}
		t.Run(name, func(t *testing.T) {
			testutil.RequireRoot(t)
			nsA := testutil.MustNetns(t, "xdp")
			nsB := testutil.MustNetns(t, "xdp")
			ifA, ifB := testutil.MustVethPair(t, nsA, nsB)
			prog, maps := mustProgramWithMaps(t, "counter", "count_packets")

			h := mustHook(t, name+":"+ifA.Name, nsA.Path)
			if got := h.Mechanism(); got != tc.mechanism {
				t.Errorf("Mechanism() = %q, want %q", got, tc.mechanism)
			}
			l, err := h.Attach(prog)
			if err != nil {
				skipIfNativeXDPRefused(t, h.Spec(), err)
				t.Fatalf("attach: %v", err)
			}
			t.Cleanup(func() { l.Close() })

			want := []xdpProg{{Mode: tc.wantMode, ID: progID(t, prog)}}
			if got := xdpProgs(t, nsA, ifA.Name); len(got) != 1 || got[0] != want[0] {
				t.Fatalf("kernel reports XDP programs %+v on %s, want %+v", got, ifA.Name, want)
			}
			if got := xdpProgs(t, nsB, ifB.Name); len(got) != 0 {
				t.Fatalf("the peer %s has XDP programs %+v", ifB.Name, got)
			}
			info := linkInfo(t, l)
			if info.Type != link.XDPType || info.XDP() == nil || int(info.XDP().Ifindex) != ifA.Index {
				t.Fatalf("link info %+v, want an XDP link on ifindex %d", info, ifA.Index)
			}
			wantState(t, h, l, Attached)
			// A hook of another mode does not own it (the link info does not
			// say the mode; the interface does); one without a mode does.
			for _, other := range []string{"xdp", "xdp/generic", "xdp/native"} {
				want := Elsewhere
				if other == "xdp" || other == name || (tc.variant == "" && other == "xdp/native") {
					want = Attached
				}
				wantState(t, mustHook(t, other+":"+ifA.Name, nsA.Path), l, want)
			}
			// A tcx hook on the same interface does not own an XDP link.
			wantState(t, mustHook(t, "tcx/ingress:"+ifA.Name, nsA.Path), l, Elsewhere)

			// The program sees the traffic arriving on the interface.
			recv := testutil.StartUDPReceiver(t, nsA, 0)
			send := testutil.StartUDPSender(t, nsB, netip.AddrPortFrom(ifA.Addr, uint16(recv.Port())), 200)
			recv.WaitCount(t, 5, 5*time.Second)
			send.Stop()
			var udp uint64
			if err := maps["counters"].Lookup(uint32(unix.IPPROTO_UDP), &udp); err != nil {
				t.Fatal(err)
			}
			if udp < 5 {
				t.Fatalf("the program counted %d UDP packets, the receiver got %d", udp, recv.Count())
			}
		})
	}
}

func TestXDPWrongProgramType(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.MustNetns(t, "xdp")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	h := mustHook(t, "xdp:"+ifA.Name, ns.Path)
	l, err := h.Attach(mustProgram(t, "counter", "count_tc"))
	if err == nil {
		l.Close()
		t.Fatal("attached a tc program to XDP")
	}
	if !errors.Is(err, ErrWrongProgramType) || !strings.Contains(err.Error(), "xdp:"+ifA.Name) {
		t.Fatalf("attach tc program: %v, want ErrWrongProgramType naming the hook", err)
	}
	if got := xdpAttached(t, ns, ifA.Name); len(got) != 0 {
		t.Fatalf("XDP programs %v on %s after a refused attach", got, ifA.Name)
	}
}

func TestXDPTargetNotFound(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.MustNetns(t, "xdp")
	prog := mustProgram(t, "counter", "count_packets")

	h := mustHook(t, "xdp:bpfsupnone0", ns.Path)
	l, err := h.Attach(prog)
	if err == nil {
		l.Close()
		t.Fatal("attached to a missing interface")
	}
	if !errors.Is(err, ErrTargetNotFound) || !strings.Contains(err.Error(), `"bpfsupnone0"`) || !strings.Contains(err.Error(), ns.Path) {
		t.Fatalf("attach to a missing interface: %v, want ErrTargetNotFound naming the interface and %s", err, ns.Path)
	}
	if err := CheckTarget(h.Spec()); !errors.Is(err, ErrTargetNotFound) || !strings.Contains(err.Error(), ns.Path) {
		t.Fatalf("CheckTarget: %v, want ErrTargetNotFound naming %s", err, ns.Path)
	}

	// In bpfsup's own namespace the error says so (only looked up, never attached).
	err = CheckTarget(Spec{Kind: "xdp", Target: "bpfsupnone0"})
	if !errors.Is(err, ErrTargetNotFound) || !strings.Contains(err.Error(), "this network namespace") {
		t.Fatalf("CheckTarget in own namespace: %v", err)
	}

	// A namespace that does not exist is named too.
	missing := ns.Path + "-gone"
	h = mustHook(t, "xdp:lo", missing)
	if l, err = h.Attach(prog); err == nil {
		l.Close()
		t.Fatal("attached in a missing namespace")
	}
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("attach in a missing namespace: %v, want ErrNotExist naming %s", err, missing)
	}
}

// Ifindexes repeat across network namespaces: a link on an interface in
// another namespace with the same ifindex is not on the hook's interface.
func TestLinkOnNamesakeIfindexIsElsewhere(t *testing.T) {
	testutil.RequireRoot(t)
	nsA := testutil.MustNetns(t, "xdp")
	nsB := testutil.MustNetns(t, "xdp")
	for _, ns := range []*testutil.Netns{nsA, nsB} {
		ns.Run(t, "ip", "link", "add", "name", "same0", "index", "4242", "type", "veth", "peer", "name", "same1")
		ns.Run(t, "ip", "link", "set", "same0", "up")
	}
	for _, tc := range []struct{ spec, prog string }{
		{"xdp/generic:same0", "count_packets"},
		{"tcx/ingress:same0", "count_tc"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			onA := mustHook(t, tc.spec, nsA.Path)
			l := mustAttach(t, onA, mustProgram(t, "counter", tc.prog))
			wantState(t, onA, l, Attached)
			wantState(t, mustHook(t, tc.spec, nsB.Path), l, Elsewhere)
		})
	}
}

// An interface that runs someone else's XDP program through a link refuses
// a second link (EBUSY); the error names the program that runs there.
func TestXDPHookTaken(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.MustNetns(t, "xdp")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	h := mustHook(t, "xdp:"+ifA.Name, ns.Path)
	theirs := mustProgram(t, "counter", "count_packets")
	l, err := h.Attach(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := theirs.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()

	l2, err := h.Attach(mustProgram(t, "counter", "count_packets"))
	if err == nil {
		l2.Close()
		t.Fatal("a second XDP link attached to one interface")
	}
	want := fmt.Sprintf("already runs XDP program id %d (name %s)", id, info.Name)
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "xdp:"+ifA.Name) {
		t.Fatalf("attach to a taken interface: %v, want EBUSY saying %q", err, want)
	}
	if got := xdpAttached(t, ns, ifA.Name); len(got) != 1 || got[0] != id {
		t.Fatalf("XDP programs %v on %s, want only the first, %d", got, ifA.Name, id)
	}
}

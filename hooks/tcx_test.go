package hooks

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// tcxAttached returns a function that asks the kernel which programs run,
// in order, on one direction of an interface's tcx hook.
func tcxAttached(attach ebpf.AttachType) func(tb testing.TB, ns *testutil.Netns, iface string) []ebpf.ProgramID {
	return func(tb testing.TB, ns *testutil.Netns, iface string) []ebpf.ProgramID {
		tb.Helper()
		var ids []ebpf.ProgramID
		err := ns.Do(func() error {
			// Ifindexes are per namespace: resolve and query inside it.
			ifc, err := net.InterfaceByName(iface)
			if err != nil {
				return err
			}
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: attach})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				ids = append(ids, p.ID)
			}
			return nil
		})
		if err != nil {
			tb.Fatalf("query tcx programs on %s: %v", iface, err)
		}
		return ids
	}
}

func TestTCXDirections(t *testing.T) {
	for _, tc := range []struct {
		direction     string
		attach, other ebpf.AttachType
	}{
		{"ingress", ebpf.AttachTCXIngress, ebpf.AttachTCXEgress},
		{"egress", ebpf.AttachTCXEgress, ebpf.AttachTCXIngress},
	} {
		t.Run(tc.direction, func(t *testing.T) {
			testutil.RequireRoot(t)
			testutil.SkipWithout(t, testutil.TCX) // tc_test.go tests the fallback
			nsA := testutil.MustNetns(t, "tcx")
			nsB := testutil.MustNetns(t, "tcx")
			ifA, ifB := testutil.MustVethPair(t, nsA, nsB)
			prog, maps := mustProgramWithMaps(t, "counter", "count_tc")

			h := mustHook(t, "tcx/"+tc.direction+":"+ifA.Name, nsA.Path)
			if h.Mechanism() != "bpf_link tcx" {
				t.Errorf("Mechanism() = %q", h.Mechanism())
			}
			l := mustAttach(t, h, prog)
			id := progID(t, prog)
			if got := tcxAttached(tc.attach)(t, nsA, ifA.Name); len(got) != 1 || got[0] != id {
				t.Fatalf("kernel reports %v on %s %s, want [%d]", got, ifA.Name, tc.direction, id)
			}
			if got := tcxAttached(tc.other)(t, nsA, ifA.Name); len(got) != 0 {
				t.Fatalf("the other direction has %v", got)
			}
			info := linkInfo(t, l)
			if info.Type != link.TCXType || info.TCX() == nil ||
				ebpf.AttachType(info.TCX().AttachType) != tc.attach || int(info.TCX().Ifindex) != ifA.Index {
				t.Fatalf("link info %+v, want a tcx %s link on ifindex %d", info, tc.direction, ifA.Index)
			}
			wantState(t, h, l, Attached)
			otherDir := map[string]string{"ingress": "egress", "egress": "ingress"}[tc.direction]
			wantState(t, mustHook(t, "tcx/"+otherDir+":"+ifA.Name, nsA.Path), l, Elsewhere)
			wantState(t, mustHook(t, "xdp:"+ifA.Name, nsA.Path), l, Elsewhere)

			// The program sees the traffic of its direction: ingress counts
			// what ifA receives, egress what it sends.
			from, to, dst := nsB, nsA, ifA.Addr
			if tc.direction == "egress" {
				from, to, dst = nsA, nsB, ifB.Addr
			}
			recv := testutil.StartUDPReceiver(t, to, 0)
			send := testutil.StartUDPSender(t, from, netip.AddrPortFrom(dst, uint16(recv.Port())), 200)
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

func TestTCXWrongProgramType(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.SkipWithout(t, testutil.TCX) // tc_test.go tests the fallback
	ns := testutil.MustNetns(t, "tcx")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	h := mustHook(t, "tcx/ingress:"+ifA.Name, ns.Path)
	l, err := h.Attach(mustProgram(t, "counter", "count_packets"))
	if err == nil {
		l.Close()
		t.Fatal("attached an XDP program to tcx")
	}
	if !errors.Is(err, ErrWrongProgramType) || !strings.Contains(err.Error(), "tcx/ingress:"+ifA.Name) {
		t.Fatalf("attach XDP program: %v, want ErrWrongProgramType naming the hook", err)
	}
	if got := tcxAttached(ebpf.AttachTCXIngress)(t, ns, ifA.Name); len(got) != 0 {
		t.Fatalf("programs %v on %s after a refused attach", got, ifA.Name)
	}
}

func TestTCXTargetNotFound(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.MustNetns(t, "tcx")
	h := mustHook(t, "tcx/egress:bpfsupnone0", ns.Path)
	l, err := h.Attach(mustProgram(t, "counter", "count_tc"))
	if err == nil {
		l.Close()
		t.Fatal("attached to a missing interface")
	}
	if !errors.Is(err, ErrTargetNotFound) || !strings.Contains(err.Error(), `"bpfsupnone0"`) || !strings.Contains(err.Error(), ns.Path) {
		t.Fatalf("attach to a missing interface: %v, want ErrTargetNotFound naming the interface and %s", err, ns.Path)
	}
}

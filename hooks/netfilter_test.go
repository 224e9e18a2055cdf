package hooks

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestParseNetfilter(t *testing.T) {
	for _, tc := range []struct {
		in       string
		family   link.NetfilterProtocolFamily
		hook     link.NetfilterInetHook
		priority int32
		wantErr  bool
	}{
		{in: "netfilter:ipv4/local_in/-100", family: link.NetfilterProtoIPv4, hook: link.NetfilterInetLocalIn, priority: -100},
		{in: "netfilter:ipv6/prerouting", family: link.NetfilterProtoIPv6, hook: link.NetfilterInetPreRouting},
		{in: "netfilter:ipv4/postrouting/300", family: link.NetfilterProtoIPv4, hook: link.NetfilterInetPostRouting, priority: 300},
		{in: "netfilter:ipv4", wantErr: true},
		{in: "netfilter:ipx/local_in", wantErr: true},
		{in: "netfilter:ipv4/input", wantErr: true},
		{in: "netfilter:ipv4/local_in/first", wantErr: true},
		{in: "netfilter:ipv4/local_in/-2147483648", wantErr: true},
		{in: "netfilter:ipv4/local_in/2147483647", wantErr: true},
		{in: "netfilter:ipv4/local_in/1/2", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			s, err := Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			h, err := New(s)
			if tc.wantErr {
				if !errors.Is(err, ErrBadSpec) {
					t.Fatalf("New(%s) = %v, want ErrBadSpec", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			nf := h.(*netfilterHook)
			if nf.family != tc.family || nf.hook != tc.hook || nf.priority != tc.priority {
				t.Fatalf("New(%s) = %+v", tc.in, nf)
			}
		})
	}
}

// The kernel takes one BPF program per family, hook and priority; upgrades
// land one priority away, and Check accepts both.
func TestNetfilterHook(t *testing.T) {
	testutil.SkipWithout(t, testutil.NetfilterLink) // Linux 6.4+
	ns := testutil.MustNetns(t, "nf")
	prog, maps := mustProgramWithMaps(t, "hooks", "nf_count")
	progB := mustProgram(t, "hooks_v2", "nf_count")
	progC := mustProgram(t, "hooks", "nf_count")
	h := mustHook(t, "netfilter:ipv4/local_in/-100", ns.Path)
	if err := CheckTarget(h.Spec()); err != nil {
		t.Fatalf("CheckTarget: %v", err)
	}

	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "netfilter:ipv4/local_out/-100", ns.Path), l, Elsewhere)
	wantState(t, mustHook(t, "netfilter:ipv6/local_in/-100", ns.Path), l, Elsewhere)
	wantState(t, mustHook(t, "netfilter:ipv4/local_in/-50", ns.Path), l, Elsewhere)
	if got := linkInfo(t, l).Netfilter().Priority; got != -100 {
		t.Fatalf("first link at priority %d, want -100", got)
	}

	// It fires for packets of its namespace, here over its loopback.
	r := testutil.StartUDPReceiver(t, ns, 0)
	s := testutil.StartUDPSender(t, ns, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(r.Port())), 1000)
	r.WaitCount(t, 5, 5*time.Second)
	s.Stop()
	if got := readHits(t, maps["hits"], 8); got < r.Count() {
		t.Fatalf("netfilter program counted %d packets, %d arrived", got, r.Count())
	}

	// Make-before-break: the second link sits beside the first.
	l2 := mustAttach(t, h, progB)
	wantState(t, h, l2, Attached)
	if got := linkInfo(t, l2).Netfilter().Priority; got != -99 {
		t.Fatalf("second link at priority %d, want -99", got)
	}
	l3 := mustAttach(t, h, progC)
	if got := linkInfo(t, l3).Netfilter().Priority; got != -101 {
		t.Fatalf("third link at priority %d, want -101", got)
	}
	if _, err := h.Attach(prog); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("fourth link: %v, want EBUSY", err)
	}
	// Once the third goes, its priority is free for the next one.
	l3.Close()
	testNotUpdatable(t, h, l, progC)
}

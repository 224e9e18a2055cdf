package testutil

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// Veth is one end of a veth pair made by MustVethPair.
type Veth struct {
	// Name is the interface name, the same inside and outside tests:
	// "bv<8 hex digits>a" or "...b", 11 bytes (the kernel allows 15).
	Name string
	// Index is the ifindex as seen inside Netns.
	Index int
	// MAC is the interface's hardware address.
	MAC net.HardwareAddr
	// Addr is this end's IPv4 address: .1 for the first end, .2 for the second.
	Addr netip.Addr
	// Prefix is the /24 both ends share, unique to one MustVethPair call in
	// this process.
	Prefix netip.Prefix
	// Netns is the namespace this end lives in.
	Netns *Netns
}

// vethLinkTimeout bounds the wait for a new pair to carry traffic.
const vethLinkTimeout = 5 * time.Second

// subnetSeq numbers veth subnets. It starts at a random value so that
// concurrent test binaries rarely pick the same ones (which would still work:
// each pair lives in its own namespaces).
var subnetSeq atomic.Uint32

func init() { subnetSeq.Store(rand.Uint32()) }

// nextSubnet returns 10.X.Y.0/24, a different one on every call (until
// 65536 calls).
func nextSubnet() netip.Prefix {
	n := subnetSeq.Add(1)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n >> 8), byte(n), 0}), 24)
}

// MustVethPair creates a veth pair with one end in a and the other in b
// (a and b may be the same namespace), gives the ends the addresses .1 and
// .2 of a fresh 10.X.Y.0/24, brings both up and waits until both can carry
// traffic: up, with carrier and an active qdisc. The pair is created
// directly inside the namespaces, so it never appears in the host's.
//
// The operational state (IFF_RUNNING, "state UP" in ip link) of the end
// brought up last may lag for up to a second more, the kernel's linkwatch
// delay. Nothing on the packet path depends on it, and waiting for it would
// add a second to every test.
//
// IPv6 is disabled on both ends so that the only traffic on the pair is the
// test's own (and ARP): no router solicitations, no MLD, no DAD. Generic
// XDP needs nothing more; native XDP on veth also needs an XDP program (or
// GRO) on the receiving peer, which is the test's business.
//
// Cleanup deletes the pair; it has nothing to do if a namespace was deleted
// first, which removes the pair too.
func MustVethPair(tb testing.TB, a, b *Netns) (ifA, ifB Veth) {
	tb.Helper()
	id := randomHex(4)
	prefix := nextSubnet()
	base := prefix.Addr().As4()
	ifA = Veth{Name: "bv" + id + "a", Prefix: prefix, Netns: a}
	ifB = Veth{Name: "bv" + id + "b", Prefix: prefix, Netns: b}
	base[3] = 1
	ifA.Addr = netip.AddrFrom4(base)
	base[3] = 2
	ifB.Addr = netip.AddrFrom4(base)
	return mustVethPair(tb, ifA, ifB)
}

// MustVethPairLike creates a veth pair again with the names, addresses and
// namespaces of likeA and likeB, whose pair is gone (deleted, or with the
// namespace of one end), as a container that restarts makes its interfaces
// again. It returns the new ends, with their new indexes and MACs.
func MustVethPairLike(tb testing.TB, likeA, likeB Veth) (ifA, ifB Veth) {
	tb.Helper()
	ifA = Veth{Name: likeA.Name, Prefix: likeA.Prefix, Addr: likeA.Addr, Netns: likeA.Netns}
	ifB = Veth{Name: likeB.Name, Prefix: likeB.Prefix, Addr: likeB.Addr, Netns: likeB.Netns}
	return mustVethPair(tb, ifA, ifB)
}

func mustVethPair(tb testing.TB, ifA, ifB Veth) (Veth, Veth) {
	tb.Helper()
	a, b := ifA.Netns, ifB.Netns
	tb.Cleanup(func() {
		if err := deleteLink(a, ifA.Name); err != nil {
			tb.Errorf("delete veth pair: %v", err)
		}
	})
	if _, err := ip("link", "add", ifA.Name, "netns", a.Name, "type", "veth",
		"peer", "name", ifB.Name, "netns", b.Name); err != nil {
		tb.Fatalf("create veth pair: %v", err)
	}
	for _, end := range []*Veth{&ifA, &ifB} {
		if err := end.setUp(); err != nil {
			tb.Fatalf("veth %s in netns %s: %v", end.Name, end.Netns.Name, err)
		}
	}
	for _, end := range []*Veth{&ifA, &ifB} {
		var state linkState
		var err error
		ready := Poll(vethLinkTimeout, func() bool {
			state, err = end.state()
			return err == nil && state.carriesTraffic()
		})
		if !ready {
			tb.Fatalf("veth %s in netns %s cannot carry traffic after %v: %+v (err: %v)",
				end.Name, end.Netns.Name, vethLinkTimeout, state, err)
		}
	}
	return ifA, ifB
}

// setUp disables IPv6, adds the address, brings the link up and fills in
// Index and MAC.
func (v *Veth) setUp() error {
	if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
		err := v.Netns.Do(func() error {
			// /proc/sys/net shows the namespace of the thread that opens it.
			return os.WriteFile("/proc/sys/net/ipv6/conf/"+v.Name+"/disable_ipv6", []byte("1"), 0)
		})
		if err != nil {
			return fmt.Errorf("disable ipv6: %w", err)
		}
	}
	addr := netip.PrefixFrom(v.Addr, v.Prefix.Bits()).String()
	if _, err := ip("-n", v.Netns.Name, "addr", "add", addr, "dev", v.Name); err != nil {
		return err
	}
	if _, err := ip("-n", v.Netns.Name, "link", "set", v.Name, "up"); err != nil {
		return err
	}
	// Read inside the namespace: ifindexes are per namespace.
	var iface *net.Interface
	err := v.Netns.Do(func() (err error) {
		iface, err = net.InterfaceByName(v.Name)
		return err
	})
	if err != nil {
		return err
	}
	v.Index = iface.Index
	v.MAC = iface.HardwareAddr
	return nil
}

// linkState is what `ip -j link show` says about an interface.
type linkState struct {
	Index int      `json:"ifindex"`
	Flags []string `json:"flags"`
	Qdisc string   `json:"qdisc"`
	MAC   string   `json:"address"`
}

// carriesTraffic reports whether the link is up, has carrier and has a
// qdisc: until the kernel activates one, the noop qdisc drops everything.
func (s linkState) carriesTraffic() bool {
	return slices.Contains(s.Flags, "UP") && slices.Contains(s.Flags, "LOWER_UP") && s.Qdisc != "" && s.Qdisc != "noop"
}

// state reads the interface as its namespace sees it.
func (v *Veth) state() (linkState, error) {
	out, err := ip("-n", v.Netns.Name, "-j", "link", "show", "dev", v.Name)
	if err != nil {
		return linkState{}, err
	}
	var states []linkState
	if err := json.Unmarshal([]byte(out), &states); err != nil || len(states) != 1 {
		return linkState{}, fmt.Errorf("ip -j link show dev %s: unexpected output %q (%v)", v.Name, out, err)
	}
	return states[0], nil
}

// deleteLink deletes interface name in ns; it does nothing if the namespace
// or the interface is gone already.
func deleteLink(ns *Netns, name string) error {
	if !ns.exists() {
		return nil
	}
	_, err := ip("-n", ns.Name, "link", "del", name)
	if err == nil {
		return nil
	}
	if _, showErr := ip("-n", ns.Name, "link", "show", "dev", name); showErr != nil {
		return nil // Gone: deleted with its peer, or never created.
	}
	return err
}

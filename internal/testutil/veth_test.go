package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestMustVethPair(t *testing.T) {
	RequireRoot(t)
	a, b := MustNetns(t, "vetha"), MustNetns(t, "vethb")
	ifA, ifB := MustVethPair(t, a, b)

	for _, end := range []struct {
		v  Veth
		ns *Netns
	}{{ifA, a}, {ifB, b}} {
		v := end.v
		if v.Netns != end.ns || len(v.Name) > 15 || v.Index <= 0 || len(v.MAC) != 6 {
			t.Fatalf("veth end %+v", v)
		}
		if !v.Prefix.Contains(v.Addr) || v.Prefix.Bits() != 24 || v.Prefix != v.Prefix.Masked() || !v.Addr.Is4() {
			t.Fatalf("veth %s: address %v, prefix %v", v.Name, v.Addr, v.Prefix)
		}
		// What ip shows inside the namespace agrees with the struct.
		show := v.Netns.Run(t, "ip", "-o", "addr", "show", "dev", v.Name)
		if !strings.HasPrefix(show, fmt.Sprintf("%d: %s", v.Index, v.Name)) ||
			!strings.Contains(show, fmt.Sprintf("inet %s/24", v.Addr)) {
			t.Fatalf("ip addr in %s:\n%s", v.Netns.Name, show)
		}
		if strings.Contains(show, "inet6") {
			t.Fatalf("veth %s has IPv6 addresses:\n%s", v.Name, show)
		}
		// Never in the host's namespace.
		if _, err := net.InterfaceByName(v.Name); err == nil {
			t.Fatalf("veth %s is visible in the host's namespace", v.Name)
		}
	}
	if ifA.Name == ifB.Name || ifA.Addr == ifB.Addr || ifA.Prefix != ifB.Prefix {
		t.Fatalf("ends %+v and %+v", ifA, ifB)
	}

	// The ends reach each other (UDP traffic is TestUDPTraffic's).
	if _, err := exec.LookPath("ping"); err == nil {
		out := a.Run(t, "ping", "-c", "1", "-W", "5", ifB.Addr.String())
		if !strings.Contains(out, "1 received") {
			t.Fatalf("ping %v from %s:\n%s", ifB.Addr, a.Name, out)
		}
	}

	// A second pair between the same namespaces gets its own names and subnet.
	ifA2, _ := MustVethPair(t, a, b)
	if ifA2.Name == ifA.Name || ifA2.Prefix == ifA.Prefix {
		t.Fatalf("second pair %+v collides with %+v", ifA2, ifA)
	}
}

func TestMustVethPairSameNetns(t *testing.T) {
	RequireRoot(t)
	ns := MustNetns(t, "veth1")
	ifA, ifB := MustVethPair(t, ns, ns)
	links := ns.Run(t, "ip", "-o", "link", "show")
	if !strings.Contains(links, ifA.Name+"@"+ifB.Name) || !strings.Contains(links, ifB.Name+"@"+ifA.Name) {
		t.Fatalf("links in %s:\n%s", ns.Name, links)
	}
}

// The pair's Cleanup runs before its namespaces' and removes it; if a
// namespace was deleted first, the pair went with it and Cleanup has nothing
// to do.
func TestMustVethPairCleanup(t *testing.T) {
	RequireRoot(t)
	a, b := MustNetns(t, "vetha"), MustNetns(t, "vethb")
	var ifB Veth
	t.Run("removed", func(t *testing.T) {
		_, ifB = MustVethPair(t, a, b)
	})
	if links := b.Run(t, "ip", "-o", "link", "show"); strings.Contains(links, ifB.Name) {
		t.Fatalf("veth %s left behind:\n%s", ifB.Name, links)
	}
	t.Run("netns deleted first", func(t *testing.T) {
		MustVethPair(t, a, b)
		ipOut(t, "netns", "del", a.Name)
	})
	if _, err := os.Lstat(a.Path); !os.IsNotExist(err) {
		t.Fatalf("netns %s still there (lstat: %v)", a.Name, err)
	}
}

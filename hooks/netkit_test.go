package hooks

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// netkit hooks on both sides of a pair: links go where they are placed,
// an attach naming an old revision is refused (ErrStale), an update in
// place keeps the link's id and place, and Check finds each link on its
// own side only.
func TestNetkitOrder(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.MustNetns(t, "netkit")
	testutil.MustNetkitPair(t, ns, "nkp0", "nkq0")
	for _, side := range []string{"primary", "peer"} {
		t.Run(side, func(t *testing.T) {
			h, err := New(Spec{Kind: "netkit", Variant: side, Target: "nkp0", Netns: ns.Path})
			if err != nil {
				t.Fatal(err)
			}
			other, _ := New(Spec{Kind: "netkit", Variant: map[string]string{"primary": "peer", "peer": "primary"}[side], Target: "nkp0", Netns: ns.Path})
			o, ok := AsOrdered(h)
			if !ok {
				t.Fatal("netkit hook is not ordered")
			}
			c0, err := o.Chain()
			if err != nil {
				t.Fatal(err)
			}
			a1, err := o.AttachAt(mustProgram(t, "counter", "count_tc"), Position{Where: Last}, c0.Revision)
			if err != nil {
				t.Fatal(err)
			}
			defer a1.Close()
			if _, err := o.AttachAt(mustProgram(t, "dropfilter", "tc_drop"), Position{Where: First}, c0.Revision); !errors.Is(err, ErrStale) {
				t.Fatalf("attach at an old revision: err = %v, want ErrStale", err)
			}
			drop := mustProgram(t, "dropfilter", "tc_drop")
			c1, _ := o.Chain()
			a2, err := o.AttachAt(drop, Position{Where: First}, c1.Revision)
			if err != nil {
				t.Fatal(err)
			}
			defer a2.Close()
			i1, _ := a1.Info()
			i2, _ := a2.Info()
			c2, _ := o.Chain()
			if c2.Index(link.ID(i2.ID)) != 0 || c2.Index(link.ID(i1.ID)) != 1 {
				t.Fatalf("chain %s: want link %d first, then %d", c2, i2.ID, i1.ID)
			}
			if err := a2.Update(mustProgram(t, "dropfilter_v2", "tc_drop"), drop); err != nil {
				t.Fatalf("update in place: %v", err)
			}
			c3, _ := o.Chain()
			i2b, _ := a2.Info()
			if c3.Index(link.ID(i2.ID)) != 0 || i2b.Program == i2.Program || c3.Revision != c2.Revision+1 {
				t.Fatalf("after the update: chain %s (was %s), link runs %d (was %d)", c3, c2, i2b.Program, i2.Program)
			}
			t.Logf("netkit/%s chain as the kernel reports it: %s", side, c3)
			if st, err := h.Check(a2); err != nil || st != Attached {
				t.Fatalf("Check on its own side: %v %v", st, err)
			}
			if st, _ := other.Check(a2); st == Attached {
				t.Fatal("Check on the other side says attached")
			}
		})
	}
}

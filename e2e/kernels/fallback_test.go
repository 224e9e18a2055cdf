package kernels

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/status"
)

// TestTCFallbackLife runs a drop filter through bpfsup's whole life on a tc
// hook: attached, killed with SIGKILL and still dropping, adopted on restart
// without a new program, upgraded while a flood of datagrams to the dropped
// port never gets one through, and removed by `bpfsup down`.
//
// "tcx/ingress" is the promise of the issue: on a kernel without tcx (6.1) it
// is attached through the tc fallback, and bpfsup says so; on a kernel with
// tcx it is a tcx link, held to the same promises. "tc/ingress" is the tc
// hook asked for by name, on every kernel.
func TestTCFallbackLife(t *testing.T) {
	for _, hook := range []string{"tcx/ingress", "tc/ingress"} {
		t.Run(strings.ReplaceAll(hook, "/", "_"), func(t *testing.T) {
			testutil.SkipWithout(t, testutil.TCClsact)
			fallback := hook == "tc/ingress"
			if hook == "tcx/ingress" {
				if why := testutil.Missing(t, testutil.TCX); why != "" {
					t.Logf("%s: expecting the tc fallback", why)
					fallback = true
				}
			}
			testLife(t, hook, fallback)
		})
	}
}

func testLife(t *testing.T, hook string, fallback bool) {
	env := testutil.MustEnv(t)
	nsA, nsB := testutil.MustNetns(t, "fbA"), testutil.MustNetns(t, "fbB")
	_, ifB := testutil.MustVethPair(t, nsA, nsB)
	obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	e2e.PutObject(t, obj, "dropfilter")
	args := []string{"-o", obj, "-a", "tc_drop@" + hook + ":" + ifB.Name, "--netns", nsB.Path, "--", "sleep", "1000"}

	p1 := env.Start(t, "run", args...)
	p1.WaitOutput(t, "child started", 60*time.Second)
	wantMechanism := "bpf_link tcx"
	switch {
	case fallback && hook == "tcx/ingress":
		wantMechanism = "tc clsact filter (fallback: no tcx)"
		if !strings.Contains(p1.Output(), "this kernel has no tcx") {
			t.Errorf("bpfsup did not say it falls back to tc; output:\n%s", p1.Output())
		}
	case fallback:
		wantMechanism = "tc clsact filter"
		if !strings.Contains(p1.Output(), "not a bpf_link") {
			t.Errorf("bpfsup did not say what a tc filter cannot promise; output:\n%s", p1.Output())
		}
	}
	if ls := linkStatus(t, env); ls.Mechanism != wantMechanism || ls.State != "attached" || ls.Upgrade != "in-place" {
		t.Fatalf("status of the link: mechanism %q state %q upgrade %q, want %q, attached, in-place", ls.Mechanism, ls.State, ls.Upgrade, wantMechanism)
	}
	first := attachedPrograms(t, nsB, ifB.Name, fallback)
	if len(first) != 1 {
		t.Fatalf("programs on %s ingress: %v, want one", ifB.Name, first)
	}

	// Drop a port and flood it: nothing arrives, the filter counts.
	recv := testutil.StartUDPReceiver(t, nsB, 0)
	dropPort(t, env, uint16(recv.Port()))
	send := testutil.StartUDPSender(t, nsA, netip.AddrPortFrom(ifB.Addr, uint16(recv.Port())), 1000)
	testutil.WaitFor(t, 10*time.Second, "the filter to drop", func() bool { return dropped(t, env) > 0 })

	// SIGKILL: the filter stays and keeps dropping.
	p1.Kill(syscall.SIGKILL)
	p1.Wait(t, 10*time.Second)
	n := dropped(t, env)
	testutil.WaitFor(t, 10*time.Second, "drops with bpfsup dead", func() bool { return dropped(t, env) > n })
	if got := attachedPrograms(t, nsB, ifB.Name, fallback); !equal(got, first) {
		t.Fatalf("after SIGKILL: programs %v, want %v", got, first)
	}

	// Restart: adopted, the same program, nothing loaded.
	p2 := env.Start(t, "run", args...)
	p2.WaitOutput(t, "child started", 60*time.Second)
	if got := attachedPrograms(t, nsB, ifB.Name, fallback); !equal(got, first) {
		t.Fatalf("after restart: programs %v, want the adopted %v", got, first)
	}
	if m := regexp.MustCompile(`msg="object ready".*\bloaded=(\d+)`).FindStringSubmatch(p2.Output()); m == nil || m[1] != "0" {
		t.Errorf("the restart loaded programs anew (want loaded=0); output:\n%s", p2.Output())
	}

	// Upgrade to v2 under the flood: another program, same hook, and v2's
	// extra port (9999) dropped too.
	e2e.PutObject(t, obj, "dropfilter_v2")
	e2e.MustRun(t, env, "reload")
	upgraded := attachedPrograms(t, nsB, ifB.Name, fallback)
	if len(upgraded) != 1 || upgraded[0] == first[0] {
		t.Fatalf("after the upgrade: programs %v, want one other than %v", upgraded, first)
	}
	n = dropped(t, env)
	testutil.WaitFor(t, 10*time.Second, "v2 to drop", func() bool { return dropped(t, env) > n })
	recv9999 := testutil.StartUDPReceiver(t, nsB, 9999)
	send9999 := testutil.StartUDPSender(t, nsA, netip.AddrPortFrom(ifB.Addr, 9999), 200)
	n = dropped(t, env)
	testutil.WaitFor(t, 10*time.Second, "v2 to drop port 9999", func() bool { return dropped(t, env) > n+20 })
	send9999.Stop()
	send.Stop()
	if c := recv.Count(); c != 0 {
		t.Fatalf("%d of %d datagrams to the dropped port got through", c, send.Sent())
	}
	if c := recv9999.Count(); c != 0 {
		t.Fatalf("%d datagrams to port 9999 got through v2", c)
	}

	// Down: nothing attached, nothing pinned.
	p2.Kill(syscall.SIGTERM)
	p2.Wait(t, 30*time.Second)
	e2e.MustRun(t, env, "down")
	if got := attachedPrograms(t, nsB, ifB.Name, fallback); len(got) != 0 {
		t.Fatalf("after down: programs %v on %s ingress", got, ifB.Name)
	}
	if entries, _ := os.ReadDir(env.PinRoot); len(entries) != 0 {
		t.Fatalf("after down: %d entries left in the pin root", len(entries))
	}
}

// linkStatus is the status of the one link of the one object.
func linkStatus(tb testing.TB, env *testutil.Env) status.LinkStatus {
	tb.Helper()
	st := e2e.Status(tb, env)
	if len(st.Objects) != 1 || len(st.Objects[0].Links) != 1 {
		tb.Fatalf("status: want one object with one link: %+v", st.Objects)
	}
	return st.Objects[0].Links[0]
}

func dropPort(tb testing.TB, env *testutil.Env, port uint16) {
	tb.Helper()
	e2e.PutPinned(tb, e2e.PinPath(env, "dropfilter", "maps", "drop_ports"), port, uint8(1))
}

func dropped(tb testing.TB, env *testutil.Env) uint64 {
	tb.Helper()
	var n uint64
	e2e.LookupPinned(tb, e2e.PinPath(env, "dropfilter", "maps", "drop_count"), uint32(0), &n)
	return n
}

var tcProgID = regexp.MustCompile(`\bbpf\b.* id (\d+)`)

// attachedPrograms asks the kernel, not bpfsup, which programs run on the
// interface's ingress: tc's filter list for the tc hook, bpftool's view of
// tcx otherwise.
func attachedPrograms(tb testing.TB, ns *testutil.Netns, iface string, tc bool) []uint32 {
	tb.Helper()
	var ids []uint32
	if tc {
		out, err := exec.Command("tc", "-n", ns.Name, "filter", "show", "dev", iface, "ingress").CombinedOutput()
		if err != nil {
			tb.Fatalf("tc filter show: %v: %s", err, out)
		}
		for _, m := range tcProgID.FindAllStringSubmatch(string(out), -1) {
			id, _ := strconv.ParseUint(m[1], 10, 32)
			ids = append(ids, uint32(id))
		}
		return ids
	}
	err := ns.Do(func() error {
		ifc, err := e2e.IfIndex(iface)
		if err != nil {
			return err
		}
		res, err := queryTCX(ifc)
		ids = res
		return err
	})
	if err != nil {
		tb.Fatalf("query tcx programs on %s: %v", iface, err)
	}
	return ids
}

func equal(a, b []uint32) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// A tc filter has no fd: asked to hand links to the child, bpfsup says so
// instead of handing over whatever object shares the record's id.
func TestTCFilterHasNoLinkFD(t *testing.T) {
	testutil.SkipWithout(t, testutil.TCClsact)
	env := testutil.MustEnv(t)
	ns := testutil.MustNetns(t, "fbfd")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	cfg := e2e.WriteConfig(t, fmt.Sprintf(`[[object]]
path = %q
handoff_links = true
[[object.attach]]
program = "tc_drop"
hook = "tc/ingress:%s"
netns = %q
`, testutil.BPFObject("dropfilter"), ifA.Name, ns.Path))
	out, code := env.Run(t, "run", "-c", cfg, "--", "true")
	if code == 0 || !strings.Contains(out, "not a bpf_link and has no fd to hand over") {
		t.Fatalf("bpfsup run handing over a tc filter: exit %d, want a failure saying it has no fd; output:\n%s", code, out)
	}
}

package skeleton

import (
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// xdpAttached lists the XDP programs on ifname in ns as `ip link` reports
// them: mode (1 native, 2 generic) to program id.
func xdpAttached(t *testing.T, ns *testutil.Netns, ifname string) map[int]uint32 {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns.Name, "-j", "link", "show", "dev", ifname).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show %s: %v\n%s", ifname, err, out)
	}
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
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show %s: %v\n%s", ifname, err, out)
	}
	got := map[int]uint32{}
	if links[0].XDP != nil {
		for _, a := range links[0].XDP.Attached {
			got[a.Mode] = a.Prog.ID
		}
	}
	return got
}

// A change of XDP mode is a change of hook, and the link's own info cannot
// tell the modes apart: bpfsup started again with xdp/native where it
// attached xdp/generic must not adopt the generic link. The kernel runs no
// generic and native XDP programs on one interface at once, so the switch
// cannot be made before the break: bpfsup refuses, saying so, and leaves the
// generic filter in place; after `bpfsup down` the native start works.
func TestXDPModeChange(t *testing.T) {
	e := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "mode-a"), testutil.MustNetns(t, "mode-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	const nativeMode, genericMode = 1, 2
	args := func(variant string) []string {
		return []string{"--netns", b.Path, "-o", testutil.BPFObject("counter"),
			"-a", "count_packets@xdp/" + variant + ":" + ifB.Name, "--", "sleep", "1000"}
	}
	run := func(variant string) (*testutil.Proc, uint32) {
		p := startRun(t, e, nil, args(variant)...)
		p.WaitOutput(t, "child started", 30*time.Second)
		l := e2e.FindLink(t, objectStatus(t, e, "counter"), "count_packets")
		if l.State != "attached" || l.Mechanism != "bpf_link xdp ("+variant+")" {
			t.Fatalf("%s: link %+v", variant, l)
		}
		return p, l.ProgramID
	}
	stopRun := func(p *testutil.Proc) {
		p.Kill(syscall.SIGTERM)
		p.Wait(t, 20*time.Second)
	}

	p, prog := run("generic")
	if got := xdpAttached(t, b, ifB.Name); len(got) != 1 || got[genericMode] != prog {
		t.Fatalf("XDP on %s with xdp/generic: %v, want program %d in generic mode alone", ifB.Name, got, prog)
	}
	stopRun(p)

	out, code := e.Run(t, "run", args("native")...)
	if code == 0 || !strings.Contains(out, "runs an XDP program in generic mode") || !strings.Contains(out, "bpfsup down") {
		t.Fatalf("xdp/native over bpfsup's xdp/generic link: exit %d, want a refusal that says why and what to do:\n%s", code, out)
	}
	if got := xdpAttached(t, b, ifB.Name); len(got) != 1 || got[genericMode] != prog {
		t.Fatalf("XDP on %s after the refusal: %v, want program %d in generic mode still", ifB.Name, got, prog)
	}

	if out, code := e.Run(t, "down", "counter"); code != 0 {
		t.Fatalf("bpfsup down: exit %d\n%s", code, out)
	}
	// Gone when down returns (detached, not left to the pin's release).
	if got := xdpAttached(t, b, ifB.Name); len(got) != 0 {
		t.Fatalf("XDP on %s right after bpfsup down: %v", ifB.Name, got)
	}
	p, prog = run("native")
	defer stopRun(p)
	if got := xdpAttached(t, b, ifB.Name); len(got) != 1 || got[nativeMode] != prog {
		t.Fatalf("XDP on %s with xdp/native: %v, want program %d in native mode alone", ifB.Name, got, prog)
	}
}

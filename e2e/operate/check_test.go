package operate

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// kernelObjects is what the kernel holds: the ids of every program, map
// and link, with the names of programs and maps.
type kernelObjects struct {
	progs map[ebpf.ProgramID]string
	maps  map[ebpf.MapID]string
	links map[link.ID]link.Type
}

func listKernelObjects(t *testing.T) kernelObjects {
	t.Helper()
	k := kernelObjects{progs: map[ebpf.ProgramID]string{}, maps: map[ebpf.MapID]string{}, links: map[link.ID]link.Type{}}
	for id, err := ebpf.ProgramGetNextID(0); err == nil; id, err = ebpf.ProgramGetNextID(id) {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			if info, err := p.Info(); err == nil {
				k.progs[id] = info.Name
			}
			p.Close()
		}
	}
	for id, err := ebpf.MapGetNextID(0); err == nil; id, err = ebpf.MapGetNextID(id) {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			if info, err := m.Info(); err == nil {
				k.maps[id] = info.Name
			}
			m.Close()
		}
	}
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		if info, err := it.Link.Info(); err == nil {
			k.links[it.ID] = info.Type
		}
	}
	return k
}

// leftBehind lists what after has that before had not and whose name is
// one of names: what a check of an object with those programs and maps
// left in the kernel. Other tests of the machine load other objects
// meanwhile; they are told apart by name.
func leftBehind(before, after kernelObjects, names ...string) []string {
	var out []string
	for id, name := range after.progs {
		if _, ok := before.progs[id]; !ok && slices.Contains(names, name) {
			out = append(out, "program "+name)
		}
	}
	for id, name := range after.maps {
		if _, ok := before.maps[id]; !ok && slices.Contains(names, name) {
			out = append(out, "map "+name)
		}
	}
	return out
}

// waitReleased waits until the kernel holds nothing of names that it did
// not hold before: a program's maps are released after an RCU grace
// period once the program is, not at once.
func waitReleased(t *testing.T, before kernelObjects, names ...string) kernelObjects {
	t.Helper()
	var after kernelObjects
	var left []string
	if !testutil.Poll(waitTimeout, func() bool {
		after = listKernelObjects(t)
		left = leftBehind(before, after, names...)
		return len(left) == 0
	}) {
		t.Errorf("check left in the kernel: %v", left)
	}
	return after
}

// check runs bpfsup check --json with args and decodes its report.
func check(t *testing.T, e *testutil.Env, args ...string) (*converge.Check, string, int) {
	t.Helper()
	out, code := e.Run(t, "check", append([]string{"--json"}, args...)...)
	var c converge.Check
	// The report is on standard output; e.Run mixes in standard error,
	// which check writes to only on bad usage.
	if i := strings.IndexByte(out, '{'); i >= 0 {
		if err := json.Unmarshal([]byte(out[i:]), &c); err != nil && code != 2 {
			t.Fatalf("bpfsup check %v: %v\n%s", args, err, out)
		}
	}
	return &c, out, code
}

var dropfilterNames = []string{"xdp_drop", "tc_drop", "drop_ports", "drop_count"}

// A check of an object nothing is pinned for: every program verified, with
// the verifier's figures, its hook resolved; and afterwards not a pin, a
// program, a map or a link more than before.
func TestCheckLeavesNothing(t *testing.T) {
	e := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "chk-a"), testutil.MustNetns(t, "chk-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	treeBefore := e2e.TreeEntries(t, e.PinRoot)
	stateBefore := e2e.TreeEntries(t, e.StateDir)
	before := listKernelObjects(t)

	c, out, code := check(t, e, "--netns", b.Path, "-o", testutil.BPFObject("dropfilter"), "-a", "xdp_drop@xdp:"+ifB.Name)
	if code != 0 || !c.OK {
		t.Fatalf("check exited %d, ok %v:\n%s", code, c.OK, out)
	}
	after := waitReleased(t, before, dropfilterNames...)
	for id, typ := range after.links {
		if _, ok := before.links[id]; !ok && typ == link.XDPType {
			t.Errorf("check left an XDP link (id %d)", id)
		}
	}
	if got := e2e.TreeEntries(t, e.PinRoot); !slices.Equal(got, treeBefore) {
		t.Errorf("check changed the pin root: %v, then %v", treeBefore, got)
	}
	if got := e2e.TreeEntries(t, e.StateDir); !slices.Equal(got, stateBefore) {
		t.Errorf("check changed the state directory: %v, then %v", stateBefore, got)
	}

	o := c.Objects[0]
	if o.Pinned || len(o.Programs) != 2 || len(o.Links) != 1 {
		t.Fatalf("report: %+v", o)
	}
	for _, p := range o.Programs {
		if !p.Verified || p.InsnsProcessed == 0 || p.XlatedBytes == 0 || p.Instructions == 0 {
			t.Errorf("program %s: %+v", p.Name, p)
		}
	}
	if l := o.Links[0]; l.Error != "" || l.Hook != "xdp:"+ifB.Name || l.Mechanism == "" {
		t.Errorf("link: %+v", l)
	}
	human, code := e.Run(t, "check", "--netns", b.Path, "-o", testutil.BPFObject("dropfilter"), "-a", "xdp_drop@xdp:"+ifB.Name)
	if code != 0 {
		t.Fatalf("check without --json exited %d:\n%s", code, human)
	}
	e2e.WantAll(t, human, "program xdp_drop", "verified", "processed", "link    xdp_drop", "ok")
}

// The verifier's refusal: exit 1, its last lines in the report, nothing
// left behind.
func TestCheckVerifierRefuses(t *testing.T) {
	e := testutil.MustEnv(t)
	before := listKernelObjects(t)
	c, out, code := check(t, e, "-o", testutil.BPFObject("bad_verifier"))
	if code != 1 || c.OK {
		t.Fatalf("check of an object the verifier refuses exited %d:\n%s", code, out)
	}
	p := c.Objects[0].Programs[0]
	if p.Verified || !strings.Contains(strings.Join(p.VerifierLog, "\n"), "invalid access to packet") || p.Error == "" {
		t.Errorf("refused program: %+v", p)
	}
	human, code := e.Run(t, "check", "-o", testutil.BPFObject("bad_verifier"))
	if code != 1 {
		t.Errorf("exit %d without --json", code)
	}
	e2e.WantAll(t, human, "refused", "| invalid access to packet", "WOULD FAIL")
	waitReleased(t, before, "bad")
}

// A hook on an interface that does not exist: exit 1 naming it. Bad
// usage: exit 2.
func TestCheckBadInput(t *testing.T) {
	e := testutil.MustEnv(t)
	c, out, code := check(t, e, "-o", testutil.BPFObject("dropfilter"), "-a", "xdp_drop@xdp:nosuchif0")
	if code != 1 || c.OK || !strings.Contains(out, "nosuchif0") {
		t.Fatalf("check against a missing interface exited %d:\n%s", code, out)
	}
	if l := c.Objects[0].Links[0]; l.Error == "" {
		t.Errorf("link on a missing interface: %+v", l)
	}
	if out, code := e.Run(t, "check"); code != 2 || !strings.Contains(out, "no BPF object") {
		t.Errorf("check with no object exited %d:\n%s", code, out)
	}
	if out, code := e.Run(t, "check", "-o", testutil.BPFObject("dropfilter"), "-a", "nosuch/xdp_drop@xdp:x"); code != 2 {
		t.Errorf("check with -a naming no object exited %d:\n%s", code, out)
	}
	if out, code := e.Run(t, "check", "-o", "/nonexistent/x.bpf.o"); code != 1 || !strings.Contains(out, "/nonexistent/x.bpf.o") {
		t.Errorf("check of a missing file exited %d:\n%s", code, out)
	}
}

// Against a running supervisor's pins: the same object is kept as it
// runs; a new version of the program is loaded and its XDP link updated in
// place, maps adopted; an incompatible map is refused (exit 1), or reset
// where the configuration allows it. The pins stay as they were.
func TestCheckReloadPlan(t *testing.T) {
	e := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "chk-a"), testutil.MustNetns(t, "chk-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	dir := t.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	e2e.PutObject(t, obj, "dropfilter")
	attach := []string{"--netns", b.Path, "-o", obj, "-a", "xdp_drop@xdp:" + ifB.Name}
	sup := e.Start(t, "run", append(attach, "--restart", "never", "--", "sleep", "1000")...)
	sup.WaitOutput(t, "child started", startTimeout)
	tree := e2e.TreeEntries(t, e.PinRoot)

	c, out, code := check(t, e, attach...)
	if code != 0 {
		t.Fatalf("check of the running object exited %d:\n%s", code, out)
	}
	o := c.Objects[0]
	wantReload(t, "unchanged", o, map[string]string{"xdp_drop": "adopt", "tc_drop": "adopt"},
		map[string]string{"drop_ports": "adopt", "drop_count": "adopt"}, map[string]string{"xdp_drop": "keep"})

	e2e.PutObject(t, obj, "dropfilter_v2")
	c, out, code = check(t, e, attach...)
	if code != 0 {
		t.Fatalf("check of v2 exited %d:\n%s", code, out)
	}
	wantReload(t, "v2", c.Objects[0], map[string]string{"xdp_drop": "load"},
		map[string]string{"drop_ports": "adopt"}, map[string]string{"xdp_drop": "update-in-place"})

	e2e.PutObject(t, obj, "dropfilter_bigmap")
	c, out, code = check(t, e, attach...)
	if code != 1 || !strings.Contains(out, "drop_ports") {
		t.Fatalf("check of an incompatible map exited %d:\n%s", code, out)
	}
	wantReload(t, "bigmap", c.Objects[0], nil, map[string]string{"drop_ports": "refuse"}, nil)
	cfg := e2e.WriteConfig(t, "[[object]]\npath = \""+obj+"\"\n[object.maps.drop_ports]\nreset = true\n")
	c, out, code = check(t, e, append(attach[:2], "-c", cfg, "-a", "xdp_drop@xdp:"+ifB.Name)...)
	if code != 0 {
		t.Fatalf("check with reset = true exited %d:\n%s", code, out)
	}
	wantReload(t, "bigmap, reset", c.Objects[0], nil, map[string]string{"drop_ports": "reset"}, nil)

	if got := e2e.TreeEntries(t, e.PinRoot); !slices.Equal(got, tree) {
		t.Errorf("check changed the pins: %v, then %v", tree, got)
	}
}

func wantReload(t *testing.T, what string, o converge.ObjectCheck, progs, maps, links map[string]string) {
	t.Helper()
	if !o.Pinned {
		t.Errorf("%s: the object's pins were not seen", what)
	}
	for _, p := range o.Programs {
		if want, ok := progs[p.Name]; ok && p.Reload != want {
			t.Errorf("%s: program %s: reload %q (%s), want %q", what, p.Name, p.Reload, p.Why, want)
		}
	}
	for _, m := range o.Maps {
		if want, ok := maps[m.Name]; ok && m.Action != want {
			t.Errorf("%s: map %s: %q (%s), want %q", what, m.Name, m.Action, m.Why, want)
		}
	}
	for _, l := range o.Links {
		if want, ok := links[l.Name]; ok && l.Reload != want {
			t.Errorf("%s: link %s: %q, want %q", what, l.Name, l.Reload, want)
		}
	}
}

package upgrade

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestUpgradeTailCalls: an object whose prog array declares its tail call
// (`.values = { [0] = &tail_count }`) and whose map of maps declares its
// inner map installs with both slots filled; an upgrade that changes the
// tail-called program moves the slot to the new program (and the attached
// entry program, adopted, runs it); an upgrade that fails after the slot
// moved puts the old program back; a restart of bpfsup adopts the slots as
// they are.
func TestUpgradeTailCalls(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "uptc")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	_, y := testutil.MustVethPair(t, nsR, nsR)
	dir := t.TempDir()
	obj := filepath.Join(dir, "tailcall.bpf.o")
	deploy(t, obj, "tailcall")
	cfgPath := filepath.Join(dir, "bpfsup.toml")
	cfg := config{object: obj, netns: nsR.Path, attach: []attachment{{"entry", "xdp:" + x.Name}}}
	cfg.write(t, cfgPath)
	p := startBpfsup(t, e, "", "-c", cfgPath, "--on-upgrade", "none")
	waitChildren(t, p, 1)

	pinned := func(kind, name string) string { return e2e.PinPath(e, "tailcall", kind, name) }
	progID := func(name string) ebpf.ProgramID {
		t.Helper()
		return e2e.PinnedProgramID(t, pinned("programs", name))
	}
	slot := func(mapName string) uint32 {
		t.Helper()
		var id uint32
		e2e.LookupPinned(t, pinned("maps", mapName), uint32(0), &id)
		return id
	}
	counter := func(mapName string) uint64 {
		t.Helper()
		var v uint64
		e2e.LookupPinned(t, pinned("maps", mapName), uint32(0), &v)
		return v
	}
	// run runs the program the link on x runs, once, on a made-up frame.
	run := func() {
		t.Helper()
		info, err := e2e.PinnedAttachmentInfo(pinned("links", "entry"))
		if err != nil {
			t.Fatal(err)
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
			t.Fatalf("test run of the entry program: %v", err)
		}
	}
	innerID := func() uint32 {
		t.Helper()
		return uint32(e2e.PinnedMapID(t, pinned("maps", "inner")))
	}

	tail1 := progID("tail_count")
	if got := slot("jmp"); got != uint32(tail1) {
		t.Fatalf("jmp[0] holds program %d, want tail_count (%d)", got, tail1)
	}
	if got, want := slot("outer"), innerID(); got != want {
		t.Fatalf("outer[0] holds map %d, want inner (%d)", got, want)
	}
	if !strings.Contains(p.Output(), `why="a tail call, in slot 0 of prog array jmp"`) {
		t.Errorf("the log does not say why tail_count is not attached:\n%s", p.Output())
	}
	run()
	if h, i := counter("hits"), counter("inner"); h != 1 || i != 1 {
		t.Fatalf("after one run of v1: hits %d, inner %d; want 1 and 1 (the tail call ran once)", h, i)
	}

	// Upgrade: v2's tail_count adds 100; entry is the same and adopted.
	entry := progID("entry")
	deploy(t, obj, "tailcall_v2")
	if out := e2e.MustRun(t, e, "reload"); !strings.Contains(out, "loaded: tail_count") {
		t.Fatalf("the reload did not load tail_count anew:\n%s", out)
	}
	tail2 := progID("tail_count")
	if tail2 == tail1 || progID("entry") != entry {
		t.Fatalf("after the upgrade: tail_count %d (was %d), entry %d (was %d): want a new tail_count, the same entry", tail2, tail1, progID("entry"), entry)
	}
	if got := slot("jmp"); got != uint32(tail2) {
		t.Fatalf("after the upgrade jmp[0] holds program %d, want the new tail_count (%d)", got, tail2)
	}
	testutil.WaitFor(t, 5*time.Second, fmt.Sprintf("the old tail_count (%d) to be freed", tail1), func() bool { return e2e.ProgramGone(tail1) })
	run()
	if h := counter("hits"); h != 101 {
		t.Fatalf("after a run of v2: hits %d, want 101 (the new tail call ran)", h)
	}

	// An upgrade that fails after the slot moved: back to v1, with a second
	// attachment on an interface someone else's program holds.
	busy := holdXDP(t, nsR, y, loadForeignXDP(t))
	defer busy.Close()
	bad := cfg.with(attachment{"entry", "xdp:" + y.Name})
	bad.write(t, cfgPath)
	deploy(t, obj, "tailcall")
	filled := strings.Count(p.Output(), `msg="prog array slot moved"`)
	if out, code := reload(t, e); code == 0 || !strings.Contains(out, "xdp:"+y.Name) {
		t.Fatalf("reload onto a busy interface: exit %d, want an error naming xdp:%s:\n%s\n%s", code, y.Name, out, p.Output())
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log the slot moved before the failure", func() bool {
		return strings.Count(p.Output(), `msg="prog array slot moved"`) > filled
	})
	if got := slot("jmp"); got != uint32(tail2) || progID("tail_count") != tail2 {
		t.Fatalf("after the failed upgrade jmp[0] holds %d and tail_count is %d, want both the v2 program %d", got, progID("tail_count"), tail2)
	}
	run()
	if h := counter("hits"); h != 201 {
		t.Fatalf("after a run following the failed upgrade: hits %d, want 201 (v2 still runs)", h)
	}

	// A restart of bpfsup adopts the slots as they are.
	busy.Close()
	deploy(t, obj, "tailcall_v2")
	cfg.write(t, cfgPath)
	p.Kill(syscall.SIGKILL)
	p.Wait(t, 10*time.Second)
	p = startBpfsup(t, e, "", "-c", cfgPath)
	waitChildren(t, p, 1)
	if progID("tail_count") != tail2 || slot("jmp") != uint32(tail2) || strings.Contains(p.Output(), "prog array slot moved") {
		t.Fatalf("after a restart: tail_count %d, jmp[0] %d, want %d untouched:\n%s", progID("tail_count"), slot("jmp"), tail2, p.Output())
	}
}

// TestTailCallsCrashFirstStart: bpfsup killed on its first start right
// after the map of maps was pinned; the next start finds its slot filled
// (bpfsup fills a map it creates before pinning it) and the prog array's.
func TestTailCallsCrashFirstStart(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "uptk")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	obj := filepath.Join(t.TempDir(), "tailcall.bpf.o")
	deploy(t, obj, "tailcall")
	args := e.Args("run", "-o", obj, "-a", "entry@xdp:"+x.Name, "--netns", nsR.Path, "--", "sleep", "1000")

	// Maps are pinned in name order: hits, inner, jmp, outer.
	cmd := exec.Command(e.Bin, args...)
	cmd.Env = append(os.Environ(), crash.EnvVar+"=maps/moved#4")
	p := testutil.StartProc(t, cmd)
	p.Wait(t, 30*time.Second)
	if strings.Contains(p.Output(), "child started") {
		t.Fatalf("bpfsup did not crash at maps/moved#4:\n%s", p.Output())
	}
	outerPin := filepath.Join(e.PinRoot, "tailcall", "maps", "outer")
	if _, err := os.Stat(outerPin); err != nil {
		t.Fatalf("the crash left no outer map pinned (%v): the case tests nothing", err)
	}

	p = testutil.StartProc(t, exec.Command(e.Bin, args...))
	p.WaitOutput(t, "child started", 30*time.Second)
	lookup := func(name string) uint32 {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(e.PinRoot, "tailcall", "maps", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var id uint32
		if err := m.Lookup(uint32(0), &id); err != nil {
			t.Fatalf("%s[0] after the crash and a restart: %v", name, err)
		}
		return id
	}
	if lookup("outer") == 0 || lookup("jmp") == 0 {
		t.Fatalf("slots empty after the crash and a restart")
	}
}

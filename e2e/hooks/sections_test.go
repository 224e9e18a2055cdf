package hookstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// inspected is the part of `bpfsup inspect --json` these tests read.
type inspected struct {
	Programs []struct {
		Name            string `json:"name"`
		Section         string `json:"section"`
		Hook            string `json:"hook"`
		HookNeedsTarget bool   `json:"hook_needs_target"`
		NoHook          string `json:"no_hook"`
	} `json:"programs"`
}

// TestInspectInfersHooks: inspect says, per program of an object with every
// kind of section, the hook its section names and whether it needs a target.
func TestInspectInfersHooks(t *testing.T) {
	env := testutil.MustEnv(t)
	out, err := exec.Command(env.Bin, "inspect", "--json", testutil.BPFObject("sections")).CombinedOutput()
	if err != nil {
		t.Fatalf("inspect: %v:\n%s", err, out)
	}
	var ins inspected
	if err := json.Unmarshal(out, &ins); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	type want struct {
		hook        string
		needsTarget bool
		noHook      string // a part of the reason
	}
	wants := map[string]want{
		"tp_getppid":          {hook: "tracepoint:syscalls/sys_enter_getppid"},
		"tracepoint_getppid":  {hook: "tracepoint:syscalls/sys_exit_getppid"},
		"raw_tp_sys_exit":     {hook: "raw_tp:sys_exit"},
		"raw_tracepoint_exec": {hook: "raw_tp:sched_process_exec"},
		"xdp_pass":            {hook: "xdp", needsTarget: true},
		"xdp_frags_pass":      {hook: "xdp", needsTarget: true},
		"tcx_in":              {hook: "tcx/ingress", needsTarget: true},
		"tcx_out":             {hook: "tcx/egress", needsTarget: true},
		"cg_connect4":         {hook: "cgroup/connect4", needsTarget: true},
		"cg_skb_in":           {hook: "cgroup/ingress", needsTarget: true},
		"cg_skb_out":          {hook: "cgroup/egress", needsTarget: true},
		"sock_ops":            {hook: "cgroup/sockops", needsTarget: true},
		"sk_lookup_pass":      {hook: "sk_lookup", needsTarget: true},
		"flow_continue":       {hook: "flow_dissector", needsTarget: true},
		"nf_accept":           {hook: "netfilter", needsTarget: true},
		"uprobe_any":          {hook: "uprobe", needsTarget: true},
		"tc_any":              {noHook: "ingress or egress"},
		"socket_all":          {noHook: "socket filter"},
	}
	if len(ins.Programs) != len(wants) {
		t.Errorf("inspect lists %d programs, want %d", len(ins.Programs), len(wants))
	}
	for _, p := range ins.Programs {
		w, ok := wants[p.Name]
		if !ok {
			t.Errorf("unexpected program %s", p.Name)
			continue
		}
		if w.noHook != "" {
			if p.Hook != "" || !strings.Contains(p.NoHook, w.noHook) {
				t.Errorf("%s (section %s): hook %q, no_hook %q; want no hook because %q", p.Name, p.Section, p.Hook, p.NoHook, w.noHook)
			}
			continue
		}
		if p.Hook != w.hook || p.HookNeedsTarget != w.needsTarget || p.NoHook != "" {
			t.Errorf("%s (section %s): hook %q needs target %v (no_hook %q); want %q, %v", p.Name, p.Section, p.Hook, p.HookNeedsTarget, p.NoHook, w.hook, w.needsTarget)
		}
	}
}

// TestSectionInference runs an object with a section of every kind: the
// programs whose section names a whole hook are attached without -a, -a
// PROG@TARGET gives the others their target, and the rest are loaded and
// pinned without being attached, which does not stop the start.
func TestSectionInference(t *testing.T) {
	// The object's tracepoint sections attach themselves: as pinned
	// perf_event links (5.15).
	testutil.SkipWithout(t, testutil.PerfLink)
	env := testutil.MustEnv(t)
	ns := testutil.MustNetns(t, "sections")
	ifA, _ := testutil.MustVethPair(t, ns, ns)
	cgroup := mustCgroup(t)

	p := env.Start(t, "run", "-o", testutil.BPFObject("sections"), "--netns", ns.Path,
		"-a", "xdp_pass@"+ifA.Name, "-a", "cg_connect4@"+cgroup, "--", "sleep", "1000")
	p.WaitOutput(t, "child started", 30*time.Second)

	wantLinks := map[string]string{
		"tp_getppid":          "tracepoint:syscalls/sys_enter_getppid",
		"tracepoint_getppid":  "tracepoint:syscalls/sys_exit_getppid",
		"raw_tp_sys_exit":     "raw_tp:sys_exit",
		"raw_tracepoint_exec": "raw_tp:sched_process_exec",
		"xdp_pass":            "xdp:" + ifA.Name,
		"cg_connect4":         "cgroup/connect4:" + cgroup,
	}
	got, programs := sectionsStatus(t, env)
	for name, hook := range wantLinks {
		if got[name] != hook {
			t.Errorf("link %s: hook %q, want %q", name, got[name], hook)
		}
	}
	if len(got) != len(wantLinks) {
		t.Errorf("links %v, want exactly %v", got, wantLinks)
	}
	// Every program but those of a type the kernel lacks: nf_accept before
	// netfilter programs (6.4) is left out, and bpfsup says so.
	want, left := 18, `program not loaded: nothing attaches it and the kernel cannot load it" object=sections program=nf_accept`
	if why := testutil.Missing(t, testutil.NetfilterLink); why != "" {
		want--
		if !strings.Contains(p.Output(), left) {
			t.Errorf("%s, and no warning that nf_accept was left out:\n%s", why, p.Output())
		}
	} else if strings.Contains(p.Output(), left) {
		t.Errorf("nf_accept left out on a kernel with netfilter programs:\n%s", p.Output())
	}
	// xdp_frags_pass, which nothing attaches, before xdp.frags (5.18) too.
	if why := testutil.Missing(t, testutil.XDPFrags); why != "" {
		want--
		if !strings.Contains(p.Output(), "program=xdp_frags_pass") {
			t.Errorf("%s, and no warning that xdp_frags_pass was left out:\n%s", why, p.Output())
		}
	}
	if n := programs; n != want {
		t.Errorf("%d programs pinned, want %d", n, want)
	}
	if !strings.Contains(p.Output(), `program loaded and pinned, not attached" object=sections program=sk_lookup_pass`) {
		t.Errorf("no log line for the unattached sk_lookup_pass:\n%s", p.Output())
	}

	// The inferred tracepoint fires.
	before := readSeen(t, env, 0)
	testutil.WaitFor(t, 5*time.Second, "the inferred tracepoint to fire", func() bool {
		unix.Getppid()
		return readSeen(t, env, 0) > before
	})
	p.Kill(syscall.SIGTERM)
	p.Wait(t, 20*time.Second)
}

// inspect lists the slots a prog array or map of maps declares, which
// bpfsup fills.
func TestInspectSlots(t *testing.T) {
	env := testutil.MustEnv(t)
	out, err := exec.Command(env.Bin, "inspect", "--json", testutil.BPFObject("tailcall")).CombinedOutput()
	if err != nil {
		t.Fatalf("inspect: %v:\n%s", err, out)
	}
	var ins struct {
		Maps []struct {
			Name  string `json:"name"`
			Slots []struct {
				Key  uint32 `json:"key"`
				Name string `json:"name"`
			} `json:"slots"`
		} `json:"maps"`
	}
	if err := json.Unmarshal(out, &ins); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, m := range ins.Maps {
		for _, sl := range m.Slots {
			got[fmt.Sprintf("%s[%d]", m.Name, sl.Key)] = sl.Name
		}
	}
	if want := map[string]string{"jmp[0]": "tail_count", "outer[0]": "inner"}; !maps.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
}

// sectionsStatus reads `bpfsup status --json` of the one object sections:
// its links' hooks by name, each checked attached, and how many programs it
// pinned.
func sectionsStatus(t *testing.T, env *testutil.Env) (links map[string]string, programs int) {
	t.Helper()
	st := e2e.Status(t, env)
	if len(st.Objects) != 1 {
		t.Fatalf("status --json: %d objects, want 1: %+v", len(st.Objects), st.Objects)
	}
	links = map[string]string{}
	for _, l := range st.Objects[0].Links {
		links[l.Name] = l.Hook
		if l.State != "attached" {
			t.Errorf("link %s is %s, want attached", l.Name, l.State)
		}
	}
	return links, len(st.Objects[0].Programs)
}

// TestSectionAutoAttachOff: `autoattach = false` leaves a program whose
// section names a whole hook unattached (loaded and pinned, and said so);
// a restart without it attaches the program, and one with it again detaches
// and unpins that link, leaving the others as they were.
func TestSectionAutoAttachOff(t *testing.T) {
	testutil.SkipWithout(t, testutil.PerfLink) // tracepoint sections attach themselves
	env := testutil.MustEnv(t)
	cfg := filepath.Join(t.TempDir(), "bpfsup.toml")
	run := func(off ...string) (*testutil.Proc, map[string]string) {
		t.Helper()
		text := fmt.Sprintf("[[object]]\npath = %q\n", testutil.BPFObject("sections"))
		for _, prog := range off {
			text += fmt.Sprintf("[object.programs.%s]\nautoattach = false\n", prog)
		}
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		p := env.Start(t, "run", "-c", cfg, "--", "sleep", "1000")
		p.WaitOutput(t, "child started", 30*time.Second)
		links, _ := sectionsStatus(t, env)
		return p, links
	}
	stop := func(p *testutil.Proc) {
		t.Helper()
		p.Kill(syscall.SIGTERM)
		p.Wait(t, 20*time.Second)
	}
	all := map[string]string{
		"tp_getppid":          "tracepoint:syscalls/sys_enter_getppid",
		"tracepoint_getppid":  "tracepoint:syscalls/sys_exit_getppid",
		"raw_tp_sys_exit":     "raw_tp:sys_exit",
		"raw_tracepoint_exec": "raw_tp:sched_process_exec",
	}
	without := func(names ...string) map[string]string {
		m := maps.Clone(all)
		for _, n := range names {
			delete(m, n)
		}
		return m
	}

	p, links := run("tp_getppid", "raw_tp_sys_exit")
	if want := without("tp_getppid", "raw_tp_sys_exit"); !maps.Equal(links, want) {
		t.Fatalf("links %v, want %v", links, want)
	}
	for _, prog := range []string{"tp_getppid", "raw_tp_sys_exit"} {
		line := fmt.Sprintf(`program loaded and pinned, not attached" object=sections program=%s why="autoattach = false in its configuration"`, prog)
		if !strings.Contains(p.Output(), line) {
			t.Errorf("no log line for %s:\n%s", prog, p.Output())
		}
	}
	if _, err := os.Stat(filepath.Join(env.PinRoot, "sections", "programs", "tp_getppid")); err != nil {
		t.Errorf("tp_getppid is not pinned: %v", err)
	}
	stop(p)

	p, links = run()
	if !maps.Equal(links, all) {
		t.Fatalf("without autoattach = false: links %v, want %v", links, all)
	}
	stop(p)

	p, links = run("raw_tracepoint_exec")
	if want := without("raw_tracepoint_exec"); !maps.Equal(links, want) {
		t.Fatalf("autoattach = false again: links %v, want %v", links, want)
	}
	if _, err := os.Stat(filepath.Join(env.PinRoot, "sections", "links", "raw_tracepoint_exec")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the link of raw_tracepoint_exec is still pinned: %v", err)
	}
	stop(p)
}

// TestSectionInferenceErrors: an -a that gives a target where the section
// cannot take one, or a program that cannot be loaded without a target, is a
// clear error before anything is made.
func TestSectionInferenceErrors(t *testing.T) {
	env := testutil.MustEnv(t)
	sections := testutil.BPFObject("sections")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"socket filter", []string{"-o", sections, "-a", "socket_all@veth0"},
			[]string{`hook "veth0" is not a hook spec`, "program socket_all", "socket filter"}},
		{"tc without a direction", []string{"-o", sections, "-a", "tc_any@veth0"},
			[]string{"program tc_any", "does not say ingress or egress", "tcx/ingress:IFACE"}},
		{"whole hook in the section", []string{"-o", sections, "-a", "tp_getppid@veth0"},
			[]string{"program tp_getppid", "names the whole hook, tracepoint:syscalls/sys_enter_getppid"}},
		{"incomplete spec", []string{"-o", sections, "-a", "xdp_pass@xdp"},
			[]string{"xdp needs a target"}},
		{"wrong program type", []string{"-o", sections, "-a", "xdp_pass@tracepoint:syscalls/sys_enter_getppid"},
			[]string{"program xdp_pass", "needs a program of type TracePoint"}},
		{"trampoline without a target", []string{"-o", testutil.BPFObject("tracing")},
			[]string{"program fentry_count", "can only be loaded for a target", "-a fentry_count@fentry:TARGET"}},
		{"relative cgroup", []string{"-o", sections, "-a", "cg_connect4@cgroup/connect4:relative/dir"},
			[]string{"want an absolute path to a cgroup v2 directory"}},
		{"missing cgroup", []string{"-o", sections, "-a", "cg_connect4@/sys/fs/cgroup/no-such-bpfsup-cgroup"},
			[]string{"cgroup/connect4:/sys/fs/cgroup/no-such-bpfsup-cgroup"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := env.Run(t, "run", append(tc.args, "--", "true")...)
			if code == 0 {
				t.Fatalf("bpfsup run %v succeeded:\n%s", tc.args, out)
			}
			e2e.WantAll(t, out, tc.want...)
			if entries, _ := os.ReadDir(env.PinRoot); len(entries) != 0 {
				t.Errorf("the failed start left pins: %v", entries)
			}
		})
	}
}

func readSeen(t *testing.T, env *testutil.Env, slot uint32) uint64 {
	t.Helper()
	var v uint64
	e2e.LookupPinned(t, e2e.PinPath(env, "sections", "maps", "seen"), slot, &v)
	return v
}

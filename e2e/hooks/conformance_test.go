package hookstest

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// hookCase is one hook of the conformance test.
type hookCase struct {
	name string
	// object is the committed object ("hooks", "tracing"); its upgrade is
	// object+"_v2", whose programs also count in hits[16+slot].
	object, program string
	// slot is the program's counter in the object's hits map.
	slot uint32
	// events says what causes the program's events: a helper mode
	// (helper_test.go) run as a process of its own ("getppid", "call",
	// "open"), "cgroup:socket" for the helper's socket mode inside a fresh
	// cgroup and network namespace, or "traffic" for UDP datagrams from
	// one fresh network namespace to a socket in another.
	events string
	// hook makes the hook spec once the events' targets exist.
	hook func(tg *targets) string
	// netns gives bpfsup --netns (the receiving namespace) for traffic.
	netns bool
	// also lists other attachments the object needs to load at all.
	also []string
	// updatable: the link swaps its program in place on upgrade; otherwise
	// the upgrade is make-before-break and the link changes.
	updatable bool
	// lacking returns why the kernel lacks the hook, or "", and what bpfsup
	// must then say when it refuses the hook.
	lacking func(t *testing.T) (why, refusal string)
}

// targets are what a case's events happen on.
type targets struct {
	helper      *helper
	cgroup      string
	nsA, nsB    *testutil.Netns
	receiver    *testutil.UDPReceiver
	dst         netip.AddrPort
	binary, sym string
}

// trampolineAttachments attach every program of the tracing object: each
// needs its target to be loaded at all.
var trampolineAttachments = []string{
	"fentry_count@fentry:__task_pid_nr_ns",
	"fexit_count@fexit:__task_pid_nr_ns",
	"fmod_ret_count@fmod_ret:security_file_open",
}

func lackingTrampolines(t *testing.T) (string, string) {
	if trampolinesRefused(t) {
		return "this kernel refuses BPF trampolines: a trivial fentry program fails to load with EPERM while a socket filter loads",
			"refuses BPF trampolines"
	}
	if why := testutil.Missing(t, testutil.TracingLinkInfo); why != "" {
		return why, "do not say their target (Linux 5.13+)"
	}
	return "", ""
}

// lackingLSM: the kernel refuses trampolines (and bpfsup must say so, which
// it checks before the LSM), or the BPF LSM is not active.
func lackingLSM(t *testing.T) (string, string) {
	if !bpfLSMActive(t) {
		return "the BPF LSM is not active (\"bpf\" is not in the securityfs lsm list)", "BPF LSM is not active"
	}
	return lackingTrampolines(t)
}

func lackingKprobes(t *testing.T) (string, string) {
	if kprobesMissing() {
		return "this kernel lacks kprobes: no kprobe PMU and no kprobe_events in tracefs (CONFIG_KPROBES off)", "lacks kprobes"
	}
	return lackingPerfLink(t)
}

// lackingPerfLink: tracepoints, kprobes and uprobes are pinned as
// perf_event bpf_links, which came in Linux 5.15; bpfsup refuses them
// before.
func lackingPerfLink(t *testing.T) (string, string) {
	if why := testutil.Missing(t, testutil.PerfLink); why != "" {
		return why, "no perf_event bpf_link (Linux 5.15+)"
	}
	return "", ""
}

// lackingNetfilter: netfilter programs and links came in Linux 6.4.
func lackingNetfilter(t *testing.T) (string, string) {
	if why := testutil.Missing(t, testutil.NetfilterLink); why != "" {
		return why, "cannot load Netfilter programs"
	}
	return "", ""
}

func hookCases() []hookCase {
	const hooks, tracing = "hooks", "tracing"
	tramp := func(name, program string, slot uint32, events, hook string) hookCase {
		var also []string
		for _, a := range trampolineAttachments {
			if !strings.HasPrefix(a, program+"@") {
				also = append(also, a)
			}
		}
		return hookCase{name: name, object: tracing, program: program, slot: slot, events: events,
			hook: func(*targets) string { return hook }, also: also, lacking: lackingTrampolines}
	}
	fixed := func(s string) func(*targets) string { return func(*targets) string { return s } }
	return []hookCase{
		{name: "tracepoint", object: hooks, program: "tp_count", slot: 0, events: "getppid", hook: fixed("tracepoint:syscalls/sys_enter_getppid"),
			lacking: lackingPerfLink},
		{name: "raw_tp", object: hooks, program: "raw_tp_count", slot: 1, events: "getppid", hook: fixed("raw_tp:sys_enter")},
		{name: "tp_btf", object: "tpbtf", program: "tp_btf_count", slot: 12, events: "getppid", hook: fixed("tp_btf:sys_enter")},
		{name: "uprobe", object: hooks, program: "uprobe_count", slot: 2, events: "call",
			hook: func(tg *targets) string {
				return "uprobe:" + tg.binary + ":" + tg.sym + ":" + itoa(tg.helper.pid())
			}, lacking: lackingPerfLink},
		{name: "uretprobe", object: hooks, program: "uretprobe_count", slot: 3, events: "call",
			hook: func(tg *targets) string { return "uretprobe:" + tg.binary + ":" + tg.sym }, lacking: lackingPerfLink},
		{name: "kprobe", object: hooks, program: "kprobe_count", slot: 4, events: "getppid", hook: fixed("kprobe:__task_pid_nr_ns"),
			lacking: lackingKprobes},
		{name: "kretprobe", object: hooks, program: "kretprobe_count", slot: 5, events: "getppid", hook: fixed("kretprobe:__task_pid_nr_ns"),
			lacking: lackingKprobes},
		{name: "cgroup_connect4", object: hooks, program: "connect4_count", slot: 6, events: "cgroup:socket", updatable: true,
			hook: func(tg *targets) string { return "cgroup/connect4:" + tg.cgroup }},
		{name: "cgroup_egress", object: hooks, program: "skb_egress_count", slot: 7, events: "cgroup:socket", updatable: true,
			hook: func(tg *targets) string { return "cgroup/egress:" + tg.cgroup }},
		{name: "cgroup_sock_create", object: hooks, program: "sock_create_count", slot: 11, events: "cgroup:socket", updatable: true,
			hook: func(tg *targets) string { return "cgroup/sock_create:" + tg.cgroup }},
		{name: "netfilter", object: hooks, program: "nf_count", slot: 8, events: "traffic", netns: true,
			hook: fixed("netfilter:ipv4/local_in/-100"), lacking: lackingNetfilter},
		{name: "sk_lookup", object: hooks, program: "sk_lookup_count", slot: 9, events: "traffic", updatable: true,
			hook: func(tg *targets) string { return "sk_lookup:" + tg.nsB.Path }},
		{name: "flow_dissector", object: hooks, program: "flow_count", slot: 10, events: "traffic", updatable: true,
			hook: func(tg *targets) string { return "flow_dissector:" + tg.nsB.Path }},
		tramp("fentry", "fentry_count", 0, "getppid", "fentry:__task_pid_nr_ns"),
		tramp("fexit", "fexit_count", 1, "getppid", "fexit:__task_pid_nr_ns"),
		tramp("fmod_ret", "fmod_ret_count", 2, "open", "fmod_ret:security_file_open"),
		{name: "lsm", object: "lsm", program: "lsm_count", slot: 3, events: "open", hook: fixed("lsm:file_open"),
			lacking: lackingLSM},
	}
}

// TestHookConformance holds every hook to the same promise, through the real
// bpfsup binary: the program is attached and pinned and fires on real events;
// bpfsup killed with SIGKILL leaves it attached and counting, and started
// again adopts the same link; an upgrade swaps in the new program (in place,
// or make-before-break) while events keep coming, and none of them passes
// the hook unseen; `bpfsup down` leaves nothing attached. Hooks the kernel
// lacks are skipped, saying why, once bpfsup has refused them plainly.
func TestHookConformance(t *testing.T) {
	for _, c := range hookCases() {
		t.Run(c.name, func(t *testing.T) { testHook(t, c) })
	}
}

func testHook(t *testing.T, c hookCase) {
	env := testutil.MustEnv(t)
	obj := copyObject(t, t.TempDir(), c.object)

	tg := &targets{}
	if c.lacking != nil {
		if why, refusal := c.lacking(t); why != "" {
			if c.events == "call" { // a uprobe's hook names its target
				tg.binary, tg.sym = uprobeSymbol(t)
				tg.helper = startHelper(t, c.events, "", "")
			}
			args := []string{"-o", obj}
			for _, a := range append([]string{c.program + "@" + c.hook(tg)}, c.also...) {
				args = append(args, "-a", a)
			}
			out, code := env.Run(t, "run", append(args, "--", "true")...)
			if code == 0 || !strings.Contains(out, refusal) {
				t.Fatalf("bpfsup run with %s: exit %d, want a failure saying %q; output:\n%s", c.name, code, refusal, out)
			}
			t.Skip(why)
		}
	}

	switch c.events {
	case "getppid", "call", "open":
		tg.binary, tg.sym = uprobeSymbol(t)
		tg.helper = startHelper(t, c.events, "", "")
	case "cgroup:socket":
		tg.cgroup = mustCgroup(t)
		ns := testutil.MustNetns(t, "hooks")
		tg.helper = startHelper(t, "socket", tg.cgroup, ns.Path)
	case "traffic":
		tg.nsA, tg.nsB = testutil.MustNetns(t, "hooks"), testutil.MustNetns(t, "hooks")
		_, ifB := testutil.MustVethPair(t, tg.nsA, tg.nsB)
		// Receive packet steering hashes every packet that arrives without
		// a hash (the sender's socket is unconnected), which runs the
		// namespace's flow dissector once per packet. The namespace's
		// sysfs is only visible from inside it.
		tg.nsB.Run(t, "sh", "-c", "echo 1 > /sys/class/net/"+ifB.Name+"/queues/rx-0/rps_cpus")
		tg.receiver = testutil.StartUDPReceiver(t, tg.nsB, 0)
		tg.dst = netip.AddrPortFrom(ifB.Addr, uint16(tg.receiver.Port()))
	default:
		t.Fatalf("unknown events %q", c.events)
	}

	args := []string{"-o", obj}
	for _, a := range append([]string{c.program + "@" + c.hook(tg)}, c.also...) {
		args = append(args, "-a", a)
	}
	if c.netns {
		args = append(args, "--netns", tg.nsB.Path)
	}
	args = append(args, "--", "sleep", "1000")
	lp := e2e.PinPath(env, c.object, "links", c.program)
	hits := func() uint64 { return readSlot(t, env, c.object, c.slot) }

	// Attached and pinned.
	p1 := env.Start(t, "run", args...)
	p1.WaitOutput(t, "child started", 30*time.Second)
	first := e2e.PinnedLinkInfo(t, lp)

	// The program fires on events we cause.
	var sender *testutil.UDPSender
	if tg.helper != nil {
		setConfig(t, env, c.object, tg.helper.pid())
		tg.helper.start(t)
	} else {
		sender = testutil.StartUDPSender(t, tg.nsA, tg.dst, 2000)
	}
	testutil.WaitFor(t, 10*time.Second, "the program to fire", func() bool { return hits() > 0 })

	// bpfsup killed: the program stays attached and keeps counting.
	p1.Kill(syscall.SIGKILL)
	p1.Wait(t, 10*time.Second)
	n := hits()
	testutil.WaitFor(t, 10*time.Second, "the program to count with bpfsup dead", func() bool { return hits() > n })

	// Started again, bpfsup adopts the same link.
	p2 := env.Start(t, "run", args...)
	p2.WaitOutput(t, "child started", 30*time.Second)
	adopted := e2e.PinnedLinkInfo(t, lp)
	if adopted.ID != first.ID || adopted.Program != first.Program {
		t.Fatalf("after a restart the pin holds link %d running program %d, want the adopted link %d running %d",
			adopted.ID, adopted.Program, first.ID, first.Program)
	}
	wantUpgrade := "make-before-break"
	if c.updatable {
		wantUpgrade = "in-place"
	}
	if got := e2e.LinkStatus(t, env, c.object, c.program); got.Upgrade != wantUpgrade || got.State != "attached" || got.Mechanism == "" {
		t.Errorf("status of link %s: state %q upgrade %q mechanism %q, want attached, %s, a mechanism",
			c.program, got.State, got.Upgrade, got.Mechanism, wantUpgrade)
	}

	// Upgrade while the events keep coming.
	e2e.PutObject(t, obj, c.object+"_v2")
	e2e.MustRun(t, env, "reload")
	upgraded := e2e.PinnedLinkInfo(t, lp)
	if upgraded.Program == adopted.Program {
		t.Fatalf("after the upgrade the link still runs program %d", upgraded.Program)
	}
	if c.updatable && upgraded.ID != adopted.ID {
		t.Errorf("upgrade replaced link %d by %d; %s links swap their program in place", adopted.ID, upgraded.ID, c.name)
	}
	if !c.updatable && upgraded.ID == adopted.ID {
		t.Errorf("upgrade kept link %d; %s links cannot be updated, a new one is expected", adopted.ID, c.name)
	}
	testutil.WaitFor(t, 10*time.Second, "the new program to fire", func() bool {
		return readSlot(t, env, c.object, 16+c.slot) > 0
	})
	testutil.WaitFor(t, 10*time.Second, "the old program to be released", func() bool {
		return e2e.ProgramGone(adopted.Program) && (c.updatable || e2e.LinkGone(adopted.ID))
	})

	// No event passed the hook unseen, through the kill, the restart and
	// the upgrade: the counter holds at least every event caused.
	if tg.helper != nil {
		events := tg.helper.stop(t)
		if got := hits(); got < events {
			t.Errorf("the hook counted %d events, the helper caused %d: %d passed unseen", got, events, events-got)
		}
		t.Logf("%d events caused, %d counted", events, hits())
	} else {
		received := tg.receiver.Count()
		if got := hits(); got < received {
			t.Errorf("the hook counted %d packets, %d arrived: %d passed unseen", got, received, received-got)
		}
		sender.Stop()
		t.Logf("%d datagrams sent, %d received, %d counted", sender.Sent(), received, hits())
	}

	// Down: nothing stays attached.
	p2.Kill(syscall.SIGTERM)
	p2.Wait(t, 20*time.Second)
	e2e.MustRun(t, env, "down")
	testutil.WaitFor(t, 10*time.Second, "the link and its program to be released", func() bool {
		return e2e.LinkGone(upgraded.ID) && e2e.ProgramGone(upgraded.Program)
	})
	if _, err := os.Stat(lp); !os.IsNotExist(err) {
		t.Errorf("link pin %s after down: %v", lp, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

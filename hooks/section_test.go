package hooks

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestFromSection(t *testing.T) {
	for _, tc := range []struct {
		section     string
		want        string // the inferred spec
		needsTarget bool
		wantErr     string // a part of the error; ErrUnknownHook is implied
	}{
		{section: "tp/syscalls/sys_enter_openat", want: "tracepoint:syscalls/sys_enter_openat"},
		{section: "tracepoint/sched/sched_process_exec", want: "tracepoint:sched/sched_process_exec"},
		{section: "tp", want: "tracepoint", needsTarget: true},
		{section: "tracepoint", want: "tracepoint", needsTarget: true},
		{section: "raw_tp/sched_switch", want: "raw_tp:sched_switch"},
		{section: "raw_tracepoint/sys_enter", want: "raw_tp:sys_enter"},
		{section: "raw_tp", want: "raw_tp", needsTarget: true},
		{section: "tp_btf/sched_switch", want: "tp_btf:sched_switch"},
		{section: "tp_btf", want: "tp_btf", needsTarget: true},
		{section: "fentry/do_unlinkat", want: "fentry:do_unlinkat"},
		{section: "fexit/do_unlinkat", want: "fexit:do_unlinkat"},
		{section: "fmod_ret/security_file_open", want: "fmod_ret:security_file_open"},
		{section: "fentry", want: "fentry", needsTarget: true},
		{section: "lsm/file_open", want: "lsm:file_open"},
		{section: "lsm", want: "lsm", needsTarget: true},
		{section: "lsm.s/bprm_committed_creds", want: "lsm:bprm_committed_creds"},
		{section: "fentry.s/do_unlinkat", want: "fentry:do_unlinkat"},
		{section: "uprobe.s//usr/bin/bash:readline", want: "uprobe:/usr/bin/bash:readline"},
		{section: "kprobe.multi/do_*", wantErr: "names no hook"},
		{section: "kprobe/do_sys_openat2", want: "kprobe:do_sys_openat2"},
		{section: "kretprobe/do_sys_openat2", want: "kretprobe:do_sys_openat2"},
		{section: "kprobe", want: "kprobe", needsTarget: true},
		{section: "uprobe//usr/bin/bash:readline", want: "uprobe:/usr/bin/bash:readline"},
		{section: "uretprobe/libc.so.6:malloc", want: "uretprobe:libc.so.6:malloc"},
		{section: "uprobe/libc.so.6", want: "uprobe", needsTarget: true},
		{section: "uprobe", want: "uprobe", needsTarget: true},
		{section: "xdp", want: "xdp", needsTarget: true},
		{section: "?xdp", want: "xdp", needsTarget: true},
		{section: "xdp.frags", want: "xdp", needsTarget: true},
		{section: "tcx/ingress", want: "tcx/ingress", needsTarget: true},
		{section: "tcx/egress", want: "tcx/egress", needsTarget: true},
		{section: "tc/ingress", want: "tcx/ingress", needsTarget: true},
		{section: "cgroup/connect4", want: "cgroup/connect4", needsTarget: true},
		{section: "cgroup/recvmsg_unix", want: "cgroup/recvmsg_unix", needsTarget: true},
		{section: "cgroup/sock", want: "cgroup/sock_create", needsTarget: true},
		{section: "cgroup/sock_release", want: "cgroup/sock_release", needsTarget: true},
		{section: "cgroup/dev", want: "cgroup/device", needsTarget: true},
		{section: "cgroup/sysctl", want: "cgroup/sysctl", needsTarget: true},
		{section: "cgroup_skb/ingress", want: "cgroup/ingress", needsTarget: true},
		{section: "cgroup_skb/egress", want: "cgroup/egress", needsTarget: true},
		{section: "sockops", want: "cgroup/sockops", needsTarget: true},
		{section: "sk_lookup", want: "sk_lookup", needsTarget: true},
		{section: "flow_dissector", want: "flow_dissector", needsTarget: true},
		{section: "netfilter", want: "netfilter", needsTarget: true},

		{section: "tc", wantErr: "ingress or egress"},
		{section: "classifier", wantErr: "ingress or egress"},
		{section: "cgroup/skb", wantErr: "ingress or egress"},
		{section: "socket", wantErr: "socket filter"},
		{section: "cgroup/ingress", wantErr: "no cgroup attach type"},
		{section: "cgroup/bogus", wantErr: "no cgroup attach type"},
		{section: "xdp/devmap", wantErr: "names no hook"},
		{section: "sk_msg", wantErr: "names no hook"},
		{section: ".text", wantErr: "names no hook"},
		{section: "tp/nogroup", wantErr: "tracepoint:GROUP/NAME"},
	} {
		t.Run(tc.section, func(t *testing.T) {
			inf, err := FromSection(tc.section)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrUnknownHook) && !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("FromSection(%q) = %+v, %v; want an error saying %q", tc.section, inf, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromSection(%q): %v", tc.section, err)
			}
			if got := inf.Spec.String(); got != tc.want || inf.NeedsTarget != tc.needsTarget {
				t.Fatalf("FromSection(%q) = %s (needs target %v), want %s (%v)", tc.section, got, inf.NeedsTarget, tc.want, tc.needsTarget)
			}
			if inf.NeedsTarget {
				return
			}
			// A whole hook is a valid spec of a known kind.
			if _, err := Parse(tc.want); err != nil {
				t.Fatalf("inferred %s does not parse: %v", tc.want, err)
			}
		})
	}
}

// TestFromSectionObjects infers the hooks of the committed objects whose
// sections name hooks: every program gets one, or a reason.
func TestFromSectionObjects(t *testing.T) {
	for _, obj := range []string{"sections", "hooks", "tracing", "lsm", "exectrace", "connect4_block"} {
		spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(obj))
		if err != nil {
			t.Fatal(err)
		}
		for name, ps := range spec.Programs {
			inf, err := FromSection(ps.SectionName)
			switch {
			case name == "tc_any" || name == "socket_all":
				if err == nil {
					t.Errorf("%s/%s (section %q): inferred %s, want no hook", obj, name, ps.SectionName, inf.Spec)
				}
			case err != nil:
				t.Errorf("%s/%s (section %q): %v", obj, name, ps.SectionName, err)
			case inf.NeedsTarget:
			default:
				if _, err := New(inf.Spec); err != nil {
					t.Errorf("%s/%s: inferred hook %s: %v", obj, name, inf.Spec, err)
				}
			}
		}
	}
}

func TestResolve(t *testing.T) {
	ps := func(section string) *ebpf.ProgramSpec { return &ebpf.ProgramSpec{SectionName: section} }
	for _, tc := range []struct {
		hook, section string
		want          string
		wantErr       error
		wantText      string
	}{
		// A whole spec stands, whatever the section.
		{hook: "xdp:veth0", section: "xdp", want: "xdp:veth0"},
		{hook: "tcx/ingress:veth0", section: "tc", want: "tcx/ingress:veth0"},
		{hook: "tracepoint:sched/sched_switch", section: "tp/syscalls/sys_enter_openat", want: "tracepoint:sched/sched_switch"},
		// Only a target: the section names the kind.
		{hook: "veth0", section: "xdp", want: "xdp:veth0"},
		{hook: "veth0", section: "tcx/egress", want: "tcx/egress:veth0"},
		{hook: "/sys/fs/cgroup/app", section: "cgroup/connect4", want: "cgroup/connect4:/sys/fs/cgroup/app"},
		{hook: "/sys/fs/cgroup/app", section: "sockops", want: "cgroup/sockops:/sys/fs/cgroup/app"},
		{hook: "ipv4/local_in/-100", section: "netfilter", want: "netfilter:ipv4/local_in/-100"},
		{hook: "/run/netns/blue", section: "sk_lookup", want: "sk_lookup:/run/netns/blue"},
		{hook: "/usr/bin/bash:readline", section: "uprobe", want: "uprobe:/usr/bin/bash:readline"},
		{hook: "syscalls/sys_enter_openat", section: "tracepoint", want: "tracepoint:syscalls/sys_enter_openat"},
		{hook: "do_unlinkat", section: "fentry", want: "fentry:do_unlinkat"},

		// A misspelt or incomplete spec of a known kind is that spec's error.
		{hook: "tcx/inress:veth0", section: "tcx/ingress", wantErr: ErrUnknownHook, wantText: `"tcx/inress"`},
		{hook: "xdp", section: "xdp", wantErr: ErrBadSpec, wantText: "needs a target"},
		// A target where the section cannot take one.
		{hook: "veth0", section: "tp/syscalls/sys_enter_openat", wantErr: ErrUnknownHook, wantText: "names the whole hook, tracepoint:syscalls/sys_enter_openat"},
		{hook: "veth0", section: "socket", wantErr: ErrUnknownHook, wantText: "socket filter"},
		{hook: "veth0", section: "tc", wantErr: ErrUnknownHook, wantText: "tcx/ingress:IFACE"},
	} {
		t.Run(tc.hook+"@"+tc.section, func(t *testing.T) {
			got, err := Resolve(tc.hook, "prog", ps(tc.section))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantText) {
					t.Fatalf("Resolve = %v, %v; want %v saying %q", got, err, tc.wantErr, tc.wantText)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("Resolve = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestBindAtLoad(t *testing.T) {
	spec := Spec{Kind: "fentry", Target: "do_unlinkat"}
	bare := &ebpf.ProgramSpec{SectionName: "fentry", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry}
	if err := bindAtLoad(spec, "p", bare, ebpf.Tracing, ebpf.AttachTraceFEntry, "do_unlinkat"); err != nil || bare.AttachTo != "do_unlinkat" {
		t.Fatalf("bare section: %v, AttachTo %q", err, bare.AttachTo)
	}
	// Again for the same target: fine. For another one: refused, as one
	// loaded program serves one target.
	if err := bindAtLoad(spec, "p", bare, ebpf.Tracing, ebpf.AttachTraceFEntry, "do_unlinkat"); err != nil {
		t.Fatalf("same target twice: %v", err)
	}
	if err := bindAtLoad(Spec{Kind: "fentry", Target: "vfs_read"}, "p", bare, ebpf.Tracing, ebpf.AttachTraceFEntry, "vfs_read"); !errors.Is(err, ErrBadSpec) {
		t.Fatalf("second target: %v, want ErrBadSpec", err)
	}
	// The section's own target may be overridden.
	named := &ebpf.ProgramSpec{SectionName: "fentry/vfs_read", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "vfs_read"}
	if err := bindAtLoad(spec, "p", named, ebpf.Tracing, ebpf.AttachTraceFEntry, "do_unlinkat"); err != nil || named.AttachTo != "do_unlinkat" {
		t.Fatalf("override the section's target: %v, AttachTo %q", err, named.AttachTo)
	}
	// fexit program for an fentry hook.
	fexit := &ebpf.ProgramSpec{SectionName: "fexit", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFExit}
	if err := bindAtLoad(spec, "p", fexit, ebpf.Tracing, ebpf.AttachTraceFEntry, "do_unlinkat"); !errors.Is(err, ErrWrongProgramType) {
		t.Fatalf("fexit program for fentry: %v, want ErrWrongProgramType", err)
	}
}

func TestPrepareCgroup(t *testing.T) {
	hook := func(s string) Hook {
		spec, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		h, err := New(spec)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	// A sock_addr program with its attach type from the section.
	ps := &ebpf.ProgramSpec{SectionName: "cgroup/connect4", Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect}
	if err := Prepare(hook("cgroup/connect4:/sys/fs/cgroup/x"), "p", ps); err != nil {
		t.Fatalf("connect4 program for connect4: %v", err)
	}
	if err := Prepare(hook("cgroup/connect6:/sys/fs/cgroup/x"), "p", ps); !errors.Is(err, ErrWrongProgramType) {
		t.Fatalf("connect4 program for connect6: %v, want ErrWrongProgramType", err)
	}
	// Without one, the hook sets it.
	open := &ebpf.ProgramSpec{SectionName: "cgroup_sock_addr", Type: ebpf.CGroupSockAddr}
	if err := Prepare(hook("cgroup/sendmsg4:/sys/fs/cgroup/x"), "p", open); err != nil || open.AttachType != ebpf.AttachCGroupUDP4Sendmsg {
		t.Fatalf("untyped program: %v, attach type %s", err, open.AttachType)
	}
	// cgroup skb programs take either direction.
	skb := &ebpf.ProgramSpec{SectionName: "cgroup/skb", Type: ebpf.CGroupSKB}
	for _, s := range []string{"cgroup/ingress:/sys/fs/cgroup/x", "cgroup/egress:/sys/fs/cgroup/x"} {
		if err := Prepare(hook(s), "p", skb); err != nil {
			t.Fatalf("skb program for %s: %v", s, err)
		}
	}
	if err := Prepare(hook("cgroup/sysctl:/sys/fs/cgroup/x"), "p", skb); !errors.Is(err, ErrWrongProgramType) {
		t.Fatalf("skb program for sysctl: %v, want ErrWrongProgramType", err)
	}
	// Hooks that need nothing before loading (xdp) accept anything here.
	if err := Prepare(hook("xdp:veth0"), "p", skb); err != nil {
		t.Fatalf("Prepare for xdp: %v", err)
	}
}

//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* sections has one trivial program per libbpf section name that bpfsup infers
 * a hook from, for the section inference tests and `bpfsup inspect`. Every
 * program here loads on a kernel without kprobes or BPF trampolines: the
 * trampoline and kprobe sections are inferred from their names in the unit
 * tests instead. Programs whose section names a whole hook (tp/..., raw_tp/...)
 * are attached by `bpfsup run` without -a; the others need a target; the
 * socket filter has no hook at all.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* seen[i] counts the calls of the program numbered i below. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 32);
} seen SEC(".maps");

static __always_inline void mark(__u32 i)
{
	__u64 *value = bpf_map_lookup_elem(&seen, &i);

	if (value)
		__sync_fetch_and_add(value, 1);
}

/* Whole hooks: attached without -a. */
SEC("tp/syscalls/sys_enter_getppid")
int tp_getppid(void *ctx) { mark(0); return 0; }

SEC("tracepoint/syscalls/sys_exit_getppid")
int tracepoint_getppid(void *ctx) { mark(1); return 0; }

SEC("raw_tp/sys_exit")
int raw_tp_sys_exit(void *ctx) { mark(2); return 0; }

SEC("raw_tracepoint/sched_process_exec")
int raw_tracepoint_exec(void *ctx) { mark(3); return 0; }

/* Kinds of hook without their target: -a PROG@TARGET. */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx) { mark(4); return XDP_PASS; }

SEC("xdp.frags")
int xdp_frags_pass(struct xdp_md *ctx) { mark(5); return XDP_PASS; }

SEC("tcx/ingress")
int tcx_in(struct __sk_buff *skb) { mark(6); return -1; /* TCX_NEXT */ }

SEC("tcx/egress")
int tcx_out(struct __sk_buff *skb) { mark(7); return -1; }

SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx) { mark(8); return 1; }

SEC("cgroup_skb/ingress")
int cg_skb_in(struct __sk_buff *skb) { mark(9); return 1; }

SEC("cgroup_skb/egress")
int cg_skb_out(struct __sk_buff *skb) { mark(10); return 1; }

SEC("sockops")
int sock_ops(struct bpf_sock_ops *ctx) { mark(11); return 1; }

SEC("sk_lookup")
int sk_lookup_pass(struct bpf_sk_lookup *ctx) { mark(12); return SK_PASS; }

SEC("flow_dissector")
int flow_continue(struct __sk_buff *skb) { mark(13); return BPF_FLOW_DISSECTOR_CONTINUE; }

SEC("netfilter")
int nf_accept(void *ctx) { mark(14); return 1; /* NF_ACCEPT */ }

SEC("uprobe")
int uprobe_any(void *ctx) { mark(15); return 0; }

/* A tc program that does not say its direction: needs the whole spec. */
SEC("tc")
int tc_any(struct __sk_buff *skb) { mark(16); return -1; }

/* No hook: a socket filter, the application's business. */
SEC("socket")
int socket_all(struct __sk_buff *skb) { mark(17); return skb->len; }

char LICENSE[] SEC("license") = "GPL";

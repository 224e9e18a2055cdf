//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* hooks holds one counting program per kind of hook bpfsup knows beyond XDP
 * and tcx, for the hook conformance test. Every section is bare ("tracepoint",
 * "uprobe", "cgroup/connect4"...), so that nothing is attached unless asked
 * for: the test attaches one program at a time with -a PROG@HOOK:TARGET.
 * Built twice: hooks.bpf.o, and hooks_v2.bpf.o with -DHOOKS_V2, the upgrade,
 * whose programs also count in the second half of the same map.
 */
#include "hooks.h"

/* Slots of hits: one per program. */
enum {
	HIT_TRACEPOINT = 0,
	HIT_RAW_TP = 1,
	HIT_UPROBE = 2,
	HIT_URETPROBE = 3,
	HIT_KPROBE = 4,
	HIT_KRETPROBE = 5,
	HIT_CONNECT4 = 6,
	HIT_CGROUP_SKB = 7,
	HIT_NETFILTER = 8,
	HIT_SK_LOOKUP = 9,
	HIT_FLOW_DISSECTOR = 10,
	HIT_SOCK_CREATE = 11,
};

SEC("tracepoint")
int tp_count(void *ctx)
{
	if (ours())
		hit(HIT_TRACEPOINT);
	return 0;
}

SEC("raw_tp")
int raw_tp_count(void *ctx)
{
	if (ours())
		hit(HIT_RAW_TP);
	return 0;
}

SEC("uprobe")
int uprobe_count(void *ctx)
{
	if (ours())
		hit(HIT_UPROBE);
	return 0;
}

SEC("uretprobe")
int uretprobe_count(void *ctx)
{
	if (ours())
		hit(HIT_URETPROBE);
	return 0;
}

SEC("kprobe")
int kprobe_count(void *ctx)
{
	if (ours())
		hit(HIT_KPROBE);
	return 0;
}

SEC("kretprobe")
int kretprobe_count(void *ctx)
{
	if (ours())
		hit(HIT_KRETPROBE);
	return 0;
}

/* The cgroup programs count every event in their cgroup and allow it. */
SEC("cgroup/connect4")
int connect4_count(struct bpf_sock_addr *ctx)
{
	hit(HIT_CONNECT4);
	return 1;
}

SEC("cgroup_skb/egress")
int skb_egress_count(struct __sk_buff *skb)
{
	hit(HIT_CGROUP_SKB);
	return 1;
}

SEC("cgroup/sock_create")
int sock_create_count(struct bpf_sock *sk)
{
	hit(HIT_SOCK_CREATE);
	return 1;
}

/* The netfilter context (struct bpf_nf_ctx) is not in the uapi headers; the
 * program does not read it. 1 is NF_ACCEPT.
 */
SEC("netfilter")
int nf_count(void *ctx)
{
	hit(HIT_NETFILTER);
	return 1;
}

SEC("sk_lookup")
int sk_lookup_count(struct bpf_sk_lookup *ctx)
{
	hit(HIT_SK_LOOKUP);
	return SK_PASS;
}

/* Leaves the dissection to the kernel's own dissector. */
SEC("flow_dissector")
int flow_count(struct __sk_buff *skb)
{
	hit(HIT_FLOW_DISSECTOR);
	return BPF_FLOW_DISSECTOR_CONTINUE;
}

char LICENSE[] SEC("license") = "GPL";

//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* dropfilter_bad: an "upgrade" of dropfilter that the verifier refuses. The
 * maps and program names are v1's, so everything up to the load matches; its
 * xdp_drop reads the packet without checking against data_end. For tests of
 * an upgrade that fails in the verifier and must leave v1 running.
 */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, 64);
} drop_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} drop_count SEC(".maps");

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	struct iphdr *iph = (void *)(eth + 1);
	struct udphdr *udp = (void *)(iph + 1);
	__u16 port;

	/* Deliberately no bounds check against ctx->data_end. */
	if (eth->h_proto != bpf_htons(ETH_P_IP) || iph->protocol != IPPROTO_UDP)
		return XDP_PASS;
	port = bpf_ntohs(udp->dest);
	if (bpf_map_lookup_elem(&drop_ports, &port))
		return XDP_DROP;
	return XDP_PASS;
}

SEC("tc")
int tc_drop(struct __sk_buff *skb)
{
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "GPL";

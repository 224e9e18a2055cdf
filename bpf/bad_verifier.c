//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* bad_verifier compiles but the verifier refuses it: it reads the packet
 * without checking against data_end. For tests of load errors and verifier logs.
 */
#include "common.h"

SEC("xdp")
int bad(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	/* Deliberately no bounds check against ctx->data_end. */
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return XDP_DROP;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

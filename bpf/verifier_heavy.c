//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* verifier_heavy keeps the verifier busy, for tests of slow loads. It is a
 * bounded loop the verifier must walk iteration by iteration (the loop counter
 * is a constant it tracks exactly), with a long unrolled body and a branch on
 * a value it cannot know, so it also explores both sides of every branch.
 * On 6.18 that is about 470k processed instructions (of the 1M limit). The
 * number of rounds is kept well below the verifier's limit of 8192 pending
 * branches. At run time the program just passes the packet.
 */
#include "common.h"

#define HEAVY_ROUNDS 1024
#define HEAVY_STEPS 32

SEC("xdp")
int heavy(struct xdp_md *ctx)
{
	__u32 x = bpf_get_prandom_u32();
	__u32 acc = 0;
	__u32 i, j;

#pragma clang loop unroll(disable)
	for (i = 0; i < HEAVY_ROUNDS; i++) {
#pragma clang loop unroll(full)
		for (j = 0; j < HEAVY_STEPS; j++) {
			x = x * 1103515245 + 12345;
			acc ^= x >> (j & 15);
		}
		if (x & 1)
			acc += i;
		else
			acc ^= i << 3;
	}

	/* Use acc, or the compiler would drop the loop. */
	if (acc == 0xdeadbeef)
		return XDP_DROP;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* tailcall: an XDP entry program that tail-calls through a prog array whose
 * slot 0 the declaration fills (libbpf's `.values`), and a map of maps whose
 * slot 0 the declaration fills with an inner map. Each run of the tail call
 * adds TAIL_STEP to hits[0] and to the inner map's counter: 1 in v1, 100 in
 * v2 (built with -DHOOKS_V2), so a test sees which version ran.
 */
#include "common.h"

#ifdef HOOKS_V2
#define TAIL_STEP 100
#else
#define TAIL_STEP 1
#endif

int tail_count(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__uint(key_size, sizeof(__u32));
	__array(values, int(void *));
} jmp SEC(".maps") = {
	.values = { [0] = (void *)&tail_count },
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct inner_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct inner_map);
} outer SEC(".maps") = {
	.values = { [0] = &inner },
};

SEC("xdp")
int tail_count(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&hits, &k);
	if (v)
		__sync_fetch_and_add(v, TAIL_STEP);
	void *in = bpf_map_lookup_elem(&outer, &k);
	if (in) {
		v = bpf_map_lookup_elem(in, &k);
		if (v)
			__sync_fetch_and_add(v, TAIL_STEP);
	}
	return XDP_PASS;
}

SEC("xdp")
int entry(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &jmp, 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

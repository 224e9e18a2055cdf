//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* counter counts packets per IP protocol. The same map is fed by an XDP
 * program and a tc (tcx) program, so one object serves tests of both hooks.
 */
#include "common.h"

/* counters[p] is the number of packets seen with IP protocol p (IPv4 protocol
 * or IPv6 next header); counters[0] also counts every non-IP packet.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} counters SEC(".maps");

static __always_inline void count(void *data, void *data_end)
{
	__u8 proto = 0;
	void *l4;
	__u32 key = 0;
	__u64 *value;

	if (parse_ip(data, data_end, &proto, &l4) == 0)
		key = proto;
	value = bpf_map_lookup_elem(&counters, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("xdp")
int count_packets(struct xdp_md *ctx)
{
	count((void *)(long)ctx->data, (void *)(long)ctx->data_end);
	return XDP_PASS;
}

SEC("tc")
int count_tc(struct __sk_buff *skb)
{
	count((void *)(long)skb->data, (void *)(long)skb->data_end);
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "GPL";

/* SPDX-License-Identifier: GPL-2.0 */
/* dropfilter drops UDP packets by destination port. This header is the whole
 * program; the .c files that include it choose a variant:
 *
 *   DROP_PORTS_MAX_ENTRIES  size of drop_ports (default 64; changing it makes
 *                           the map incompatible with the default's)
 *   EXTRA_DROP_PORT         a port dropped even when not in drop_ports
 *
 * The maps must stay identical between variants that are meant to be
 * upgrades of each other, so that bpfsup adopts them across the upgrade.
 */
#ifndef BPFSUP_DROPFILTER_H
#define BPFSUP_DROPFILTER_H

#include "common.h"

#ifndef DROP_PORTS_MAX_ENTRIES
#define DROP_PORTS_MAX_ENTRIES 64
#endif

/* drop_ports holds the UDP destination ports to drop, in host byte order.
 * The value is unused; the presence of the key is what matters.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, DROP_PORTS_MAX_ENTRIES);
} drop_ports SEC(".maps");

/* drop_count[0] is the number of packets dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} drop_count SEC(".maps");

static __always_inline int is_dropped_port(__u16 port)
{
#ifdef EXTRA_DROP_PORT
	if (port == EXTRA_DROP_PORT)
		return 1;
#endif
	return bpf_map_lookup_elem(&drop_ports, &port) != NULL;
}

/* should_drop says whether the packet in [data, data_end) is to be dropped,
 * and counts it in drop_count if so.
 */
static __always_inline int should_drop(void *data, void *data_end)
{
	__u8 proto;
	void *l4;
	struct udphdr *udp;
	__u32 key = 0;
	__u64 *dropped;

	if (parse_ip(data, data_end, &proto, &l4) < 0 || proto != IPPROTO_UDP || !l4)
		return 0;
	udp = l4;
	if ((void *)(udp + 1) > data_end)
		return 0;
	if (!is_dropped_port(bpf_ntohs(udp->dest)))
		return 0;

	dropped = bpf_map_lookup_elem(&drop_count, &key);
	if (dropped)
		__sync_fetch_and_add(dropped, 1);
	return 1;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	if (should_drop((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		return XDP_DROP;
	return XDP_PASS;
}

SEC("tc")
int tc_drop(struct __sk_buff *skb)
{
	if (should_drop((void *)(long)skb->data, (void *)(long)skb->data_end))
		return TCX_DROP;
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "GPL";

#endif /* BPFSUP_DROPFILTER_H */

//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* connect4_block is a cgroup connect4 policy: IPv4 connect() calls (TCP, and
 * UDP sockets being connected) of the processes in a cgroup to a blocked
 * destination port fail with EPERM. The application fills blocked_ports and
 * reads blocked_count. Used by examples/cgroup-connect4.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* blocked_ports holds the destination ports to refuse, in host byte order;
 * the value is unused.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, 64);
} blocked_ports SEC(".maps");

/* blocked_count[port] is the number of connect() calls refused for port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u64);
	__uint(max_entries, 64);
} blocked_count SEC(".maps");

SEC("cgroup/connect4")
int block_connect4(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u64 one = 1, *count;

	if (!bpf_map_lookup_elem(&blocked_ports, &port))
		return 1; /* allow */
	count = bpf_map_lookup_elem(&blocked_count, &port);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&blocked_count, &port, &one, BPF_NOEXIST);
	return 0; /* connect() fails with EPERM */
}

char LICENSE[] SEC("license") = "GPL";

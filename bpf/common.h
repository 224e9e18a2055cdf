/* SPDX-License-Identifier: GPL-2.0 */
/* Packet parsing shared by the programs in this directory. Everything here is
 * inlined: no BPF subprograms, no global data, no CO-RE, so the instructions
 * in the ELF are exactly the ones the kernel loads and program tags are stable.
 */
#ifndef BPFSUP_COMMON_H
#define BPFSUP_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/version.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The tcx verdicts are an enum in <linux/bpf.h> since 6.6, so the
 * preprocessor cannot test for them; test the headers' version instead.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 6, 0)
enum {
	TCX_NEXT = -1,
	TCX_PASS = 0,
	TCX_DROP = 2,
	TCX_REDIRECT = 7,
};
#endif

/* Fragment offset bits of iphdr.frag_off (IP_OFFSET is not in the uapi). */
#define IPV4_FRAG_OFFSET 0x1fff

/* parse_ip reads the Ethernet and IP headers of the packet in [data, data_end).
 * It returns 0 and sets *proto to the IP protocol (IPv4 protocol, IPv6 next
 * header) for an IPv4 or IPv6 packet, and -1 for anything else or a truncated
 * header. *l4 is set to the transport header, or to NULL for an IPv4 fragment
 * other than the first, which has none. IPv6 extension headers are not walked:
 * *proto is then the first extension header's number.
 */
static __always_inline int parse_ip(void *data, void *data_end, __u8 *proto, void **l4)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end || iph->ihl < 5)
			return -1;
		*proto = iph->protocol;
		*l4 = NULL;
		if (!(iph->frag_off & bpf_htons(IPV4_FRAG_OFFSET)))
			*l4 = (void *)iph + iph->ihl * 4;
		return 0;
	}

	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		*proto = ip6->nexthdr;
		*l4 = ip6 + 1;
		return 0;
	}

	return -1;
}

#endif /* BPFSUP_COMMON_H */

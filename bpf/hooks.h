/* SPDX-License-Identifier: GPL-2.0 */
/* The counters of the hook conformance test, shared by its objects (hooks.c,
 * tpbtf.c, tracing.c, lsm.c), each of which numbers its programs' slots:
 * hits[slot] counts the events of the program of that slot, and
 * hits[16 + slot] those of its v2 (-DHOOKS_V2) alone; config[0] names the
 * process whose events the tracing programs count.
 */
#ifndef BPFSUP_HOOKS_H
#define BPFSUP_HOOKS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* V2_OFFSET: hits[V2_OFFSET + slot] counts what the v2 programs alone saw. */
#define V2_OFFSET 16

/* hits[slot] is the number of events program slot saw, v1 and v2 together;
 * hits[16 + slot] counts v2's alone.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 32);
} hits SEC(".maps");

/* config[0] is the process (tgid) whose events the tracing programs count;
 * 0 counts none, so that the rest of the system leaves no trace.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} config SEC(".maps");

static __always_inline void hit(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&hits, &slot);

	if (value)
		__sync_fetch_and_add(value, 1);
#ifdef HOOKS_V2
	slot += V2_OFFSET;
	value = bpf_map_lookup_elem(&hits, &slot);
	if (value)
		__sync_fetch_and_add(value, 1);
#endif
}

/* ours reports whether the current process is the one config names. */
static __always_inline int ours(void)
{
	__u32 key = 0;
	__u32 *tgid = bpf_map_lookup_elem(&config, &key);

	return tgid && *tgid != 0 && *tgid == (__u32)(bpf_get_current_pid_tgid() >> 32);
}

#endif

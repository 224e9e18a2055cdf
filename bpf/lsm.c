//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* lsm holds the LSM program of the hook conformance test, apart from the
 * other trampoline programs (tracing.c) because it runs only where the BPF LSM
 * is active. Its section is bare: the LSM hook is given by the hook spec
 * (lsm:file_open) and set before the program is loaded. Built twice:
 * lsm.bpf.o, and lsm_v2.bpf.o with -DHOOKS_V2 (the upgrade).
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

enum {
	HIT_LSM = 3, /* as in tracing.c, whose slots 0-2 this object leaves free */
};

#define V2_OFFSET 16

/* As in hooks.c: hits[slot] counts v1 and v2 together, hits[16 + slot] v2. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 32);
} hits SEC(".maps");

/* config[0] is the process (tgid) whose events are counted; 0 counts none. */
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

static __always_inline int ours(void)
{
	__u32 key = 0;
	__u32 *tgid = bpf_map_lookup_elem(&config, &key);

	return tgid && *tgid != 0 && *tgid == (__u32)(bpf_get_current_pid_tgid() >> 32);
}

/* 0 allows: the LSM hook's other checks decide. */
SEC("lsm")
int lsm_count(__u64 *ctx)
{
	if (ours())
		hit(HIT_LSM);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

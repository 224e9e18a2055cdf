//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* tracing holds the BPF-trampoline programs of the hook conformance test:
 * fentry, fexit and fmod_ret (lsm is in lsm.c). Their sections are bare: the function or
 * LSM hook is given by the hook spec (fentry:__task_pid_nr_ns) and set before
 * the program is loaded, as the kernel wants it at load time. Built twice:
 * tracing.bpf.o, and tracing_v2.bpf.o with -DHOOKS_V2 (the upgrade). The
 * programs read no arguments, so no vmlinux.h is needed.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

enum {
	HIT_FENTRY = 0,
	HIT_FEXIT = 1,
	HIT_FMOD_RET = 2,
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

SEC("fentry")
int fentry_count(__u64 *ctx)
{
	if (ours())
		hit(HIT_FENTRY);
	return 0;
}

SEC("fexit")
int fexit_count(__u64 *ctx)
{
	if (ours())
		hit(HIT_FEXIT);
	return 0;
}

/* Returning 0 leaves the function's own return value alone. */
SEC("fmod_ret")
int fmod_ret_count(__u64 *ctx)
{
	if (ours())
		hit(HIT_FMOD_RET);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

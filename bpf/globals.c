//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* globals: a program whose loaded form is not its ELF's. It reads a
 * configuration variable from .rodata (step, set with variables = { step = N })
 * and the calling task's tgid through a CO-RE relocation against a
 * task_struct laid out here unlike any kernel's, so the loader rewrites the
 * field offset and the kernel's tag differs from the ELF's instructions'.
 * On every getppid(2): seen[0] = step, seen[1] = the caller's tgid.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

volatile const __u64 step = 1;

struct task_struct {
	int bpfsup_local_layout;
	int tgid;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

SEC("tp/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 k = 0;
	__u64 v = step;
	bpf_map_update_elem(&seen, &k, &v, BPF_ANY);
	k = 1;
	v = BPF_CORE_READ(t, tgid);
	bpf_map_update_elem(&seen, &k, &v, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

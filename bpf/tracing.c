//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* tracing holds the BPF-trampoline programs of the hook conformance test:
 * fentry, fexit and fmod_ret (lsm is in lsm.c). Their sections are bare: the function or
 * LSM hook is given by the hook spec (fentry:__task_pid_nr_ns) and set before
 * the program is loaded, as the kernel wants it at load time. Built twice:
 * tracing.bpf.o, and tracing_v2.bpf.o with -DHOOKS_V2 (the upgrade). The
 * programs read no arguments, so no vmlinux.h is needed.
 */
#include "hooks.h"

enum {
	HIT_FENTRY = 0,
	HIT_FEXIT = 1,
	HIT_FMOD_RET = 2,
};

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

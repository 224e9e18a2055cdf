//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* lsm holds the LSM program of the hook conformance test, apart from the
 * other trampoline programs (tracing.c) because it runs only where the BPF LSM
 * is active. Its section is bare: the LSM hook is given by the hook spec
 * (lsm:file_open) and set before the program is loaded. Built twice:
 * lsm.bpf.o, and lsm_v2.bpf.o with -DHOOKS_V2 (the upgrade).
 */
#include "hooks.h"

enum {
	HIT_LSM = 3, /* as in tracing.c, whose slots 0-2 this object leaves free */
};

/* 0 allows: the LSM hook's other checks decide. */
SEC("lsm")
int lsm_count(__u64 *ctx)
{
	if (ours())
		hit(HIT_LSM);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* tpbtf counts, for the hook conformance test, with a BTF-typed raw
 * tracepoint (SEC("tp_btf"), bpfsup's tp_btf:NAME hook), which needs no
 * trampoline. Its section is bare: the test gives the tracepoint with -a.
 * Built twice, as hooks.c is: tpbtf.bpf.o and tpbtf_v2.bpf.o.
 */
#include "hooks.h"

enum {
	HIT_TP_BTF = 12, /* apart from hooks.c's slots */
};

SEC("tp_btf")
int tp_btf_count(void *ctx)
{
	if (ours())
		hit(HIT_TP_BTF);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

//go:build ignore

/* nolicense is a program without a license section, which bpfsup must refuse
 * with an error that says so. It passes every packet. Deliberately no
 * SPDX line and no SEC("license").
 */
#include "common.h"

SEC("xdp")
int nolicense(struct xdp_md *ctx)
{
	return XDP_PASS;
}

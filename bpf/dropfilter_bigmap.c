//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* dropfilter_bigmap: v1 with a bigger drop_ports. Same key and value sizes but
 * different max_entries, so its drop_ports is incompatible with v1's: for
 * tests of refusing (or resetting) an incompatible pinned map.
 */
#define DROP_PORTS_MAX_ENTRIES 128
#include "dropfilter.h"

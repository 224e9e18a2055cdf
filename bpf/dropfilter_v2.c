//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* dropfilter v2: an upgrade of v1 with the same maps. It also drops UDP
 * destination port 9999 whether or not it is in drop_ports.
 */
#define EXTRA_DROP_PORT 9999
#include "dropfilter.h"

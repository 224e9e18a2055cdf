//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* dropfilter v1: drops UDP packets whose destination port is in drop_ports. */
#include "dropfilter.h"

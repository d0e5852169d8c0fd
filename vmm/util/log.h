/*
 * ferry-vmm's own diagnostics on stderr, each line prefixed "ferry-vmm: " so they stand apart
 * from the guest console.  Thread-safe (one fprintf per line).
 */
#pragma once

#include <glib.h>

void ferry_log(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

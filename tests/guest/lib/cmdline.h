/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Kernel command line lookup: space-separated words, "key" or "key=value".
 * The last occurrence of a key wins, as on Linux.
 */
#ifndef FERRY_GUEST_CMDLINE_H
#define FERRY_GUEST_CMDLINE_H

#include "lib/types.h"

/* True if the word `key` or `key=...` occurs. */
bool cmdline_has(const char *cmdline, const char *key);
/* True if `key=value` occurs with exactly this value (last occurrence). */
bool cmdline_is(const char *cmdline, const char *key, const char *value);
/* Parses `key=<decimal>` (0x prefix allowed); returns dflt if absent or malformed. */
u64 cmdline_u64(const char *cmdline, const char *key, u64 dflt);

/* Copies the value of `key=value` (last occurrence) into buf (NUL-terminated,
 * cut to size-1); returns false if the key is absent. */
bool cmdline_str(const char *cmdline, const char *key, char *buf, size_t size);

#endif

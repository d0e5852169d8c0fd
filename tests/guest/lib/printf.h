/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Minimal formatted output into a buffer. Conversions: %d %i %u %x %X %p %s %c %%,
 * length modifiers l, ll, z; flags '0' and '-'; a decimal field width.
 * Returns the number of characters stored (excluding the NUL; output is truncated
 * to size-1 characters).
 */
#ifndef FERRY_GUEST_PRINTF_H
#define FERRY_GUEST_PRINTF_H

#include "lib/types.h"

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Kernel console on COM1. Every write takes one spinlock so that lines from
 * different CPUs never interleave; kernel code runs with interrupts off, so the
 * lock can also be taken from the serial interrupt handler.
 */
#ifndef FERRY_GUEST_CONSOLE_H
#define FERRY_GUEST_CONSOLE_H

#include "lib/types.h"

/* Writes n bytes ('\n' becomes CR LF) atomically with respect to other writers. */
void console_write(const char *s, size_t n);
/* Formats (lib/printf.h) into a 512-byte buffer and writes it with console_write. */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like kprintf, but only when ferry.debug is on the command line. */
void kdebug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like console_write, but gives up waiting for the lock after a while (panics). */
void console_write_force(const char *s, size_t n);
/* Stops this CPU for good. */
NORETURN void halt_forever(void);

extern bool g_console_debug;

#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * CPL3 runtime of the workloads: system calls (int $0x80, kernel/syscall.h),
 * formatted output, the clock, and the options from the kernel command line.
 */
#ifndef FERRY_GUEST_ULIB_H
#define FERRY_GUEST_ULIB_H

#include "kernel/shared.h"
#include "kernel/syscall.h"
#include "lib/types.h"

static inline long usys(long nr, long a, long b)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "D"(a), "S"(b) : "memory");
    return ret;
}

static inline void sys_write(const char *s, size_t n) { usys(SYS_WRITE, (long)s, (long)n); }
static inline void sys_idle(void) { usys(SYS_IDLE, 0, 0); }
static inline NORETURN void sys_poweroff(void) { usys(SYS_POWEROFF, 0, 0); __builtin_unreachable(); }
static inline NORETURN void sys_reboot(void) { usys(SYS_REBOOT, 0, 0); __builtin_unreachable(); }

/* One line per call: the kernel writes it under the console lock. */
void uprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Clock on CPU `cpu` (the caller's own CPU): ns since VM creation (kvmclock). */
static inline u64 unow(unsigned cpu) { return clock_ns(&g_shared.clock, cpu); }

#define NS_PER_MS 1000000ull
#define NS_PER_S  1000000000ull

struct options {
    u64 dirty_mib;          /* ferry.dirty=<MiB>, 0 = no working set */
    u64 rate_mib;           /* ferry.rate=<MiB/s>, 0 = as fast as possible */
    bool heartbeat;         /* ferry.heartbeat */
    bool quiet;             /* ferry.quiet */
    s64 poweroff_ms;        /* ferry.poweroff=<ms>, -1 = never */
    s64 reboot_ms;          /* ferry.reboot=<ms>, -1 = never */
};

extern struct options g_opt;
void options_parse(void);

/* report.c: informative boot lines (skipped with ferry.quiet). */
void report_boot(void);
void report_cpus(void);

#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Per-CPU workload statistics, written by their CPU, read by CPU 0 for the
 * heartbeat. One cache line each.
 */
#ifndef FERRY_GUEST_STATS_H
#define FERRY_GUEST_STATS_H

#include "kernel/layout.h"
#include "lib/types.h"

struct ucpu_stats {
    u64 iterations;         /* loop passes (progress) */
    u64 dirtied_bytes;
    u64 verified_bytes;
    u64 gap_interval_ns;    /* largest gap since CPU 0 last took it (xchg) */
    u64 pad[4];
} ALIGNED(64);

extern struct ucpu_stats g_ustats[MAX_CPUS];

/* Records one clock read: the gap to the previous read, and progress. */
static inline void stats_tick(struct ucpu_stats *s, u64 *last, u64 now)
{
    if (now > *last) {
        u64 gap = now - *last;
        u64 cur = __atomic_load_n(&s->gap_interval_ns, __ATOMIC_RELAXED);
        while (gap > cur &&
               !__atomic_compare_exchange_n(&s->gap_interval_ns, &cur, gap, false,
                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
        *last = now;
    }
    WRITE_ONCE(s->iterations, s->iterations + 1);
}

/* monitor.c (CPU 0 only) */
void monitor_start(u64 ready_ns, bool workset);
/* Heartbeat, power-off/reboot deadlines, progress notes. Returns true if it
 * printed.  Its run time counts in the caller's next gap. */
bool monitor_poll(u64 now);

/* workset.c */
bool workset_prepare(void);             /* CPU 0, before READY; true if active */
NORETURN void workset_run(unsigned cpu);
u32 workset_populated_cpus(void);

#endif

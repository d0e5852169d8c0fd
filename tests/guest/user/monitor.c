/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * CPU 0's periodic duties, polled from its workload loop:
 *   FERRY-HEARTBEAT once per second (with ferry.dirty, or ferry.heartbeat),
 *   ferry.poweroff / ferry.reboot deadlines (ms after READY),
 *   a note when the working set is fully populated.
 */
#include "lib/x86.h"
#include "user/stats.h"
#include "user/ulib.h"
#include "user/virtio.h"

static u64 ready_ns, next_hb, hb_n, max_gap_ns, action_at;
static int action;              /* 0 none, 1 power-off, 2 reboot */
static bool heartbeat, ws_active, populated_noted;
static u64 last_iter[MAX_CPUS];
static u32 nmi_seen[MAX_CPUS];

void monitor_start(u64 now, bool workset)
{
    ready_ns = now;
    next_hb = now + NS_PER_S;
    ws_active = workset;
    heartbeat = workset || g_opt.heartbeat;
    if (g_opt.poweroff_ms >= 0) {
        action = 1;
        action_at = now + (u64)g_opt.poweroff_ms * NS_PER_MS;
    }
    if (g_opt.reboot_ms >= 0 && (!action || (u64)g_opt.reboot_ms * NS_PER_MS + now < action_at)) {
        action = 2;
        action_at = now + (u64)g_opt.reboot_ms * NS_PER_MS;
    }
}

static void print_heartbeat(u64 now)
{
    u64 dirtied = 0, verified = 0, gap = 0;
    u32 progressed = 0;

    for (u32 c = 0; c < g_shared.ncpus; c++) {
        struct ucpu_stats *s = &g_ustats[c];
        dirtied += READ_ONCE(s->dirtied_bytes);
        verified += READ_ONCE(s->verified_bytes);
        u64 g = atomic_xchg(&s->gap_interval_ns, 0);
        gap = MAX(gap, g);
        u64 it = READ_ONCE(s->iterations);
        if (it != last_iter[c])
            progressed++;
        last_iter[c] = it;
    }
    max_gap_ns = MAX(max_gap_ns, gap);
    uprintf("FERRY-HEARTBEAT n=%llu uptime_ms=%llu dirtied_mib=%llu verified_mib=%llu "
            "gap_us=%llu max_gap_us=%llu cpus=%u\n", ++hb_n, now / NS_PER_MS,
            dirtied / MiB, verified / MiB, gap / 1000, max_gap_ns / 1000, progressed);
}

bool monitor_poll(u64 now)
{
    bool printed = false;

    if (io_active())
        io_poll(now);
    if (action && now >= action_at) {
        if (action == 1)
            sys_poweroff();
        sys_reboot();
    }
    if (ws_active && !populated_noted && workset_populated_cpus() == g_shared.ncpus) {
        populated_noted = true;
        if (!g_opt.quiet)
            uprintf("ferry-guest: working set populated %llu ms after READY\n",
                    (now - ready_ns) / NS_PER_MS);
        printed = true;
    }
    for (u32 c = 0; c < g_shared.ncpus; c++) {
        u32 n = atomic_load(&g_shared.nmi_count[c]);
        if (n != nmi_seen[c]) {
            nmi_seen[c] = n;
            uprintf("FERRY-NMI cpu=%u count=%u\n", c, n);
            printed = true;
        }
    }
    if (heartbeat && now >= next_hb) {
        print_heartbeat(now);
        next_hb += NS_PER_S;
        if (next_hb <= now)
            next_hb = now + NS_PER_S;           /* after a pause: no burst of lines */
        printed = true;
    }
    return printed;
}

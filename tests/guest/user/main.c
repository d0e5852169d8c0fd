/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * CPL3 entry of every CPU. CPU 0 reports the boot, waits until all CPUs are in
 * CPL3, prepares the working set and prints FERRY-GUEST-READY; then every CPU
 * runs the workload: the dirty/verify loop with ferry.dirty, else an idle loop
 * that sleeps in the kernel between timer ticks.
 */
#include "lib/cmdline.h"
#include "lib/printf.h"
#include "lib/x86.h"
#include "user/stats.h"
#include "user/ulib.h"
#include "user/virtio.h"

struct options g_opt;
struct ucpu_stats g_ustats[MAX_CPUS];

void user_main(u64 cpu);

void uprintf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    sys_write(buf, (size_t)n);
}

void options_parse(void)
{
    const char *c = g_shared.boot.cmdline;

    g_opt.dirty_mib = cmdline_u64(c, "ferry.dirty", 0);
    g_opt.rate_mib = cmdline_u64(c, "ferry.rate", 0);
    g_opt.heartbeat = cmdline_has(c, "ferry.heartbeat");
    g_opt.quiet = cmdline_has(c, "ferry.quiet");
    g_opt.poweroff_ms = cmdline_has(c, "ferry.poweroff") ?
                        (s64)cmdline_u64(c, "ferry.poweroff", 0) : -1;
    g_opt.reboot_ms = cmdline_has(c, "ferry.reboot") ?
                      (s64)cmdline_u64(c, "ferry.reboot", 0) : -1;
}

/* ferry.crash=user|kernel: a page fault at CPL3 / CPL0 right after READY, to
 * test that FERRY-GUEST-FAULT / FERRY-GUEST-PANIC reach the host. */
static void crash_if_asked(void)
{
    const char *c = g_shared.boot.cmdline;

    if (cmdline_is(c, "ferry.crash", "user"))
        (void)*(volatile u64 *)CRASH_ADDR;
    if (cmdline_is(c, "ferry.crash", "kernel"))
        usys(SYS_CRASH, 0, 0);
}

static NORETURN void idle_run(unsigned cpu)
{
    struct ucpu_stats *s = &g_ustats[cpu];
    u64 last = unow(cpu);

    for (;;) {
        u64 now = unow(cpu);
        stats_tick(s, &last, now);
        if (cpu == 0)
            monitor_poll(now);
        if (cpu != 0 || !io_active())
            sys_idle();                 /* CPU 0 polls the virtio rings instead */
    }
}

void user_main(u64 cpu)
{
    atomic_inc(&g_shared.cpus_in_user);
    if (cpu != 0) {
        while (!atomic_load(&g_shared.user_go))
            sys_idle();
    } else {
        options_parse();
        /* The DSDT byte scan runs here at native speed instead of at CPL0 in
         * power_off(); acpi_s5() only reads memory. */
        g_shared.s5_valid = acpi_s5(&g_shared.acpi, &g_shared.s5_slp_typ_a,
                                    &g_shared.s5_slp_typ_b);
        if (!g_opt.quiet)
            report_boot();
        while (atomic_load(&g_shared.cpus_in_user) < g_shared.ncpus)
            cpu_relax();
        if (!g_opt.quiet)
            report_cpus();
        io_init();                      /* takes DMA memory before the working set */
        bool ws = workset_prepare();
        u64 now = unow(0);
        uprintf("FERRY-GUEST-READY uptime_ms=%llu cpus=%u mem_mib=%llu entry=%s\n",
                now / NS_PER_MS, g_shared.ncpus, (g_shared.ram_bytes + MiB - 1) / MiB,
                g_shared.boot.entry == ENTRY_PVH ? "pvh" : "bzimage");
        monitor_start(now, ws);
        atomic_store(&g_shared.user_go, 1);
        crash_if_asked();
    }
    if (g_opt.dirty_mib)
        workset_run((unsigned)cpu);
    idle_run((unsigned)cpu);
}

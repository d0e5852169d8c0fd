/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "kernel/console.h"
#include "kernel/kclock.h"
#include "kernel/shared.h"
#include "lib/x86.h"

#define KVM_FEATURE_CLOCKSOURCE2    (1u << 3)
#define PIT_HZ                      1193182ull

static const char *source = "none";

static bool kvmclock_present(void)
{
    u32 a, b, c, d;

    cpuid(1, 0, &a, &b, &c, &d);
    if (!(c & (1u << 31)))              /* no hypervisor */
        return false;
    for (u32 base = 0x40000000; base <= 0x40000100; base += 0x100) {
        cpuid(base, 0, &a, &b, &c, &d);
        if (b == 0x4b4d564b && c == 0x564b4d56 && d == 0x4d) {  /* KVMKVMKVM\0\0\0 */
            cpuid(base + 1, 0, &a, &b, &c, &d);
            return a & KVM_FEATURE_CLOCKSOURCE2;
        }
    }
    return false;
}

/* PIT channel 2 one-shot (mode 0), gate on port 0x61 bit 0, output on bit 5. */
static u64 tsc_hz_from_pit(void)
{
    const u32 count = 11932;            /* ~10 ms */

    outb(0x61, (inb(0x61) & ~0x02) | 0x01);
    outb(0x43, 0xb0);                   /* channel 2, lo/hi byte, mode 0, binary */
    outb(0x42, count & 0xff);
    outb(0x42, count >> 8);
    u64 t0 = rdtsc();
    u32 loops = 0;
    while (!(inb(0x61) & 0x20) && loops < 10000000)
        loops++;
    u64 t1 = rdtsc();
    if (loops == 0)                     /* output high at once: no PIT */
        return 0;
    return (t1 - t0) * PIT_HZ / count;
}

static u64 tsc_hz_from_cpuid(void)
{
    u32 a, b, c, d;

    cpuid(0, 0, &a, &b, &c, &d);
    if (a < 0x15)
        return 0;
    cpuid(0x15, 0, &a, &b, &c, &d);     /* TSC/crystal ratio b/a, crystal Hz c */
    if (a && b && c)
        return (u64)c * b / a;
    return 0;
}

static void use_tsc(void)
{
    struct clock_info *ci = &g_shared.clock;
    u64 hz = tsc_hz_from_cpuid();
    source = "tsc/cpuid-0x15";
    if (!hz) {
        hz = tsc_hz_from_pit();
        source = "tsc/pit";
    }
    if (hz < 1000000) {
        hz = 1000000000ull;
        source = "tsc/assumed-1GHz";
    }
    ci->tsc_hz = hz;
    ci->tsc_mul = (1000000000ull << 32) / hz;     /* fits: 1e9 << 32 < 2^64 */
    ci->kind = CLOCK_TSC;
}

void clock_init_bsp(void)
{
    if (kvmclock_present()) {
        g_shared.clock.kind = CLOCK_KVMCLOCK;
        source = "kvmclock";
        return;
    }
    use_tsc();
}

void clock_init_cpu(struct percpu *c)
{
    struct clock_info *ci = &g_shared.clock;

    if (ci->kind != CLOCK_KVMCLOCK)
        return;
    ci->pvti[c->index] = &c->pvclock;
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&c->pvclock | 1);
    if (c->index == 0 && READ_ONCE(c->pvclock.tsc_to_system_mul) == 0) {
        /* The hypervisor advertised kvmclock but did not fill the record. */
        wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
        kprintf("ferry-guest: kvmclock not updated, falling back to the TSC\n");
        use_tsc();
    }
}

u64 now_ns(void)
{
    return clock_ns(&g_shared.clock, this_cpu()->index);
}

void udelay(u64 us)
{
    u64 t0 = now_ns();
    while (now_ns() - t0 < us * 1000)
        cpu_relax();
}

const char *clock_source_name(void)
{
    return source;
}

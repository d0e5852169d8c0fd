/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "lib/clock.h"
#include "lib/x86.h"

/* pvclock read, Linux Documentation/virt/kvm/x86/msr.rst:
 *   time = (tsc - tsc_timestamp) scaled by tsc_shift, times tsc_to_system_mul >> 32,
 *   plus system_time; retry while version is odd or changed. */
static u64 pvclock_read(const volatile struct pvclock_vcpu_time_info *p)
{
    u32 version;
    u64 ns;

    do {
        version = p->version;
        barrier();
        u64 tsc = rdtsc();
        u64 ts = p->tsc_timestamp;
        u64 delta = tsc > ts ? tsc - ts : 0;
        s8 shift = p->tsc_shift;
        if (shift < 0)
            delta >>= -shift;
        else
            delta <<= shift;
        ns = p->system_time + (u64)(((unsigned __int128)delta * p->tsc_to_system_mul) >> 32);
        barrier();
    } while ((version & 1) || version != p->version);
    return ns;
}

u64 clock_ns(const struct clock_info *ci, unsigned cpu)
{
    if (ci->kind == CLOCK_KVMCLOCK)
        return pvclock_read(ci->pvti[cpu]);
    if (ci->kind == CLOCK_TSC)
        return (u64)(((unsigned __int128)rdtsc() * ci->tsc_mul) >> 32);
    return 0;
}

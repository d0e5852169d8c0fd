/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "kernel/apic.h"
#include "kernel/kclock.h"
#include "kernel/layout.h"
#include "kernel/mm.h"
#include "lib/x86.h"

/* Register offsets (xAPIC MMIO); the x2APIC MSR is 0x800 + offset / 16. */
#define LAPIC_ID        0x020
#define LAPIC_TPR       0x080
#define LAPIC_EOI       0x0b0
#define LAPIC_SVR       0x0f0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3e0

#define APIC_BASE_EN    (1ull << 11)
#define APIC_BASE_EXTD  (1ull << 10)
#define LVT_MASKED      (1u << 16)
#define LVT_PERIODIC    (1u << 17)
#define LVT_DM_NMI      (4u << 8)
#define ICR_INIT        0x00000500u
#define ICR_STARTUP     0x00000600u
#define ICR_ASSERT      0x00004000u
#define ICR_LEVEL       0x00008000u
#define ICR_BUSY        0x00001000u
#define DCR_DIV16       0x3

static bool x2;
static u64 mmio = 0xfee00000;

static u32 rd(u32 reg)
{
    return x2 ? (u32)rdmsr(0x800 + (reg >> 4)) : mmio_read32(mmio + reg);
}

static void wr(u32 reg, u32 v)
{
    if (x2)
        wrmsr(0x800 + (reg >> 4), v);
    else
        mmio_write32(mmio + reg, v);
}

void lapic_setup_bsp(bool force_xapic)
{
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    x2 = !force_xapic && (c & (1u << 21));
    mmio = rdmsr(MSR_APIC_BASE) & 0x000ffffffffff000ull;
    if (!x2)
        mm_set_uncached(mmio);
}

bool lapic_x2apic(void) { return x2; }
u64 lapic_mmio_base(void) { return mmio; }

void lapic_enable(bool bsp)
{
    u64 base = rdmsr(MSR_APIC_BASE);
    if (!(base & APIC_BASE_EN))
        wrmsr(MSR_APIC_BASE, base |= APIC_BASE_EN);
    if (x2 && !(base & APIC_BASE_EXTD))
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_EXTD);     /* xAPIC -> x2APIC */
    wr(LAPIC_TPR, 0);
    wr(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
    wr(LAPIC_LVT_LINT0, LVT_MASKED);
    /* LINT1 carries the external NMI (virtual wire, as firmware and Linux set it
     * up on the BSP); QEMU's inject-nmi only reaches CPUs programmed this way. */
    wr(LAPIC_LVT_LINT1, bsp ? LVT_DM_NMI : LVT_MASKED);
}

u32 lapic_id(void)
{
    return x2 ? rd(LAPIC_ID) : rd(LAPIC_ID) >> 24;
}

void lapic_eoi(void)
{
    wr(LAPIC_EOI, 0);
}

static void send_ipi(u32 apic_id, u32 icr)
{
    if (x2) {
        wrmsr(0x830, ((u64)apic_id << 32) | icr);
        return;
    }
    wr(LAPIC_ICR_HI, apic_id << 24);
    wr(LAPIC_ICR_LO, icr);
    for (u32 i = 0; i < 100000 && (rd(LAPIC_ICR_LO) & ICR_BUSY); i++)
        cpu_relax();
}

void lapic_send_init(u32 apic_id)
{
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL | ICR_ASSERT);
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL);
}

void lapic_send_sipi(u32 apic_id, u8 vector)
{
    send_ipi(apic_id, ICR_STARTUP | ICR_ASSERT | vector);
}

u64 lapic_timer_calibrate(void)
{
    wr(LAPIC_TIMER_DCR, DCR_DIV16);
    wr(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    u64 t0 = now_ns();
    wr(LAPIC_TIMER_ICR, 0xffffffffu);
    while (now_ns() - t0 < 5 * 1000 * 1000)        /* 5 ms: ~0.5% is plenty for a tick */
        cpu_relax();
    u32 left = rd(LAPIC_TIMER_CCR);
    u64 t1 = now_ns();
    wr(LAPIC_TIMER_ICR, 0);
    u64 counted = 0xffffffffull - left;
    return t1 > t0 ? counted * 1000000000ull / (t1 - t0) : 0;
}

void lapic_timer_start(u32 count)
{
    if (!count)
        return;
    wr(LAPIC_TIMER_DCR, DCR_DIV16);
    wr(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    wr(LAPIC_TIMER_ICR, count);
}

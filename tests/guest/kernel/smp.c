/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * AP start-up: Intel SDM vol. 3A, 8.4.4.1 "Typical BSP Initialization Sequence"
 * (INIT IPI, wait, STARTUP IPI, wait 200 us, second STARTUP IPI). As Linux does for
 * modern processors, the 10 ms INIT delay is skipped (family >= 6 Intel, >= 0xF
 * AMD); the second SIPI is only sent if the AP has not checked in yet, which the
 * SDM allows (an AP that is not waiting for SIPI ignores it anyway).
 * The trampoline (boot/trampoline.S) lives in a free RAM page below 1 MiB.
 */
#include "kernel/apic.h"
#include "kernel/console.h"
#include "kernel/kclock.h"
#include "kernel/mm.h"
#include "kernel/percpu.h"
#include "kernel/shared.h"
#include "kernel/smp.h"
#include "kernel/trap.h"
#include "lib/string.h"
#include "lib/x86.h"

extern const char tramp_start[], tramp_end[];
void enter_user(u64 rip, u64 arg, u64 rsp);
void user_main(u64 cpu);
NORETURN void ap_main(struct percpu *c);

#define AP_TIMEOUT_NS (2000ull * 1000 * 1000)

static bool modern_cpu(void)
{
    u32 a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    bool amd = b == 0x68747541;         /* "Auth"enticAMD */
    cpuid(1, 0, &a, &b, &c, &d);
    u32 family = (a >> 8) & 0xf;
    if (family == 0xf)
        family += (a >> 20) & 0xff;
    return amd ? family >= 0xf : family >= 6;
}

static u64 find_tramp_page(void)
{
    for (u64 p = 0x8000; p < 0x9f000; p += 0x1000) {
        if (mm_is_ram(&g_shared.boot, p, 0x1000))
            return p;
    }
    return 0;
}

static bool wait_alive(struct percpu *c, u64 timeout_ns)
{
    u64 t0 = now_ns();
    while (!atomic_load(&c->alive)) {
        if (now_ns() - t0 > timeout_ns)
            return false;
        cpu_relax();
    }
    return true;
}

void smp_boot(void)
{
    const struct acpi_info *ai = &g_shared.acpi;
    u32 bsp = g_percpu[0]->apic_id;

    g_shared.ncpus = 1;
    g_shared.cpu[0].apic_id = bsp;
    if (ai->ncpus <= 1)
        return;

    u64 t = find_tramp_page();
    if (!t) {
        kprintf("ferry-guest: no RAM page below 1 MiB for the AP trampoline\n");
        return;
    }
    g_shared.tramp_page = (u32)t;
    u8 *tp = (u8 *)t;
    memcpy(tp, tramp_start, (size_t)(tramp_end - tramp_start));
    *(u64 *)(tp + TRAMP_CR3) = read_cr3();
    *(u64 *)(tp + TRAMP_ENTRY) = (u64)ap_main;
    bool modern = modern_cpu();

    for (u32 i = 0; i < ai->ncpus && g_shared.ncpus < MAX_CPUS; i++) {
        u32 apic = ai->cpu_apic_id[i];
        if (apic == bsp)
            continue;
        u32 idx = g_shared.ncpus;
        struct percpu *c = percpu_alloc(idx, apic, 0);
        u64 sp = c->kstack_top - 8;
        *(u64 *)sp = 0;                 /* fake return address: C entry alignment */
        *(u64 *)(tp + TRAMP_STACK) = sp;
        *(u64 *)(tp + TRAMP_ARG) = (u64)c;
        barrier();

        kdebug("ferry-guest: starting cpu %u apic %u\n", idx, apic);
        lapic_send_init(apic);
        if (!modern)
            udelay(10000);
        lapic_send_sipi(apic, (u8)(t >> 12));
        if (!wait_alive(c, 200000))     /* 200 us */
            lapic_send_sipi(apic, (u8)(t >> 12));
        if (!wait_alive(c, AP_TIMEOUT_NS)) {
            kprintf("ferry-guest: cpu %u apic %u did not start\n", idx, apic);
            g_percpu[idx] = NULL;
            continue;
        }
        g_shared.cpu[idx].apic_id = apic;
        g_shared.ncpus++;
    }
}

void ap_main(struct percpu *c)
{
    write_cr0((read_cr0() & ~0x60000000ull) | CR0_WP);      /* caches on (CD/NW off), WP */
    cpu_tables_init(c);
    idt_load();
    lapic_enable(false);
    clock_init_cpu(c);
    lapic_timer_start(g_shared.timer_count);
    atomic_store(&c->alive, 1);
    enter_user((u64)user_main, c->index, c->ustack_top - 8);
    halt_forever();
}

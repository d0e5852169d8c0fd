/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Kernel start (BSP). Everything here runs at CPL0, which a PVM host emulates at
 * ~1.5 M instructions/s, so the sequence is kept short: no page-table building
 * for the low 4 GiB (static), no memory clearing beyond .bss, no table scans
 * that can be avoided. All reporting and all workloads run at CPL3 (user/).
 */
#include "kernel/acpi.h"
#include "kernel/apic.h"
#include "kernel/bootinfo.h"
#include "kernel/console.h"
#include "kernel/kclock.h"
#include "kernel/mm.h"
#include "kernel/percpu.h"
#include "kernel/power.h"
#include "kernel/serial.h"
#include "kernel/shared.h"
#include "kernel/smp.h"
#include "kernel/trap.h"
#include "lib/cmdline.h"
#include "lib/x86.h"

struct guest_shared g_shared;

extern char boot_stack_top[];
void enter_user(u64 rip, u64 arg, u64 rsp);
void user_main(u64 cpu);
NORETURN void kmain(u64 entry, u64 info);

#define DEFAULT_HZ 50

void kmain(u64 entry, u64 info)
{
    struct boot_info *bi = &g_shared.boot;

    write_cr0((read_cr0() & ~0x60000000ull) | CR0_WP);     /* caches on, WP */
    serial_init();

    bi->entry = (int)entry;
    bi->info_gpa = info;
    if ((entry == ENTRY_PVH ? pvh_parse(info, bi) : bootparams_parse(info, bi)) != 0)
        halt_forever();
    g_console_debug = cmdline_has(bi->cmdline, "ferry.debug");
    g_shared.quiet = cmdline_has(bi->cmdline, "ferry.quiet");
    u64 hz = cmdline_u64(bi->cmdline, "ferry.hz", DEFAULT_HZ);
    g_shared.timer_hz = (u32)MIN(MAX(hz, 1u), 1000u);
    kdebug("ferry-guest: kmain entry %llu info 0x%llx\n", entry, info);

    mm_init(bi);
    mm_map_high(bi);                    /* before ACPI: tables may live above 4 GiB */
    g_shared.ram_bytes = g_ram_bytes;
    g_shared.ram_top = g_ram_top;

    struct percpu *bsp = percpu_alloc(0, 0, (u64)boot_stack_top);
    cpu_tables_init(bsp);
    idt_init();
    idt_load();
    kdebug("ferry-guest: gdt/idt loaded\n");

    acpi_init(bi->rsdp_hint, &g_shared.acpi);
    kdebug("ferry-guest: acpi rsdp 0x%llx cpus %u\n", g_shared.acpi.rsdp, g_shared.acpi.ncpus);

    lapic_setup_bsp(cmdline_has(bi->cmdline, "ferry.xapic"));
    lapic_enable(true);
    bsp->apic_id = lapic_id();
    g_shared.x2apic = lapic_x2apic();

    clock_init_bsp();
    clock_init_cpu(bsp);
    g_shared.clock_source = clock_source_name();
    g_shared.boot_ns = now_ns();
    kdebug("ferry-guest: clock %s at %llu ns\n", g_shared.clock_source, g_shared.boot_ns);

    g_shared.lapic_hz = lapic_timer_calibrate();
    g_shared.timer_count = (u32)MIN(g_shared.lapic_hz / g_shared.timer_hz, 0xffffffffull);
    if (!g_shared.timer_count)
        kprintf("ferry-guest: the local APIC timer does not count; no timer, idle loops spin\n");
    kdebug("ferry-guest: lapic timer %llu Hz\n", g_shared.lapic_hz);

    pic_mask();
    g_shared.serial_gsi = ioapic_route_isa(&g_shared.acpi, COM1_IRQ, VEC_SERIAL, bsp->apic_id);
    if (g_shared.serial_gsi >= 0)
        serial_enable_rx_irq();
    power_button_init(bsp->apic_id);

    lapic_timer_start(g_shared.timer_count);
    smp_boot();
    g_shared.free_base = mm_heap_end();
    kdebug("ferry-guest: %u cpus, entering CPL3\n", g_shared.ncpus);

    enter_user((u64)user_main, 0, bsp->ustack_top - 8);
    halt_forever();
}

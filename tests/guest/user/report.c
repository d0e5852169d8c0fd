/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Informative boot lines ("ferry-guest: ..."), printed from CPL3 by CPU 0. */
#include "lib/clock.h"
#include "lib/string.h"
#include "user/ulib.h"

static const char *entry_name(int entry)
{
    switch (entry) {
    case ENTRY_PVH:
        return "pvh";
    case ENTRY_BZIMAGE32:
        return "bzimage (32-bit boot protocol)";
    case ENTRY_BZIMAGE64:
        return "bzimage (64-bit boot protocol)";
    }
    return "?";
}

void report_boot(void)
{
    const struct boot_info *bi = &g_shared.boot;
    const struct acpi_info *ai = &g_shared.acpi;

    uprintf("ferry-guest: entry %s, boot info at 0x%llx\n", entry_name(bi->entry), bi->info_gpa);
    sys_write("ferry-guest: cmdline \"", 22);
    sys_write(bi->cmdline, strlen(bi->cmdline));
    sys_write("\"\n", 2);
    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        uprintf("ferry-guest: e820 0x%016llx-0x%016llx %u\n", e->addr, e->addr + e->size, e->type);
    }
    uprintf("ferry-guest: ram %llu MiB, top 0x%llx, free for workloads from 0x%llx\n",
            g_shared.ram_bytes / MiB, g_shared.ram_top, g_shared.free_base);
    if (ai->rsdp) {
        uprintf("ferry-guest: acpi rsdp=0x%llx %s=0x%llx madt=0x%llx fadt=0x%llx dsdt=0x%llx "
                "cpus=%u ioapics=%u\n", ai->rsdp, ai->xsdt ? "xsdt" : "rsdt", ai->sdt,
                ai->madt, ai->fadt, ai->dsdt, ai->ncpus, ai->nioapics);
    } else {
        uprintf("ferry-guest: acpi tables not found: 1 cpu, no power-off\n");
    }
    if (g_shared.clock.kind == CLOCK_TSC)
        uprintf("ferry-guest: clock %s, tsc %llu Hz\n", g_shared.clock_source, g_shared.clock.tsc_hz);
    else
        uprintf("ferry-guest: clock %s\n", g_shared.clock_source);
    uprintf("ferry-guest: lapic %s, timer %u Hz (%llu counts/s), serial gsi %d\n",
            g_shared.x2apic ? "x2apic" : "xapic", g_shared.timer_hz, g_shared.lapic_hz,
            g_shared.serial_gsi);
}

void report_cpus(void)
{
    for (u32 i = 0; i < g_shared.ncpus; i++)
        uprintf("ferry-guest: cpu %u apic %u online\n", i, g_shared.cpu[i].apic_id);
    if (g_shared.tramp_page)
        uprintf("ferry-guest: ap trampoline at 0x%x\n", g_shared.tramp_page);
    uprintf("ferry-guest: kernel clock started at %llu ms, all %u CPUs in CPL3 at %llu ms\n",
            g_shared.boot_ns / NS_PER_MS, g_shared.ncpus, unow(0) / NS_PER_MS);
}

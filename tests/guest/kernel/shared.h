/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * State the kernel publishes for the CPL3 workloads. The whole guest is one
 * identity-mapped, user-accessible address space, so user code reads this
 * structure directly; it only ever writes the two handshake counters.
 */
#ifndef FERRY_GUEST_SHARED_H
#define FERRY_GUEST_SHARED_H

#include "kernel/acpi.h"
#include "kernel/bootinfo.h"
#include "lib/clock.h"

struct cpu_slot {
    u32 apic_id;
};

struct guest_shared {
    struct boot_info boot;
    struct clock_info clock;
    struct acpi_info acpi;
    const char *clock_source;
    u64 ram_bytes;              /* sum of e820 RAM */
    u64 ram_top;                /* highest RAM address + 1 */
    u64 free_base;              /* RAM from here up is free for workloads */
    u32 ncpus;                  /* CPUs online; indexes 0..ncpus-1 */
    struct cpu_slot cpu[MAX_CPUS];
    bool x2apic;
    bool quiet;
    u32 timer_hz;
    u32 timer_count;            /* LAPIC initial count per tick (divide by 16) */
    u64 lapic_hz;               /* LAPIC timer counts per second (divide by 16) */
    int serial_gsi;             /* -1: no IOAPIC route, no serial input */
    u32 tramp_page;             /* AP trampoline GPA, 0 if no APs */
    u64 boot_ns;                /* clock when kmain started */
    bool s5_valid;              /* \_S5_ found (by CPU 0 at CPL3, before READY) */
    u8 s5_slp_typ_a, s5_slp_typ_b;
    u32 nmi_count[MAX_CPUS];    /* NMIs taken, per CPU */
    u64 msi_count[VEC_MSI_COUNT]; /* MSI-X interrupts taken, per vector - VEC_MSI_BASE */

    /* handshake, written by CPL3 */
    u32 cpus_in_user;
    u32 user_go;
};

extern struct guest_shared g_shared;

#endif

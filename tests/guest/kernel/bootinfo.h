/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What the guest learns from its loader, independent of the boot protocol:
 * command line, memory map, RSDP hint. Filled by pvh.c or bootparams.c, read by
 * the kernel and (read-only) by the CPL3 workloads.
 */
#ifndef FERRY_GUEST_BOOTINFO_H
#define FERRY_GUEST_BOOTINFO_H

#include "kernel/layout.h"
#include "lib/types.h"

/* e820 types (ACPI 6.4, 15.1 "Address Range Types"). */
#define E820_RAM        1
#define E820_RESERVED   2
#define E820_ACPI       3
#define E820_NVS        4
#define E820_UNUSABLE   5

struct e820_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 pad;
};

struct boot_info {
    int entry;                      /* ENTRY_PVH / ENTRY_BZIMAGE32 / ENTRY_BZIMAGE64 */
    u64 info_gpa;                   /* hvm_start_info or boot_params address */
    u64 rsdp_hint;                  /* RSDP GPA from the loader, 0 if none */
    u32 e820_count;
    struct e820_entry e820[E820_MAX];   /* sorted by address */
    char cmdline[CMDLINE_MAX];
};

/* Both return 0 on success, -1 (after printing why) if the structure is unusable.
 * The structures are copied, so the loader's memory may be reused afterwards. */
int pvh_parse(u64 start_info_gpa, struct boot_info *bi);
int bootparams_parse(u64 boot_params_gpa, struct boot_info *bi);

/* Sorts the e820 table by address (insertion sort; a handful of entries). */
void e820_sort(struct boot_info *bi);

#endif

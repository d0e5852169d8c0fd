/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * PVH boot information. Layout of struct hvm_start_info and its memory map:
 * Xen xen/include/public/arch-x86/hvm/start_info.h (version 1). All addresses
 * are guest physical; the guest runs identity mapped, so they are used directly.
 */
#include "kernel/bootinfo.h"
#include "kernel/console.h"
#include "lib/string.h"

#define XEN_HVM_START_MAGIC_VALUE 0x336ec578

struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    /* version >= 1 */
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
} PACKED;

struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
} PACKED;

int pvh_parse(u64 gpa, struct boot_info *bi)
{
    const struct hvm_start_info *si = (const void *)gpa;

    if (!gpa || si->magic != XEN_HVM_START_MAGIC_VALUE) {
        kprintf("ferry-guest: PVH start info at 0x%llx has a bad magic\n", gpa);
        return -1;
    }
    if (si->version < 1 || !si->memmap_paddr || !si->memmap_entries) {
        kprintf("ferry-guest: PVH start info version %u has no memory map\n", si->version);
        return -1;
    }
    if (si->cmdline_paddr)
        strlcpy_(bi->cmdline, (const char *)si->cmdline_paddr, CMDLINE_MAX);
    bi->rsdp_hint = si->rsdp_paddr;

    const struct hvm_memmap_table_entry *m = (const void *)si->memmap_paddr;
    u32 n = 0;
    for (u32 i = 0; i < si->memmap_entries && n < E820_MAX; i++) {
        if (!m[i].size)
            continue;                   /* qboot passes an empty entry */
        bi->e820[n].addr = m[i].addr;
        bi->e820[n].size = m[i].size;
        bi->e820[n].type = m[i].type;
        n++;
    }
    bi->e820_count = n;
    e820_sort(bi);
    return 0;
}

void e820_sort(struct boot_info *bi)
{
    for (u32 i = 1; i < bi->e820_count; i++) {
        struct e820_entry e = bi->e820[i];
        u32 j = i;
        while (j > 0 && bi->e820[j - 1].addr > e.addr) {
            bi->e820[j] = bi->e820[j - 1];
            j--;
        }
        bi->e820[j] = e;
    }
}

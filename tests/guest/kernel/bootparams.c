/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Linux boot protocol "zero page" (struct boot_params). Offsets from Linux
 * Documentation/arch/x86/zero-page.rst and boot.rst:
 *   0x070 acpi_rsdp_addr (u64), 0x0c8 ext_cmd_line_ptr (u32),
 *   0x1e8 e820_entries (u8), 0x228 hdr.cmd_line_ptr (u32),
 *   0x2d0 e820_table[128], 20-byte packed entries {u64 addr, u64 size, u32 type}.
 */
#include "kernel/bootinfo.h"
#include "kernel/console.h"
#include "lib/string.h"

#define BP_ACPI_RSDP_ADDR   0x070
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES     0x1e8
#define BP_HDR_MAGIC        0x202
#define BP_CMD_LINE_PTR     0x228
#define BP_E820_TABLE       0x2d0
#define BP_E820_ENTRY_SIZE  20
#define BP_E820_MAX         128

struct bp_e820 {
    u64 addr;
    u64 size;
    u32 type;
} PACKED;

int bootparams_parse(u64 gpa, struct boot_info *bi)
{
    const u8 *bp = (const u8 *)gpa;

    if (!gpa) {
        kprintf("ferry-guest: no boot_params pointer\n");
        return -1;
    }
    u64 cmd = *(const u32 *)(bp + BP_CMD_LINE_PTR) |
              ((u64)*(const u32 *)(bp + BP_EXT_CMD_LINE_PTR) << 32);
    if (cmd)
        strlcpy_(bi->cmdline, (const char *)cmd, CMDLINE_MAX);
    bi->rsdp_hint = *(const u64 *)(bp + BP_ACPI_RSDP_ADDR);

    u32 n = bp[BP_E820_ENTRIES];
    if (n == 0 || n > BP_E820_MAX) {
        kprintf("ferry-guest: boot_params has %u e820 entries\n", n);
        return -1;
    }
    u32 k = 0;
    for (u32 i = 0; i < n; i++) {
        const struct bp_e820 *e = (const void *)(bp + BP_E820_TABLE + i * BP_E820_ENTRY_SIZE);
        if (!e->size)
            continue;
        bi->e820[k].addr = e->addr;
        bi->e820[k].size = e->size;
        bi->e820[k].type = e->type;
        k++;
    }
    bi->e820_count = k;
    e820_sort(bi);
    return 0;
}

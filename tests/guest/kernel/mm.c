/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Page table layout: Intel SDM vol. 3A, 4.5 "4-Level Paging". */
#include "kernel/console.h"
#include "kernel/mm.h"
#include "lib/string.h"
#include "lib/x86.h"

#define PTE_P       0x001ull
#define PTE_W       0x002ull
#define PTE_U       0x004ull
#define PTE_PWT     0x008ull
#define PTE_PCD     0x010ull
#define PTE_PS      0x080ull
#define PTE_LARGE   (PTE_P | PTE_W | PTE_U | PTE_PS)
#define PTE_TABLE   (PTE_P | PTE_W | PTE_U)

extern char _end[];
extern u64 boot_pdpt[512];
extern u64 boot_pd[2048];

u64 g_ram_bytes, g_ram_top;
static u64 heap_next, heap_limit;

bool mm_is_ram(const struct boot_info *bi, u64 addr, u64 size)
{
    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        if (e->type == E820_RAM && addr >= e->addr && addr + size <= e->addr + e->size)
            return true;
    }
    return false;
}

void mm_init(const struct boot_info *bi)
{
    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        if (e->type != E820_RAM)
            continue;
        g_ram_bytes += e->size;
        g_ram_top = MAX(g_ram_top, e->addr + e->size);
    }

    heap_next = ALIGN_UP((u64)_end, 4096);
    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        if (e->type == E820_RAM && heap_next >= e->addr && heap_next < e->addr + e->size) {
            heap_limit = MIN(e->addr + e->size, 4 * GiB);
            break;
        }
    }
    if (!heap_limit || !mm_is_ram(bi, LOAD_ADDR, heap_next - LOAD_ADDR)) {
        kprintf("ferry-guest: the image at 0x%x-0x%llx is not inside e820 RAM\n",
                LOAD_ADDR, heap_next);
        halt_forever();
    }
}

void *kalloc(u64 size, u64 align)
{
    u64 p = ALIGN_UP(heap_next, align);

    if (p + size > heap_limit) {
        kprintf("ferry-guest: out of kernel memory (%llu bytes)\n", size);
        halt_forever();
    }
    heap_next = p + size;
    return (void *)p;
}

void *kzalloc(u64 size, u64 align)
{
    return memset(kalloc(size, align), 0, size);
}

u64 mm_heap_end(void)
{
    return ALIGN_UP(heap_next, 4096);
}

void mm_map_high(const struct boot_info *bi)
{
    u32 a, b, c, d;
    cpuid(0x80000000, 0, &a, &b, &c, &d);
    bool gbpages = false;
    if (a >= 0x80000001) {
        cpuid(0x80000001, 0, &a, &b, &c, &d);
        gbpages = d & (1u << 26);           /* Page1GB */
    }

    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        if (e->type != E820_RAM || e->addr + e->size <= 4 * GiB)
            continue;
        u64 first = MAX(e->addr, 4 * GiB) >> 30;
        u64 last = (e->addr + e->size - 1) >> 30;
        if (last >= 512) {
            kprintf("ferry-guest: RAM above 512 GiB is not mapped\n");
            last = 511;
        }
        for (u64 g = first; g <= last; g++) {
            if (boot_pdpt[g])
                continue;
            if (gbpages) {
                boot_pdpt[g] = (g << 30) | PTE_LARGE;
            } else {
                u64 *pd = kalloc(4096, 4096);
                for (u64 k = 0; k < 512; k++)
                    pd[k] = (g << 30) + (k << 21) + PTE_LARGE;
                boot_pdpt[g] = (u64)pd | PTE_TABLE;
            }
        }
    }
    write_cr3(read_cr3());
}

void mm_set_uncached(u64 addr)
{
    if (addr >= 4 * GiB)
        return;
    boot_pd[addr >> 21] |= PTE_PCD | PTE_PWT;
    invlpg(ALIGN_DOWN(addr, 2 * MiB));
}

/* Page directories for MMIO above 4 GiB (64-bit BARs placed high by the VMM). */
#define MMIO_PDS 4
static u64 mmio_pd[MMIO_PDS][512] ALIGNED(4096);
static u32 mmio_pds_used;

bool mm_map_mmio(u64 addr, u64 size)
{
    if (!size || addr + size < addr || addr + size > 512 * GiB)
        return false;
    for (u64 a = ALIGN_DOWN(addr, 2 * MiB); a < addr + size; a += 2 * MiB) {
        if (a < 4 * GiB) {
            mm_set_uncached(a);
            continue;
        }
        u64 g = a >> 30;
        if (!boot_pdpt[g]) {
            if (mmio_pds_used == MMIO_PDS)
                return false;
            u64 *pd = mmio_pd[mmio_pds_used++];
            for (u64 k = 0; k < 512; k++)
                pd[k] = 0;
            boot_pdpt[g] = (u64)pd | PTE_TABLE;
        }
        if (boot_pdpt[g] & PTE_PS)
            return false;               /* a 1 GiB RAM page: not MMIO */
        u64 *pd = (u64 *)(boot_pdpt[g] & ~0xfffull);
        u64 *e = &pd[(a >> 21) & 511];
        if (!*e)
            *e = a | PTE_LARGE | PTE_PCD | PTE_PWT;
        else if (!(*e & PTE_PCD))
            return false;               /* RAM */
        invlpg(a);
    }
    return true;
}

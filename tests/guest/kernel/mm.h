/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Physical memory of the guest kernel. Everything is identity mapped with large
 * pages and user accessible (U=1): the workloads run at CPL3 on the same map.
 * The low 4 GiB come from static page tables in boot/head.S; RAM above 4 GiB is
 * added here with 1 GiB pages when CPUID allows, else with 2 MiB pages.
 * Kernel allocations come from a bump allocator right after the image (_end).
 */
#ifndef FERRY_GUEST_MM_H
#define FERRY_GUEST_MM_H

#include "kernel/bootinfo.h"
#include "lib/types.h"

/* Sums RAM, sets up the allocator. Halts if the image is not inside RAM. */
void mm_init(const struct boot_info *bi);
/* Bump allocation, `align` a power of two; memory is NOT cleared. Halts when out. */
void *kalloc(u64 size, u64 align);
/* Same, cleared. */
void *kzalloc(u64 size, u64 align);
/* First byte after the kernel's allocations (page aligned). */
u64 mm_heap_end(void);
/* Identity-maps all RAM above 4 GiB (up to 512 GiB). */
void mm_map_high(const struct boot_info *bi);
/* Makes the 2 MiB page holding `addr` (< 4 GiB) uncached (PCD|PWT). */
void mm_set_uncached(u64 addr);
/* Maps [addr, addr+size) uncached and user-accessible (device BARs), below 512 GiB
 * and outside RAM. False if that is not possible. */
bool mm_map_mmio(u64 addr, u64 size);
/* True if [addr, addr+size) lies inside one e820 RAM entry. */
bool mm_is_ram(const struct boot_info *bi, u64 addr, u64 size);

/* Sum of e820 RAM (bytes) and the highest RAM address + 1. */
extern u64 g_ram_bytes, g_ram_top;

#endif

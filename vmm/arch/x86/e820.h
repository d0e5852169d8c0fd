/*
 * The e820 memory map handed to the guest (boot_params.e820_table for bzImage, the
 * hvm_start_info memmap for PVH).  Entry types follow the ACPI address range types
 * (ACPI 6.4 section 15, "System Address Map Interfaces").
 */
#pragma once

#include <stdint.h>

#define FERRY_E820_RAM      1
#define FERRY_E820_RESERVED 2
#define FERRY_E820_ACPI     3

typedef struct {
    uint64_t addr; /* first byte */
    uint64_t size; /* bytes */
    uint32_t type; /* FERRY_E820_* */
} FerryE820Entry;

#define FERRY_E820_MAX 8

/*
 * Builds the map for @low_end bytes of RAM at GPA 0 (>= 2 MiB) and @high_size bytes at
 * 4 GiB (may be 0): usable RAM below the EBDA, the ACPI table area as ACPI-reclaimable,
 * RAM from 1 MiB to @low_end, and the high RAM.  Returns the number of entries written to
 * @out (which holds FERRY_E820_MAX).
 */
unsigned ferry_e820_build(uint64_t low_end, uint64_t high_size, FerryE820Entry *out);

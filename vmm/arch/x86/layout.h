/*
 * Ferry's x86 guest-physical memory map.
 *
 *   0x0000_0000 .. 0x0009_ffff  RAM (low 640 KiB: boot structures below, see boot.h)
 *   0x000a_0000 .. 0x000d_ffff  legacy video/ROM hole (backed by RAM, reserved in e820)
 *   0x000e_0000 .. 0x000f_ffff  ACPI tables (reserved in e820)
 *   0x0010_0000 .. low_end      RAM; low_end = min(RAM size, 3 GiB)
 *   0xc000_0000 .. 0xffff_ffff  32-bit MMIO hole: PCI BARs (0xc000_0000 .. 0xfdff_ffff), GED
 *                               (0xfeb0_0000), IOAPIC, LAPIC, KVM's TSS pages
 *   0x1_0000_0000 ..            the rest of RAM
 */
#pragma once

#define FERRY_GIB (1ULL << 30)
#define FERRY_MIB (1ULL << 20)

#define FERRY_LOW_RAM_MAX     (3 * FERRY_GIB)  /* RAM below the 32-bit MMIO hole, at most */
#define FERRY_MMIO32_START    (3 * FERRY_GIB)  /* start of the 32-bit MMIO hole */
#define FERRY_HIGH_RAM_START  (4 * FERRY_GIB)  /* RAM above the hole starts here */

/*
 * PCI host bridge windows advertised in the DSDT's \_SB.PCI0._CRS (arch/x86/acpi.c): the
 * 32-bit window ends below the GED block; the 64-bit window is chosen at run time.
 */
#define FERRY_PCI_MMIO32_BASE 0xc0000000ULL
#define FERRY_PCI_MMIO32_SIZE 0x3e000000ULL    /* 992 MiB: 0xc000_0000 .. 0xfdff_ffff */

/* Generic Event Device (devices/ged.h): 16-byte register block, interrupt on GSI 5
 * (level-triggered, active-high). */
#define FERRY_GED_BASE        0xfeb00000ULL
#define FERRY_GED_SIZE        16
#define FERRY_GED_GSI         5

#define FERRY_IOAPIC_BASE     0xfec00000ULL
#define FERRY_LAPIC_BASE      0xfee00000ULL
/* KVM's VMX real-mode helpers: 3 pages of TSS and 1 page of identity-map table. */
#define FERRY_KVM_IDENTITY_MAP 0xfeffc000ULL
#define FERRY_KVM_TSS          0xfeffd000ULL

#define FERRY_EBDA_START      0x0009fc00ULL    /* end of usable low RAM */
#define FERRY_ACPI_START      0x000e0000ULL    /* ACPI tables; RSDP first */
#define FERRY_ACPI_END        0x00100000ULL
#define FERRY_HIMEM_START     0x00100000ULL    /* 1 MiB: kernels load here */

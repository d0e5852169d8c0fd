/*
 * ACPI tables for a hardware-reduced x86 machine: RSDP, XSDT, FADT, DSDT, MADT.
 * Source: ACPI Specification 6.4, sections 5.2.5 (RSDP), 5.2.6 (table header), 5.2.8 (XSDT),
 * 5.2.9 (FADT), 5.2.11.1 (DSDT), 5.2.12 (MADT); the DSDT's AML is written with aml.h.
 */
#pragma once

#include "memory.h"

#include <glib.h>

/* Signature-checked sum: the bytes of a table add up to 0 (mod 256) when valid. */
uint8_t ferry_acpi_checksum(const uint8_t *data, size_t len);

/*
 * What the tables describe.  The PCI windows are the ranges the host bridge (\_SB.PCI0)
 * forwards to bus 0: guest-physical byte addresses and sizes.  The 32-bit window must lie
 * below 4 GiB and be non-empty; the 64-bit window is left out of _CRS when its size is 0.
 */
typedef struct {
    unsigned nr_vcpus; /* CPUs with APIC IDs 0..nr_vcpus-1 */
    uint64_t pci_mmio32_base, pci_mmio32_size;
    uint64_t pci_mmio64_base, pci_mmio64_size;
} FerryAcpiConfig;

/*
 * Builds the tables for @cfg into a blob meant for GPA @base (pointers inside are
 * absolute).  The RSDP is at offset 0.  Returns the blob (caller owns).
 *
 * The DSDT holds \_S5 (soft-off), \_SB.PCI0 (PCI root bridge PNP0A08, bus 0, config
 * mechanism #1 at 0xcf8, its I/O and memory windows), \_SB.PWRB (control-method power
 * button PNP0C0C) and \_SB.GED_ (Generic Event Device ACPI0013, devices/ged.h, whose _EVT
 * notifies PWRB).  The FADT is hardware-reduced with PWR_BUTTON and SLP_BUTTON set: there
 * is no fixed-feature button.
 */
GByteArray *ferry_acpi_build_tables(uint64_t base, const FerryAcpiConfig *cfg);

/*
 * Builds the tables and writes them at FERRY_ACPI_START; *@rsdp_gpa receives the RSDP.
 * Fails with G_IO_ERROR_INVALID_ARGUMENT for PCI windows that do not fit their address
 * range, or G_IO_ERROR_NO_SPACE if the tables do not fit below 1 MiB.
 */
gboolean ferry_acpi_install(FerryGuestMemory *mem, const FerryAcpiConfig *cfg, uint64_t *rsdp_gpa,
                            GError **error);

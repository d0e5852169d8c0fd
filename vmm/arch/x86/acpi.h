/*
 * ACPI tables for a hardware-reduced x86 machine: RSDP, XSDT, FADT, DSDT, MADT.
 * Source: ACPI Specification 6.4, sections 5.2.5 (RSDP), 5.2.6 (table header), 5.2.8 (XSDT),
 * 5.2.9 (FADT), 5.2.11.1 (DSDT), 5.2.12 (MADT), 19 (AML encoding of the \_S5 object).
 */
#pragma once

#include "memory.h"

#include <glib.h>

/* Signature-checked sum: the bytes of a table add up to 0 (mod 256) when valid. */
uint8_t ferry_acpi_checksum(const uint8_t *data, size_t len);

/*
 * Builds the tables for @nr_vcpus CPUs (APIC IDs 0..n-1) into a blob meant for GPA @base
 * (pointers inside are absolute).  The RSDP is at offset 0.  Returns the blob (caller owns).
 */
GByteArray *ferry_acpi_build_tables(uint64_t base, unsigned nr_vcpus);

/* Builds the tables and writes them at FERRY_ACPI_START; *@rsdp_gpa receives the RSDP. */
gboolean ferry_acpi_install(FerryGuestMemory *mem, unsigned nr_vcpus, uint64_t *rsdp_gpa,
                            GError **error);

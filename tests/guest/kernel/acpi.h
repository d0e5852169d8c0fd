/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The ACPI tables the guest reads (ACPI 6.4): RSDP (5.2.5), RSDT/XSDT (5.2.7,
 * 5.2.8), FADT (5.2.9), MADT (5.2.12). Only what SMP start-up, interrupt routing,
 * power-off and reset need is extracted.
 */
#ifndef FERRY_GUEST_ACPI_H
#define FERRY_GUEST_ACPI_H

#include "kernel/layout.h"
#include "lib/types.h"

/* Generic Address Structure, ACPI 6.4 5.2.3.2. */
struct acpi_gas {
    u8 space_id;            /* 0 system memory, 1 system I/O */
    u8 bit_width;
    u8 bit_offset;
    u8 access_size;         /* 0 undefined, 1 byte, 2 word, 3 dword, 4 qword */
    u64 address;
} PACKED;

#define ACPI_MAX_IOAPICS    8
#define ACPI_MAX_ISOS       16

struct acpi_ioapic {
    u32 id;
    u32 addr;
    u32 gsi_base;
};

struct acpi_iso {           /* MADT interrupt source override */
    u8 bus_irq;
    u32 gsi;
    u16 flags;              /* MPS INTI flags: polarity bits 1:0, trigger bits 3:2 */
};

/* FADT flags (ACPI 6.4 table 5.10). */
#define FADT_RESET_REG_SUP      (1u << 10)
#define FADT_HW_REDUCED_ACPI    (1u << 20)

struct acpi_info {
    u64 rsdp;               /* 0: no ACPI found */
    u64 sdt;                /* XSDT or RSDT */
    bool xsdt;
    u64 madt, fadt, dsdt;

    /* MADT */
    u64 lapic_addr;
    u32 ncpus;                          /* enabled processors */
    u32 cpu_apic_id[MAX_CPUS];
    u32 nioapics;
    struct acpi_ioapic ioapic[ACPI_MAX_IOAPICS];
    u32 nisos;
    struct acpi_iso iso[ACPI_MAX_ISOS];

    /* FADT (0 when absent or too short) */
    u32 fadt_len;
    u32 fadt_flags;
    u32 pm1a_cnt, pm1b_cnt;             /* I/O ports of PM1x_CNT_BLK */
    struct acpi_gas x_pm1a_cnt, x_pm1b_cnt;
    struct acpi_gas reset_reg;
    u8 reset_value;
    struct acpi_gas sleep_control;

    /* Generic Event Device (acpi_find_ged); ged_base 0: none found */
    u64 ged_base;                       /* event register block (Memory32Fixed) */
    u32 ged_gsi;                        /* its interrupt (Extended Interrupt) */
    bool ged_level, ged_active_low;
};

/* Finds and parses the tables; `rsdp_hint` from the loader may be 0. */
void acpi_init(u64 rsdp_hint, struct acpi_info *ai);
/* SLP_TYPa/b of \_S5_ from the DSDT (ACPI 6.4 7.4.2, 4.8.3.7); false if none. */
bool acpi_s5(const struct acpi_info *ai, u8 *slp_typ_a, u8 *slp_typ_b);
/*
 * Finds the Generic Event Device (ACPI 6.4 5.6.9, _HID "ACPI0013") in the DSDT and fills
 * ai->ged_*. A byte-pattern scan, not an AML interpreter: the string "ACPI0013", then the
 * next Name (_CRS, Buffer) before another _HID, whose resource descriptors (6.4) must hold
 * an Extended Interrupt (0x89) and a Memory32Fixed (0x86) below 4 GiB. False if not found.
 */
bool acpi_find_ged(struct acpi_info *ai);
/* Writes `value` to a GAS register (system memory or system I/O). */
void acpi_gas_write(const struct acpi_gas *g, u64 value);
/* Reads a GAS register; 0 for unsupported spaces. */
u64 acpi_gas_read(const struct acpi_gas *g);

#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * IOAPIC redirection (Intel 82093AA I/O APIC data sheet, 3.2.4 "IOREDTBL"):
 * IOREGSEL at base+0x00, IOWIN at base+0x10; entry n is registers 0x10+2n (low:
 * vector, polarity bit 13, trigger bit 15, mask bit 16) and 0x11+2n (high:
 * destination APIC ID in bits 63:56). ISA IRQs map to GSI = IRQ unless the MADT
 * has an interrupt source override; ISA default is edge, active high. Other GSIs
 * (the GED's) come with their trigger mode and polarity from the DSDT.
 */
#include "kernel/apic.h"
#include "kernel/mm.h"
#include "lib/x86.h"

void pic_mask(void)
{
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

static u32 io_read(u64 base, u32 reg)
{
    mmio_write32(base, reg);
    return mmio_read32(base + 0x10);
}

static void io_write(u64 base, u32 reg, u32 v)
{
    mmio_write32(base, reg);
    mmio_write32(base + 0x10, v);
}

int ioapic_route_isa(const struct acpi_info *ai, u8 irq, u8 vector, u32 dest_apic)
{
    u32 gsi = irq;
    u16 flags = 0;

    for (u32 i = 0; i < ai->nisos; i++) {
        if (ai->iso[i].bus_irq == irq) {
            gsi = ai->iso[i].gsi;
            flags = ai->iso[i].flags;
        }
    }
    return ioapic_route_gsi(ai, gsi, vector, dest_apic, ((flags >> 2) & 3) == 3,
                            (flags & 3) == 3);
}

int ioapic_route_gsi(const struct acpi_info *ai, u32 gsi, u8 vector, u32 dest_apic, bool level,
                     bool active_low)
{

    /* The IOAPIC with the highest GSI base not above the GSI; only that one is
     * touched (MMIO exits can be slow, especially to user-space IOAPICs). */
    struct acpi_ioapic def = { 0, 0xfec00000, 0 };
    const struct acpi_ioapic *io = ai->nioapics ? NULL : &def;
    for (u32 i = 0; i < ai->nioapics; i++) {
        if (ai->ioapic[i].gsi_base <= gsi && (!io || ai->ioapic[i].gsi_base > io->gsi_base))
            io = &ai->ioapic[i];
    }
    if (!io)
        return -1;
    mm_set_uncached(io->addr);
    u32 entries = ((io_read(io->addr, 0x01) >> 16) & 0xff) + 1;    /* version register */
    if (gsi - io->gsi_base >= entries)
        return -1;

    u32 pin = gsi - io->gsi_base;
    u32 lo = vector;
    if (active_low)
        lo |= 1u << 13;
    if (level)
        lo |= 1u << 15;
    io_write(io->addr, 0x11 + 2 * pin, dest_apic << 24);
    io_write(io->addr, 0x10 + 2 * pin, lo);
    return (int)gsi;
}

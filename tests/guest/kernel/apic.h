/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Local APIC (Intel SDM vol. 3A, chapter 10 "Advanced Programmable Interrupt
 * Controller"), in x2APIC mode (MSRs 0x800+) when CPUID.1:ECX[21] says so and
 * ferry.xapic is not given, else xAPIC (MMIO at the IA32_APIC_BASE address).
 * The IOAPIC (82093AA data sheet) and the legacy 8259 masking live here too.
 */
#ifndef FERRY_GUEST_APIC_H
#define FERRY_GUEST_APIC_H

#include "kernel/acpi.h"
#include "lib/types.h"

/* BSP: chooses the mode. `force_xapic` ignores x2APIC support. */
void lapic_setup_bsp(bool force_xapic);
/* Each CPU: enable (software enable, spurious vector, LINT0 masked, LINT1 = NMI
 * on the BSP, masked elsewhere). */
void lapic_enable(bool bsp);
u32 lapic_id(void);
void lapic_eoi(void);
bool lapic_x2apic(void);
u64 lapic_mmio_base(void);
/* Sends INIT (assert, then de-assert) / a STARTUP IPI with page `vector`. */
void lapic_send_init(u32 apic_id);
void lapic_send_sipi(u32 apic_id, u8 vector);
/* BSP: measures the timer against the clock; returns counts per second (÷16). */
u64 lapic_timer_calibrate(void);
/* Each CPU: periodic timer on VEC_TIMER, `count` ticks (÷16) per period. */
void lapic_timer_start(u32 count);

/* Masks both 8259 PICs (harmless if absent). */
void pic_mask(void);
/* Routes ISA `irq` (after MADT overrides) through the IOAPIC to `vector` on
 * `dest_apic`; returns the GSI used, or -1 if no IOAPIC covers it. */
int ioapic_route_isa(const struct acpi_info *ai, u8 irq, u8 vector, u32 dest_apic);
/* Routes `gsi` to `vector` on `dest_apic` with the given trigger mode and polarity;
 * returns the GSI, or -1 if no IOAPIC covers it. */
int ioapic_route_gsi(const struct acpi_info *ai, u32 gsi, u8 vector, u32 dest_apic, bool level,
                     bool active_low);

#endif

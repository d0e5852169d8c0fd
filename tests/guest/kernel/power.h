/* SPDX-License-Identifier: GPL-2.0-or-later */
#ifndef FERRY_GUEST_POWER_H
#define FERRY_GUEST_POWER_H

#include "lib/types.h"

/* ACPI S5 soft-off. Prints FERRY-POWEROFF-FAILED and halts if the VM still
 * runs one second later. */
NORETURN void power_off(void);
/*
 * The ACPI power button behind the Generic Event Device (acpi_find_ged): routes its GSI
 * through the IOAPIC to VEC_GED on `dest_apic`. Does nothing if there is no GED.
 */
void power_button_init(u32 dest_apic);
/* VEC_GED handler: reads (and so clears) the event register, EOIs; on bit 0 prints
 * FERRY-GUEST-POWERBUTTON and powers off (power_off). */
void power_button_irq(void);
/* Reset: FADT RESET_REG, else i8042 pulse (port 0x64 <- 0xFE), else triple fault. */
NORETURN void power_reset(void);

#endif

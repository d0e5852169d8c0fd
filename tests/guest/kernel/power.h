/* SPDX-License-Identifier: GPL-2.0-or-later */
#ifndef FERRY_GUEST_POWER_H
#define FERRY_GUEST_POWER_H

#include "lib/types.h"

/* ACPI S5 soft-off. Prints FERRY-POWEROFF-FAILED and halts if the VM still
 * runs one second later. */
NORETURN void power_off(void);
/* Reset: FADT RESET_REG, else i8042 pulse (port 0x64 <- 0xFE), else triple fault. */
NORETURN void power_reset(void);

#endif

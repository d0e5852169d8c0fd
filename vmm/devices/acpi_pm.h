/*
 * Ferry's hardware-reduced ACPI power-management registers (ACPI 6.4 section 4.8.3.7
 * "Sleep Control and Status Registers", 4.8.3.6 "Reset Register"), in I/O space:
 *
 *   FERRY_ACPI_SLEEP_CONTROL  write (SLP_TYPx << 2) | SLP_EN: SLP_TYP 5 (\_S5, power off)
 *                             powers the machine off
 *   FERRY_ACPI_SLEEP_STATUS   reads 0 (no wake events)
 *   FERRY_ACPI_RESET          write FERRY_ACPI_RESET_VALUE to reset the machine
 *
 * The FADT (arch/x86/acpi.c) points at these; the DSDT's \_S5 package holds SLP_TYP 5.
 */
#pragma once

#include "devices/bus.h"
#include "devices/device.h"
#include "devices/machine.h"

#define FERRY_ACPI_PM_BASE       0x600
#define FERRY_ACPI_SLEEP_CONTROL 0x600
#define FERRY_ACPI_SLEEP_STATUS  0x601
#define FERRY_ACPI_RESET         0x602
#define FERRY_ACPI_PM_LEN        4
#define FERRY_ACPI_RESET_VALUE   0x01
#define FERRY_ACPI_SLP_TYP_S5    5

typedef struct FerryAcpiPm FerryAcpiPm;

/* Creates the device and claims its ports on @pio.  @machine is borrowed. */
FerryAcpiPm *ferry_acpi_pm_new(FerryBus *pio, FerryMachine *machine, GError **error);
FerryDevice *ferry_acpi_pm_device(FerryAcpiPm *pm);

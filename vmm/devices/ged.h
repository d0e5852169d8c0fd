/*
 * Generic Event Device (ACPI 6.4 section 5.6.9 "Interrupt-signaled ACPI events", the GED,
 * _HID "ACPI0013"): how a hardware-reduced machine signals platform events such as the
 * power button.  The DSDT (arch/x86/acpi.c) describes the device: its _CRS holds the
 * interrupt (FERRY_GED_GSI, level-triggered, active-high) and the register block at
 * FERRY_GED_BASE; its _EVT method reads the event register and, for bit 0, does
 * Notify (\_SB.PWRB, 0x80) on the control-method power button (PNP0C0C, section 4.8.2.2.1.2).
 *
 * Registers (MMIO, FERRY_GED_SIZE bytes, little-endian):
 *
 *   offset 0  EVENTS  32-bit, read-to-clear: the pending event bits (a read returns the
 *                     bits of the bytes it covers and clears them); writes are ignored
 *   4..15             read as 0, writes ignored
 *
 * The interrupt line is high while any event is pending, so it drops when the guest's
 * _EVT reads the register.
 */
#pragma once

#include "devices/bus.h"
#include "devices/device.h"
#include "devices/machine.h"

#define FERRY_GED_EVENT_POWER_BUTTON (1u << 0)
#define FERRY_GED_EVENTS_VALID       FERRY_GED_EVENT_POWER_BUTTON

typedef struct FerryGed FerryGed;

/*
 * Creates the device and claims [FERRY_GED_BASE, +FERRY_GED_SIZE) on @mmio; it raises
 * FERRY_GED_GSI through @machine (borrowed, must outlive the device).  Fails with the
 * bus's error if the range is taken.  Free with ferry_device_free(ferry_ged_device(ged)).
 */
FerryGed *ferry_ged_new(FerryBus *mmio, FerryMachine *machine, GError **error);
FerryDevice *ferry_ged_device(FerryGed *ged);

/* Presses the power button: sets event bit 0 and raises the interrupt.  Any thread. */
void ferry_ged_press_power_button(FerryGed *ged);

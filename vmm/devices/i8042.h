/*
 * i8042 keyboard controller, enough for the guest to probe it and to reset the machine
 * (command 0xfe, or clearing bit 0 of the output port with 0xd1).  No keyboard or mouse is
 * attached: keyboard commands are acknowledged, nothing is ever typed.
 * Source: IBM PC/AT Technical Reference, "Keyboard Controller" (ports 0x60/0x64, command set).
 */
#pragma once

#include "devices/bus.h"
#include "devices/device.h"
#include "devices/machine.h"

#define FERRY_I8042_DATA    0x60
#define FERRY_I8042_COMMAND 0x64
#define FERRY_I8042_IRQ     1

typedef struct FerryI8042 FerryI8042;

/* Claims ports 0x60 and 0x64 on @pio.  @machine is borrowed. */
FerryI8042 *ferry_i8042_new(FerryBus *pio, FerryMachine *machine, GError **error);
FerryDevice *ferry_i8042_device(FerryI8042 *kbc);

/*
 * 16550A UART (COM1 at I/O 0x3f8, IRQ 4 by default).
 * Source: the National Semiconductor/TI PC16550D data sheet (register map, interrupt
 * priorities in the IIR, FIFO control), as used by Linux's 8250 driver.
 *
 * Transmit is immediate (THR goes straight to the chardev, so THRE/TEMT are always set);
 * receive has the 16-byte FIFO, filled from the chardev only as far as it has room, so
 * typed input is never dropped.  The receive interrupt is raised whenever data is waiting
 * (trigger level 1).  Modem lines read as connected (DCD, DSR, CTS); loopback mode (MCR
 * bit 4) routes THR to RBR and MCR outputs to MSR inputs, as Linux's autoconfig probes.
 */
#pragma once

#include "chardev.h"
#include "devices/bus.h"
#include "devices/device.h"
#include "devices/machine.h"

#define FERRY_COM1_BASE 0x3f8
#define FERRY_COM1_IRQ  4

typedef struct FerrySerial FerrySerial;

/*
 * Creates a UART at I/O @base with interrupt line @gsi, claims its 8 ports on @pio, and
 * connects it to @chardev (borrowed; may be NULL for a UART that leads nowhere).
 */
FerrySerial *ferry_serial_new(const char *id, FerryBus *pio, uint16_t base, uint32_t gsi,
                              FerryMachine *machine, FerryChardev *chardev, GError **error);
FerryDevice *ferry_serial_device(FerrySerial *s);

/* Register access, exposed for unit tests (offset 0..7). */
void ferry_serial_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                         gboolean is_write);
/* Feeds bytes as if they came from the chardev; returns how many were taken. */
size_t ferry_serial_receive(FerrySerial *s, const uint8_t *data, size_t len);

/*
 * virtio-console with a single port (virtio 1.2 section 5.3), without
 * VIRTIO_CONSOLE_F_MULTIPORT: queue 0 is the port's receiveq (host -> guest), queue 1 its
 * transmitq (guest -> host).  The port leads to a FerryChardev (chardev.h).
 *
 * Features offered: VIRTIO_CONSOLE_F_SIZE (a fixed 80x25 console) and
 * VIRTIO_CONSOLE_F_EMERG_WRITE (a byte written to emerg_wr goes straight to the back end).
 */
#pragma once

#include "chardev.h"
#include "virtio/virtio.h"

#define FERRY_VIRTIO_CONSOLE_QUEUE_SIZE 128
#define FERRY_VIRTIO_CONSOLE_COLS       80
#define FERRY_VIRTIO_CONSOLE_ROWS       25

/*
 * Opens the back end described by @spec (ferry_chardev_new; the device owns it) and creates
 * the device model, to be handed to ferry_virtio_pci_new() (which takes ownership).  Host
 * input is read only once the transport has realized the device.  Must be called on the
 * main-loop thread; errors are those of ferry_chardev_new (a socket that cannot be bound, a
 * pseudo-terminal that cannot be created, ...).
 */
FerryVirtioDev *ferry_virtio_console_new(const FerryChardevSpec *spec, GError **error);

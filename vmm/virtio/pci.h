/*
 * The virtio 1.x modern PCI transport (virtio 1.2 section 4.1 "Virtio Over PCI Bus"),
 * shared by every virtio device model (virtio.h).
 *
 * Layout of a virtio function:
 *   BAR 0 (32-bit, 8 KiB)  MSI-X table at 0, PBA at 4 KiB (section 4.1.4.8 / PCI 3.0 6.8.2)
 *   BAR 2 (64-bit, 16 KiB) common configuration at 0 (4.1.4.3), ISR status at 4 KiB
 *                          (4.1.4.5), device configuration at 8 KiB (4.1.4.6), notification
 *                          at 12 KiB with one 4-byte slot per queue (4.1.4.4,
 *                          notify_off_multiplier 4)
 * MSI-X has 1 + nr_queues vectors.  Queue notifications are KVM ioeventfds read on the
 * device's I/O thread; interrupts are KVM irqfds.  Without MSI-X enabled the device raises
 * no interrupt (no INTx pin is declared): the ISR register still reports causes.
 */
#pragma once

#include "irq_routing.h"
#include "pci/pci.h"
#include "virtio/virtio.h"

typedef struct FerryVirtioPci FerryVirtioPci;

/*
 * Wraps @vdev (ownership passes in, also on error) in a PCI function named @id, starts its
 * I/O thread, calls its realize op and adds it to @host at @slot (or the next free slot).
 * @vm_fd is used for ioeventfds; @routing for MSI-X irqfds.
 */
FerryVirtioPci *ferry_virtio_pci_new(FerryVirtioDev *vdev, const char *id, FerryPciHost *host,
                                     int slot, FerryGuestMemory *mem, int vm_fd,
                                     FerryIrqRouting *routing, GError **error);

/* The generic device interface (device.h): reset, pause, resume, save, load, free. */
struct FerryDevice *ferry_virtio_pci_device(FerryVirtioPci *vp);

/* The virtio-pci function @dev is (from ferry_virtio_pci_device), or NULL for any other kind
 * of device.  Borrowed. */
FerryVirtioPci *ferry_virtio_pci_from_device(struct FerryDevice *dev);

/* The device model @vp wraps; borrowed, lives as long as @vp. */
FerryVirtioDev *ferry_virtio_pci_vdev(FerryVirtioPci *vp);

/* The PCI slot (device number on bus 0) @vp was added at. */
unsigned ferry_virtio_pci_slot(const FerryVirtioPci *vp);

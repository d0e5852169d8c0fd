/*
 * virtio-blk: a block device backed by a raw disk image (virtio 1.2 section 5.2 "Block
 * Device").
 *
 * One request queue of up to 256 entries.  Requests are carried out off the vCPU threads,
 * with io_uring on the device's I/O thread: reads and writes go straight between the image
 * and the guest's buffers, many at a time.  With VIRTIO_BLK_F_FLUSH negotiated the device
 * is writeback and FLUSH makes completed writes durable (fdatasync); without it every
 * write is durable before it completes (RWF_DSYNC), per section 5.2.6.2.  See
 * docs/devices.md, "virtio-blk".
 */
#pragma once

#include "virtio/virtio.h"
#include "vm_config.h"

#include <glib.h>

#define FERRY_VIRTIO_BLK_QUEUE_SIZE 256 /* entries of the request queue */

/*
 * Opens and locks the raw image @spec->path with ferry_blk_image_open() (blk_image.h: shared
 * lock for @spec->readonly, exclusive otherwise) and sets up the io_uring.  @spec is only
 * read here.
 *
 * Returns the device, ready for ferry_virtio_pci_new() (which takes ownership; it is
 * freed with its ops->free).  Errors are G_IO_ERROR with a message naming the image and
 * what to do: those of ferry_blk_image_open() (NOT_FOUND, NOT_REGULAR_FILE,
 * PERMISSION_DENIED, READ_ONLY, INVALID_DATA, BUSY, ...), or the system error of setting up
 * the io_uring and its eventfd (io_uring unavailable, ...).
 */
FerryVirtioDev *ferry_virtio_blk_new(const FerryDiskSpec *spec, GError **error);

/*
 * Migration hand-over of a shared image: the destination opens its disks with
 * ferry_virtio_blk_new_unlocked() (the source still holds the lock), the source calls
 * ferry_virtio_blk_unlock_image() once its devices are paused (flushes with fdatasync, then
 * drops the lock; errors name the image), and the destination ferry_virtio_blk_lock_image()
 * before the guest runs (errors as ferry_blk_image_lock(): BUSY if another process holds
 * it).  A failed migration re-locks on the source.  Main thread, device paused.
 */
FerryVirtioDev *ferry_virtio_blk_new_unlocked(const FerryDiskSpec *spec, GError **error);
gboolean ferry_virtio_blk_lock_image(FerryVirtioDev *dev, GError **error);
gboolean ferry_virtio_blk_unlock_image(FerryVirtioDev *dev, GError **error);

/* Capacity of the disk in 512-byte sectors (the configuration field, section 5.2.4). */
uint64_t ferry_virtio_blk_capacity(FerryVirtioDev *dev);

/*
 * Request counters of a virtio-blk device since it was created (not reset with the machine,
 * not saved with its state).  A request counts when its status is written back to the
 * driver (section 5.2.6); requests dropped by a device reset or completed while the device
 * is broken do not count.
 */
typedef struct {
    uint64_t read_requests;  /* VIRTIO_BLK_T_IN, any status */
    uint64_t write_requests; /* VIRTIO_BLK_T_OUT, any status */
    uint64_t flush_requests; /* VIRTIO_BLK_T_FLUSH, any status */
    uint64_t read_bytes;     /* data bytes of reads completed with VIRTIO_BLK_S_OK */
    uint64_t write_bytes;    /* data bytes of writes completed with VIRTIO_BLK_S_OK */
    uint64_t errors;         /* requests of any type completed with IOERR or UNSUPP */
} FerryVirtioBlkStats;

/* Copies the counters of @dev (a virtio-blk device); takes the device's lock. */
void ferry_virtio_blk_get_stats(FerryVirtioDev *dev, FerryVirtioBlkStats *stats);

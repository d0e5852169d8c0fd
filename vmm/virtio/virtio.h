/*
 * The interface between the virtio transport (virtio/pci.c, virtio 1.2 section 4.1
 * "Virtio Over PCI Bus") and the device models (blk.c, net.c, rng.c, console.c; section 5
 * "Device Types").  One file per device fills a FerryVirtioDeviceOps table, kvmtool style.
 *
 * Threading: every device has an I/O thread (util/iothread.h) and a lock, @dev->lock.  The
 * transport holds the lock while it calls any op below, whichever thread it is on (a vCPU
 * thread for register accesses, the I/O thread for queue notifications, the main thread for
 * pause/resume/save/load/reset).  Callbacks a device registers itself on its I/O thread
 * (I/O completions, TAP readable) must take @dev->lock before touching queues or state.
 * Device-specific state is only touched with the lock held.
 *
 * Guest memory: devices reach buffers through FerryVirtqElement iovecs (HVAs checked to lie
 * in guest RAM) and return them with ferry_virtq_push(), which marks the written bytes
 * dirty in the VMM-side bitmap (memory.h).  Any other write into guest RAM goes through
 * ferry_guest_memory_write().
 */
#pragma once

#include "memory.h"
#include "util/iothread.h"
#include "util/state.h"
#include "virtio/virtqueue.h"

#include <glib.h>
#include <stdint.h>

/* Device types (virtio 1.2 section 5, table "Device Types"). */
#define VIRTIO_ID_NET     1
#define VIRTIO_ID_BLOCK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG     4

/* Reserved feature bits (section 6) the transport handles. */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX     29
#define VIRTIO_F_VERSION_1     32

/* Device status bits (section 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE        1
#define VIRTIO_STATUS_DRIVER             2
#define VIRTIO_STATUS_DRIVER_OK          4
#define VIRTIO_STATUS_FEATURES_OK        8
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED             128

#define FERRY_VIRTIO_MAX_QUEUES 8

typedef struct FerryVirtioDev FerryVirtioDev;

typedef struct {
    /* State section key and default instance prefix ("virtio-blk"). */
    const char *kind;
    /* Device type, VIRTIO_ID_*; the PCI device ID is 0x1040 + type (section 4.1.2.1). */
    uint16_t device_id;
    /* PCI class code (base class << 16 | subclass << 8 | prog-if), e.g. 0x010000 storage. */
    uint32_t pci_class;
    /* Bump when the device's own save format changes; load() gets the saved version. */
    uint8_t state_version;

    /*
     * Device-specific feature bits offered (section 5.x.3), without the transport's
     * (VERSION_1, EVENT_IDX, INDIRECT_DESC).  Constant for the device's life.
     */
    uint64_t (*get_features)(FerryVirtioDev *dev);
    /*
     * Device configuration space (section 4.1.4.6): @len (1, 2, 4) bytes at @offset, which
     * the transport has checked lies below @config_size.  Little-endian.  write may be NULL
     * (read-only config).
     */
    void (*read_config)(FerryVirtioDev *dev, uint32_t offset, uint8_t *data, uint32_t len);
    void (*write_config)(FerryVirtioDev *dev, uint32_t offset, const uint8_t *data,
                         uint32_t len);
    /*
     * Called once when the transport has set @mem and @io (before the guest runs): attach
     * the device's own sources (io_uring eventfd, TAP fd) to the I/O thread's context; they
     * must not touch queues before activate().  May be NULL.
     */
    gboolean (*realize)(FerryVirtioDev *dev, GError **error);
    /*
     * The driver set DRIVER_OK: @dev->features holds the negotiated features and the
     * enabled queues are in @dev->vqs.  Start I/O (rx polling, ...).  Also called after
     * load() of a running device's state (paused or not).  On error the transport sets
     * DEVICE_NEEDS_RESET and logs the message.  May be NULL.
     */
    gboolean (*activate)(FerryVirtioDev *dev, GError **error);
    /*
     * The driver wrote status 0 (section 2.4), or the machine resets: stop I/O, finish or
     * cancel what is in flight without touching guest memory afterwards, and return to
     * the state after creation.  The transport then resets the queues.
     */
    void (*reset)(FerryVirtioDev *dev);
    /*
     * Queue @index has new available buffers (the driver notified, or the transport
     * resumed).  Called on the I/O thread, only while DRIVER_OK is set and not paused.
     */
    void (*queue_notify)(FerryVirtioDev *dev, unsigned index);
    /*
     * Stop touching guest memory and raising interrupts (wait for requests in flight) /
     * start again.  After pause() returns, state is stable for save().  May be NULL.
     */
    void (*pause)(FerryVirtioDev *dev);
    void (*resume)(FerryVirtioDev *dev);
    /*
     * Device-specific state (the transport saves its own and the queues').  load() gets
     * the version save() wrote; on error the device is unchanged.  May be NULL when the
     * device has no state beyond its queues.
     */
    void (*save)(FerryVirtioDev *dev, FerryStateWriter *w);
    gboolean (*load)(FerryVirtioDev *dev, uint8_t version, FerryStateReader *r,
                     GError **error);
    /* Releases the device's own resources and the struct that embeds FerryVirtioDev. */
    void (*free)(FerryVirtioDev *dev);
} FerryVirtioDeviceOps;

/*
 * Embedded as the first member of every virtio device model.  The device fills @ops,
 * @nr_queues, @queue_max_size and @config_size before handing itself to the transport
 * (ferry_virtio_pci_new); the transport fills the rest.
 */
struct FerryVirtioDev {
    const FerryVirtioDeviceOps *ops;
    char *id;                     /* instance name ("disk0"), owned by the transport */
    unsigned nr_queues;           /* 1..FERRY_VIRTIO_MAX_QUEUES */
    uint16_t queue_max_size[FERRY_VIRTIO_MAX_QUEUES]; /* entries, power of 2 */
    uint32_t config_size;         /* bytes of device configuration space */

    /* Set by the transport. */
    FerryGuestMemory *mem;        /* borrowed */
    FerryIoThread *io;            /* the device's I/O thread, owned by the transport */
    GMutex lock;
    uint64_t features;            /* negotiated: driver's choice & offered; valid at activate */
    FerryVirtqueue vqs[FERRY_VIRTIO_MAX_QUEUES];
    gboolean paused;              /* between pause and resume */
    void *transport;              /* FerryVirtioPci *, opaque to devices */
};

/* TRUE if feature bit @bit was negotiated. */
static inline gboolean ferry_virtio_has_feature(const FerryVirtioDev *dev, unsigned bit)
{
    return (dev->features >> bit) & 1;
}

/*
 * After ferry_virtq_push()es on queue @index: interrupts the driver if the queue asks for
 * it (ferry_virtq_should_notify) through the queue's MSI-X vector.  Lock held.
 */
void ferry_virtio_notify_queue(FerryVirtioDev *dev, unsigned index);

/* Tells the driver the device configuration changed (section 4.1.4.3). Lock held. */
void ferry_virtio_notify_config(FerryVirtioDev *dev);

/*
 * The driver broke the device (a misprogrammed queue, a request the device cannot parse
 * per the spec's MUST rules): logs @why with the device's id, stops the device's I/O
 * (ops->reset is not called; the device must not use its queues afterwards) and sets
 * DEVICE_NEEDS_RESET with a configuration interrupt (section 2.1.2).  Lock held.
 */
void ferry_virtio_set_broken(FerryVirtioDev *dev, const char *why);

/* TRUE once set_broken() was called, until the driver resets the device. */
gboolean ferry_virtio_is_broken(const FerryVirtioDev *dev);

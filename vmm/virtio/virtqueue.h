/*
 * Split virtqueues, device side (virtio 1.2, section 2.7 "Split Virtqueues").
 *
 * The driver (guest) owns the rings; everything read from them is untrusted.  Descriptors
 * are copied out of guest memory once and validated before use, so a guest that
 * misprograms a queue — indexes out of range, loops in descriptor chains, nested or
 * malformed indirect tables (2.7.5.3), buffers outside guest RAM, writable descriptors
 * before readable ones — gets the queue marked broken with a message, never a VMM crash or
 * a host access outside guest RAM.  The transport then sets DEVICE_NEEDS_RESET (2.1.1).
 *
 * Every write the device makes into guest memory through a queue is marked in guest
 * memory's VMM-side dirty bitmap: the used ring by ferry_virtq_push(), and the
 * device-writable buffers up to the length the device reports there.
 *
 * Threading: one thread at a time per queue (the device's I/O thread, or the vCPU thread
 * that handles its notification).
 */
#pragma once

#include "memory.h"
#include "util/state.h"

#include <glib.h>
#include <stdint.h>
#include <sys/uio.h>

#define FERRY_VIRTQ_MAX_SIZE 32768 /* section 2.7: Queue Size <= 32768, a power of 2 */
#define FERRY_VIRTQ_MAX_SEGS 1024  /* iovec entries per element (a chain, or a split buffer) */

#define FERRY_VIRTQ_ERROR (ferry_virtq_error_quark())
GQuark ferry_virtq_error_quark(void);

typedef enum {
    FERRY_VIRTQ_ERROR_BROKEN, /* the driver misprogrammed the queue */
} FerryVirtqError;

typedef struct {
    FerryGuestMemory *mem; /* borrowed */
    uint16_t size;         /* entries; 0 = not configured */
    uint64_t desc_gpa, avail_gpa, used_gpa;
    gboolean enabled;      /* ready, addresses checked */
    gboolean event_idx;    /* VIRTIO_F_EVENT_IDX negotiated */
    gboolean broken;
    uint16_t last_avail;   /* next available-ring entry to take */
    uint16_t used_idx;     /* our copy of used->idx */
    uint16_t signalled_used; /* used_idx at the last notification (event_idx) */
    gboolean signalled_valid;
    /* HVAs of the rings, checked by enable() */
    uint8_t *desc, *avail, *used;
} FerryVirtqueue;

/* One buffer taken from the queue: readable segments first, then writable ones. */
typedef struct {
    uint16_t head;           /* descriptor index to return with push() */
    unsigned nr_out;         /* readable (driver -> device) segments */
    unsigned nr_in;          /* writable (device -> driver) segments */
    uint64_t out_bytes, in_bytes;
    struct iovec iov[FERRY_VIRTQ_MAX_SEGS]; /* out segments, then in segments (HVAs) */
    uint64_t gpa[FERRY_VIRTQ_MAX_SEGS];     /* guest address of each segment */
} FerryVirtqElement;

/* Puts @vq in the reset state (size 0, not enabled) for guest memory @mem. */
void ferry_virtq_init(FerryVirtqueue *vq, FerryGuestMemory *mem);
void ferry_virtq_reset(FerryVirtqueue *vq);

/*
 * Enables the queue with the ring addresses the driver wrote: checks that @size is a power
 * of 2 up to FERRY_VIRTQ_MAX_SIZE, that the rings are aligned (desc 16, avail 2, used 4:
 * section 2.7) and lie wholly in guest RAM.  On error the queue stays disabled.
 */
gboolean ferry_virtq_enable(FerryVirtqueue *vq, uint16_t size, uint64_t desc_gpa,
                            uint64_t avail_gpa, uint64_t used_gpa, gboolean event_idx,
                            GError **error);

/*
 * Takes the next available buffer into @elem.  Returns 1 with an element, 0 when the queue
 * is empty (or disabled), -1 when the driver broke the queue (@error says how; the queue
 * stays broken until reset).
 */
int ferry_virtq_pop(FerryVirtqueue *vq, FerryVirtqElement *elem, GError **error);

/*
 * Copies between a flat buffer and the segments @iov[0..@n) of an element, starting
 * @offset bytes into the segments; return the bytes copied (less than @len when the
 * segments end first).  Writes into guest buffers are marked dirty by ferry_virtq_push().
 */
size_t ferry_iov_from_buf(const struct iovec *iov, unsigned n, size_t offset, const void *buf,
                          size_t len);
size_t ferry_iov_to_buf(const struct iovec *iov, unsigned n, size_t offset, void *buf,
                        size_t len);

/*
 * Gives the last @n popped, unused elements back to the available ring (a device that
 * found no room for them, or pauses holding one): the next pop returns them again.  Only
 * advancing last_avail (and avail_event, which stays ahead and so still asks for the
 * notification the device wants) was visible, so the driver cannot tell.
 */
void ferry_virtq_unpop(FerryVirtqueue *vq, unsigned n);

/*
 * Returns @elem to the driver through the used ring, @written bytes of its writable
 * segments having been filled (they are marked dirty).  Elements are pushed in any order.
 */
void ferry_virtq_push(FerryVirtqueue *vq, const FerryVirtqElement *elem, uint32_t written);

/*
 * After one or more push()es: whether the driver wants a used-buffer notification
 * (2.7.7: used_event with VIRTIO_F_EVENT_IDX, else the avail ring's NO_INTERRUPT flag).
 */
gboolean ferry_virtq_should_notify(FerryVirtqueue *vq);

/*
 * Device-side state of the queue for save/load, as a part of its device's state blob (the
 * rings themselves are guest memory).  load() re-checks everything as enable() does.
 */
void ferry_virtq_save(const FerryVirtqueue *vq, FerryStateWriter *w);
gboolean ferry_virtq_load(FerryVirtqueue *vq, FerryStateReader *r, GError **error);

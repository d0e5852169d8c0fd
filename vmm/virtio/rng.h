/*
 * virtio-rng, the entropy device (virtio 1.2 section 5.4): one request queue whose
 * device-writable buffers the device fills with bytes from the host's getrandom(2).
 * No feature bits, no configuration space.
 */
#pragma once

#include "virtio/virtio.h"

/* Queue size offered for the request queue (section 5.4.2: requestq). */
#define FERRY_VIRTIO_RNG_QUEUE_SIZE 64
/* At most this many bytes are returned per buffer; the driver sees a shorter length. */
#define FERRY_VIRTIO_RNG_MAX_REQUEST (64 * 1024)

/*
 * Creates the device model, to be handed to ferry_virtio_pci_new() (which takes ownership).
 * Cannot fail today; @error is for symmetry with the other constructors.
 */
FerryVirtioDev *ferry_virtio_rng_new(GError **error);

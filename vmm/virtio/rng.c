/*
 * virtio-rng (virtio 1.2 section 5.4 "Entropy Device").
 *
 * Every buffer the driver makes available on the request queue is filled, up to
 * FERRY_VIRTIO_RNG_MAX_REQUEST bytes, from getrandom(2) and returned at once with the number
 * of bytes written (5.4.6.2: the device MAY use less than the whole buffer).  The requests
 * are served on the device's I/O thread with @vdev.lock held (virtio.h); the device has no
 * state beyond its queue, so pause, resume, save and load have nothing to do.
 */
#include "virtio/rng.h"

#include "util/log.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

typedef struct {
    FerryVirtioDev vdev;     /* first: the transport passes &vdev */
    FerryVirtqElement *elem; /* scratch for queue_notify */
    gboolean warned;         /* getrandom failure reported once */
} FerryVirtioRng;

static uint64_t rng_get_features(FerryVirtioDev *dev)
{
    return 0; /* section 5.4.3: none defined */
}

static void rng_read_config(FerryVirtioDev *dev, uint32_t offset, uint8_t *data, uint32_t len)
{
    /* config_size is 0 (section 5.4.4), so the transport never forwards a read. */
    memset(data, 0, len);
}

/*
 * Fills @len bytes at @buf from the host's entropy source, retrying interrupted and short
 * calls.  Returns the bytes obtained (@len unless getrandom fails outright).
 */
static size_t fill_random(FerryVirtioRng *rng, uint8_t *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom(buf + done, len - done, 0);
        if (n > 0) {
            done += (size_t) n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            if (!rng->warned)
                ferry_log("%s: getrandom failed: %s", rng->vdev.id,
                          n < 0 ? g_strerror(errno) : "no bytes returned");
            rng->warned = TRUE;
            break;
        }
    }
    return done;
}

/* Fills the writable segments of @elem; returns the bytes written. */
static uint32_t fill_element(FerryVirtioRng *rng, const FerryVirtqElement *elem)
{
    size_t budget = FERRY_VIRTIO_RNG_MAX_REQUEST, written = 0;
    for (unsigned i = elem->nr_out; i < elem->nr_out + elem->nr_in && budget; i++) {
        size_t want = MIN(elem->iov[i].iov_len, budget);
        size_t got = fill_random(rng, elem->iov[i].iov_base, want);
        written += got;
        budget -= got;
        if (got < want)
            break;
    }
    return (uint32_t) written;
}

static void rng_queue_notify(FerryVirtioDev *dev, unsigned index)
{
    FerryVirtioRng *rng = (FerryVirtioRng *) dev;
    FerryVirtqueue *vq = &dev->vqs[0];
    gboolean pushed = FALSE;

    if (index != 0 || ferry_virtio_is_broken(dev))
        return;
    for (;;) {
        g_autoptr(GError) error = NULL;
        int r = ferry_virtq_pop(vq, rng->elem, &error);
        if (r == 0)
            break;
        if (r < 0) {
            ferry_virtio_set_broken(dev, error->message);
            break;
        }
        if (rng->elem->nr_out > 0) {
            /* 5.4.6.1: the driver MUST NOT place driver-readable buffers into the queue. */
            ferry_virtio_set_broken(dev, "a request has device-readable buffers");
            break;
        }
        ferry_virtq_push(vq, rng->elem, fill_element(rng, rng->elem));
        pushed = TRUE;
    }
    if (pushed)
        ferry_virtio_notify_queue(dev, 0);
}

static void rng_reset(FerryVirtioDev *dev)
{
    /*
     * Requests are completed inside queue_notify, so nothing is ever in flight and the
     * device has no state of its own to return to; the transport resets the queue.
     */
}

static void rng_free(FerryVirtioDev *dev)
{
    FerryVirtioRng *rng = (FerryVirtioRng *) dev;
    g_free(rng->elem);
    g_free(rng);
}

static const FerryVirtioDeviceOps rng_ops = {
    .kind = "virtio-rng",
    .device_id = VIRTIO_ID_RNG,
    .pci_class = 0xff0000, /* PCI base class 0xff: device does not fit a defined class */
    .state_version = 1,
    .get_features = rng_get_features,
    .read_config = rng_read_config,
    .reset = rng_reset,
    .queue_notify = rng_queue_notify,
    .free = rng_free,
};

FerryVirtioDev *ferry_virtio_rng_new(GError **error)
{
    FerryVirtioRng *rng = g_new0(FerryVirtioRng, 1);
    rng->vdev.ops = &rng_ops;
    rng->vdev.nr_queues = 1;
    rng->vdev.queue_max_size[0] = FERRY_VIRTIO_RNG_QUEUE_SIZE;
    rng->vdev.config_size = 0;
    rng->elem = g_new0(FerryVirtqElement, 1);
    return &rng->vdev;
}

/*
 * virtio-console, one port, no VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.2 section 5.3).
 *
 * Guest output: buffers on the transmitq (queue 1) are written to the chardev on the I/O
 * thread and returned at once (5.3.6: transmitq buffers are device-readable).
 *
 * Host input: the chardev asks room() and calls receive() on the main-loop thread.  room()
 * pops one receiveq buffer (queue 0) and holds it, answering with its size; receive() copies
 * the bytes in, returns the buffer and interrupts the driver.  Bytes that cannot be placed
 * at once (the device was reset or paused between room() and receive()) wait in @pending and
 * go first into the next buffers, so no input is dropped.  When room() found no buffer it
 * answers 0, the chardev stops reading, and the device calls ferry_chardev_accept_input()
 * once the driver posts buffers again (queue_notify on queue 0), after DRIVER_OK and after a
 * resume.
 *
 * Locking (virtio.h): the transport calls the ops with @vdev.lock held; the chardev
 * callbacks take it themselves.  Everything below the struct is touched only under it.
 */
#include "virtio/console.h"

#include <string.h>

/* Feature bits (section 5.3.3). */
#define VIRTIO_CONSOLE_F_SIZE        0
#define VIRTIO_CONSOLE_F_MULTIPORT   1
#define VIRTIO_CONSOLE_F_EMERG_WRITE 2

/* struct virtio_console_config (section 5.3.4): cols, rows, max_nr_ports, emerg_wr. */
#define CONSOLE_CONFIG_SIZE  12
#define CONSOLE_CFG_EMERG_WR 8

#define RXQ 0 /* receiveq(port0) */
#define TXQ 1 /* transmitq(port0) */

/* Bytes offered per receive buffer, and the most host input kept back (save/load bound). */
#define CONSOLE_MAX_INPUT (64 * 1024)

typedef struct {
    FerryVirtioDev vdev;        /* first: the transport passes &vdev */
    FerryChardev *chardev;      /* owned */
    FerryVirtqElement *tx_elem; /* scratch for the transmitq */
    FerryVirtqElement *rx_elem; /* the receive buffer held while rx_held */
    gboolean rx_held;           /* rx_elem was popped and is not pushed yet */
    gboolean active;            /* DRIVER_OK seen (activate) and no reset since */
    gboolean throttled;         /* room() answered 0; accept_input is owed */
    GByteArray *pending;        /* host input taken from the chardev, not yet in guest RAM */
} FerryVirtioConsole;

static uint64_t console_get_features(FerryVirtioDev *dev)
{
    return (1ULL << VIRTIO_CONSOLE_F_SIZE) | (1ULL << VIRTIO_CONSOLE_F_EMERG_WRITE);
}

static void console_read_config(FerryVirtioDev *dev, uint32_t offset, uint8_t *data, uint32_t len)
{
    uint8_t cfg[CONSOLE_CONFIG_SIZE] = {0};
    cfg[0] = FERRY_VIRTIO_CONSOLE_COLS; /* le16 cols */
    cfg[2] = FERRY_VIRTIO_CONSOLE_ROWS; /* le16 rows */
    cfg[4] = 1;                         /* le32 max_nr_ports (only read with MULTIPORT) */
    /* le32 emerg_wr reads as 0 */
    memcpy(data, cfg + offset, len);
}

static void console_write_config(FerryVirtioDev *dev, uint32_t offset, const uint8_t *data,
                                 uint32_t len)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    /* 5.3.4: a write to emerg_wr outputs its low byte before the queues are set up. */
    if (offset == CONSOLE_CFG_EMERG_WR)
        ferry_chardev_write(c->chardev, data, 1);
}

/* Input can reach guest memory now. */
static gboolean rx_usable(FerryVirtioConsole *c)
{
    return c->active && !c->vdev.paused && !ferry_virtio_is_broken(&c->vdev) &&
           c->vdev.vqs[RXQ].enabled;
}

/* Holds a receive buffer with room for at least one byte; FALSE if the driver posted none. */
static gboolean take_rx(FerryVirtioConsole *c)
{
    FerryVirtqueue *vq = &c->vdev.vqs[RXQ];
    while (!c->rx_held) {
        g_autoptr(GError) error = NULL;
        int r = ferry_virtq_pop(vq, c->rx_elem, &error);
        if (r == 0)
            return FALSE;
        if (r < 0) {
            ferry_virtio_set_broken(&c->vdev, error->message);
            return FALSE;
        }
        if (c->rx_elem->nr_out > 0) {
            /* 5.3.6: receiveq buffers are device-writable. */
            ferry_virtio_set_broken(&c->vdev, "a receiveq buffer has device-readable parts");
            return FALSE;
        }
        if (c->rx_elem->in_bytes == 0) {
            ferry_virtq_push(vq, c->rx_elem, 0); /* nothing fits; hand it back */
            ferry_virtio_notify_queue(&c->vdev, RXQ);
            continue;
        }
        c->rx_held = TRUE;
    }
    return TRUE;
}

/* Copies up to @len bytes into the held buffer and returns it; returns the bytes copied. */
static size_t deliver(FerryVirtioConsole *c, const uint8_t *data, size_t len)
{
    FerryVirtqElement *e = c->rx_elem;
    size_t done = ferry_iov_from_buf(e->iov + e->nr_out, e->nr_in, 0, data, len);
    ferry_virtq_push(&c->vdev.vqs[RXQ], e, (uint32_t) done);
    c->rx_held = FALSE;
    ferry_virtio_notify_queue(&c->vdev, RXQ);
    return done;
}

/* Moves kept-back input into receive buffers as far as the driver posted them. */
static void flush_pending(FerryVirtioConsole *c)
{
    while (c->pending->len > 0 && rx_usable(c) && take_rx(c)) {
        size_t n = deliver(c, c->pending->data, c->pending->len);
        g_byte_array_remove_range(c->pending, 0, (guint) n);
    }
}

/* Tells the chardev to read again if it was told there was no room. */
static void unthrottle(FerryVirtioConsole *c)
{
    if (c->throttled && c->pending->len == 0) {
        c->throttled = FALSE;
        ferry_chardev_accept_input(c->chardev);
    }
}

/* FerryChardevFrontend.room, main-loop thread. */
static size_t console_room(void *opaque)
{
    FerryVirtioConsole *c = opaque;
    size_t room = 0;

    g_mutex_lock(&c->vdev.lock);
    if (rx_usable(c)) {
        flush_pending(c);
        if (c->pending->len == 0 && take_rx(c))
            room = MIN(c->rx_elem->in_bytes, CONSOLE_MAX_INPUT);
    }
    if (room == 0)
        c->throttled = TRUE;
    g_mutex_unlock(&c->vdev.lock);
    return room;
}

/* FerryChardevFrontend.receive, main-loop thread: at most what room() answered. */
static void console_receive(void *opaque, const uint8_t *data, size_t len)
{
    FerryVirtioConsole *c = opaque;

    g_mutex_lock(&c->vdev.lock);
    g_byte_array_append(c->pending, data, (guint) len);
    flush_pending(c);
    g_mutex_unlock(&c->vdev.lock);
}

static const FerryChardevFrontend console_frontend = {
    .room = console_room,
    .receive = console_receive,
};

/* Writes every transmitq buffer to the chardev and returns it (written length 0). */
static void drain_tx(FerryVirtioConsole *c)
{
    FerryVirtqueue *vq = &c->vdev.vqs[TXQ];
    FerryVirtqElement *e = c->tx_elem;
    gboolean pushed = FALSE;

    for (;;) {
        g_autoptr(GError) error = NULL;
        int r = ferry_virtq_pop(vq, e, &error);
        if (r == 0)
            break;
        if (r < 0) {
            ferry_virtio_set_broken(&c->vdev, error->message);
            break;
        }
        /* Device-writable parts of a transmit buffer are ignored (nothing is written). */
        for (unsigned i = 0; i < e->nr_out; i++)
            ferry_chardev_write(c->chardev, e->iov[i].iov_base, e->iov[i].iov_len);
        ferry_virtq_push(vq, e, 0);
        pushed = TRUE;
    }
    if (pushed)
        ferry_virtio_notify_queue(&c->vdev, TXQ);
}

static void console_queue_notify(FerryVirtioDev *dev, unsigned index)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;

    if (ferry_virtio_is_broken(dev))
        return;
    if (index == TXQ) {
        drain_tx(c);
    } else if (index == RXQ) {
        flush_pending(c);
        unthrottle(c);
    }
}

static gboolean console_realize(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    ferry_chardev_set_frontend(c->chardev, &console_frontend, c);
    return TRUE;
}

static gboolean console_activate(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    c->active = TRUE;
    flush_pending(c);
    unthrottle(c);
    return TRUE;
}

static void console_reset(FerryVirtioDev *dev)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    /*
     * A held receive buffer was not written; after the reset the driver owns all its
     * buffers again, so it is simply forgotten.  Input kept back stays for the next driver.
     */
    c->rx_held = FALSE;
    c->active = FALSE;
}

static void console_pause(FerryVirtioDev *dev)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    /*
     * Put a held receive buffer back on the queue without touching guest memory: it was
     * the last one popped (no other receive buffer is taken while one is held), so moving
     * last_avail back by one makes the next pop, here or after a migration, return it again.
     */
    if (c->rx_held) {
        ferry_virtq_unpop(&c->vdev.vqs[RXQ], 1);
        c->rx_held = FALSE;
    }
}

static void console_resume(FerryVirtioDev *dev)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    if (c->active)
        unthrottle(c);
}

/* State version 1: u8 active, u32 pending length, the pending bytes. */
static void console_save(FerryVirtioDev *dev, FerryStateWriter *w)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    ferry_state_put_u8(w, c->active ? 1 : 0);
    ferry_state_put_u32(w, c->pending->len);
    ferry_state_put_bytes(w, c->pending->data, c->pending->len);
}

static gboolean console_load(FerryVirtioDev *dev, uint8_t version, FerryStateReader *r,
                             GError **error)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    uint8_t active;
    uint32_t len;

    if (!ferry_state_get_u8(r, &active, error) || !ferry_state_get_u32(r, &len, error))
        return FALSE;
    if (active > 1 || len > CONSOLE_MAX_INPUT) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: virtio-console state has active=%u and %u pending input bytes "
                    "(at most %u)",
                    r->what, active, len, CONSOLE_MAX_INPUT);
        return FALSE;
    }
    g_autofree uint8_t *bytes = g_malloc(len ? len : 1);
    if (!ferry_state_get_bytes(r, bytes, len, error))
        return FALSE;
    g_byte_array_set_size(c->pending, 0);
    g_byte_array_append(c->pending, bytes, len);
    c->active = active;
    c->rx_held = FALSE; /* the queue state comes from the stream */
    return TRUE;
}

static void console_free(FerryVirtioDev *dev)
{
    FerryVirtioConsole *c = (FerryVirtioConsole *) dev;
    ferry_chardev_free(c->chardev);
    g_byte_array_unref(c->pending);
    g_free(c->tx_elem);
    g_free(c->rx_elem);
    g_free(c);
}

static const FerryVirtioDeviceOps console_ops = {
    .kind = "virtio-console",
    .device_id = VIRTIO_ID_CONSOLE,
    .pci_class = 0x078000, /* simple communication controller, other */
    .state_version = 1,
    .get_features = console_get_features,
    .read_config = console_read_config,
    .write_config = console_write_config,
    .realize = console_realize,
    .activate = console_activate,
    .reset = console_reset,
    .queue_notify = console_queue_notify,
    .pause = console_pause,
    .resume = console_resume,
    .save = console_save,
    .load = console_load,
    .free = console_free,
};

FerryVirtioDev *ferry_virtio_console_new(const FerryChardevSpec *spec, GError **error)
{
    FerryChardev *cd = ferry_chardev_new(spec, error);
    if (!cd)
        return NULL;
    FerryVirtioConsole *c = g_new0(FerryVirtioConsole, 1);
    c->vdev.ops = &console_ops;
    c->vdev.nr_queues = 2;
    c->vdev.queue_max_size[RXQ] = FERRY_VIRTIO_CONSOLE_QUEUE_SIZE;
    c->vdev.queue_max_size[TXQ] = FERRY_VIRTIO_CONSOLE_QUEUE_SIZE;
    c->vdev.config_size = CONSOLE_CONFIG_SIZE;
    c->chardev = cd;
    c->tx_elem = g_new0(FerryVirtqElement, 1);
    c->rx_elem = g_new0(FerryVirtqElement, 1);
    c->pending = g_byte_array_new();
    return &c->vdev;
}

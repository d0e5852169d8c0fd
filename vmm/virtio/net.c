/*
 * virtio-net (virtio 1.2 section 5.1 "Network Device") on a TAP interface.
 *
 * Transmit (5.1.6.2): a notification of the transmitq runs tx_work() on the I/O thread: each
 * available buffer (header + frame, as the driver laid them out) is written to the TAP with
 * one writev() and returned with length 0.  A short or failed write drops the frame (it is
 * counted), so the queue never stalls on the host.
 *
 * Receive (5.1.6.3/5.1.6.4): while activated and not paused the device watches the TAP for
 * input on its I/O thread.  Without VIRTIO_NET_F_MRG_RXBUF a frame is read straight into
 * one buffer's writable segments (through a bounce buffer when the buffer may be too small
 * for the largest frame).  With it, the frame is read into a bounce buffer and spread over
 * as many buffers as needed, the first header's num_buffers saying how many.  When the
 * driver has no receive buffers the device stops watching the TAP (frames wait in the TAP's
 * queue, or one in the bounce buffer) until the driver notifies the receiveq.
 *
 * Every wakeup handles at most NET_BUDGET frames per direction and signals each queue once
 * per batch, so that transmit and receive both progress under load.
 *
 * Announce (ferry_virtio_net_announce): after a migration the host side of the TAP sends
 * RARP frames in the guest's name on the I/O thread, so that switches learn its new port.
 *
 * Locking: the transport calls the ops with @vdev.lock held; the device's own sources (TAP
 * readable, the deferred-work source) take it themselves.  Sources are attached to and
 * destroyed on the I/O thread's context from any thread (both thread-safe in GLib); a
 * callback that finds its source is no longer the current one does nothing.
 */
#include "virtio/net.h"

#include "net/tap.h"
#include "util/log.h"

#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <unistd.h>

#define NET_STATE_VERSION 1
#define NET_BUDGET        256 /* frames per direction per wakeup */
#define NET_HDR_LEN       FERRY_TAP_VNET_HDR_LEN
#define ETH_OVERHEAD      18 /* Ethernet header and one VLAN tag, beyond the MTU */
#define GSO_MAX_FRAME     (65536 + ETH_OVERHEAD)
/* Larger than any frame the TAP gives, so a full bounce buffer means "truncated". */
#define BOUNCE_SIZE (NET_HDR_LEN + GSO_MAX_FRAME + 64)

/* Announce: ANNOUNCE_ROUNDS frames, the first ANNOUNCE_FIRST_MS after the call, each gap
 * ANNOUNCE_STEP_MS longer than the one before (gaps of 50, 150, 250, 350, 450 ms). */
#define ANNOUNCE_ROUNDS   5
#define ANNOUNCE_FIRST_MS 50
#define ANNOUNCE_STEP_MS  100

G_STATIC_ASSERT(FERRY_VIRTIO_NET_QUEUE_SIZE <= FERRY_VIRTQ_MAX_SIZE);

enum { RXQ = 0, TXQ = 1 };

/* One receive buffer held while a merged frame is spread (MRG_RXBUF). */
typedef struct {
    uint16_t head;
    unsigned first; /* index of its first segment in rx_iov/rx_gpa */
    unsigned nr;    /* writable segments */
    uint64_t bytes; /* their total length */
} RxBuf;

typedef struct {
    FerryVirtioDev vdev; /* first: the transport passes &vdev */
    FerryTap *tap;
    uint8_t mac[6];
    uint16_t status;        /* VIRTIO_NET_S_* */
    gboolean has_mtu;       /* mtu= given: VIRTIO_NET_F_MTU offered */
    uint16_t mtu;           /* bytes, the TAP's */
    uint64_t host_features; /* offered (5.1.3) */

    gboolean active;   /* between activate and reset (or a broken queue) */
    GMainContext *ctx; /* the I/O thread's, borrowed */
    GSource *rx_src;   /* TAP readable watch; NULL when not watching */
    GSource *kick_src; /* deferred work (tx over budget, resume); NULL when none */
    gboolean kick_tx, kick_rx;

    FerryVirtqElement *elem; /* scratch */
    uint8_t *bounce;         /* BOUNCE_SIZE bytes */
    size_t pending;          /* bytes of a frame waiting in @bounce for rx buffers; 0 none */
    RxBuf rx_bufs[FERRY_VIRTIO_NET_QUEUE_SIZE];
    GArray *rx_iov; /* struct iovec of the held rx_bufs */
    GArray *rx_gpa; /* uint64_t, parallel to rx_iov */

    GSource *announce_src;  /* the next announce frame's timer; NULL when none */
    unsigned announce_sent; /* frames of the current announce sent so far */

    FerryVirtioNetStats stats;
    gboolean warned_rx, warned_tx; /* an unexpected TAP error was logged */
} FerryVirtioNet;

/* ---- helpers -------------------------------------------------------------------------- */

static gboolean running(FerryVirtioNet *net)
{
    return net->active && !net->vdev.paused && !ferry_virtio_is_broken(&net->vdev);
}

static void stop_io(FerryVirtioNet *net);

/* A queue was misprogrammed: report it and stop all I/O (virtio.h, set_broken). */
static void broken(FerryVirtioNet *net, GError *error)
{
    ferry_virtio_set_broken(&net->vdev, error->message);
    stop_io(net);
    net->active = FALSE;
}

/* ---- sources on the I/O thread ------------------------------------------------------- */

static gboolean rx_ready(int fd, GIOCondition cond, gpointer data);
static gboolean kick_ready(gpointer data);

static void rx_watch(FerryVirtioNet *net, gboolean on)
{
    if (on && !net->rx_src) {
        net->rx_src = g_unix_fd_source_new(net->tap->fd, G_IO_IN);
        g_source_set_callback(net->rx_src, G_SOURCE_FUNC(rx_ready), net, NULL);
        g_source_attach(net->rx_src, net->ctx);
    } else if (!on && net->rx_src) {
        g_source_destroy(net->rx_src);
        g_clear_pointer(&net->rx_src, g_source_unref);
    }
}

/* Runs tx and/or rx work on the I/O thread soon (after other ready sources). */
static void kick(FerryVirtioNet *net, gboolean tx, gboolean rx)
{
    net->kick_tx |= tx;
    net->kick_rx |= rx;
    if (!net->kick_src) {
        net->kick_src = g_idle_source_new();
        g_source_set_priority(net->kick_src, G_PRIORITY_DEFAULT);
        g_source_set_callback(net->kick_src, kick_ready, net, NULL);
        g_source_attach(net->kick_src, net->ctx);
    }
}

static void stop_io(FerryVirtioNet *net)
{
    rx_watch(net, FALSE);
    if (net->kick_src) {
        g_source_destroy(net->kick_src);
        g_clear_pointer(&net->kick_src, g_source_unref);
    }
}

/* ---- transmit ------------------------------------------------------------------------- */

/* Sends up to NET_BUDGET frames; more are left for a kick. Lock held. */
static void tx_work(FerryVirtioNet *net)
{
    FerryVirtqueue *vq = &net->vdev.vqs[TXQ];
    FerryVirtqElement *elem = net->elem;
    unsigned done = 0;

    while (running(net)) {
        if (done == NET_BUDGET) {
            kick(net, TRUE, FALSE);
            break;
        }
        g_autoptr(GError) error = NULL;
        int r = ferry_virtq_pop(vq, elem, &error);
        if (r < 0) {
            broken(net, error);
            break;
        }
        if (r == 0)
            break;
        /* 5.1.6.2: header then packet, device-readable; writable segments are ignored. */
        ssize_t n = -1;
        if (elem->out_bytes >= NET_HDR_LEN) {
            do {
                n = writev(net->tap->fd, elem->iov, (int) elem->nr_out);
            } while (n < 0 && errno == EINTR);
        }
        if (n >= 0 && (uint64_t) n == elem->out_bytes) {
            net->stats.tx_frames++;
        } else {
            net->stats.tx_dropped++;
            if (n < 0 && errno != EAGAIN && elem->out_bytes >= NET_HDR_LEN && !net->warned_tx) {
                ferry_log("%s: writing to TAP %s failed: %s (frames are dropped)", net->vdev.id,
                          net->tap->name, g_strerror(errno));
                net->warned_tx = TRUE;
            }
        }
        ferry_virtq_push(vq, elem, 0);
        done++;
    }
    if (done)
        ferry_virtio_notify_queue(&net->vdev, TXQ);
}

/* ---- receive -------------------------------------------------------------------------- */

typedef enum {
    RX_DELIVERED, /* a frame went to the driver */
    RX_DROPPED,   /* a frame was read and dropped */
    RX_TAP_EMPTY, /* nothing to read */
    RX_NO_BUFS,   /* the driver has no (or too few) buffers: stop watching the TAP */
    RX_TAP_ERROR, /* reading failed (logged): stop watching the TAP rather than spin */
    RX_BROKEN,    /* the queue is broken */
} RxResult;

/* Reads one frame into @iov; returns its length, 0 when the TAP is empty, -1 on error. */
static ssize_t tap_read(FerryVirtioNet *net, const struct iovec *iov, int cnt)
{
    for (;;) {
        ssize_t n = readv(net->tap->fd, iov, cnt);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        if (!net->warned_rx) {
            ferry_log("%s: reading from TAP %s failed: %s", net->vdev.id, net->tap->name,
                      g_strerror(errno));
            net->warned_rx = TRUE;
        }
        return -1;
    }
}

/*
 * Fixes up the header of a received frame in the driver's buffer (5.1.6.4.1): num_buffers,
 * and flags cleared unless VIRTIO_NET_F_GUEST_CSUM was negotiated.
 */
static void fix_rx_header(FerryVirtioNet *net, const struct iovec *iov, unsigned cnt,
                          uint16_t num_buffers)
{
    uint16_t le = GUINT16_TO_LE(num_buffers);
    ferry_iov_from_buf(iov, cnt, 10, &le, 2);
    if (!ferry_virtio_has_feature(&net->vdev, VIRTIO_NET_F_GUEST_CSUM)) {
        uint8_t zero = 0;
        ferry_iov_from_buf(iov, cnt, 0, &zero, 1);
    }
}

/* Largest header + frame the TAP may hand us with the negotiated offloads. */
static uint64_t max_rx_len(FerryVirtioNet *net)
{
    const FerryVirtioDev *dev = &net->vdev;
    if (ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_TSO4) ||
        ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_TSO6) ||
        ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_UFO))
        return NET_HDR_LEN + GSO_MAX_FRAME;
    return NET_HDR_LEN + (uint64_t) net->mtu + ETH_OVERHEAD;
}

/* Reads a frame into the bounce buffer; RX_DELIVERED means "one is pending" here. */
static RxResult fill_bounce(FerryVirtioNet *net)
{
    if (net->pending)
        return RX_DELIVERED;
    struct iovec iov = {net->bounce, BOUNCE_SIZE};
    ssize_t n = tap_read(net, &iov, 1);
    if (n == 0)
        return RX_TAP_EMPTY;
    if (n < 0)
        return RX_TAP_ERROR;
    /* A frame that fills the bounce buffer was cut short (BOUNCE_SIZE is above any frame). */
    if (n < NET_HDR_LEN || n >= BOUNCE_SIZE) {
        net->stats.rx_dropped++;
        return RX_DROPPED;
    }
    net->pending = (size_t) n;
    return RX_DELIVERED;
}

/* One frame into one buffer (no MRG_RXBUF: 5.1.6.3.2, a single descriptor chain). */
static RxResult rx_one_single(FerryVirtioNet *net)
{
    FerryVirtqueue *vq = &net->vdev.vqs[RXQ];
    FerryVirtqElement *elem = net->elem;
    g_autoptr(GError) error = NULL;

    int r = ferry_virtq_pop(&net->vdev.vqs[RXQ], net->elem, &error);
    if (r < 0) {
        broken(net, error);
        return RX_BROKEN;
    }
    if (r == 0)
        return RX_NO_BUFS;
    if (elem->in_bytes < NET_HDR_LEN) {
        /* Cannot hold even the header: give it back unused rather than drop every frame. */
        ferry_virtq_push(vq, elem, 0);
        net->stats.rx_dropped++;
        return RX_DROPPED;
    }
    const struct iovec *in = elem->iov + elem->nr_out;
    ssize_t n;
    if (!net->pending && elem->in_bytes >= max_rx_len(net)) {
        n = tap_read(net, in, (int) elem->nr_in);
        if (n <= 0) {
            ferry_virtq_unpop(vq, 1);
            return n == 0 ? RX_TAP_EMPTY : RX_TAP_ERROR;
        }
        if (n < NET_HDR_LEN) {
            ferry_virtq_unpop(vq, 1);
            net->stats.rx_dropped++;
            return RX_DROPPED;
        }
    } else {
        RxResult res = fill_bounce(net);
        if (res != RX_DELIVERED) {
            ferry_virtq_unpop(vq, 1);
            return res;
        }
        if (net->pending > elem->in_bytes) {
            /* The driver's buffers are too small for this frame: drop it, keep the buffer. */
            ferry_virtq_unpop(vq, 1);
            net->pending = 0;
            net->stats.rx_dropped++;
            return RX_DROPPED;
        }
        n = (ssize_t) ferry_iov_from_buf(in, elem->nr_in, 0, net->bounce, net->pending);
        net->pending = 0;
    }
    fix_rx_header(net, in, elem->nr_in, 1);
    ferry_virtq_push(vq, elem, (uint32_t) n);
    net->stats.rx_frames++;
    return RX_DELIVERED;
}

/* Rebuilds held buffer @b in the scratch element, for push(). */
static FerryVirtqElement *rx_buf_element(FerryVirtioNet *net, const RxBuf *b)
{
    FerryVirtqElement *elem = net->elem;
    elem->head = b->head;
    elem->nr_out = 0;
    elem->nr_in = b->nr;
    elem->out_bytes = 0;
    elem->in_bytes = b->bytes;
    memcpy(elem->iov, &g_array_index(net->rx_iov, struct iovec, b->first),
           b->nr * sizeof(struct iovec));
    memcpy(elem->gpa, &g_array_index(net->rx_gpa, uint64_t, b->first), b->nr * sizeof(uint64_t));
    return elem;
}

/* One frame spread over as many buffers as it needs (MRG_RXBUF: 5.1.6.3.2, 5.1.6.4). */
static RxResult rx_one_merged(FerryVirtioNet *net)
{
    FerryVirtqueue *vq = &net->vdev.vqs[RXQ];
    RxResult res = fill_bounce(net);
    if (res != RX_DELIVERED)
        return res;

    /* Take buffers until the frame fits; give them all back if the ring runs dry. */
    g_array_set_size(net->rx_iov, 0);
    g_array_set_size(net->rx_gpa, 0);
    unsigned nbufs = 0;
    uint64_t room = 0;
    while (room < net->pending) {
        if (nbufs == vq->size || nbufs == FERRY_VIRTIO_NET_QUEUE_SIZE) {
            /* Needs more buffers than the ring holds: it can never be delivered. */
            ferry_virtq_unpop(vq, nbufs);
            net->pending = 0;
            net->stats.rx_dropped++;
            return RX_DROPPED;
        }
        g_autoptr(GError) error = NULL;
        int r = ferry_virtq_pop(&net->vdev.vqs[RXQ], net->elem, &error);
        if (r < 0) {
            broken(net, error);
            return RX_BROKEN;
        }
        if (r == 0) {
            ferry_virtq_unpop(vq, nbufs);
            return RX_NO_BUFS; /* the frame stays pending */
        }
        FerryVirtqElement *elem = net->elem;
        if (elem->in_bytes < NET_HDR_LEN) {
            /* 5.1.6.3.1: each buffer MUST hold at least the header. */
            ferry_virtq_unpop(vq, nbufs);
            ferry_virtio_set_broken(&net->vdev, "a merged receive buffer is smaller than the "
                                                "12-byte virtio-net header");
            stop_io(net);
            net->active = FALSE;
            return RX_BROKEN;
        }
        RxBuf *b = &net->rx_bufs[nbufs++];
        b->head = elem->head;
        b->first = net->rx_iov->len;
        b->nr = elem->nr_in;
        b->bytes = elem->in_bytes;
        g_array_append_vals(net->rx_iov, elem->iov + elem->nr_out, elem->nr_in);
        g_array_append_vals(net->rx_gpa, elem->gpa + elem->nr_out, elem->nr_in);
        room += elem->in_bytes;
    }

    size_t off = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        FerryVirtqElement *elem = rx_buf_element(net, &net->rx_bufs[i]);
        size_t n = ferry_iov_from_buf(elem->iov, elem->nr_in, 0, net->bounce + off,
                                MIN(elem->in_bytes, net->pending - off));
        if (i == 0)
            fix_rx_header(net, elem->iov, elem->nr_in, (uint16_t) nbufs);
        off += n;
        ferry_virtq_push(vq, elem, (uint32_t) n);
    }
    net->pending = 0;
    net->stats.rx_frames++;
    return RX_DELIVERED;
}

/* Delivers up to NET_BUDGET frames. Lock held. */
static void rx_work(FerryVirtioNet *net)
{
    gboolean merged = ferry_virtio_has_feature(&net->vdev, VIRTIO_NET_F_MRG_RXBUF);
    uint16_t used_before = net->vdev.vqs[RXQ].used_idx;
    unsigned done = 0;

    while (running(net) && done < NET_BUDGET) {
        RxResult res = merged ? rx_one_merged(net) : rx_one_single(net);
        if (res == RX_NO_BUFS || res == RX_TAP_ERROR) {
            rx_watch(net, FALSE); /* until the driver notifies the receiveq */
            break;
        } else if (res != RX_DELIVERED && res != RX_DROPPED) {
            break;
        }
        done++;
    }
    if (net->vdev.vqs[RXQ].used_idx != used_before)
        ferry_virtio_notify_queue(&net->vdev, RXQ);
}

/* The TAP is readable (I/O thread). */
static gboolean rx_ready(int fd, GIOCondition cond, gpointer data)
{
    FerryVirtioNet *net = data;
    g_mutex_lock(&net->vdev.lock);
    gboolean current = net->rx_src == g_main_current_source();
    if (current)
        rx_work(net);
    g_mutex_unlock(&net->vdev.lock);
    /* A stale source (stopped meanwhile) was destroyed already; REMOVE is harmless. */
    return current ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static gboolean kick_ready(gpointer data)
{
    FerryVirtioNet *net = data;
    g_mutex_lock(&net->vdev.lock);
    if (net->kick_src == g_main_current_source()) {
        g_clear_pointer(&net->kick_src, g_source_unref);
        gboolean tx = net->kick_tx, rx = net->kick_rx;
        net->kick_tx = net->kick_rx = FALSE;
        if (running(net)) {
            if (tx)
                tx_work(net);
            if (rx) {
                rx_watch(net, TRUE);
                rx_work(net);
            }
        }
    }
    g_mutex_unlock(&net->vdev.lock);
    return G_SOURCE_REMOVE;
}

/* ---- announce ------------------------------------------------------------------------- */

void ferry_virtio_net_rarp_frame(const uint8_t mac[6], uint8_t frame[FERRY_VIRTIO_NET_RARP_LEN])
{
    /* Ethernet II header: broadcast, from the guest, EtherType 0x8035 (RARP). */
    memset(frame, 0, FERRY_VIRTIO_NET_RARP_LEN);
    memset(frame, 0xff, 6);
    memcpy(frame + 6, mac, 6);
    frame[12] = 0x80;
    frame[13] = 0x35;
    /* RFC 903 (the ARP packet of RFC 826): hardware Ethernet (1), protocol IPv4 (0x0800),
     * address lengths 6 and 4, opcode 3 "request reverse"; the sender and target hardware
     * addresses are the guest's, the protocol addresses 0.0.0.0.  The rest is padding. */
    uint8_t *arp = frame + 14;
    arp[1] = 1;
    arp[2] = 0x08;
    arp[4] = 6;
    arp[5] = 4;
    arp[7] = 3;
    memcpy(arp + 8, mac, 6);
    memcpy(arp + 18, mac, 6);
}

/* Writes one RARP frame, with the all-zero virtio-net header the TAP expects.  Lock held. */
static void send_rarp(FerryVirtioNet *net)
{
    uint8_t buf[NET_HDR_LEN + FERRY_VIRTIO_NET_RARP_LEN];
    memset(buf, 0, NET_HDR_LEN); /* no checksum or GSO: a plain frame (5.1.6) */
    ferry_virtio_net_rarp_frame(net->mac, buf + NET_HDR_LEN);
    ssize_t n;
    do {
        n = write(net->tap->fd, buf, sizeof(buf));
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t) sizeof(buf) && !net->warned_tx) {
        ferry_log("%s: writing an announce frame to TAP %s failed: %s", net->vdev.id,
                  net->tap->name, n < 0 ? g_strerror(errno) : "short write");
        net->warned_tx = TRUE;
    }
}

static gboolean announce_ready(gpointer data);

/* Arms the timer for the next frame of the announce.  Lock held. */
static void announce_schedule(FerryVirtioNet *net)
{
    unsigned ms = ANNOUNCE_FIRST_MS + net->announce_sent * ANNOUNCE_STEP_MS;
    net->announce_src = g_timeout_source_new(ms);
    g_source_set_callback(net->announce_src, announce_ready, net, NULL);
    g_source_attach(net->announce_src, net->ctx);
}

static void announce_cancel(FerryVirtioNet *net)
{
    if (net->announce_src) {
        g_source_destroy(net->announce_src);
        g_clear_pointer(&net->announce_src, g_source_unref);
    }
}

static gboolean announce_ready(gpointer data)
{
    FerryVirtioNet *net = data;
    g_mutex_lock(&net->vdev.lock);
    if (net->announce_src == g_main_current_source()) {
        g_clear_pointer(&net->announce_src, g_source_unref);
        send_rarp(net);
        if (++net->announce_sent < ANNOUNCE_ROUNDS)
            announce_schedule(net);
    }
    g_mutex_unlock(&net->vdev.lock);
    return G_SOURCE_REMOVE;
}

void ferry_virtio_net_announce(FerryVirtioDev *dev)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    g_mutex_lock(&dev->lock);
    announce_cancel(net);
    net->announce_sent = 0;
    announce_schedule(net);
    g_mutex_unlock(&dev->lock);
}

/* ---- ops ------------------------------------------------------------------------------ */

static uint64_t net_get_features(FerryVirtioDev *dev)
{
    return ((FerryVirtioNet *) dev)->host_features;
}

static void net_read_config(FerryVirtioDev *dev, uint32_t offset, uint8_t *data, uint32_t len)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    /* struct virtio_net_config (5.1.4), little-endian. */
    uint8_t cfg[FERRY_VIRTIO_NET_CONFIG_SIZE];
    uint16_t status = GUINT16_TO_LE(net->status), pairs = GUINT16_TO_LE(1),
             mtu = GUINT16_TO_LE(net->mtu);
    memcpy(cfg, net->mac, 6);
    memcpy(cfg + 6, &status, 2);
    memcpy(cfg + 8, &pairs, 2);
    memcpy(cfg + 10, &mtu, 2);
    memset(data, 0, len);
    if (offset < sizeof(cfg))
        memcpy(data, cfg + offset, MIN((size_t) len, sizeof(cfg) - offset));
}

static gboolean net_realize(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    net->ctx = ferry_iothread_context(dev->io);
    return TRUE;
}

static gboolean net_activate(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    /* What the driver accepts decides what the TAP may give us (5.1.6.4, TUNSETOFFLOAD). */
    unsigned offloads = 0;
    if (ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_CSUM)) {
        offloads |= FERRY_TAP_OFFLOAD_CSUM;
        if (ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_TSO4))
            offloads |= FERRY_TAP_OFFLOAD_TSO4;
        if (ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_TSO6))
            offloads |= FERRY_TAP_OFFLOAD_TSO6;
        if (ferry_virtio_has_feature(dev, VIRTIO_NET_F_GUEST_UFO))
            offloads |= FERRY_TAP_OFFLOAD_UFO;
    }
    if (!ferry_tap_set_offload(net->tap, offloads, error))
        return FALSE;
    net->active = TRUE;
    net->pending = 0;
    if (running(net))
        kick(net, TRUE, TRUE);
    return TRUE;
}

static void net_reset(FerryVirtioDev *dev)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    stop_io(net);
    net->active = FALSE;
    net->pending = 0;
    net->kick_tx = net->kick_rx = FALSE;
    g_autoptr(GError) error = NULL;
    if (!ferry_tap_set_offload(net->tap, 0, &error))
        ferry_log("%s: %s", dev->id, error->message);
}

static void net_queue_notify(FerryVirtioDev *dev, unsigned index)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    if (!running(net))
        return;
    if (index == TXQ) {
        tx_work(net);
    } else if (index == RXQ) {
        /* New receive buffers: deliver what waits, and watch the TAP again. */
        rx_watch(net, TRUE);
        rx_work(net);
    }
}

static void net_pause(FerryVirtioDev *dev)
{
    /* Deferred work is redone by resume's kick; a frame in the bounce buffer stays there. */
    stop_io((FerryVirtioNet *) dev);
}

static void net_resume(FerryVirtioDev *dev)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    /* Notifications may have been missed while paused: look at both queues. */
    if (running(net))
        kick(net, TRUE, TRUE);
}

static void net_save(FerryVirtioDev *dev, FerryStateWriter *w)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    ferry_state_put_bytes(w, net->mac, 6);
    ferry_state_put_u16(w, net->status);
    ferry_state_put_u8(w, net->has_mtu);
    ferry_state_put_u16(w, net->mtu);
    ferry_state_put_u64(w, net->host_features);
    ferry_state_put_u8(w, net->active); /* kept for the format; load() ignores it */
}

static gboolean net_load(FerryVirtioDev *dev, uint8_t version, FerryStateReader *r, GError **error)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    uint8_t mac[6], has_mtu, active;
    uint16_t status, mtu;
    uint64_t features;
    /* The transport checked @version (1 to NET_STATE_VERSION). */
    if (!ferry_state_get_bytes(r, mac, 6, error) || !ferry_state_get_u16(r, &status, error) ||
        !ferry_state_get_u8(r, &has_mtu, error) || !ferry_state_get_u16(r, &mtu, error) ||
        !ferry_state_get_u64(r, &features, error) || !ferry_state_get_u8(r, &active, error))
        return FALSE;
    if (status & ~VIRTIO_NET_S_LINK_UP) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: virtio-net state: unknown status bits 0x%x", r->what, status);
        return FALSE;
    }
    if (mac[0] & 1) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: virtio-net state: multicast MAC address %02x:%02x:%02x:%02x:%02x:%02x",
                    r->what, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
        return FALSE;
    }
    /* The driver may have negotiated any offered feature: we must offer them all too. */
    if (features & ~net->host_features) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: virtio-net state: the source offered features 0x%" G_GINT64_MODIFIER
                    "x that TAP %s here does not (offloads the kernel refuses)",
                    r->what, features & ~net->host_features, net->tap->name);
        return FALSE;
    }
    if (has_mtu && (!net->has_mtu || mtu != net->mtu)) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: virtio-net state: the guest was told MTU %u, but this NIC has %s%u; "
                    "give mtu=%u",
                    r->what, mtu, net->has_mtu ? "mtu=" : "no mtu= and the TAP's ", net->mtu, mtu);
        return FALSE;
    }
    /* The guest knows its NIC by the saved MAC; it moves with the guest. */
    memcpy(net->mac, mac, 6);
    net->status = status;
    /* Saved @active is not needed: the transport activates a running device after load(). */
    (void) active;
    stop_io(net);
    net->active = FALSE;
    net->pending = 0;
    return TRUE;
}

static void net_free(FerryVirtioDev *dev)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    stop_io(net);
    announce_cancel(net);
    ferry_tap_close(net->tap);
    g_free(net->elem);
    g_free(net->bounce);
    g_array_unref(net->rx_iov);
    g_array_unref(net->rx_gpa);
    g_free(net);
}

static const FerryVirtioDeviceOps net_ops = {
    .kind = "virtio-net",
    .device_id = VIRTIO_ID_NET,
    .pci_class = 0x020000, /* network controller, Ethernet */
    .state_version = NET_STATE_VERSION,
    .get_features = net_get_features,
    .read_config = net_read_config,
    .realize = net_realize,
    .activate = net_activate,
    .reset = net_reset,
    .queue_notify = net_queue_notify,
    .pause = net_pause,
    .resume = net_resume,
    .save = net_save,
    .load = net_load,
    .free = net_free,
};

/* ---- construction --------------------------------------------------------------------- */

void ferry_virtio_net_default_mac(unsigned pid, unsigned index, uint8_t mac[6])
{
    uint32_t low = ((pid & 0x7ffff) << 5) | (index & 0x1f);
    mac[0] = 0x52;
    mac[1] = 0x54;
    mac[2] = 0x00;
    mac[3] = (uint8_t) (low >> 16);
    mac[4] = (uint8_t) (low >> 8);
    mac[5] = (uint8_t) low;
}

static uint64_t offered_features(const FerryTap *tap, gboolean has_mtu)
{
    uint64_t f =
        1ULL << VIRTIO_NET_F_MAC | 1ULL << VIRTIO_NET_F_STATUS | 1ULL << VIRTIO_NET_F_MRG_RXBUF;
    if (has_mtu)
        f |= 1ULL << VIRTIO_NET_F_MTU;
    /* Only what the kernel's TAP takes in both directions (probed with TUNSETOFFLOAD). */
    if (tap->offloads & FERRY_TAP_OFFLOAD_CSUM)
        f |= 1ULL << VIRTIO_NET_F_CSUM | 1ULL << VIRTIO_NET_F_GUEST_CSUM;
    if (tap->offloads & FERRY_TAP_OFFLOAD_TSO4)
        f |= 1ULL << VIRTIO_NET_F_HOST_TSO4 | 1ULL << VIRTIO_NET_F_GUEST_TSO4;
    if (tap->offloads & FERRY_TAP_OFFLOAD_TSO6)
        f |= 1ULL << VIRTIO_NET_F_HOST_TSO6 | 1ULL << VIRTIO_NET_F_GUEST_TSO6;
    if (tap->offloads & FERRY_TAP_OFFLOAD_UFO)
        f |= 1ULL << VIRTIO_NET_F_HOST_UFO | 1ULL << VIRTIO_NET_F_GUEST_UFO;
    return f;
}

FerryVirtioDev *ferry_virtio_net_new(const FerryNetSpec *spec, unsigned index, GError **error)
{
    FerryTap *tap;
    if (spec->tap)
        tap = ferry_tap_open(spec->tap, spec->mtu, error);
    else
        tap = ferry_tap_adopt_fd(spec->fd, spec->mtu, error);
    if (!tap) {
        g_prefix_error(error, "--net: ");
        return NULL;
    }

    FerryVirtioNet *net = g_new0(FerryVirtioNet, 1);
    net->vdev.ops = &net_ops;
    net->vdev.nr_queues = 2;
    net->vdev.queue_max_size[RXQ] = FERRY_VIRTIO_NET_QUEUE_SIZE;
    net->vdev.queue_max_size[TXQ] = FERRY_VIRTIO_NET_QUEUE_SIZE;
    net->vdev.config_size = FERRY_VIRTIO_NET_CONFIG_SIZE;
    net->tap = tap;
    if (spec->has_mac)
        memcpy(net->mac, spec->mac, 6);
    else
        ferry_virtio_net_default_mac((unsigned) getpid(), index, net->mac);
    net->status = VIRTIO_NET_S_LINK_UP;
    net->has_mtu = spec->mtu != 0;
    net->mtu = (uint16_t) tap->mtu;
    net->host_features = offered_features(tap, net->has_mtu);
    net->elem = g_new(FerryVirtqElement, 1);
    net->bounce = g_malloc(BOUNCE_SIZE);
    net->rx_iov = g_array_new(FALSE, FALSE, sizeof(struct iovec));
    net->rx_gpa = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    return &net->vdev;
}

void ferry_virtio_net_get_stats(FerryVirtioDev *dev, FerryVirtioNetStats *stats)
{
    FerryVirtioNet *net = (FerryVirtioNet *) dev;
    g_mutex_lock(&dev->lock);
    *stats = net->stats;
    g_mutex_unlock(&dev->lock);
}

const char *ferry_virtio_net_ifname(FerryVirtioDev *dev)
{
    return ((FerryVirtioNet *) dev)->tap->name;
}

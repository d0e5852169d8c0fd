/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Console exerciser on virtio-console (virtio 1.2, 5.3), at CPL3:
 *   ferry.vcon   use port 0 of the first virtio-console device
 *
 * VIRTIO_CONSOLE_F_MULTIPORT is not negotiated, so queue 0 is port 0's receiveq
 * and queue 1 its transmitq (5.3.2); no control messages are exchanged.
 * VIRTIO_CONSOLE_F_SIZE is taken when offered, for the READY line. From READY on
 * the guest writes "FERRY-VCON-HELLO\n" to the port once a second until the
 * first byte arrives from the host (a host end that connects late, such as a
 * socket client, still sees one), and answers every line it receives with
 * "FERRY-VCON-ECHO <line>\n" on the port. CR, LF and CR LF end a
 * line; other control characters are dropped; lines are cut at VCON_LINE - 1
 * characters. On the serial console:
 *   FERRY-VCON-READY cols=<n> rows=<n> features=0x<device features offered>
 */
#include "lib/cmdline.h"
#include "lib/printf.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "user/ulib.h"
#include "user/virtio.h"

/* 5.3.3 Feature bits */
#define VIRTIO_CONSOLE_F_SIZE 0

#define VCON_RXBUFS  16u
#define VCON_RXSIZE  256u
#define VCON_TXBUFS  16u
#define VCON_TXSIZE  512u
#define VCON_LINE    256u

struct vcon_buf {
    u8 *data;
    bool busy;
};

static struct vdev *dev;
static struct virtq *rxq, *txq;
static struct vcon_buf rx[VCON_RXBUFS], tx[VCON_TXBUFS];
static char line[VCON_LINE];
static u32 line_len;
static bool last_cr, running, heard;
static u64 next_hello;

bool vcon_active(void)
{
    return running;
}

static bool post_rx(struct vcon_buf *b)
{
    u64 addr = (u64)b->data;
    u32 len = VCON_RXSIZE;
    bool wr = true;
    if (!vq_add(rxq, &addr, &len, &wr, 1, b))
        return false;
    b->busy = true;
    return true;
}

static void reclaim_tx(void)
{
    struct vcon_buf *b;
    while ((b = vq_get(txq, NULL)) != NULL)
        b->busy = false;
}

/* Queues `n` bytes (at most VCON_TXSIZE) on the transmitq; waits up to 1 s for a
 * free buffer, else drops the write with a message. */
static void port_write(const char *s, u32 n)
{
    u64 t0 = unow(0);
    for (;;) {
        reclaim_tx();
        for (u32 i = 0; i < VCON_TXBUFS; i++) {
            struct vcon_buf *b = &tx[i];
            if (b->busy)
                continue;
            memcpy(b->data, s, n);
            u64 addr = (u64)b->data;
            bool wr = false;
            if (!vq_add(txq, &addr, &n, &wr, 1, b))
                break;
            b->busy = true;
            vq_kick(txq);
            return;
        }
        if (unow(0) - t0 > NS_PER_S) {
            uprintf("ferry-guest: virtio-console: transmitq stuck, output dropped\n");
            return;
        }
        cpu_relax();
    }
}

bool vcon_init(struct vdev *d)
{
    if (!virtio_negotiate(d, 1ull << VIRTIO_CONSOLE_F_SIZE))
        return false;
    if (!virtio_setup_queue(d, 0, 64) || !virtio_setup_queue(d, 1, 64)) {
        uprintf("ferry-guest: virtio-console: queue setup failed\n");
        return false;
    }
    rxq = &d->vq[0];
    txq = &d->vq[1];
    rxq->irq_batch = 1;
    txq->irq_batch = 1;
    for (u32 i = 0; i < VCON_RXBUFS; i++) {
        rx[i].data = dma_alloc(VCON_RXSIZE, 64);
        if (!rx[i].data || !post_rx(&rx[i]))
            goto nomem;
    }
    for (u32 i = 0; i < VCON_TXBUFS; i++)
        if (!(tx[i].data = dma_alloc(VCON_TXSIZE, 64)))
            goto nomem;
    dev = d;
    virtio_driver_ok(d);
    vq_kick(rxq);

    /* 5.3.4: cols and rows (le16) are valid with VIRTIO_CONSOLE_F_SIZE. */
    u32 cols = 0, rows = 0;
    if (d->features & (1ull << VIRTIO_CONSOLE_F_SIZE)) {
        cols = *(volatile u16 *)(d->devcfg + 0);
        rows = *(volatile u16 *)(d->devcfg + 2);
    }
    if (!g_opt.quiet)
        uprintf("ferry-guest: virtio-console 00:%02x.%u negotiated 0x%llx, queues %u/%u\n",
                d->devfn >> 3, d->devfn & 7, d->features, rxq->size, txq->size);
    uprintf("FERRY-VCON-READY cols=%u rows=%u features=0x%llx\n", cols, rows, d->offered);
    return true;
nomem:
    uprintf("ferry-guest: virtio-console: no memory for buffers\n");
    return false;
}

/* Called at READY. */
void vcon_start(u64 now);
void vcon_start(u64 now)
{
    if (!dev)
        return;
    running = true;
    next_hello = now;
}

static void end_line(void)
{
    char out[VCON_LINE + 32];
    line[line_len] = 0;
    int n = snprintf(out, sizeof(out), "FERRY-VCON-ECHO %s\n", line);
    port_write(out, (u32)MIN((u32)n, (u32)sizeof(out) - 1));
    line_len = 0;
}

static void input(const u8 *p, u32 n)
{
    for (u32 i = 0; i < n; i++) {
        u8 ch = p[i];
        if (ch == '\r' || ch == '\n') {
            if (!(ch == '\n' && last_cr))
                end_line();
            last_cr = ch == '\r';
            continue;
        }
        last_cr = false;
        if (ch >= 0x20 && ch < 0x7f && line_len < VCON_LINE - 1)
            line[line_len++] = (char)ch;
    }
}

void vcon_poll(u64 now)
{
    struct vcon_buf *b;
    u32 len;
    bool reposted = false;

    if (!running)
        return;
    if (!heard && now >= next_hello) {
        static const char hello[] = "FERRY-VCON-HELLO\n";
        port_write(hello, sizeof(hello) - 1);
        next_hello = now + NS_PER_S;
    }
    while ((b = vq_get(rxq, &len)) != NULL) {
        b->busy = false;
        heard |= len > 0;
        input(b->data, MIN(len, VCON_RXSIZE));
        reposted |= post_rx(b);
    }
    if (reposted)
        vq_kick(rxq);
    reclaim_tx();
}

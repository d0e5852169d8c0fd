/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Entropy exerciser on virtio-rng (virtio 1.2, 5.4), at CPL3:
 *   ferry.rng=<bytes>   read that many bytes from the first virtio-rng device
 *
 * Up to RNG_QD requests of RNG_REQ bytes (one device-writable descriptor each)
 * are kept in flight from READY on; a shorter used length is fine (5.4.6.2) and
 * the rest is asked for again. When all bytes have arrived:
 *   FERRY-RNG-DONE bytes=<n> ms=<n> ones_permille=<n> distinct_bytes=<n>
 * ones_permille is the share of one bits × 1000 (about 500), distinct_bytes the
 * number of different byte values seen (256 for any sane source and >= 4 KiB).
 * If the device stops answering for RNG_STALL_NS:
 *   FERRY-RNG-ERROR stalled bytes=<n received>
 */
#include "lib/cmdline.h"
#include "lib/string.h"
#include "user/ulib.h"
#include "user/virtio.h"

#define RNG_REQ      4096u
#define RNG_QD       8u
#define RNG_STALL_NS (5 * NS_PER_S)

struct rng_buf {
    u8 *data;
    u32 len;                            /* bytes asked for while busy */
    bool busy;
};

static struct vdev *dev;
static struct virtq *vq;
static struct rng_buf bufs[RNG_QD];
static u64 want, asked, got, ones;
static u64 seen[4];                     /* 256-bit set of byte values */
static u64 t_start, t_progress;
static bool running;

bool rng_active(void)
{
    return running;
}

static u32 popcount64(u64 x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (u32)((x * 0x0101010101010101ull) >> 56);
}

static void account(const u8 *p, u32 n)
{
    for (u32 i = 0; i < n; i++) {
        ones += popcount64(p[i]);
        seen[p[i] >> 6] |= 1ull << (p[i] & 63);
    }
}

static void issue(void)
{
    for (u32 i = 0; i < RNG_QD && asked < want; i++) {
        struct rng_buf *b = &bufs[i];
        if (b->busy)
            continue;
        u32 len = (u32)MIN((u64)RNG_REQ, want - asked);
        u64 addr = (u64)b->data;
        bool wr = true;
        if (!vq_add(vq, &addr, &len, &wr, 1, b))
            break;
        b->busy = true;
        b->len = len;
        asked += len;
    }
    vq_kick(vq);
}

bool rng_init(struct vdev *d)
{
    want = cmdline_u64(g_shared.boot.cmdline, "ferry.rng", 0);
    if (!virtio_negotiate(d, 0))
        return false;
    if (!virtio_setup_queue(d, 0, 64)) {
        uprintf("ferry-guest: virtio-rng: queue 0 setup failed\n");
        return false;
    }
    vq = &d->vq[0];
    vq->irq_batch = 1;
    for (u32 i = 0; i < RNG_QD; i++) {
        bufs[i].data = dma_alloc(RNG_REQ, 4096);
        if (!bufs[i].data) {
            uprintf("ferry-guest: virtio-rng: no memory for buffers\n");
            return false;
        }
    }
    dev = d;
    virtio_driver_ok(d);
    if (!g_opt.quiet)
        uprintf("ferry-guest: virtio-rng 00:%02x.%u negotiated 0x%llx, queue %u, "
                "reading %llu bytes\n", d->devfn >> 3, d->devfn & 7, d->features, vq->size,
                want);
    return true;
}

static void finish(u64 now)
{
    u32 distinct = 0;
    for (u32 i = 0; i < 4; i++)
        distinct += popcount64(seen[i]);
    uprintf("FERRY-RNG-DONE bytes=%llu ms=%llu ones_permille=%llu distinct_bytes=%u\n", got,
            (now - t_start) / NS_PER_MS, got ? ones * 1000 / (got * 8) : 0, distinct);
    running = false;
}

/* Called at READY. */
void rng_start(u64 now);
void rng_start(u64 now)
{
    if (!dev)
        return;
    running = true;
    t_start = t_progress = now;
    if (want == 0) {
        finish(now);
        return;
    }
    issue();
}

void rng_poll(u64 now)
{
    struct rng_buf *b;
    u32 len;

    if (!running)
        return;
    while ((b = vq_get(vq, &len)) != NULL) {
        b->busy = false;
        if (len > b->len) {
            uprintf("ferry-guest: virtio-rng: used length %u exceeds the buffer (%u)\n", len,
                    b->len);
            len = b->len;
        }
        /* A short answer (5.4.6.2): the missing part is asked for again below. */
        asked -= b->len - len;
        account(b->data, len);
        got += len;
        if (len)
            t_progress = now;
    }
    if (got >= want) {
        finish(now);
        return;
    }
    issue();
    if (now - t_progress > RNG_STALL_NS) {
        uprintf("FERRY-RNG-ERROR stalled bytes=%llu\n", got);
        running = false;
    }
}

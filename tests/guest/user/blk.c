/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Disk exerciser on virtio-blk (virtio 1.2, 5.2), at CPL3:
 *   ferry.blk=write|verify|loop  ferry.blk.mib=  ferry.blk.req=<KiB>  ferry.blk.seed=
 *   ferry.blk.gen=  ferry.blk.qd=  ferry.blk.random=<KiB>  ferry.blk.dev=<index>
 *
 * Every 512-byte sector s written with (seed, generation g) holds 64 little-endian
 * u64 words (docs/test-guest.md, "Disk pattern"; tests/system/hostcheck_blk.py):
 *   w[0] = s
 *   w[1] = (seed mod 2^32) << 32 | (g mod 2^32)
 *   w[k] = mix(64 s + k, key(seed, g))      for k = 2..63
 *   key(seed, g) = seed * 0x9e3779b97f4a7c15 + g * 0xd6e8feb86659fd93 + 0x632be59bd9b4e019
 *   mix(a, K)    = x ^ (x >> 29)  with  x = (a ^ K) * 0x9e3779b97f4a7c15     (mod 2^64)
 *
 * Requests are one header descriptor, the data (one descriptor per size_max
 * bytes if VIRTIO_BLK_F_SIZE_MAX, else one), and the status byte (5.2.6).
 */
#include "lib/cmdline.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "user/ulib.h"
#include "user/virtio.h"

/* 5.2.3 Feature bits */
#define VIRTIO_BLK_F_SIZE_MAX   1
#define VIRTIO_BLK_F_SEG_MAX    2
#define VIRTIO_BLK_F_RO         5
#define VIRTIO_BLK_F_BLK_SIZE   6
#define VIRTIO_BLK_F_FLUSH      9

/* 5.2.6 Device Operation */
#define VIRTIO_BLK_T_IN         0
#define VIRTIO_BLK_T_OUT        1
#define VIRTIO_BLK_T_FLUSH      4
#define VIRTIO_BLK_T_GET_ID     8
#define VIRTIO_BLK_S_OK         0

#define SECTOR          512u
#define MAX_QD          64
#define MAX_SEGS        64
#define MAX_REPORTS     8
#define MAX_IOERR_LINES 16

enum { MODE_NONE, MODE_WRITE, MODE_VERIFY, MODE_LOOP };
enum { PH_IDLE, PH_WRITE, PH_FLUSH, PH_VERIFY, PH_DONE };

struct blk_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

struct req {
    struct blk_hdr *hdr;
    u8 *data;
    u8 *status;
    u64 sector;
    u32 nsect;
    u32 type;
    bool busy;
};

static struct vdev *dev;
static struct virtq *vq;
static int mode;
static u64 capacity, area;              /* sectors */
static u64 seed, gen;
static u32 req_bytes, rand_bytes, qd, size_max, nseg_max;
static bool ro, can_flush;
static struct req reqs[MAX_QD];
static u32 inflight;
static int phase;
static u64 next_sector, issued, to_issue, rng;
static u64 phase_start, phase_bytes, irq_start;
static u64 written_bytes, verified_bytes, next_hb;
static u32 reports, ioerr_lines;
static u64 corrupt_sectors, ioerrs;

bool blk_active(void)
{
    return mode != MODE_NONE && dev;
}

static inline u64 pat_key(u64 s, u64 g)
{
    return s * 0x9e3779b97f4a7c15ull + g * 0xd6e8feb86659fd93ull + 0x632be59bd9b4e019ull;
}

static inline u64 pat_mix(u64 a, u64 k)
{
    u64 x = (a ^ k) * 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

static void fill(u8 *buf, u64 sector, u32 nsect)
{
    u64 key = pat_key(seed, gen), w1 = (seed & 0xffffffffull) << 32 | (gen & 0xffffffffull);
    u64 *w = (u64 *)buf;
    for (u32 i = 0; i < nsect; i++, w += 64) {
        u64 s = sector + i, a = s * 64;
        w[0] = s;
        w[1] = w1;
        for (u32 k = 2; k < 64; k++)
            w[k] = pat_mix(a + k, key);
    }
}

static void check(const u8 *buf, u64 sector, u32 nsect)
{
    u64 key = pat_key(seed, gen), w1 = (seed & 0xffffffffull) << 32 | (gen & 0xffffffffull);
    const u64 *w = (const u64 *)buf;
    for (u32 i = 0; i < nsect; i++, w += 64) {
        u64 s = sector + i, a = s * 64;
        u32 bad = 64;
        u64 exp = 0;
        if (w[0] != s) {
            bad = 0;
            exp = s;
        } else if (w[1] != w1) {
            bad = 1;
            exp = w1;
        } else {
            for (u32 k = 2; k < 64; k++) {
                exp = pat_mix(a + k, key);
                if (w[k] != exp) {
                    bad = k;
                    break;
                }
            }
        }
        if (bad == 64)
            continue;
        corrupt_sectors++;
        if (reports++ < MAX_REPORTS)
            uprintf("FERRY-CORRUPTION blk sector=%llu word=%u expected=0x%016llx "
                    "found=0x%016llx found_sector=%llu found_gen=%llu\n", s, bad, exp, w[bad],
                    w[0], w[1] & 0xffffffffull);
    }
}

static u64 xorshift(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Builds and queues request r (type, sector, nsect). */
static bool submit(struct req *r, u32 type, u64 sector, u32 nsect)
{
    u64 addr[MAX_SEGS + 2];
    u32 len[MAX_SEGS + 2];
    bool wr[MAX_SEGS + 2];
    u32 n = 0;

    r->hdr->type = type;
    r->hdr->reserved = 0;
    r->hdr->sector = sector;
    r->type = type;
    r->sector = sector;
    r->nsect = nsect;
    *r->status = 0xff;
    addr[n] = (u64)r->hdr;
    len[n] = sizeof(struct blk_hdr);
    wr[n++] = false;
    u32 bytes = type == VIRTIO_BLK_T_GET_ID ? 20 : nsect * SECTOR;
    for (u32 off = 0; off < bytes; off += size_max) {
        addr[n] = (u64)r->data + off;
        len[n] = MIN(size_max, bytes - off);
        wr[n++] = type != VIRTIO_BLK_T_OUT;
    }
    addr[n] = (u64)r->status;
    len[n] = 1;
    wr[n++] = true;
    if (!vq_add(vq, addr, len, wr, n, r))
        return false;
    r->busy = true;
    inflight++;
    return true;
}

static void ioerr(struct req *r)
{
    ioerrs++;
    if (ioerr_lines++ < MAX_IOERR_LINES)
        uprintf("FERRY-BLK-IOERR op=%s sector=%llu status=%u\n",
                r->type == VIRTIO_BLK_T_OUT ? "write" : r->type == VIRTIO_BLK_T_IN ? "read" :
                r->type == VIRTIO_BLK_T_FLUSH ? "flush" : "get_id", r->sector, *r->status);
    else if (ioerr_lines == MAX_IOERR_LINES + 1)
        uprintf("ferry-guest: blk: further I/O errors are counted, not printed\n");
}

static struct req *free_req(void)
{
    for (u32 i = 0; i < qd; i++)
        if (!reqs[i].busy)
            return &reqs[i];
    return NULL;
}

static void start_phase(int ph, u64 now)
{
    phase = ph;
    next_sector = 0;
    issued = 0;
    rng = (seed ^ (gen << 20)) * 0x9e3779b97f4a7c15ull | 1;
    to_issue = rand_bytes ? area * SECTOR / rand_bytes : 0;
    phase_start = now;
    phase_bytes = 0;
    irq_start = virtio_irqs(dev);
}

static void end_phase(u64 now)
{
    u64 ms = (now - phase_start) / NS_PER_MS;
    u64 mib = phase_bytes / MiB;
    uprintf("FERRY-BLK-DONE mode=%s mib=%llu ms=%llu mibps=%llu irqs=%llu\n",
            phase == PH_VERIFY ? "verify" : "write", mib, ms,
            ms ? phase_bytes * 1000 / MiB / ms : 0, virtio_irqs(dev) - irq_start);
}

/* Issues the next data request of the running phase; false if none left. */
static bool issue_next(struct req *r)
{
    u64 sector;
    u32 nsect;

    if (rand_bytes) {
        if (issued >= to_issue)
            return false;
        u32 per = rand_bytes / SECTOR;
        u64 chunks = area / per;
        sector = (xorshift() % chunks) * per;
        nsect = per;
    } else {
        if (next_sector >= area)
            return false;
        sector = next_sector;
        nsect = (u32)MIN((u64)(req_bytes / SECTOR), area - next_sector);
    }
    bool wr = phase == PH_WRITE;
    if (wr)
        fill(r->data, sector, nsect);
    if (!submit(r, wr ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, sector, nsect))
        return false;
    if (rand_bytes)
        issued++;
    else
        next_sector += nsect;
    return true;
}

static void complete(struct req *r)
{
    r->busy = false;
    inflight--;
    if (*r->status != VIRTIO_BLK_S_OK) {
        ioerr(r);
        return;
    }
    u64 bytes = (u64)r->nsect * SECTOR;
    if (r->type == VIRTIO_BLK_T_IN) {
        check(r->data, r->sector, r->nsect);
        verified_bytes += bytes;
        phase_bytes += bytes;
    } else if (r->type == VIRTIO_BLK_T_OUT) {
        written_bytes += bytes;
        phase_bytes += bytes;
    }
}

static bool remaining(void)
{
    return rand_bytes ? issued < to_issue : next_sector < area;
}

/* A write or verify pass is complete (after its flush): report, go on. */
static void finish_phase(u64 now)
{
    end_phase(now);
    if (mode != MODE_LOOP) {
        phase = PH_DONE;
    } else if (phase == PH_VERIFY) {
        gen++;
        start_phase(PH_WRITE, now);
    } else {
        start_phase(PH_VERIFY, now);
    }
}

void blk_poll(u64 now)
{
    struct req *r;

    if (!blk_active())
        return;
    while ((r = vq_get(vq, NULL)) != NULL)
        complete(r);

    if (phase == PH_WRITE || phase == PH_VERIFY) {
        while (remaining() && (r = free_req()) != NULL && issue_next(r))
            ;
        vq_kick(vq);
        if (!remaining() && inflight == 0) {
            if (phase == PH_WRITE && can_flush) {
                phase = PH_FLUSH;
                submit(free_req(), VIRTIO_BLK_T_FLUSH, 0, 0);
                vq_kick(vq);
            } else {
                finish_phase(now);
            }
        }
    } else if (phase == PH_FLUSH && inflight == 0) {
        phase = PH_WRITE;
        finish_phase(now);
    }
    if (mode == MODE_LOOP && now >= next_hb) {
        uprintf("FERRY-BLK-HEARTBEAT written_mib=%llu verified_mib=%llu\n",
                written_bytes / MiB, verified_bytes / MiB);
        next_hb = MAX(next_hb + NS_PER_S, now);
    }
}

/* Synchronous request during init (GET_ID). */
static bool sync_req(u32 type)
{
    struct req *r = &reqs[0];
    if (!submit(r, type, 0, 0))
        return false;
    vq_kick(vq);
    u64 t0 = unow(0);
    while (!vq_get(vq, NULL)) {
        if (unow(0) - t0 > NS_PER_S)
            return false;
        cpu_relax();
    }
    r->busy = false;
    inflight--;
    return *r->status == VIRTIO_BLK_S_OK;
}

bool blk_init(struct vdev *d)
{
    const char *c = g_shared.boot.cmdline;

    mode = cmdline_is(c, "ferry.blk", "write") ? MODE_WRITE :
           cmdline_is(c, "ferry.blk", "verify") ? MODE_VERIFY :
           cmdline_is(c, "ferry.blk", "loop") ? MODE_LOOP : MODE_NONE;
    if (mode == MODE_NONE) {
        uprintf("ferry-guest: ferry.blk must be write, verify or loop\n");
        return false;
    }
    u64 want = (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
               (1ull << VIRTIO_BLK_F_RO) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
               (1ull << VIRTIO_BLK_F_FLUSH);
    if (!virtio_negotiate(d, want))
        return false;
    /* 5.2.4 Device configuration layout: capacity (le64, 512-byte sectors),
     * size_max (le32), seg_max (le32). Read as 32-bit halves. */
    volatile u32 *cfg = (volatile u32 *)d->devcfg;
    capacity = cfg[0] | (u64)cfg[1] << 32;
    size_max = (d->features & (1ull << VIRTIO_BLK_F_SIZE_MAX)) ? cfg[2] : 0;
    nseg_max = (d->features & (1ull << VIRTIO_BLK_F_SEG_MAX)) ? cfg[3] : MAX_SEGS;
    ro = d->features & (1ull << VIRTIO_BLK_F_RO);
    can_flush = d->features & (1ull << VIRTIO_BLK_F_FLUSH);
    if (!virtio_setup_queue(d, 0, 256)) {
        uprintf("ferry-guest: virtio-blk: queue 0 setup failed\n");
        return false;
    }
    vq = &d->vq[0];
    vq->irq_batch = 1;

    seed = cmdline_u64(c, "ferry.blk.seed", 1);
    gen = cmdline_u64(c, "ferry.blk.gen", 1);
    req_bytes = (u32)MIN(MAX(cmdline_u64(c, "ferry.blk.req", 1024), 1ull), 4096ull) * 1024;
    rand_bytes = (u32)MIN(cmdline_u64(c, "ferry.blk.random", 0), 4096ull) * 1024;
    qd = (u32)MIN(MAX(cmdline_u64(c, "ferry.blk.qd", 16), 1ull), (u64)MAX_QD);
    u64 mib = cmdline_u64(c, "ferry.blk.mib", 0);
    area = mib ? MIN(capacity, mib * (MiB / SECTOR)) : capacity;

    /* Segments: size_max bytes each (or one for the whole request), at most
     * min(seg_max, MAX_SEGS); the chain (2 + segments) x qd must fit the ring. */
    u32 maxreq = MAX(req_bytes, rand_bytes);
    if (!size_max || size_max > maxreq)
        size_max = maxreq;
    size_max = (u32)ALIGN_DOWN(MAX(size_max, SECTOR), SECTOR);
    u32 segs = (maxreq + size_max - 1) / size_max;
    if (segs > MIN(nseg_max, (u32)MAX_SEGS)) {
        segs = MIN(nseg_max, (u32)MAX_SEGS);
        req_bytes = MIN(req_bytes, segs * size_max);
        rand_bytes = MIN(rand_bytes, segs * size_max);
    }
    qd = MIN(qd, vq->size / (segs + 2));
    if (rand_bytes && area < rand_bytes / SECTOR)
        rand_bytes = 0;
    for (u32 i = 0; i < qd; i++) {
        struct req *r = &reqs[i];
        r->hdr = dma_alloc(sizeof(*r->hdr) + 1, 16);
        r->status = (u8 *)(r->hdr + 1);
        r->data = dma_alloc(MAX(MAX(req_bytes, rand_bytes), 512u), 4096);
        if (!r->hdr || !r->data) {
            uprintf("ferry-guest: virtio-blk: no memory for qd=%u\n", qd);
            qd = i;
            break;
        }
    }
    if (!qd)
        return false;
    dev = d;
    virtio_driver_ok(d);

    char serial[24] = "-";
    memset(reqs[0].data, 0, 20);
    if (sync_req(VIRTIO_BLK_T_GET_ID)) {
        u32 n = 0;
        for (; n < 20 && reqs[0].data[n] > ' ' && reqs[0].data[n] < 0x7f; n++)
            serial[n] = (char)reqs[0].data[n];
        serial[n ? n : 1] = 0;
    }
    if (!g_opt.quiet)
        uprintf("ferry-guest: virtio-blk 00:%02x.%u negotiated 0x%llx, queue %u, qd %u, "
                "req %u KiB, segment %u bytes, area %llu sectors\n", d->devfn >> 3,
                d->devfn & 7, d->features, vq->size, qd, rand_bytes ? rand_bytes / 1024 :
                req_bytes / 1024, size_max, area);
    uprintf("FERRY-BLK-READY capacity_sectors=%llu serial=%s ro=%u features=0x%llx\n",
            capacity, serial, ro ? 1 : 0, d->offered);
    return true;
}

/* Called at READY. */
void blk_start(u64 now);
void blk_start(u64 now)
{
    if (!blk_active())
        return;
    next_hb = now + NS_PER_S;
    start_phase(mode == MODE_VERIFY ? PH_VERIFY : PH_WRITE, now);
}

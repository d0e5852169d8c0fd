/*
 * virtio-blk device model (virtio 1.2 section 5.2) on a raw image, with io_uring.
 *
 * Life of a request: queue_notify() (I/O thread, dev->lock held) pops an element into a
 * BlkReq, parses its header (5.2.6), checks it and either completes it at once (GET_ID,
 * errors, unsupported types) or prepares one io_uring operation for it.  One
 * io_uring_submit() sends the batch.  A request has at most one operation in flight at a
 * time, so the ring (FERRY_VIRTIO_BLK_QUEUE_SIZE entries) never fills and its completion
 * queue (twice that) never overflows.  The ring's registered eventfd wakes blk_ring_ready()
 * on the I/O thread, which reaps completions, resubmits the rest of short transfers, the
 * next discard segment or the final fdatasync, writes status bytes, pushes and notifies
 * once per batch.  pause(), reset() and free() drain the ring on the calling thread.
 */
#include "virtio/blk.h"

#include "util/log.h"
#include "virtio/blk_image.h"

#include <errno.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <linux/falloc.h>
#include <liburing.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SECTOR_SHIFT 9
#define SECTOR_SIZE  512u

/* Feature bits (section 5.2.3). */
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* Request types and status values (section 5.2.6). */
#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_WZ_F_UNMAP 1u /* flags of a discard/write-zeroes segment */

#define REQ_HEADER_SIZE 16 /* le32 type, le32 reserved, le64 sector */
#define DWZ_SEG_SIZE    16 /* le64 sector, le32 num_sectors, le32 flags */

/* Device configuration layout (section 5.2.4), byte offsets. */
#define CFG_CAPACITY         0
#define CFG_SEG_MAX          12
#define CFG_BLK_SIZE         20
#define CFG_MAX_DISCARD_SECT 36
#define CFG_MAX_DISCARD_SEG  40
#define CFG_DISCARD_ALIGN    44
#define CFG_MAX_WZ_SECT      48
#define CFG_MAX_WZ_SEG       52
#define CFG_WZ_MAY_UNMAP     56
#define CFG_SIZE             60 /* up to and including unused1[3] */

/* Limits we advertise. */
#define BLK_SEG_MAX         (FERRY_VIRTIO_BLK_QUEUE_SIZE - 2) /* data segments per request */
#define BLK_DWZ_MAX_SECTORS (1u << 22)                        /* 2 GiB per segment */
#define BLK_DWZ_MAX_SEGS    32
#define BLK_DISCARD_ALIGN   8 /* sectors: 4 KiB, the usual file system block */

#define BLK_MAX_RETRIES   64 /* of an operation failing with EAGAIN/EINTR */
#define BLK_LOGGED_ERRORS 16 /* I/O errors logged per device, then only counted */
#define BLK_ZERO_BUF_SIZE (64 * 1024)
#define BLK_STATE_VERSION 1

static const uint8_t blk_zeroes[BLK_ZERO_BUF_SIZE];

typedef enum {
    OP_READ,       /* readv into the data iovecs */
    OP_WRITE,      /* writev from the data iovecs */
    OP_FALLOCATE,  /* punch a hole / zero a range of the current segment */
    OP_ZERO_WRITE, /* write zeroes from blk_zeroes (no fallocate support) */
    OP_FSYNC,      /* fdatasync, completing the request */
} BlkOp;

typedef struct {
    uint64_t offset; /* bytes */
    uint64_t len;    /* bytes */
    uint32_t flags;
} BlkRange;

typedef struct FerryVirtioBlk FerryVirtioBlk;

typedef struct BlkReq {
    FerryVirtioBlk *blk;
    struct BlkReq *next_free;
    FerryVirtqElement *elem; /* owned, reused */
    uint32_t type;
    uint8_t *status; /* HVA of the status byte (last writable byte) */
    uint64_t status_gpa;
    uint64_t data_len; /* IN: data bytes the driver asked for */

    BlkOp op;
    unsigned retries;
    uint64_t offset;    /* image offset of the current operation, bytes */
    uint64_t remaining; /* bytes left of the current read/write/zero write */
    struct iovec *iov;  /* data iovecs, FERRY_VIRTQ_MAX_SEGS; advanced on short I/O */
    unsigned iov_idx, niov;

    BlkRange ranges[BLK_DWZ_MAX_SEGS]; /* DISCARD / WRITE_ZEROES */
    unsigned nr_ranges, range_idx;
    int fl_mode; /* fallocate mode for the current range */
} BlkReq;

struct FerryVirtioBlk {
    FerryVirtioDev dev; /* first */
    char *path;
    char *serial; /* NULL or at most FERRY_DISK_SERIAL_MAX bytes */
    gboolean readonly;
    int fd;            /* the image, locked (blk_image.h) unless !locked */
    gboolean locked;   /* FALSE while an incoming migration has not taken the image over */
    uint64_t capacity; /* sectors */
    uint8_t config[CFG_SIZE];

    struct io_uring ring;
    gboolean ring_ok;
    int efd;         /* registered with the ring */
    GSource *source; /* watches efd on the I/O thread */

    BlkReq *reqs[FERRY_VIRTIO_BLK_QUEUE_SIZE]; /* allocated on first use */
    unsigned nr_reqs;
    BlkReq *free_reqs;
    unsigned inflight; /* operations prepared or submitted, not yet reaped */
    gboolean starved;  /* queue_notify stopped for lack of a BlkReq */
    gboolean dropping; /* reset/free: finish requests without touching the guest */
    gboolean pushed;   /* used buffers pushed since the last notification */
    unsigned errors;
    FerryVirtioBlkStats stats; /* under dev.lock */
};

static FerryVirtioBlk *to_blk(FerryVirtioDev *dev)
{
    return (FerryVirtioBlk *) dev;
}

static const char *blk_name(FerryVirtioBlk *blk)
{
    return blk->dev.id ? blk->dev.id : blk->path;
}

/* Fills @dst with the part [@skip, @skip + @len) of @src[0..@n); returns the entries used. */
static unsigned iov_slice(const struct iovec *src, unsigned n, uint64_t skip, uint64_t len,
                          struct iovec *dst)
{
    unsigned k = 0;
    for (unsigned i = 0; i < n && len; i++) {
        uint64_t l = src[i].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        uint64_t c = MIN(l - skip, len);
        if (c) {
            dst[k].iov_base = (uint8_t *) src[i].iov_base + skip;
            dst[k].iov_len = c;
            k++;
        }
        len -= c;
        skip = 0;
    }
    return k;
}

static void blk_log_error(FerryVirtioBlk *blk, const char *what, uint64_t offset, int err)
{
    blk->errors++;
    if (blk->errors <= BLK_LOGGED_ERRORS)
        ferry_log("%s: %s at byte %" G_GUINT64_FORMAT " of '%s' failed: %s%s", blk_name(blk), what,
                  offset, blk->path, g_strerror(err),
                  blk->errors == BLK_LOGGED_ERRORS ? " (further errors are not logged)" : "");
}

/* ---- request pool ---- */

static BlkReq *blk_req_get(FerryVirtioBlk *blk)
{
    BlkReq *req = blk->free_reqs;
    if (req) {
        blk->free_reqs = req->next_free;
        return req;
    }
    if (blk->nr_reqs == FERRY_VIRTIO_BLK_QUEUE_SIZE)
        return NULL;
    req = g_new0(BlkReq, 1);
    req->blk = blk;
    req->elem = g_new0(FerryVirtqElement, 1);
    req->iov = g_new0(struct iovec, FERRY_VIRTQ_MAX_SEGS);
    blk->reqs[blk->nr_reqs++] = req;
    return req;
}

static void blk_req_put(FerryVirtioBlk *blk, BlkReq *req)
{
    req->next_free = blk->free_reqs;
    blk->free_reqs = req;
}

/* Counts @req, completed to the driver with @status, in the device's statistics. */
static void blk_count(FerryVirtioBlk *blk, const BlkReq *req, uint8_t status)
{
    FerryVirtioBlkStats *st = &blk->stats;
    gboolean ok = status == VIRTIO_BLK_S_OK;
    switch (req->type) {
    case VIRTIO_BLK_T_IN:
        st->read_requests++;
        if (ok)
            st->read_bytes += req->data_len;
        break;
    case VIRTIO_BLK_T_OUT:
        st->write_requests++;
        if (ok)
            st->write_bytes += req->elem->out_bytes - REQ_HEADER_SIZE;
        break;
    case VIRTIO_BLK_T_FLUSH:
        st->flush_requests++;
        break;
    default:
        break;
    }
    if (!ok)
        st->errors++;
}

/*
 * Finishes @req with @status: writes the status byte and pushes the element with @written
 * bytes (data + status), unless the device is being reset or is broken, in which case the
 * guest is not touched (pages a read may have filled are still marked dirty).
 */
static void blk_req_complete(FerryVirtioBlk *blk, BlkReq *req, uint8_t status, uint32_t written)
{
    FerryVirtioDev *dev = &blk->dev;
    if (blk->dropping || ferry_virtio_is_broken(dev)) {
        if (req->type == VIRTIO_BLK_T_IN) {
            const FerryVirtqElement *e = req->elem;
            for (unsigned i = e->nr_out; i < e->nr_out + e->nr_in; i++)
                ferry_guest_memory_mark_dirty(dev->mem, e->gpa[i], e->iov[i].iov_len);
        }
    } else {
        *req->status = status;
        /* push() marks the first @written writable bytes; the status byte may lie beyond. */
        ferry_guest_memory_mark_dirty(dev->mem, req->status_gpa, 1);
        ferry_virtq_push(&dev->vqs[0], req->elem, written);
        blk->pushed = TRUE;
        blk_count(blk, req, status);
    }
    blk_req_put(blk, req);
}

/* Bytes of the writable part reported for a finished request (section 2.7.8: used len). */
static uint32_t blk_req_written(const BlkReq *req)
{
    /* An IN may have filled its buffers even when it failed: count them all. */
    return req->type == VIRTIO_BLK_T_IN ? (uint32_t) req->data_len + 1 : 1;
}

/* ---- io_uring ---- */

static void blk_submit(FerryVirtioBlk *blk)
{
    for (unsigned tries = 0; io_uring_sq_ready(&blk->ring) > 0; tries++) {
        int r = io_uring_submit(&blk->ring);
        if (r >= 0)
            continue;
        if ((r == -EINTR || r == -EAGAIN || r == -EBUSY) && tries < BLK_MAX_RETRIES) {
            if (r != -EINTR)
                g_usleep(100);
            continue;
        }
        /* The entries stay queued; the next submit (or a drain) sends them. */
        ferry_log("%s: io_uring_submit failed: %s", blk_name(blk), g_strerror(-r));
        return;
    }
}

/* Prepares the current operation of @req.  FALSE if the ring has no room (not expected). */
static gboolean blk_req_prep(FerryVirtioBlk *blk, BlkReq *req)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&blk->ring);
    if (!sqe) {
        blk_submit(blk);
        sqe = io_uring_get_sqe(&blk->ring);
        if (!sqe)
            return FALSE;
    }
    gboolean writeback = ferry_virtio_has_feature(&blk->dev, VIRTIO_BLK_F_FLUSH);
    switch (req->op) {
    case OP_READ:
        io_uring_prep_readv(sqe, blk->fd, req->iov + req->iov_idx, req->niov - req->iov_idx,
                            req->offset);
        break;
    case OP_WRITE:
        io_uring_prep_writev(sqe, blk->fd, req->iov + req->iov_idx, req->niov - req->iov_idx,
                             req->offset);
        if (!writeback)
            sqe->rw_flags = RWF_DSYNC; /* 5.2.6.2: durable before completion */
        break;
    case OP_ZERO_WRITE:
        io_uring_prep_write(sqe, blk->fd, blk_zeroes,
                            (unsigned) MIN(req->remaining, (uint64_t) BLK_ZERO_BUF_SIZE),
                            req->offset);
        break;
    case OP_FALLOCATE: {
        const BlkRange *r = &req->ranges[req->range_idx];
        io_uring_prep_fallocate(sqe, blk->fd, req->fl_mode, r->offset, r->len);
        break;
    }
    case OP_FSYNC:
        io_uring_prep_fsync(sqe, blk->fd, IORING_FSYNC_DATASYNC);
        break;
    }
    io_uring_sqe_set_data(sqe, req);
    blk->inflight++;
    return TRUE;
}

/* (Re)queues the current operation of @req, or fails the request if it cannot. */
static void blk_req_queue(FerryVirtioBlk *blk, BlkReq *req)
{
    if (!blk_req_prep(blk, req)) {
        blk_log_error(blk, "queueing a request", req->offset, EBUSY);
        blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, blk_req_written(req));
    }
}

static void blk_req_start(FerryVirtioBlk *blk, BlkReq *req, BlkOp op)
{
    req->op = op;
    req->retries = 0;
    blk_req_queue(blk, req);
}

/* DISCARD / WRITE_ZEROES: the next non-empty range, the final fdatasync, or completion. */
static void blk_req_next_range(FerryVirtioBlk *blk, BlkReq *req)
{
    while (req->range_idx < req->nr_ranges && req->ranges[req->range_idx].len == 0)
        req->range_idx++;
    if (req->range_idx < req->nr_ranges) {
        const BlkRange *r = &req->ranges[req->range_idx];
        if (req->type == VIRTIO_BLK_T_DISCARD || (r->flags & VIRTIO_BLK_WZ_F_UNMAP))
            req->fl_mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        else
            req->fl_mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
        req->offset = r->offset;
        blk_req_start(blk, req, OP_FALLOCATE);
    } else if (!ferry_virtio_has_feature(&blk->dev, VIRTIO_BLK_F_FLUSH)) {
        blk_req_start(blk, req, OP_FSYNC); /* writethrough: durable before completion */
    } else {
        blk_req_complete(blk, req, VIRTIO_BLK_S_OK, 1);
    }
}

/* A failed fallocate of the current range: fall back where the result must be zeroes. */
static gboolean blk_req_fallocate_fallback(FerryVirtioBlk *blk, BlkReq *req, int err)
{
    if (err != EOPNOTSUPP && err != EINVAL && err != ENOSYS)
        return FALSE;
    const BlkRange *r = &req->ranges[req->range_idx];
    if (req->type == VIRTIO_BLK_T_DISCARD) {
        /* Discarding is a hint (5.2.6.2): the data may stay. */
        req->range_idx++;
        blk_req_next_range(blk, req);
    } else if (req->fl_mode & FALLOC_FL_ZERO_RANGE) {
        req->fl_mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; /* reads back as zeroes */
        blk_req_start(blk, req, OP_FALLOCATE);
    } else {
        req->offset = r->offset;
        req->remaining = r->len;
        blk_req_start(blk, req, OP_ZERO_WRITE);
    }
    return TRUE;
}

/* Moves @req past @n transferred bytes: its offset, and its data iovecs (none for zeroes). */
static void blk_req_advance(BlkReq *req, uint64_t n)
{
    req->offset += n;
    req->remaining -= n;
    while (n && req->iov_idx < req->niov) {
        struct iovec *v = &req->iov[req->iov_idx];
        uint64_t c = MIN(n, (uint64_t) v->iov_len);
        v->iov_base = (uint8_t *) v->iov_base + c;
        v->iov_len -= c;
        n -= c;
        if (v->iov_len == 0)
            req->iov_idx++;
    }
}

/* One completion of @req's current operation with result @res (bytes or -errno). */
static void blk_req_done(FerryVirtioBlk *blk, BlkReq *req, int res)
{
    if (blk->dropping) {
        blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, blk_req_written(req));
        return;
    }
    if ((res == -EAGAIN || res == -EINTR) && ++req->retries < BLK_MAX_RETRIES) {
        blk_req_queue(blk, req);
        return;
    }
    static const char *const names[] = {[OP_READ] = "reading",
                                        [OP_WRITE] = "writing",
                                        [OP_FALLOCATE] = "deallocating",
                                        [OP_ZERO_WRITE] = "writing zeroes",
                                        [OP_FSYNC] = "flushing"};
    if (res < 0) {
        if (req->op == OP_FALLOCATE && blk_req_fallocate_fallback(blk, req, -res))
            return;
        blk_log_error(blk, names[req->op], req->offset, -res);
        blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, blk_req_written(req));
        return;
    }
    req->retries = 0;
    switch (req->op) {
    case OP_READ:
    case OP_WRITE:
    case OP_ZERO_WRITE:
        if (res == 0 && req->remaining > 0) {
            /* End of file inside the capacity: the image shrank under us. */
            blk_log_error(blk, names[req->op], req->offset, EIO);
            blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, blk_req_written(req));
            return;
        }
        blk_req_advance(req, MIN((uint64_t) res, req->remaining));
        if (req->remaining > 0) {
            blk_req_queue(blk, req); /* the rest of a short transfer */
        } else if (req->op == OP_ZERO_WRITE) {
            req->range_idx++;
            blk_req_next_range(blk, req);
        } else {
            blk_req_complete(blk, req, VIRTIO_BLK_S_OK, blk_req_written(req));
        }
        break;
    case OP_FALLOCATE:
        req->range_idx++;
        blk_req_next_range(blk, req);
        break;
    case OP_FSYNC:
        blk_req_complete(blk, req, VIRTIO_BLK_S_OK, 1);
        break;
    }
}

static void blk_notify(FerryVirtioBlk *blk)
{
    if (blk->pushed) {
        blk->pushed = FALSE;
        if (!blk->dropping && !ferry_virtio_is_broken(&blk->dev))
            ferry_virtio_notify_queue(&blk->dev, 0);
    }
}

/* Handles every completion in the ring, then submits what that queued.  Lock held. */
static void blk_reap(FerryVirtioBlk *blk)
{
    for (;;) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&blk->ring, head, cqe)
        {
            BlkReq *req = io_uring_cqe_get_data(cqe);
            int res = cqe->res;
            n++;
            blk->inflight--;
            blk_req_done(blk, req, res);
        }
        if (n == 0)
            break;
        io_uring_cq_advance(&blk->ring, n);
    }
    blk_submit(blk);
}

/* Waits until no operation is in flight, handling completions as they come.  Lock held. */
static void blk_drain(FerryVirtioBlk *blk)
{
    while (blk->inflight > 0) {
        int r = io_uring_submit_and_wait(&blk->ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
            ferry_log("%s: waiting for I/O failed: %s", blk_name(blk), g_strerror(-r));
            g_usleep(1000);
        }
        blk_reap(blk);
    }
}

/* ---- requests ---- */

static gboolean blk_range_ok(FerryVirtioBlk *blk, uint64_t sector, uint64_t sectors)
{
    return sector <= blk->capacity && sectors <= blk->capacity - sector;
}

/* DISCARD / WRITE_ZEROES (5.2.6): parses the segments after the header. */
static void blk_start_dwz(FerryVirtioBlk *blk, BlkReq *req)
{
    FerryVirtqElement *e = req->elem;
    gboolean discard = req->type == VIRTIO_BLK_T_DISCARD;
    unsigned feature = discard ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES;
    if (blk->readonly) {
        blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, 1);
        return;
    }
    if (!ferry_virtio_has_feature(&blk->dev, feature)) {
        blk_req_complete(blk, req, VIRTIO_BLK_S_UNSUPP, 1);
        return;
    }
    uint64_t payload = e->out_bytes - REQ_HEADER_SIZE;
    if (payload == 0 || payload % DWZ_SEG_SIZE || payload / DWZ_SEG_SIZE > BLK_DWZ_MAX_SEGS) {
        blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, 1);
        return;
    }
    req->nr_ranges = (unsigned) (payload / DWZ_SEG_SIZE);
    req->range_idx = 0;
    uint8_t status = VIRTIO_BLK_S_OK;
    for (unsigned i = 0; i < req->nr_ranges; i++) {
        uint8_t seg[DWZ_SEG_SIZE];
        ferry_iov_to_buf(e->iov, e->nr_out, REQ_HEADER_SIZE + (size_t) i * DWZ_SEG_SIZE, seg, sizeof(seg));
        uint64_t sector = ferry_le_load64(seg);
        uint32_t num = ferry_le_load32(seg + 8), flags = ferry_le_load32(seg + 12);
        /* Unknown flags, or UNMAP on a discard: UNSUPP (5.2.6.2, device requirements). */
        if ((flags & ~VIRTIO_BLK_WZ_F_UNMAP) || (discard && flags))
            status = VIRTIO_BLK_S_UNSUPP;
        else if (num > BLK_DWZ_MAX_SECTORS || !blk_range_ok(blk, sector, num))
            status = status == VIRTIO_BLK_S_OK ? VIRTIO_BLK_S_IOERR : status;
        req->ranges[i].offset = sector << SECTOR_SHIFT;
        req->ranges[i].len = (uint64_t) num << SECTOR_SHIFT;
        req->ranges[i].flags = flags;
    }
    if (status != VIRTIO_BLK_S_OK) {
        blk_req_complete(blk, req, status, 1);
        return;
    }
    blk_req_next_range(blk, req);
}

/* Starts or completes the request just popped into @req.  FALSE if the driver broke it. */
static gboolean blk_handle(FerryVirtioBlk *blk, BlkReq *req)
{
    FerryVirtqElement *e = req->elem;
    if (e->out_bytes < REQ_HEADER_SIZE) {
        g_autofree char *why = g_strdup_printf("virtio-blk request header is %" G_GUINT64_FORMAT
                                               " bytes, the driver must send %d "
                                               "(virtio 1.2 section 5.2.6)",
                                               e->out_bytes, REQ_HEADER_SIZE);
        blk_req_put(blk, req);
        ferry_virtio_set_broken(&blk->dev, why);
        return FALSE;
    }
    /* The status byte is the last writable byte (5.2.6), wherever the framing puts it. */
    int last = -1;
    for (unsigned i = e->nr_out; i < e->nr_out + e->nr_in; i++)
        if (e->iov[i].iov_len)
            last = (int) i;
    if (last < 0) {
        blk_req_put(blk, req);
        ferry_virtio_set_broken(&blk->dev, "virtio-blk request without a writable status byte "
                                           "(virtio 1.2 section 5.2.6)");
        return FALSE;
    }
    req->status = (uint8_t *) e->iov[last].iov_base + e->iov[last].iov_len - 1;
    req->status_gpa = e->gpa[last] + e->iov[last].iov_len - 1;

    uint8_t hdr[REQ_HEADER_SIZE];
    ferry_iov_to_buf(e->iov, e->nr_out, 0, hdr, sizeof(hdr));
    req->type = ferry_le_load32(hdr);
    uint64_t sector = ferry_le_load64(hdr + 8);
    req->data_len = 0;
    req->iov_idx = 0;
    req->niov = 0;

    switch (req->type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
        gboolean in = req->type == VIRTIO_BLK_T_IN;
        uint64_t len = in ? e->in_bytes - 1 : e->out_bytes - REQ_HEADER_SIZE;
        if (in)
            req->data_len = len;
        if (!in && blk->readonly) {
            blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, 1);
        } else if (len % SECTOR_SIZE || len >= UINT32_MAX ||
                   !blk_range_ok(blk, sector, len >> SECTOR_SHIFT)) {
            req->data_len = 0; /* nothing was written into the buffers */
            blk_req_complete(blk, req, VIRTIO_BLK_S_IOERR, 1);
        } else if (len == 0) {
            blk_req_complete(blk, req, VIRTIO_BLK_S_OK, 1);
        } else {
            if (in)
                req->niov = iov_slice(e->iov + e->nr_out, e->nr_in, 0, len, req->iov);
            else
                req->niov = iov_slice(e->iov, e->nr_out, REQ_HEADER_SIZE, len, req->iov);
            req->offset = sector << SECTOR_SHIFT;
            req->remaining = len;
            blk_req_start(blk, req, in ? OP_READ : OP_WRITE);
        }
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        if (blk->readonly)
            blk_req_complete(blk, req, VIRTIO_BLK_S_OK, 1); /* nothing was written */
        else
            blk_req_start(blk, req, OP_FSYNC);
        break;
    case VIRTIO_BLK_T_GET_ID: {
        /* 20 bytes, NUL-padded when shorter (5.2.6); fewer if the buffer is smaller. */
        char id[FERRY_DISK_SERIAL_MAX] = {0};
        if (blk->serial)
            memcpy(id, blk->serial, MIN(strlen(blk->serial), sizeof(id)));
        size_t n = MIN(sizeof(id), (size_t) (e->in_bytes - 1));
        n = ferry_iov_from_buf(e->iov + e->nr_out, e->nr_in, 0, id, n);
        blk_req_complete(blk, req, VIRTIO_BLK_S_OK, (uint32_t) n + 1);
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        blk_start_dwz(blk, req);
        break;
    default:
        blk_req_complete(blk, req, VIRTIO_BLK_S_UNSUPP, 1);
        break;
    }
    return TRUE;
}

/* Pops and starts every available request, one submit for the batch.  Lock held. */
static void blk_process_queue(FerryVirtioBlk *blk)
{
    FerryVirtioDev *dev = &blk->dev;
    blk->starved = FALSE;
    while (!ferry_virtio_is_broken(dev)) {
        BlkReq *req = blk_req_get(blk);
        if (!req) {
            blk->starved = TRUE; /* picked up again by the next completion */
            break;
        }
        g_autoptr(GError) error = NULL;
        int r = ferry_virtq_pop(&dev->vqs[0], req->elem, &error);
        if (r <= 0) {
            blk_req_put(blk, req);
            if (r < 0)
                ferry_virtio_set_broken(dev, error->message);
            break;
        }
        if (!blk_handle(blk, req))
            break;
    }
    blk_submit(blk);
    blk_notify(blk);
}

/* The ring's eventfd is readable: completions to handle (I/O thread). */
static gboolean blk_ring_ready(gint fd, GIOCondition cond, gpointer data)
{
    FerryVirtioBlk *blk = data;
    uint64_t v;
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
        ferry_log("%s: reading the completion eventfd: %s", blk_name(blk), g_strerror(errno));
    g_mutex_lock(&blk->dev.lock);
    blk_reap(blk);
    if (blk->starved && blk->dev.vqs[0].enabled && !blk->dev.paused &&
        !ferry_virtio_is_broken(&blk->dev))
        blk_process_queue(blk);
    blk_notify(blk);
    g_mutex_unlock(&blk->dev.lock);
    return G_SOURCE_CONTINUE;
}

/* ---- ops ---- */

static uint64_t blk_get_features(FerryVirtioDev *dev)
{
    FerryVirtioBlk *blk = to_blk(dev);
    uint64_t f = (1ULL << VIRTIO_BLK_F_SEG_MAX) | (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
                 (1ULL << VIRTIO_BLK_F_FLUSH);
    if (blk->readonly)
        f |= 1ULL << VIRTIO_BLK_F_RO;
    else
        f |= (1ULL << VIRTIO_BLK_F_DISCARD) | (1ULL << VIRTIO_BLK_F_WRITE_ZEROES);
    return f;
}

static void blk_read_config(FerryVirtioDev *dev, uint32_t offset, uint8_t *data, uint32_t len)
{
    FerryVirtioBlk *blk = to_blk(dev);
    memset(data, 0, len);
    if (offset < CFG_SIZE)
        memcpy(data, blk->config + offset, MIN(len, CFG_SIZE - offset));
}

static gboolean blk_realize(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioBlk *blk = to_blk(dev);
    blk->source = g_unix_fd_source_new(blk->efd, G_IO_IN);
    g_source_set_callback(blk->source, G_SOURCE_FUNC(blk_ring_ready), blk, NULL);
    g_source_attach(blk->source, ferry_iothread_context(dev->io));
    return TRUE;
}

static void blk_reset(FerryVirtioDev *dev)
{
    FerryVirtioBlk *blk = to_blk(dev);
    blk->dropping = TRUE;
    blk_drain(blk);
    blk->dropping = FALSE;
    blk->starved = FALSE;
    blk->pushed = FALSE;
}

static void blk_queue_notify(FerryVirtioDev *dev, unsigned index)
{
    FerryVirtioBlk *blk = to_blk(dev);
    /* The transport calls this only with DRIVER_OK set, not paused, not broken. */
    if (index == 0)
        blk_process_queue(blk);
}

static void blk_pause(FerryVirtioDev *dev)
{
    FerryVirtioBlk *blk = to_blk(dev);
    blk_drain(blk);
    blk_notify(blk);
}

static void blk_save(FerryVirtioDev *dev, FerryStateWriter *w)
{
    FerryVirtioBlk *blk = to_blk(dev);
    ferry_state_put_u64(w, blk->capacity);
    ferry_state_put_u8(w, blk->readonly ? 1 : 0);
}

static gboolean blk_load(FerryVirtioDev *dev, uint8_t version, FerryStateReader *r, GError **error)
{
    FerryVirtioBlk *blk = to_blk(dev);
    uint64_t capacity;
    uint8_t ro;
    if (version != BLK_STATE_VERSION) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_VERSION,
                    "%s: virtio-blk state version %u is not supported (this build reads %u)",
                    blk_name(blk), version, BLK_STATE_VERSION);
        return FALSE;
    }
    if (!ferry_state_get_u64(r, &capacity, error) || !ferry_state_get_u8(r, &ro, error))
        return FALSE;
    if (capacity != blk->capacity) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: the saved disk has %" G_GUINT64_FORMAT " sectors of 512 bytes but "
                    "'%s' has %" G_GUINT64_FORMAT ": give the target the same disk (a copy "
                    "of the source's image, %" G_GUINT64_FORMAT " bytes)",
                    blk_name(blk), capacity, blk->path, blk->capacity, capacity << SECTOR_SHIFT);
        return FALSE;
    }
    if ((ro != 0) != blk->readonly) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: the saved disk was %s but '%s' is opened %s: use the same readonly= "
                    "setting on both sides",
                    blk_name(blk), ro ? "read-only" : "read-write", blk->path,
                    blk->readonly ? "read-only" : "read-write");
        return FALSE;
    }
    return TRUE;
}

static void blk_destroy_source(gpointer data)
{
    FerryVirtioBlk *blk = data;
    if (!g_source_is_destroyed(blk->source))
        g_source_destroy(blk->source);
}

static void blk_free(FerryVirtioDev *dev)
{
    FerryVirtioBlk *blk = to_blk(dev);
    if (blk->source) {
        /* On the I/O thread, so that a blk_ring_ready() running now has returned. */
        if (dev->io)
            ferry_iothread_call(dev->io, blk_destroy_source, blk);
        else
            blk_destroy_source(blk);
        g_source_unref(blk->source);
    }
    if (blk->ring_ok) {
        blk->dropping = TRUE;
        blk_drain(blk);
        io_uring_queue_exit(&blk->ring);
    }
    if (blk->efd >= 0)
        close(blk->efd);
    if (blk->fd >= 0)
        close(blk->fd); /* drops the lock */
    for (unsigned i = 0; i < blk->nr_reqs; i++) {
        g_free(blk->reqs[i]->elem);
        g_free(blk->reqs[i]->iov);
        g_free(blk->reqs[i]);
    }
    g_free(blk->path);
    g_free(blk->serial);
    g_free(blk);
}

static const FerryVirtioDeviceOps blk_ops = {
    .kind = "virtio-blk",
    .device_id = VIRTIO_ID_BLOCK,
    .pci_class = 0x010000,
    .state_version = BLK_STATE_VERSION,
    .get_features = blk_get_features,
    .read_config = blk_read_config,
    .realize = blk_realize,
    .reset = blk_reset,
    .queue_notify = blk_queue_notify,
    .pause = blk_pause,
    .save = blk_save,
    .load = blk_load,
    .free = blk_free,
};

/* ---- creation ---- */

static void blk_fill_config(FerryVirtioBlk *blk)
{
    uint8_t *c = blk->config;
    memset(c, 0, CFG_SIZE);
    ferry_le_store64(c + CFG_CAPACITY, blk->capacity);
    ferry_le_store32(c + CFG_SEG_MAX, BLK_SEG_MAX);
    ferry_le_store32(c + CFG_BLK_SIZE, SECTOR_SIZE);
    ferry_le_store32(c + CFG_MAX_DISCARD_SECT, BLK_DWZ_MAX_SECTORS);
    ferry_le_store32(c + CFG_MAX_DISCARD_SEG, BLK_DWZ_MAX_SEGS);
    ferry_le_store32(c + CFG_DISCARD_ALIGN, BLK_DISCARD_ALIGN);
    ferry_le_store32(c + CFG_MAX_WZ_SECT, BLK_DWZ_MAX_SECTORS);
    ferry_le_store32(c + CFG_MAX_WZ_SEG, BLK_DWZ_MAX_SEGS);
    c[CFG_WZ_MAY_UNMAP] = 1;
}

static FerryVirtioDev *blk_new(const FerryDiskSpec *spec, gboolean lock, GError **error)
{
    FerryVirtioBlk *blk = g_new0(FerryVirtioBlk, 1);
    blk->dev.ops = &blk_ops;
    blk->dev.nr_queues = 1;
    blk->dev.queue_max_size[0] = FERRY_VIRTIO_BLK_QUEUE_SIZE;
    blk->dev.config_size = CFG_SIZE;
    blk->fd = -1;
    blk->efd = -1;
    blk->path = g_strdup(spec->path);
    blk->readonly = spec->readonly;
    if (spec->serial && spec->serial[0])
        blk->serial = g_strndup(spec->serial, FERRY_DISK_SERIAL_MAX);

    blk->fd = ferry_blk_image_open(blk->path, blk->readonly, lock, &blk->capacity, error);
    if (blk->fd < 0)
        goto fail;
    blk->locked = lock;
    blk_fill_config(blk);

    int r = io_uring_queue_init(FERRY_VIRTIO_BLK_QUEUE_SIZE, &blk->ring, 0);
    if (r < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(-r),
                    "cannot set up io_uring for disk image '%s': %s%s", blk->path, g_strerror(-r),
                    r == -EPERM || r == -ENOSYS
                        ? " (is io_uring disabled? see sysctl kernel.io_uring_disabled)"
                        : "");
        goto fail;
    }
    blk->ring_ok = TRUE;
    blk->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (blk->efd < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                    "cannot create an eventfd for disk image '%s': %s", blk->path, g_strerror(err));
        goto fail;
    }
    r = io_uring_register_eventfd(&blk->ring, blk->efd);
    if (r < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(-r),
                    "cannot register an eventfd with io_uring for disk image '%s': %s", blk->path,
                    g_strerror(-r));
        goto fail;
    }
    return &blk->dev;

fail:
    blk_free(&blk->dev);
    return NULL;
}

FerryVirtioDev *ferry_virtio_blk_new(const FerryDiskSpec *spec, GError **error)
{
    return blk_new(spec, TRUE, error);
}

FerryVirtioDev *ferry_virtio_blk_new_unlocked(const FerryDiskSpec *spec, GError **error)
{
    return blk_new(spec, FALSE, error);
}

gboolean ferry_virtio_blk_lock_image(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioBlk *blk = to_blk(dev);
    if (blk->locked)
        return TRUE;
    if (!ferry_blk_image_lock(blk->path, blk->fd, blk->readonly, error))
        return FALSE;
    blk->locked = TRUE;
    return TRUE;
}

gboolean ferry_virtio_blk_unlock_image(FerryVirtioDev *dev, GError **error)
{
    FerryVirtioBlk *blk = to_blk(dev);
    if (!blk->locked)
        return TRUE;
    if (!blk->readonly && fdatasync(blk->fd) < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                    "cannot flush disk image '%s' before handing it over: %s", blk->path,
                    g_strerror(err));
        return FALSE;
    }
    ferry_blk_image_unlock(blk->fd);
    blk->locked = FALSE;
    return TRUE;
}

uint64_t ferry_virtio_blk_capacity(FerryVirtioDev *dev)
{
    return to_blk(dev)->capacity;
}

void ferry_virtio_blk_get_stats(FerryVirtioDev *dev, FerryVirtioBlkStats *stats)
{
    g_mutex_lock(&dev->lock);
    *stats = to_blk(dev)->stats;
    g_mutex_unlock(&dev->lock);
}

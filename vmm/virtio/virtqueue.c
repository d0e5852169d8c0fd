#include "virtio/virtqueue.h"

#include <string.h>

G_DEFINE_QUARK(ferry-virtq-error-quark, ferry_virtq_error)

/* Descriptor flags (2.7.5) and ring flags (2.7.6, 2.7.8) */
#define VIRTQ_DESC_F_NEXT     1
#define VIRTQ_DESC_F_WRITE    2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} Desc;

static uint16_t load16(const uint8_t *p)
{
    uint16_t v = __atomic_load_n((const uint16_t *) p, __ATOMIC_RELAXED);
    return GUINT16_FROM_LE(v);
}

static void store16(uint8_t *p, uint16_t v)
{
    __atomic_store_n((uint16_t *) p, GUINT16_TO_LE(v), __ATOMIC_RELAXED);
}

static void read_desc(const uint8_t *table, unsigned i, Desc *d)
{
    uint8_t raw[16];
    memcpy(raw, table + 16 * (size_t) i, 16); /* one copy: the guest may change it */
    uint64_t a;
    uint32_t l;
    uint16_t f, n;
    memcpy(&a, raw, 8);
    memcpy(&l, raw + 8, 4);
    memcpy(&f, raw + 12, 2);
    memcpy(&n, raw + 14, 2);
    d->addr = GUINT64_FROM_LE(a);
    d->len = GUINT32_FROM_LE(l);
    d->flags = GUINT16_FROM_LE(f);
    d->next = GUINT16_FROM_LE(n);
}

void ferry_virtq_init(FerryVirtqueue *vq, FerryGuestMemory *mem)
{
    memset(vq, 0, sizeof(*vq));
    vq->mem = mem;
}

void ferry_virtq_reset(FerryVirtqueue *vq)
{
    ferry_virtq_init(vq, vq->mem);
}

static gboolean ring_hva(FerryVirtqueue *vq, uint64_t gpa, uint64_t len, uint64_t align,
                         const char *what, uint8_t **hva, GError **error)
{
    if (gpa % align) {
        g_set_error(error, FERRY_VIRTQ_ERROR, FERRY_VIRTQ_ERROR_BROKEN,
                    "%s ring at 0x%" G_GINT64_MODIFIER "x is not %" G_GUINT64_FORMAT
                    "-byte aligned",
                    what, gpa, align);
        return FALSE;
    }
    *hva = ferry_guest_memory_hva(vq->mem, gpa, len);
    if (!*hva) {
        g_set_error(error, FERRY_VIRTQ_ERROR, FERRY_VIRTQ_ERROR_BROKEN,
                    "%s ring 0x%" G_GINT64_MODIFIER "x+%" G_GUINT64_FORMAT
                    " is not in guest RAM",
                    what, gpa, len);
        return FALSE;
    }
    return TRUE;
}

gboolean ferry_virtq_enable(FerryVirtqueue *vq, uint16_t size, uint64_t desc_gpa,
                            uint64_t avail_gpa, uint64_t used_gpa, gboolean event_idx,
                            GError **error)
{
    vq->enabled = FALSE;
    if (size == 0 || (size & (size - 1)) || size > FERRY_VIRTQ_MAX_SIZE) {
        g_set_error(error, FERRY_VIRTQ_ERROR, FERRY_VIRTQ_ERROR_BROKEN,
                    "queue size %u is not a power of 2 from 1 to %u", size,
                    FERRY_VIRTQ_MAX_SIZE);
        return FALSE;
    }
    uint8_t *desc, *avail, *used;
    /* Sizes from 2.7: descriptor table 16*n; avail 6 + 2*n; used 6 + 8*n. */
    if (!ring_hva(vq, desc_gpa, 16ULL * size, 16, "descriptor", &desc, error) ||
        !ring_hva(vq, avail_gpa, 6 + 2ULL * size, 2, "available", &avail, error) ||
        !ring_hva(vq, used_gpa, 6 + 8ULL * size, 4, "used", &used, error))
        return FALSE;
    vq->size = size;
    vq->desc_gpa = desc_gpa;
    vq->avail_gpa = avail_gpa;
    vq->used_gpa = used_gpa;
    vq->desc = desc;
    vq->avail = avail;
    vq->used = used;
    vq->event_idx = event_idx;
    vq->broken = FALSE;
    vq->enabled = TRUE;
    return TRUE;
}

G_GNUC_PRINTF(3, 4)
static int set_broken(FerryVirtqueue *vq, GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vq->broken = TRUE;
    g_set_error(error, FERRY_VIRTQ_ERROR, FERRY_VIRTQ_ERROR_BROKEN,
                "the driver broke the virtqueue: %s", msg);
    return -1;
}

/* Adds one descriptor's buffer to @elem; returns -1 (queue broken) on a bad buffer. */
static int add_segment(FerryVirtqueue *vq, FerryVirtqElement *elem, const Desc *d,
                       GError **error)
{
    gboolean writable = d->flags & VIRTQ_DESC_F_WRITE;
    if (!writable && elem->nr_in)
        return set_broken(vq, error, "a readable descriptor follows a writable one");
    if (d->len == 0)
        return 0;
    if (elem->nr_out + elem->nr_in >= FERRY_VIRTQ_MAX_SEGS)
        return set_broken(vq, error, "a buffer has more than %u segments", FERRY_VIRTQ_MAX_SEGS);
    void *hva = ferry_guest_memory_hva(vq->mem, d->addr, d->len);
    if (!hva)
        return set_broken(vq, error,
                          "buffer 0x%" G_GINT64_MODIFIER "x+%u is not in guest RAM", d->addr,
                          d->len);
    unsigned i = elem->nr_out + elem->nr_in;
    elem->iov[i].iov_base = hva;
    elem->iov[i].iov_len = d->len;
    elem->gpa[i] = d->addr;
    if (writable) {
        elem->nr_in++;
        elem->in_bytes += d->len;
    } else {
        elem->nr_out++;
        elem->out_bytes += d->len;
    }
    return 0;
}

int ferry_virtq_pop(FerryVirtqueue *vq, FerryVirtqElement *elem, GError **error)
{
    if (vq->broken)
        return set_broken(vq, error, "it was marked broken before and awaits a reset");
    if (!vq->enabled)
        return 0;
    uint16_t avail_idx = load16(vq->avail + 2);
    uint16_t pending = (uint16_t) (avail_idx - vq->last_avail);
    if (pending == 0 && vq->event_idx) {
        /*
         * avail_event (= last_avail, stored by the previous pop) must be visible before we
         * conclude the ring is empty: a driver that added a buffer while reading an older
         * avail_event skipped its notification (2.7.10), so look once more after a full
         * barrier.
         */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        avail_idx = load16(vq->avail + 2);
        pending = (uint16_t) (avail_idx - vq->last_avail);
    }
    if (pending == 0)
        return 0;
    if (pending > vq->size)
        return set_broken(vq, error, "available index moved by %u in a queue of %u", pending,
                          vq->size);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* ring entries after the index (2.7.13) */

    uint16_t head = load16(vq->avail + 4 + 2 * (size_t) (vq->last_avail % vq->size));
    if (head >= vq->size)
        return set_broken(vq, error, "head descriptor %u is out of a table of %u", head,
                          vq->size);

    elem->head = head;
    elem->nr_out = elem->nr_in = 0;
    elem->out_bytes = elem->in_bytes = 0;

    const uint8_t *table = vq->desc;
    unsigned table_size = vq->size, idx = head, count = 0;
    gboolean indirect = FALSE;
    for (;;) {
        /* Each descriptor of a table may appear once in a chain; more means a loop. */
        if (++count > table_size)
            return set_broken(vq, error, "descriptor chain from %u loops", head);
        Desc d;
        read_desc(table, idx, &d);
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            /* 2.7.5.3.1: not within an indirect table, not together with NEXT. */
            if (indirect)
                return set_broken(vq, error, "an indirect table points to another");
            if (d.flags & VIRTQ_DESC_F_NEXT)
                return set_broken(vq, error, "an indirect descriptor has NEXT set");
            if (d.len == 0 || d.len % 16 || d.len / 16 > FERRY_VIRTQ_MAX_SIZE)
                return set_broken(vq, error, "indirect table length %u is invalid", d.len);
            table = ferry_guest_memory_hva(vq->mem, d.addr, d.len);
            if (!table)
                return set_broken(vq, error,
                                  "indirect table 0x%" G_GINT64_MODIFIER
                                  "x+%u is not in guest RAM",
                                  d.addr, d.len);
            table_size = d.len / 16;
            indirect = TRUE;
            idx = 0;
            count = 0;
            continue;
        }
        if (add_segment(vq, elem, &d, error) < 0)
            return -1;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            break;
        idx = d.next;
        if (idx >= table_size)
            return set_broken(vq, error, "next descriptor %u is out of a table of %u", idx,
                              table_size);
    }
    vq->last_avail++;
    if (vq->event_idx) {
        /* avail_event (2.7.10): notify us when the driver passes this index. */
        uint8_t *p = vq->used + 4 + 8 * (size_t) vq->size;
        store16(p, vq->last_avail);
        ferry_guest_memory_mark_dirty(vq->mem, vq->used_gpa + 4 + 8ULL * vq->size, 2);
    }
    return 1;
}

/* Walks @iov from byte @offset, copying @len bytes in the direction @to_iov says. */
static size_t iov_copy(const struct iovec *iov, unsigned n, size_t offset, uint8_t *buf,
                       size_t len, gboolean to_iov)
{
    size_t done = 0;
    for (unsigned i = 0; i < n && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t c = MIN(iov[i].iov_len - offset, len - done);
        uint8_t *seg = (uint8_t *) iov[i].iov_base + offset;
        if (to_iov)
            memcpy(seg, buf + done, c);
        else
            memcpy(buf + done, seg, c);
        done += c;
        offset = 0;
    }
    return done;
}

size_t ferry_iov_from_buf(const struct iovec *iov, unsigned n, size_t offset, const void *buf,
                          size_t len)
{
    return iov_copy(iov, n, offset, (uint8_t *) buf, len, TRUE);
}

size_t ferry_iov_to_buf(const struct iovec *iov, unsigned n, size_t offset, void *buf, size_t len)
{
    return iov_copy(iov, n, offset, buf, len, FALSE);
}

void ferry_virtq_unpop(FerryVirtqueue *vq, unsigned n)
{
    vq->last_avail = (uint16_t) (vq->last_avail - n);
}

void ferry_virtq_push(FerryVirtqueue *vq, const FerryVirtqElement *elem, uint32_t written)
{
    /* The device filled @written bytes of the writable segments: those pages are dirty. */
    uint64_t left = MIN((uint64_t) written, elem->in_bytes);
    for (unsigned i = elem->nr_out; left && i < elem->nr_out + elem->nr_in; i++) {
        uint64_t n = MIN(left, (uint64_t) elem->iov[i].iov_len);
        ferry_guest_memory_mark_dirty(vq->mem, elem->gpa[i], n);
        left -= n;
    }

    size_t slot = vq->used_idx % vq->size;
    uint8_t *e = vq->used + 4 + 8 * slot;
    uint32_t id = GUINT32_TO_LE(elem->head), len = GUINT32_TO_LE(written);
    memcpy(e, &id, 4);
    memcpy(e + 4, &len, 4);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* element before index (2.7.8.2) */
    vq->used_idx++;
    store16(vq->used + 2, vq->used_idx);
    ferry_guest_memory_mark_dirty(vq->mem, vq->used_gpa + 4 + 8 * slot, 8);
    ferry_guest_memory_mark_dirty(vq->mem, vq->used_gpa + 2, 2);
}

gboolean ferry_virtq_should_notify(FerryVirtqueue *vq)
{
    if (!vq->enabled)
        return FALSE;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* used idx visible before reading flags */
    if (!vq->event_idx)
        return !(load16(vq->avail) & VIRTQ_AVAIL_F_NO_INTERRUPT);
    uint16_t used_event = load16(vq->avail + 4 + 2 * (size_t) vq->size);
    uint16_t new_idx = vq->used_idx, old = vq->signalled_used;
    gboolean valid = vq->signalled_valid;
    vq->signalled_used = new_idx;
    vq->signalled_valid = TRUE;
    /* 2.7.7.1: notify if used_event lies in (old, new]. */
    return !valid || (uint16_t) (new_idx - used_event - 1) < (uint16_t) (new_idx - old);
}

#define QUEUE_STATE_VERSION 1

void ferry_virtq_save(const FerryVirtqueue *vq, FerryStateWriter *w)
{
    ferry_state_put_u8(w, QUEUE_STATE_VERSION);
    ferry_state_put_u16(w, vq->size);
    ferry_state_put_u8(w, (uint8_t) ((vq->enabled ? 1 : 0) | (vq->event_idx ? 2 : 0) |
                                     (vq->broken ? 4 : 0) | (vq->signalled_valid ? 8 : 0)));
    ferry_state_put_u64(w, vq->desc_gpa);
    ferry_state_put_u64(w, vq->avail_gpa);
    ferry_state_put_u64(w, vq->used_gpa);
    ferry_state_put_u16(w, vq->last_avail);
    ferry_state_put_u16(w, vq->used_idx);
    ferry_state_put_u16(w, vq->signalled_used);
}

gboolean ferry_virtq_load(FerryVirtqueue *vq, FerryStateReader *r, GError **error)
{
    uint8_t version, flags;
    uint16_t size, last_avail, used_idx, signalled;
    uint64_t desc, avail, used;
    if (!ferry_state_get_version(r, QUEUE_STATE_VERSION, &version, error) ||
        !ferry_state_get_u16(r, &size, error) || !ferry_state_get_u8(r, &flags, error) ||
        !ferry_state_get_u64(r, &desc, error) || !ferry_state_get_u64(r, &avail, error) ||
        !ferry_state_get_u64(r, &used, error) || !ferry_state_get_u16(r, &last_avail, error) ||
        !ferry_state_get_u16(r, &used_idx, error) || !ferry_state_get_u16(r, &signalled, error))
        return FALSE;
    FerryVirtqueue q;
    ferry_virtq_init(&q, vq->mem);
    if (flags & 1) {
        if (!ferry_virtq_enable(&q, size, desc, avail, used, (flags & 2) != 0, error)) {
            g_prefix_error(error, "virtqueue state: ");
            return FALSE;
        }
    } else {
        q.size = size;
        q.desc_gpa = desc;
        q.avail_gpa = avail;
        q.used_gpa = used;
        q.event_idx = (flags & 2) != 0;
    }
    q.broken = (flags & 4) != 0;
    q.signalled_valid = (flags & 8) != 0;
    q.last_avail = last_avail;
    q.used_idx = used_idx;
    q.signalled_used = signalled;
    *vq = q;
    return TRUE;
}

/*
 * The machine-state stream codec (docs/migration-protocol.md).
 */
#include "migration/stream.h"

#include "migration/crc32c.h"

#include <string.h>

#ifdef FERRY_HAVE_ZSTD
#include <zstd.h>
#endif

G_DEFINE_QUARK(ferry - stream - error - quark, ferry_stream_error)

/* "\x89FRY\r\n\x1a\n": high bit, name, and the line endings a text-mode copy would mangle. */
static const uint8_t stream_magic[8] = {0x89, 'F', 'R', 'Y', '\r', '\n', 0x1a, '\n'};

#define PREAMBLE_LEN           16
#define RECORD_HEADER_LEN      16
#define CONFIG_FIXED_LEN       36
#define CONFIG_ITEM_FIXED_LEN  4
#define SECTION_FIXED_LEN      8
#define RAM_FIXED_LEN          16
#define ROUND_LEN              8
#define PAGE_REQUEST_FIXED_LEN 8
#define PAGE_REQUEST_ENTRY_LEN 16
#define END_LEN                24

#define RAM_FLAG_SPARSE 0x1u
#define RAM_FLAG_ZSTD   0x2u
#define RAM_FLAGS_KNOWN (RAM_FLAG_SPARSE | RAM_FLAG_ZSTD)

#define PAGE             FERRY_STREAM_PAGE_SIZE
#define BITMAP_BYTES(n)  (((size_t) (n) + 7) / 8)
#define MAX_BITMAP_BYTES BITMAP_BYTES(FERRY_STREAM_MAX_BATCH_PAGES)
#define BITMAP_WORDS     (FERRY_STREAM_MAX_BATCH_PAGES / 64)

#define MAX_CONFIG_PAYLOAD                                                                         \
    (CONFIG_FIXED_LEN +                                                                            \
     FERRY_STREAM_MAX_CONFIG_ITEMS *                                                               \
         (CONFIG_ITEM_FIXED_LEN + FERRY_STREAM_MAX_CONFIG_KEY + FERRY_STREAM_MAX_CONFIG_VALUE))
#define MAX_SECTION_PAYLOAD                                                                        \
    (SECTION_FIXED_LEN + FERRY_STREAM_MAX_SECTION_ID + FERRY_STREAM_MAX_SECTION_DATA)
#define MAX_RAM_PAYLOAD                                                                            \
    (RAM_FIXED_LEN + 2 * MAX_BITMAP_BYTES + (size_t) FERRY_STREAM_MAX_BATCH_PAGES * PAGE)
#define MAX_PAGE_REQUEST_PAYLOAD                                                                   \
    (PAGE_REQUEST_FIXED_LEN + FERRY_STREAM_MAX_PAGE_REQUESTS * PAGE_REQUEST_ENTRY_LEN)

#define ROUND_FLAGS_KNOWN (FERRY_STREAM_ROUND_FINAL | FERRY_STREAM_ROUND_POSTCOPY)

/* The writer's buffer holds the largest RAM batch, so a batch is built in place. */
#define WRITER_BUF_SIZE (RECORD_HEADER_LEN + MAX_RAM_PAYLOAD)
#define READER_BUF_SIZE (256 * 1024)
#define MAX_RAM_RANGES  16

/* ---- little-endian helpers ---- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t) v;
    p[1] = (uint8_t) (v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (unsigned i = 0; i < 4; i++)
        p[i] = (uint8_t) (v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (unsigned i = 0; i < 8; i++)
        p[i] = (uint8_t) (v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t) (p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
           ((uint32_t) p[3] << 24);
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t) get_u32(p) | ((uint64_t) get_u32(p + 4) << 32);
}

/* ---- shared ---- */

static const char *record_name(unsigned type)
{
    switch (type) {
    case FERRY_STREAM_RECORD_CONFIG:
        return "CONFIG";
    case FERRY_STREAM_RECORD_SECTION:
        return "SECTION";
    case FERRY_STREAM_RECORD_RAM_BATCH:
        return "RAM_BATCH";
    case FERRY_STREAM_RECORD_ROUND:
        return "ROUND";
    case FERRY_STREAM_RECORD_PAGE_REQUEST:
        return "PAGE_REQUEST";
    case FERRY_STREAM_RECORD_END:
        return "END";
    default:
        return NULL;
    }
}

/* Payload length limits of each type: [min, max]. */
static gboolean record_limits(unsigned type, size_t *min, size_t *max)
{
    switch (type) {
    case FERRY_STREAM_RECORD_CONFIG:
        *min = CONFIG_FIXED_LEN;
        *max = MAX_CONFIG_PAYLOAD;
        return TRUE;
    case FERRY_STREAM_RECORD_SECTION:
        *min = SECTION_FIXED_LEN + 1;
        *max = MAX_SECTION_PAYLOAD;
        return TRUE;
    case FERRY_STREAM_RECORD_RAM_BATCH:
        *min = RAM_FIXED_LEN + 1;
        *max = MAX_RAM_PAYLOAD;
        return TRUE;
    case FERRY_STREAM_RECORD_ROUND:
        *min = *max = ROUND_LEN;
        return TRUE;
    case FERRY_STREAM_RECORD_PAGE_REQUEST:
        *min = PAGE_REQUEST_FIXED_LEN + PAGE_REQUEST_ENTRY_LEN;
        *max = MAX_PAGE_REQUEST_PAYLOAD;
        return TRUE;
    case FERRY_STREAM_RECORD_END:
        *min = *max = END_LEN;
        return TRUE;
    default:
        return FALSE;
    }
}

/* Whether @type may appear (after CONFIG) in a stream with preamble @flags. */
static gboolean record_allowed(unsigned type, uint32_t flags)
{
    gboolean ret_path = (flags & FERRY_STREAM_FLAG_RETURN_PATH) != 0;

    switch (type) {
    case FERRY_STREAM_RECORD_SECTION:
    case FERRY_STREAM_RECORD_RAM_BATCH:
    case FERRY_STREAM_RECORD_ROUND:
        return !ret_path;
    case FERRY_STREAM_RECORD_PAGE_REQUEST:
        return ret_path;
    default:
        return TRUE;
    }
}

static const char *direction_name(uint32_t flags)
{
    return (flags & FERRY_STREAM_FLAG_RETURN_PATH) ? "return-path" : "forward";
}

static gboolean section_id_valid(const char *id, size_t len)
{
    if (len == 0 || len > FERRY_STREAM_MAX_SECTION_ID)
        return FALSE;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!g_ascii_isalnum(c) && !strchr("_.:/-", c))
            return FALSE;
    }
    return TRUE;
}

static gboolean config_key_valid(const char *key, size_t len)
{
    if (len == 0 || len > FERRY_STREAM_MAX_CONFIG_KEY)
        return FALSE;
    for (size_t i = 0; i < len; i++) {
        if (key[i] < 0x20 || key[i] > 0x7e)
            return FALSE;
    }
    return TRUE;
}

static gboolean config_value_valid(const char *value, size_t len)
{
    if (len > FERRY_STREAM_MAX_CONFIG_VALUE || !g_utf8_validate(value, (gssize) len, NULL))
        return FALSE;
    for (size_t i = 0; i < len; i++) {
        if ((uint8_t) value[i] < 0x20 || value[i] == 0x7f)
            return FALSE;
    }
    return TRUE;
}

void ferry_stream_config_digest(const char *canonical, uint8_t digest[FERRY_STREAM_DIGEST_LEN])
{
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    gsize len = FERRY_STREAM_DIGEST_LEN;

    g_checksum_update(sum, (const guchar *) canonical, (gssize) strlen(canonical));
    g_checksum_get_digest(sum, digest, &len);
}

gboolean ferry_stream_page_is_zero(const uint8_t *page)
{
    for (size_t off = 0; off < PAGE; off += 64) {
        uint64_t w[8];
        memcpy(w, page + off, sizeof(w));
        if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0)
            return FALSE;
    }
    return TRUE;
}

/* ---- writer ---- */

typedef enum {
    WRITER_START,
    WRITER_BODY,
    WRITER_ENDED,
    WRITER_BROKEN,
} WriterState;

struct FerryStreamWriter {
    GOutputStream *out;
    GCancellable *cancellable;
    uint32_t flags;
    WriterState state;
    uint8_t *buf; /* WRITER_BUF_SIZE */
    size_t used;
    uint32_t crc; /* CRC-32C of every byte emitted so far */
    FerryStreamStats stats;
    int zstd_level;
#ifdef FERRY_HAVE_ZSTD
    ZSTD_CCtx *cctx;
    uint8_t *zscratch; /* the batch's data pages, gathered for the compressor */
#endif
};

FerryStreamWriter *ferry_stream_writer_new(GOutputStream *out, uint32_t flags,
                                           GCancellable *cancellable)
{
    FerryStreamWriter *w = g_new0(FerryStreamWriter, 1);

    w->out = g_object_ref(out);
    w->cancellable = cancellable ? g_object_ref(cancellable) : NULL;
    w->flags = flags & FERRY_STREAM_FLAG_RETURN_PATH;
    w->buf = g_malloc(WRITER_BUF_SIZE);
    return w;
}

void ferry_stream_writer_free(FerryStreamWriter *w)
{
    if (!w)
        return;
    g_object_unref(w->out);
    g_clear_object(&w->cancellable);
    g_free(w->buf);
#ifdef FERRY_HAVE_ZSTD
    ZSTD_freeCCtx(w->cctx);
    g_free(w->zscratch);
#endif
    g_free(w);
}

gboolean ferry_stream_writer_set_compression(FerryStreamWriter *w, int level, GError **error)
{
#ifdef FERRY_HAVE_ZSTD
    if (level < 0 || level > 19) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "zstd compression level %d is outside 0..19", level);
        return FALSE;
    }
    if (level > 0 && !w->cctx) {
        w->cctx = ZSTD_createCCtx();
        if (!w->cctx) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                        "cannot create a zstd compression context");
            return FALSE;
        }
        w->zscratch = g_malloc((size_t) FERRY_STREAM_MAX_BATCH_PAGES * PAGE);
    }
    w->zstd_level = level;
    return TRUE;
#else
    if (level == 0)
        return TRUE;
    g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_VERSION,
                "compression of RAM batches needs libzstd, which this ferry was built without");
    return FALSE;
#endif
}

void ferry_stream_writer_get_stats(const FerryStreamWriter *w, FerryStreamStats *stats)
{
    *stats = w->stats;
}

static gboolean writer_usable(FerryStreamWriter *w, const char *what, GError **error)
{
    const char *why = NULL;

    if (w->state == WRITER_START)
        why = "the header has not been written";
    else if (w->state == WRITER_ENDED)
        why = "the stream has already ended";
    else if (w->state == WRITER_BROKEN)
        why = "an earlier write failed";
    if (why) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "cannot write a %s record: %s", what, why);
        return FALSE;
    }
    return TRUE;
}

static gboolean writer_drain(FerryStreamWriter *w, GError **error)
{
    if (w->used == 0)
        return TRUE;
    if (g_cancellable_set_error_if_cancelled(w->cancellable, error) ||
        !g_output_stream_write_all(w->out, w->buf, w->used, NULL, w->cancellable, error)) {
        w->state = WRITER_BROKEN;
        g_prefix_error(error, "writing the state stream: ");
        return FALSE;
    }
    w->used = 0;
    return TRUE;
}

/* Appends raw bytes (already counted in the CRC by the caller) through the buffer. */
static gboolean writer_append(FerryStreamWriter *w, const void *data, size_t len, GError **error)
{
    const uint8_t *p = data;

    while (len > 0) {
        if (w->used == WRITER_BUF_SIZE && !writer_drain(w, error))
            return FALSE;
        size_t n = MIN(len, WRITER_BUF_SIZE - w->used);
        memcpy(w->buf + w->used, p, n);
        w->used += n;
        p += n;
        len -= n;
    }
    return TRUE;
}

static void fill_record_header(uint8_t *h, unsigned type, size_t len, uint32_t payload_crc)
{
    put_u16(h, (uint16_t) type);
    put_u16(h + 2, 0);
    put_u32(h + 4, (uint32_t) len);
    put_u32(h + 8, payload_crc);
    put_u32(h + 12, ferry_crc32c(0, h, 12));
}

static void writer_account(FerryStreamWriter *w, const uint8_t *header, size_t len,
                           uint32_t payload_crc)
{
    w->crc = ferry_crc32c(w->crc, header, RECORD_HEADER_LEN);
    w->crc = ferry_crc32c_combine(w->crc, payload_crc, len);
    w->stats.bytes += RECORD_HEADER_LEN + len;
    w->stats.records++;
}

/* Writes a record whose payload is @a followed by @b (either may be empty). */
static gboolean writer_put_record(FerryStreamWriter *w, unsigned type, const void *a, size_t a_len,
                                  const void *b, size_t b_len, GError **error)
{
    uint8_t h[RECORD_HEADER_LEN];
    uint32_t pcrc = ferry_crc32c(ferry_crc32c(0, a, a_len), b, b_len);

    fill_record_header(h, type, a_len + b_len, pcrc);
    if (!writer_append(w, h, sizeof(h), error) || !writer_append(w, a, a_len, error) ||
        !writer_append(w, b, b_len, error))
        return FALSE;
    writer_account(w, h, a_len + b_len, pcrc);
    return TRUE;
}

gboolean ferry_stream_writer_put_header(FerryStreamWriter *w, const FerryStreamConfig *config,
                                        GError **error)
{
    if (w->state != WRITER_START) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "the stream header has already been written");
        return FALSE;
    }
    if (config->n_items > FERRY_STREAM_MAX_CONFIG_ITEMS) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_OVERSIZED,
                    "%u configuration summary items; the limit is %u", config->n_items,
                    FERRY_STREAM_MAX_CONFIG_ITEMS);
        return FALSE;
    }

    g_autoptr(GByteArray) payload = g_byte_array_new();
    uint8_t fixed[CONFIG_FIXED_LEN];
    memcpy(fixed, config->digest, FERRY_STREAM_DIGEST_LEN);
    put_u16(fixed + 32, (uint16_t) config->n_items);
    put_u16(fixed + 34, 0);
    g_byte_array_append(payload, fixed, sizeof(fixed));
    for (unsigned i = 0; i < config->n_items; i++) {
        const FerryStreamConfigItem *it = &config->items[i];
        size_t klen = strlen(it->key), vlen = strlen(it->value);
        if (!config_key_valid(it->key, klen) || !config_value_valid(it->value, vlen)) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                        "configuration summary item \"%s\" has an invalid key or value", it->key);
            return FALSE;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(config->items[j].key, it->key) == 0) {
                g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                            "configuration summary item \"%s\" appears twice", it->key);
                return FALSE;
            }
        }
        uint8_t ih[CONFIG_ITEM_FIXED_LEN];
        put_u16(ih, (uint16_t) klen);
        put_u16(ih + 2, (uint16_t) vlen);
        g_byte_array_append(payload, ih, sizeof(ih));
        g_byte_array_append(payload, (const guint8 *) it->key, (guint) klen);
        g_byte_array_append(payload, (const guint8 *) it->value, (guint) vlen);
    }

    uint8_t pre[PREAMBLE_LEN];
    memcpy(pre, stream_magic, sizeof(stream_magic));
    put_u32(pre + 8, FERRY_STREAM_VERSION);
    put_u32(pre + 12, w->flags);
    if (!writer_append(w, pre, sizeof(pre), error))
        return FALSE;
    w->crc = ferry_crc32c(0, pre, sizeof(pre));
    w->stats.bytes = PREAMBLE_LEN;
    w->state = WRITER_BODY;
    return writer_put_record(w, FERRY_STREAM_RECORD_CONFIG, payload->data, payload->len, NULL, 0,
                             error);
}

gboolean ferry_stream_writer_put_section(FerryStreamWriter *w, const char *id, uint32_t version,
                                         const void *data, size_t len, GError **error)
{
    if (!writer_usable(w, "SECTION", error))
        return FALSE;
    if (w->flags & FERRY_STREAM_FLAG_RETURN_PATH) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "SECTION records belong in a forward stream, not a return path");
        return FALSE;
    }
    size_t id_len = strlen(id);
    if (!section_id_valid(id, id_len)) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "invalid section id \"%s\" (1..%d characters of A-Z a-z 0-9 _ . : / -)", id,
                    FERRY_STREAM_MAX_SECTION_ID);
        return FALSE;
    }
    if (len > FERRY_STREAM_MAX_SECTION_DATA) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_OVERSIZED,
                    "section \"%s\" has %zu bytes of state; the limit is %u", id, len,
                    FERRY_STREAM_MAX_SECTION_DATA);
        return FALSE;
    }
    uint8_t head[SECTION_FIXED_LEN + FERRY_STREAM_MAX_SECTION_ID];
    put_u32(head, version);
    put_u16(head + 4, (uint16_t) id_len);
    put_u16(head + 6, 0);
    memcpy(head + SECTION_FIXED_LEN, id, id_len);
    return writer_put_record(w, FERRY_STREAM_RECORD_SECTION, head, SECTION_FIXED_LEN + id_len, data,
                             len, error);
}

gboolean ferry_stream_writer_put_ram_batch(FerryStreamWriter *w, uint64_t gpa, unsigned npages,
                                           const uint8_t *hva, const uint64_t *present,
                                           GError **error)
{
    if (!writer_usable(w, "RAM_BATCH", error))
        return FALSE;
    if (w->flags & FERRY_STREAM_FLAG_RETURN_PATH) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "RAM_BATCH records belong in a forward stream, not a return path");
        return FALSE;
    }
    if (npages == 0 || npages > FERRY_STREAM_MAX_BATCH_PAGES || gpa % PAGE != 0 ||
        gpa + (uint64_t) npages * PAGE < gpa) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "invalid RAM batch: %u pages at GPA 0x%" G_GINT64_MODIFIER
                    "x (1..%d pages at a 4 KiB-aligned address)",
                    npages, gpa, FERRY_STREAM_MAX_BATCH_PAGES);
        return FALSE;
    }

    uint8_t present_bm[MAX_BITMAP_BYTES] = {0}, zero_bm[MAX_BITMAP_BYTES] = {0};
    unsigned n_present = 0, n_data = 0;
    gboolean sparse = FALSE;
    for (unsigned i = 0; i < npages; i++) {
        if (present && !((present[i / 64] >> (i % 64)) & 1)) {
            sparse = TRUE;
            continue;
        }
        n_present++;
        present_bm[i / 8] |= (uint8_t) (1u << (i % 8));
        if (ferry_stream_page_is_zero(hva + (size_t) i * PAGE))
            zero_bm[i / 8] |= (uint8_t) (1u << (i % 8));
        else
            n_data++;
    }
    if (n_present == 0)
        return TRUE;

    size_t nb = BITMAP_BYTES(npages);
    size_t fixed = RAM_FIXED_LEN + (sparse ? nb : 0) + nb;
    size_t data_len = (size_t) n_data * PAGE;
    if (w->used + RECORD_HEADER_LEN + fixed + data_len > WRITER_BUF_SIZE && !writer_drain(w, error))
        return FALSE;

    uint8_t *h = w->buf + w->used;
    uint8_t *p = h + RECORD_HEADER_LEN;
    uint32_t flags = sparse ? RAM_FLAG_SPARSE : 0;
    put_u64(p, gpa);
    put_u32(p + 8, npages);
    uint8_t *q = p + RAM_FIXED_LEN;
    if (sparse) {
        memcpy(q, present_bm, nb);
        q += nb;
    }
    memcpy(q, zero_bm, nb);
    q += nb;

    /*
     * Copy first, then checksum the copy: guest RAM may change under us during pre-copy, and
     * the CRC must describe the bytes actually sent.
     */
    size_t payload_len = fixed + data_len;
    gboolean compressed = FALSE;
#ifdef FERRY_HAVE_ZSTD
    if (w->zstd_level > 0 && n_data > 0) {
        uint8_t *s = w->zscratch;
        for (unsigned i = 0; i < npages; i++) {
            if ((present_bm[i / 8] >> (i % 8)) & 1 && !((zero_bm[i / 8] >> (i % 8)) & 1)) {
                memcpy(s, hva + (size_t) i * PAGE, PAGE);
                s += PAGE;
            }
        }
        size_t csize =
            ZSTD_compressCCtx(w->cctx, q, data_len - 1, w->zscratch, data_len, w->zstd_level);
        if (!ZSTD_isError(csize)) {
            compressed = TRUE;
            flags |= RAM_FLAG_ZSTD;
            payload_len = fixed + csize;
            w->stats.compressed_batches++;
        } else {
            memcpy(q, w->zscratch, data_len);
        }
    }
#endif
    put_u32(p + 12, flags);
    uint32_t pcrc = ferry_crc32c(0, p, fixed);
    if (compressed) {
        pcrc = ferry_crc32c(pcrc, q, payload_len - fixed);
    } else if (w->zstd_level > 0 && n_data > 0) {
        pcrc = ferry_crc32c(pcrc, q, data_len); /* gathered above, not compressible */
    } else {
        for (unsigned i = 0; i < npages; i++) {
            if ((present_bm[i / 8] >> (i % 8)) & 1 && !((zero_bm[i / 8] >> (i % 8)) & 1)) {
                memcpy(q, hva + (size_t) i * PAGE, PAGE);
                pcrc = ferry_crc32c(pcrc, q, PAGE);
                q += PAGE;
            }
        }
    }
    fill_record_header(h, FERRY_STREAM_RECORD_RAM_BATCH, payload_len, pcrc);
    w->used += RECORD_HEADER_LEN + payload_len;
    writer_account(w, h, payload_len, pcrc);
    w->stats.zero_pages += n_present - n_data;
    w->stats.data_pages += n_data;
    return TRUE;
}

gboolean ferry_stream_writer_put_round(FerryStreamWriter *w, uint32_t round, uint32_t flags,
                                       GError **error)
{
    if (!writer_usable(w, "ROUND", error))
        return FALSE;
    if ((w->flags & FERRY_STREAM_FLAG_RETURN_PATH) || (flags & ~ROUND_FLAGS_KNOWN)) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "invalid ROUND record (flags 0x%x, %s stream)", flags,
                    direction_name(w->flags));
        return FALSE;
    }
    uint8_t p[ROUND_LEN];
    put_u32(p, round);
    put_u32(p + 4, flags);
    return writer_put_record(w, FERRY_STREAM_RECORD_ROUND, p, sizeof(p), NULL, 0, error);
}

gboolean ferry_stream_writer_put_page_request(FerryStreamWriter *w, const FerryStreamRange *ranges,
                                              unsigned n, GError **error)
{
    if (!writer_usable(w, "PAGE_REQUEST", error))
        return FALSE;
    if (!(w->flags & FERRY_STREAM_FLAG_RETURN_PATH) || n == 0 ||
        n > FERRY_STREAM_MAX_PAGE_REQUESTS) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "invalid PAGE_REQUEST record (%u ranges, %s stream)", n,
                    direction_name(w->flags));
        return FALSE;
    }
    g_autofree uint8_t *p = g_malloc(PAGE_REQUEST_FIXED_LEN + (size_t) n * PAGE_REQUEST_ENTRY_LEN);
    put_u32(p, n);
    put_u32(p + 4, 0);
    for (unsigned i = 0; i < n; i++) {
        uint8_t *e = p + PAGE_REQUEST_FIXED_LEN + (size_t) i * PAGE_REQUEST_ENTRY_LEN;
        if (ranges[i].gpa % PAGE || ranges[i].bytes % PAGE || ranges[i].bytes == 0 ||
            ranges[i].gpa + ranges[i].bytes < ranges[i].gpa) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                        "page request %u is not a whole number of 4 KiB pages", i);
            return FALSE;
        }
        put_u64(e, ranges[i].gpa);
        put_u64(e + 8, ranges[i].bytes);
    }
    return writer_put_record(w, FERRY_STREAM_RECORD_PAGE_REQUEST, p,
                             PAGE_REQUEST_FIXED_LEN + (size_t) n * PAGE_REQUEST_ENTRY_LEN, NULL, 0,
                             error);
}

gboolean ferry_stream_writer_flush(FerryStreamWriter *w, GError **error)
{
    if (w->state == WRITER_BROKEN) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "cannot flush the state stream: an earlier write failed");
        return FALSE;
    }
    if (!writer_drain(w, error))
        return FALSE;
    if (!g_output_stream_flush(w->out, w->cancellable, error)) {
        w->state = WRITER_BROKEN;
        g_prefix_error(error, "writing the state stream: ");
        return FALSE;
    }
    return TRUE;
}

gboolean ferry_stream_writer_put_end(FerryStreamWriter *w, GError **error)
{
    if (!writer_usable(w, "END", error))
        return FALSE;
    uint8_t p[END_LEN];
    put_u64(p, w->stats.records);
    put_u64(p + 8, w->stats.bytes);
    put_u32(p + 16, w->crc);
    put_u32(p + 20, 0);
    if (!writer_put_record(w, FERRY_STREAM_RECORD_END, p, sizeof(p), NULL, 0, error))
        return FALSE;
    w->state = WRITER_ENDED;
    return ferry_stream_writer_flush(w, error);
}

/* ---- reader ---- */

typedef enum {
    READER_START,
    READER_BODY,
    READER_ENDED,
    READER_BROKEN,
} ReaderState;

struct FerryStreamReader {
    GInputStream *in;
    GCancellable *cancellable;
    uint32_t flags;
    ReaderState state;

    gboolean have_expected;
    uint8_t expected_digest[FERRY_STREAM_DIGEST_LEN];
    GPtrArray *expected_keys;   /* char * */
    GPtrArray *expected_values; /* char * */

    gboolean check_ram;
    FerryStreamRange ram[MAX_RAM_RANGES];
    unsigned n_ram;

    uint8_t *buf; /* READER_BUF_SIZE */
    size_t buf_pos, buf_len;

    uint64_t offset; /* bytes consumed */
    uint32_t crc;    /* CRC-32C of every byte before the current record */
    FerryStreamStats stats;
    int64_t last_round;

    uint8_t *payload;
    size_t payload_cap;
    uint8_t *pages; /* decompressed data pages */
    uint64_t present[BITMAP_WORDS];
    uint64_t zero[BITMAP_WORDS];
    char section_id[FERRY_STREAM_MAX_SECTION_ID + 1];
    FerryStreamRange requests[FERRY_STREAM_MAX_PAGE_REQUESTS];

    /* The stream's CONFIG. */
    FerryStreamConfig config;
    FerryStreamConfigItem *config_items;
    GStringChunk *config_strings;
#ifdef FERRY_HAVE_ZSTD
    ZSTD_DCtx *dctx;
#endif
};

FerryStreamReader *ferry_stream_reader_new(GInputStream *in, uint32_t flags,
                                           const FerryStreamConfig *expected,
                                           const FerryStreamRange *ram, unsigned n_ram,
                                           GCancellable *cancellable)
{
    FerryStreamReader *r = g_new0(FerryStreamReader, 1);

    r->in = g_object_ref(in);
    r->cancellable = cancellable ? g_object_ref(cancellable) : NULL;
    r->flags = flags;
    r->buf = g_malloc(READER_BUF_SIZE);
    r->expected_keys = g_ptr_array_new_with_free_func(g_free);
    r->expected_values = g_ptr_array_new_with_free_func(g_free);
    r->config_strings = g_string_chunk_new(1024);
    r->last_round = -1;
    if (expected) {
        r->have_expected = TRUE;
        memcpy(r->expected_digest, expected->digest, FERRY_STREAM_DIGEST_LEN);
        for (unsigned i = 0; i < expected->n_items; i++) {
            g_ptr_array_add(r->expected_keys, g_strdup(expected->items[i].key));
            g_ptr_array_add(r->expected_values, g_strdup(expected->items[i].value));
        }
    }
    if (ram) {
        r->check_ram = TRUE;
        r->n_ram = MIN(n_ram, MAX_RAM_RANGES);
        memcpy(r->ram, ram, r->n_ram * sizeof(*ram));
    }
    return r;
}

void ferry_stream_reader_free(FerryStreamReader *r)
{
    if (!r)
        return;
    g_object_unref(r->in);
    g_clear_object(&r->cancellable);
    g_free(r->buf);
    g_ptr_array_unref(r->expected_keys);
    g_ptr_array_unref(r->expected_values);
    g_free(r->payload);
    g_free(r->pages);
    g_free(r->config_items);
    g_string_chunk_free(r->config_strings);
#ifdef FERRY_HAVE_ZSTD
    ZSTD_freeDCtx(r->dctx);
#endif
    g_free(r);
}

const FerryStreamConfig *ferry_stream_reader_get_config(const FerryStreamReader *r)
{
    return &r->config;
}

void ferry_stream_reader_get_stats(const FerryStreamReader *r, FerryStreamStats *stats)
{
    *stats = r->stats;
    stats->bytes = r->offset;
}

static gboolean reader_fail(FerryStreamReader *r, GError **error, FerryStreamError code,
                            const char *fmt, ...) G_GNUC_PRINTF(4, 5);

static gboolean reader_fail(FerryStreamReader *r, GError **error, FerryStreamError code,
                            const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    r->state = READER_BROKEN;
    g_set_error(error, FERRY_STREAM_ERROR, code, "state stream: %s", msg);
    return FALSE;
}

/*
 * Reads exactly @n bytes.  Returns 1 on success, 0 at the end of the input (*@got bytes were
 * read), -1 on an I/O error.
 */
static int reader_read(FerryStreamReader *r, void *dst, size_t n, size_t *got, GError **error)
{
    uint8_t *d = dst;
    size_t done = 0;

    while (done < n) {
        if (r->buf_pos < r->buf_len) {
            size_t k = MIN(n - done, r->buf_len - r->buf_pos);
            memcpy(d + done, r->buf + r->buf_pos, k);
            r->buf_pos += k;
            done += k;
            continue;
        }
        gssize k;
        if (g_cancellable_set_error_if_cancelled(r->cancellable, error)) {
            k = -1;
        } else if (n - done >= READER_BUF_SIZE) {
            k = g_input_stream_read(r->in, d + done, n - done, r->cancellable, error);
            if (k > 0)
                done += (size_t) k;
        } else {
            k = g_input_stream_read(r->in, r->buf, READER_BUF_SIZE, r->cancellable, error);
            if (k > 0) {
                r->buf_pos = 0;
                r->buf_len = (size_t) k;
            }
        }
        if (k < 0) {
            r->state = READER_BROKEN;
            g_prefix_error(error, "reading the state stream: ");
            r->offset += done;
            return -1;
        }
        if (k == 0) {
            r->offset += done;
            *got = done;
            return 0;
        }
    }
    r->offset += done;
    *got = done;
    return 1;
}

static gboolean in_ram(FerryStreamReader *r, uint64_t gpa, uint64_t bytes)
{
    if (!r->check_ram)
        return TRUE;
    for (unsigned i = 0; i < r->n_ram; i++) {
        if (gpa >= r->ram[i].gpa && bytes <= r->ram[i].bytes &&
            gpa - r->ram[i].gpa <= r->ram[i].bytes - bytes)
            return TRUE;
    }
    return FALSE;
}

/*
 * Reads one record header and payload into r->payload, checking both CRCs and the type's
 * limits.  Sets *@type, *@len and *@at (offset of the header).
 */
static gboolean reader_record(FerryStreamReader *r, unsigned *type, size_t *len, uint64_t *at,
                              GError **error)
{
    uint8_t h[RECORD_HEADER_LEN];
    size_t got = 0;
    int rc;

    *at = r->offset;
    rc = reader_read(r, h, sizeof(h), &got, error);
    if (rc < 0)
        return FALSE;
    if (rc == 0) {
        if (got == 0)
            return reader_fail(r, error, FERRY_STREAM_ERROR_TRUNCATED,
                               "truncated at byte %" G_GUINT64_FORMAT
                               ": no END record (incomplete file or broken connection)",
                               r->offset);
        return reader_fail(r, error, FERRY_STREAM_ERROR_TRUNCATED,
                           "truncated at byte %" G_GUINT64_FORMAT ", inside a record header",
                           r->offset);
    }
    if (get_u32(h + 12) != ferry_crc32c(0, h, 12))
        return reader_fail(r, error, FERRY_STREAM_ERROR_CHECKSUM,
                           "the record header at byte %" G_GUINT64_FORMAT
                           " is corrupted (header checksum mismatch)",
                           *at);

    unsigned t = get_u16(h);
    uint16_t rflags = get_u16(h + 2);
    uint32_t plen = get_u32(h + 4);
    uint32_t pcrc = get_u32(h + 8);
    const char *name = record_name(t);
    size_t min, max;

    if (!name || !record_limits(t, &min, &max))
        return reader_fail(r, error, FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                           "unknown record type %u at byte %" G_GUINT64_FORMAT
                           " (written by a newer ferry?)",
                           t, *at);
    if (!record_allowed(t, r->flags))
        return reader_fail(r, error, FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                           "a %s record (byte %" G_GUINT64_FORMAT ") is not valid in a %s stream",
                           name, *at, direction_name(r->flags));
    if (rflags != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " has flags 0x%x this ferry does not know",
                           name, *at, rflags);
    if (plen > max)
        return reader_fail(r, error, FERRY_STREAM_ERROR_OVERSIZED,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " claims %u bytes; the limit is %zu",
                           name, *at, plen, max);
    if (plen < min)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " has %u bytes; it needs at least %zu",
                           name, *at, plen, min);
    if (plen > r->payload_cap) {
        g_free(r->payload);
        r->payload = g_malloc(plen);
        r->payload_cap = plen;
    }
    rc = reader_read(r, r->payload, plen, &got, error);
    if (rc < 0)
        return FALSE;
    if (rc == 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_TRUNCATED,
                           "truncated at byte %" G_GUINT64_FORMAT
                           ", inside the %s record that started at byte %" G_GUINT64_FORMAT
                           " (%zu of %u bytes)",
                           r->offset, name, *at, got, plen);
    if (ferry_crc32c(0, r->payload, plen) != pcrc)
        return reader_fail(r, error, FERRY_STREAM_ERROR_CHECKSUM,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " is corrupted (payload checksum mismatch)",
                           name, *at);
    if (t != FERRY_STREAM_RECORD_END) {
        r->crc = ferry_crc32c(r->crc, h, sizeof(h));
        r->crc = ferry_crc32c_combine(r->crc, pcrc, plen);
        r->stats.records++;
    }
    *type = t;
    *len = plen;
    return TRUE;
}

static void append_difference(GString *msg, const char *key, const char *in_stream,
                              const char *here)
{
    if (msg->len)
        g_string_append(msg, "; ");
    g_string_append_printf(msg, "%s: %s in the stream, %s here", key,
                           in_stream ? in_stream : "absent", here ? here : "absent");
}

static gboolean reader_check_config(FerryStreamReader *r, GError **error)
{
    if (!r->have_expected || memcmp(r->config.digest, r->expected_digest, 32) == 0)
        return TRUE;

    g_autoptr(GString) diff = g_string_new(NULL);
    for (unsigned i = 0; i < r->expected_keys->len; i++) {
        const char *key = r->expected_keys->pdata[i];
        const char *here = r->expected_values->pdata[i];
        const char *there = NULL;
        for (unsigned j = 0; j < r->config.n_items; j++) {
            if (strcmp(r->config.items[j].key, key) == 0)
                there = r->config.items[j].value;
        }
        if (!there || strcmp(there, here) != 0)
            append_difference(diff, key, there, here);
    }
    for (unsigned j = 0; j < r->config.n_items; j++) {
        gboolean known = FALSE;
        for (unsigned i = 0; i < r->expected_keys->len; i++) {
            if (strcmp(r->config.items[j].key, r->expected_keys->pdata[i]) == 0)
                known = TRUE;
        }
        if (!known)
            append_difference(diff, r->config.items[j].key, r->config.items[j].value, NULL);
    }
    if (diff->len == 0) {
        g_autofree char *a = g_malloc(2 * FERRY_STREAM_DIGEST_LEN + 1);
        g_autofree char *b = g_malloc(2 * FERRY_STREAM_DIGEST_LEN + 1);
        for (unsigned i = 0; i < FERRY_STREAM_DIGEST_LEN; i++) {
            g_snprintf(a + 2 * i, 3, "%02x", r->config.digest[i]);
            g_snprintf(b + 2 * i, 3, "%02x", r->expected_digest[i]);
        }
        g_string_append_printf(diff,
                               "the summaries agree but the configuration digests differ "
                               "(%s in the stream, %s here)",
                               a, b);
    }
    return reader_fail(r, error, FERRY_STREAM_ERROR_CONFIG_MISMATCH,
                       "made for a different VM configuration: %s", diff->str);
}

static gboolean reader_parse_config(FerryStreamReader *r, size_t len, GError **error)
{
    const uint8_t *p = r->payload;
    unsigned n = get_u16(p + 32);

    if (n > FERRY_STREAM_MAX_CONFIG_ITEMS || get_u16(p + 34) != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the CONFIG record is malformed (%u summary items)", n);
    memcpy(r->config.digest, p, FERRY_STREAM_DIGEST_LEN);
    r->config_items = g_new0(FerryStreamConfigItem, MAX(n, 1));
    r->config.items = r->config_items;
    r->config.n_items = 0;

    size_t pos = CONFIG_FIXED_LEN;
    for (unsigned i = 0; i < n; i++) {
        if (len - pos < CONFIG_ITEM_FIXED_LEN)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the CONFIG record ends inside summary item %u", i);
        size_t klen = get_u16(p + pos), vlen = get_u16(p + pos + 2);
        pos += CONFIG_ITEM_FIXED_LEN;
        if (len - pos < klen + vlen)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the CONFIG record ends inside summary item %u", i);
        const char *k = (const char *) p + pos, *v = k + klen;
        if (!config_key_valid(k, klen) || !config_value_valid(v, vlen))
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "summary item %u of the CONFIG record is malformed", i);
        const char *key = g_string_chunk_insert_len(r->config_strings, k, (gssize) klen);
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(r->config_items[j].key, key) == 0)
                return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                                   "summary item \"%s\" appears twice in the CONFIG record", key);
        }
        r->config_items[i].key = key;
        r->config_items[i].value = g_string_chunk_insert_len(r->config_strings, v, (gssize) vlen);
        r->config.n_items = i + 1;
        pos += klen + vlen;
    }
    if (pos != len)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the CONFIG record has %zu trailing bytes", len - pos);
    return reader_check_config(r, error);
}

gboolean ferry_stream_reader_read_header(FerryStreamReader *r, GError **error)
{
    uint8_t pre[PREAMBLE_LEN];
    size_t got = 0;

    if (r->state != READER_START)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the header has already been read");
    int rc = reader_read(r, pre, sizeof(pre), &got, error);
    if (rc < 0)
        return FALSE;
    if (memcmp(pre, stream_magic, MIN(got, sizeof(stream_magic))) != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_MAGIC,
                           "bad magic: not a ferry state stream");
    if (rc == 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_TRUNCATED,
                           "truncated after %zu bytes, inside the preamble", got);
    uint32_t version = get_u32(pre + 8), flags = get_u32(pre + 12);
    if (version != FERRY_STREAM_VERSION)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "format version %u; this ferry reads version %d", version,
                           FERRY_STREAM_VERSION);
    if (flags & ~FERRY_STREAM_FLAG_RETURN_PATH)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "unknown preamble flags 0x%x (written by a newer ferry?)", flags);
    if (flags != r->flags)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "a %s stream where a %s stream was expected", direction_name(flags),
                           direction_name(r->flags));
    r->crc = ferry_crc32c(0, pre, sizeof(pre));

    unsigned type;
    size_t len;
    uint64_t at;
    if (!reader_record(r, &type, &len, &at, error))
        return FALSE;
    if (type != FERRY_STREAM_RECORD_CONFIG)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "starts with a %s record instead of CONFIG", record_name(type));
    if (!reader_parse_config(r, len, error))
        return FALSE;
    r->state = READER_BODY;
    return TRUE;
}

static void load_bitmap(uint64_t *words, const uint8_t *bytes, size_t nb)
{
    memset(words, 0, BITMAP_WORDS * sizeof(uint64_t));
    for (size_t i = 0; i < nb; i++)
        words[i / 8] |= (uint64_t) bytes[i] << (8 * (i % 8));
}

static gboolean reader_parse_ram(FerryStreamReader *r, FerryStreamRecord *rec, size_t len,
                                 GError **error)
{
    const uint8_t *p = r->payload;
    uint64_t gpa = get_u64(p);
    uint32_t npages = get_u32(p + 8), flags = get_u32(p + 12);
    uint64_t at = rec->offset;

    if (flags & ~RAM_FLAGS_KNOWN)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                           " has flags 0x%x this ferry does not know",
                           at, flags);
#ifndef FERRY_HAVE_ZSTD
    if (flags & RAM_FLAG_ZSTD)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "RAM is compressed with zstd, and this ferry was built without "
                           "libzstd");
#endif
    if (npages == 0 || npages > FERRY_STREAM_MAX_BATCH_PAGES)
        return reader_fail(r, error, FERRY_STREAM_ERROR_OVERSIZED,
                           "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                           " has %u pages (1..%d allowed)",
                           at, npages, FERRY_STREAM_MAX_BATCH_PAGES);
    if (gpa % PAGE != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                           " starts at unaligned GPA 0x%" G_GINT64_MODIFIER "x",
                           at, gpa);
    if (!in_ram(r, gpa, (uint64_t) npages * PAGE))
        return reader_fail(r, error, FERRY_STREAM_ERROR_RANGE,
                           "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                           " holds pages at GPA 0x%" G_GINT64_MODIFIER "x..0x%" G_GINT64_MODIFIER
                           "x, outside this VM's RAM",
                           at, gpa, gpa + (uint64_t) npages * PAGE - 1);

    size_t nb = BITMAP_BYTES(npages);
    gboolean sparse = (flags & RAM_FLAG_SPARSE) != 0;
    size_t fixed = RAM_FIXED_LEN + (sparse ? nb : 0) + nb;
    if (len < fixed)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                           " is too short for its page bitmaps",
                           at);
    const uint8_t *q = p + RAM_FIXED_LEN;
    if (sparse) {
        load_bitmap(r->present, q, nb);
        q += nb;
    } else {
        memset(r->present, 0, sizeof(r->present));
        for (unsigned i = 0; i < npages; i++)
            r->present[i / 64] |= 1ull << (i % 64);
    }
    load_bitmap(r->zero, q, nb);
    q += nb;

    unsigned n_present = 0, n_data = 0;
    for (unsigned wi = 0; wi < BITMAP_WORDS; wi++) {
        uint64_t valid = wi * 64 >= npages        ? 0
                         : npages - wi * 64 >= 64 ? ~0ull
                                                  : (1ull << (npages - wi * 64)) - 1;
        if ((r->present[wi] & ~valid) || (r->zero[wi] & ~r->present[wi]))
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                               " has inconsistent page bitmaps",
                               at);
        n_present += (unsigned) __builtin_popcountll(r->present[wi]);
        n_data += (unsigned) __builtin_popcountll(r->present[wi] & ~r->zero[wi]);
    }
    if (n_present == 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the RAM_BATCH record at byte %" G_GUINT64_FORMAT " has no pages", at);

    size_t data_len = (size_t) n_data * PAGE;
    size_t body = len - fixed;
    if (flags & RAM_FLAG_ZSTD) {
#ifdef FERRY_HAVE_ZSTD
        if (n_data == 0 || body == 0 || body >= data_len)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the compressed RAM_BATCH record at byte %" G_GUINT64_FORMAT
                               " has %zu bytes for %u pages",
                               at, body, n_data);
        if (!r->dctx) {
            r->dctx = ZSTD_createDCtx();
            if (!r->dctx)
                return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                                   "cannot create a zstd decompression context");
        }
        if (!r->pages)
            r->pages = g_malloc((size_t) FERRY_STREAM_MAX_BATCH_PAGES * PAGE);
        size_t out = ZSTD_decompressDCtx(r->dctx, r->pages, data_len, q, body);
        if (ZSTD_isError(out) || out != data_len)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the compressed RAM_BATCH record at byte %" G_GUINT64_FORMAT
                               " does not decompress to its %u pages (%s)",
                               at, n_data,
                               ZSTD_isError(out) ? ZSTD_getErrorName(out) : "wrong size");
        rec->ram.data = r->pages;
#endif
    } else {
        if (body != data_len)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the RAM_BATCH record at byte %" G_GUINT64_FORMAT
                               " has %zu bytes of page data for %u non-zero pages",
                               at, body, n_data);
        rec->ram.data = q;
    }
    rec->ram.gpa = gpa;
    rec->ram.npages = npages;
    rec->ram.present = r->present;
    rec->ram.zero = r->zero;
    rec->ram.n_data = n_data;
    r->stats.zero_pages += n_present - n_data;
    r->stats.data_pages += n_data;
    if (flags & RAM_FLAG_ZSTD)
        r->stats.compressed_batches++;
    return TRUE;
}

static gboolean reader_parse_section(FerryStreamReader *r, FerryStreamRecord *rec, size_t len,
                                     GError **error)
{
    const uint8_t *p = r->payload;
    size_t id_len = get_u16(p + 4);

    if (get_u16(p + 6) != 0 || id_len > len - SECTION_FIXED_LEN ||
        !section_id_valid((const char *) p + SECTION_FIXED_LEN, id_len))
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the SECTION record at byte %" G_GUINT64_FORMAT " has a malformed id",
                           rec->offset);
    memcpy(r->section_id, p + SECTION_FIXED_LEN, id_len);
    r->section_id[id_len] = '\0';
    rec->section.id = r->section_id;
    rec->section.version = get_u32(p);
    rec->section.data = p + SECTION_FIXED_LEN + id_len;
    rec->section.len = len - SECTION_FIXED_LEN - id_len;
    if (rec->section.len > FERRY_STREAM_MAX_SECTION_DATA)
        return reader_fail(r, error, FERRY_STREAM_ERROR_OVERSIZED,
                           "section \"%s\" has %zu bytes; the limit is %u", r->section_id,
                           rec->section.len, FERRY_STREAM_MAX_SECTION_DATA);
    return TRUE;
}

static gboolean reader_parse_round(FerryStreamReader *r, FerryStreamRecord *rec, GError **error)
{
    uint32_t round = get_u32(r->payload), flags = get_u32(r->payload + 4);

    if (flags & ~ROUND_FLAGS_KNOWN)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "the ROUND record at byte %" G_GUINT64_FORMAT
                           " has flags 0x%x this ferry does not know",
                           rec->offset, flags);
    if ((int64_t) round <= r->last_round)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "round %u at byte %" G_GUINT64_FORMAT " follows round %" G_GINT64_FORMAT
                           "; rounds must increase",
                           round, rec->offset, r->last_round);
    r->last_round = round;
    rec->round.round = round;
    rec->round.flags = flags;
    return TRUE;
}

static gboolean reader_parse_page_request(FerryStreamReader *r, FerryStreamRecord *rec, size_t len,
                                          GError **error)
{
    const uint8_t *p = r->payload;
    uint32_t n = get_u32(p);

    if (get_u32(p + 4) != 0 || n == 0 || n > FERRY_STREAM_MAX_PAGE_REQUESTS ||
        len != PAGE_REQUEST_FIXED_LEN + (size_t) n * PAGE_REQUEST_ENTRY_LEN)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the PAGE_REQUEST record at byte %" G_GUINT64_FORMAT
                           " is malformed (%u ranges in %zu bytes)",
                           rec->offset, n, len);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = p + PAGE_REQUEST_FIXED_LEN + (size_t) i * PAGE_REQUEST_ENTRY_LEN;
        uint64_t gpa = get_u64(e), bytes = get_u64(e + 8);
        if (gpa % PAGE || bytes % PAGE || bytes == 0 || gpa + bytes < gpa)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "page request %u at byte %" G_GUINT64_FORMAT
                               " is not a whole number of pages",
                               i, rec->offset);
        if (!in_ram(r, gpa, bytes))
            return reader_fail(r, error, FERRY_STREAM_ERROR_RANGE,
                               "page request %u at byte %" G_GUINT64_FORMAT
                               " asks for GPA 0x%" G_GINT64_MODIFIER "x..0x%" G_GINT64_MODIFIER
                               "x, outside this VM's RAM",
                               i, rec->offset, gpa, gpa + bytes - 1);
        r->requests[i].gpa = gpa;
        r->requests[i].bytes = bytes;
    }
    rec->page_request.ranges = r->requests;
    rec->page_request.n = n;
    return TRUE;
}

static gboolean reader_check_end(FerryStreamReader *r, FerryStreamRecord *rec, GError **error)
{
    const uint8_t *p = r->payload;
    uint64_t records = get_u64(p), bytes = get_u64(p + 8);
    uint32_t crc = get_u32(p + 16);

    if (get_u32(p + 20) != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID, "the END record is malformed");
    if (records != r->stats.records || bytes != rec->offset)
        return reader_fail(
            r, error, FERRY_STREAM_ERROR_CHECKSUM,
            "records were lost or duplicated: the END record counts %" G_GUINT64_FORMAT
            " records in %" G_GUINT64_FORMAT " bytes, the stream had %" G_GUINT64_FORMAT
            " in %" G_GUINT64_FORMAT,
            records, bytes, r->stats.records, rec->offset);
    if (crc != r->crc)
        return reader_fail(r, error, FERRY_STREAM_ERROR_CHECKSUM,
                           "the stream checksum does not match (corrupted or reordered data)");
    return TRUE;
}

gboolean ferry_stream_reader_next(FerryStreamReader *r, FerryStreamRecord *rec, GError **error)
{
    static const char *const why[] = {
        [READER_START] = "the header has not been read",
        [READER_ENDED] = "the END record has already been read",
        [READER_BROKEN] = "an earlier error made the stream unusable",
    };
    unsigned type;
    size_t len;
    uint64_t at;

    memset(rec, 0, sizeof(*rec));
    if (r->state != READER_BODY) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "cannot read the next record: %s", why[r->state]);
        return FALSE;
    }
    if (!reader_record(r, &type, &len, &at, error))
        return FALSE;
    rec->type = type;
    rec->offset = at;
    switch (type) {
    case FERRY_STREAM_RECORD_CONFIG:
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "a second CONFIG record at byte %" G_GUINT64_FORMAT, at);
    case FERRY_STREAM_RECORD_SECTION:
        return reader_parse_section(r, rec, len, error);
    case FERRY_STREAM_RECORD_RAM_BATCH:
        return reader_parse_ram(r, rec, len, error);
    case FERRY_STREAM_RECORD_ROUND:
        return reader_parse_round(r, rec, error);
    case FERRY_STREAM_RECORD_PAGE_REQUEST:
        return reader_parse_page_request(r, rec, len, error);
    case FERRY_STREAM_RECORD_END:
        if (!reader_check_end(r, rec, error))
            return FALSE;
        r->stats.records++;
        r->state = READER_ENDED;
        return TRUE;
    default:
        /* reader_record() only returns known types. */
        return reader_fail(r, error, FERRY_STREAM_ERROR_UNKNOWN_RECORD, "unknown record type %u",
                           type);
    }
}

void ferry_stream_page_iter_init(FerryStreamPageIter *it, const FerryStreamRecord *rec)
{
    it->rec = rec;
    it->index = 0;
    it->data_index = 0;
}

gboolean ferry_stream_page_iter_next(FerryStreamPageIter *it, uint64_t *gpa, const uint8_t **data)
{
    const FerryStreamRecord *rec = it->rec;

    while (it->index < rec->ram.npages) {
        unsigned i = it->index++;
        if (!((rec->ram.present[i / 64] >> (i % 64)) & 1))
            continue;
        *gpa = rec->ram.gpa + (uint64_t) i * PAGE;
        if ((rec->ram.zero[i / 64] >> (i % 64)) & 1) {
            *data = NULL;
        } else {
            *data = rec->ram.data + (size_t) it->data_index * PAGE;
            it->data_index++;
        }
        return TRUE;
    }
    return FALSE;
}

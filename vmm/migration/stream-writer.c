/*
 * The machine-state stream writer (docs/migration-protocol.md, "Writing").
 */
#include "migration/crc32c.h"
#include "migration/stream-internal.h"
#include "util/state.h"

#include <string.h>

#ifdef FERRY_HAVE_ZSTD
#include <zstd.h>
#endif

/* The buffer holds the largest RAM batch, so a batch is built in place. */
#define WRITER_BUF_SIZE (RECORD_HEADER_LEN + MAX_RAM_PAYLOAD)

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
    uint8_t *zscratch; /* the compressed page data, before it replaces the raw pages */
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

/* Whether a record of @type may be written now (header written, not ended, right direction). */
static gboolean writer_usable(FerryStreamWriter *w, unsigned type, GError **error)
{
    const char *why = NULL;

    if (w->state == WRITER_START)
        why = "the header has not been written";
    else if (w->state == WRITER_ENDED)
        why = "the stream has already ended";
    else if (w->state == WRITER_BROKEN)
        why = "an earlier write failed";
    else if (!ferry_stream_record_allowed(type, w->flags))
        why = (w->flags & FERRY_STREAM_FLAG_RETURN_PATH)
                  ? "it belongs in a forward stream, not a return path"
                  : "it belongs in a return path, not a forward stream";
    if (why) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "cannot write a %s record: %s", ferry_stream_record_spec(type)->name, why);
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
    ferry_le_store16(h, (uint16_t) type);
    ferry_le_store16(h + 2, 0);
    ferry_le_store32(h + 4, (uint32_t) len);
    ferry_le_store32(h + 8, payload_crc);
    ferry_le_store32(h + 12, ferry_crc32c(0, h, 12));
}

/* Adds a record (@header plus @len payload bytes with CRC @payload_crc) to the stream CRC. */
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

/* Encodes @config as a CONFIG payload into @payload, checking every item. */
static gboolean encode_config(const FerryStreamConfig *config, GByteArray *payload, GError **error)
{
    FerryStateWriter pw = {.buf = payload};

    if (config->n_items > FERRY_STREAM_MAX_CONFIG_ITEMS) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_OVERSIZED,
                    "%u configuration summary items; the limit is %u", config->n_items,
                    FERRY_STREAM_MAX_CONFIG_ITEMS);
        return FALSE;
    }
    ferry_state_put_bytes(&pw, config->digest, FERRY_STREAM_DIGEST_LEN);
    ferry_state_put_u16(&pw, (uint16_t) config->n_items);
    ferry_state_put_u16(&pw, 0);
    for (unsigned i = 0; i < config->n_items; i++) {
        const FerryStreamConfigItem *it = &config->items[i];
        size_t klen = strlen(it->key), vlen = strlen(it->value);
        if (!ferry_stream_config_key_valid(it->key, klen) ||
            !ferry_stream_config_value_valid(it->value, vlen)) {
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
        ferry_state_put_u16(&pw, (uint16_t) klen);
        ferry_state_put_u16(&pw, (uint16_t) vlen);
        ferry_state_put_bytes(&pw, it->key, klen);
        ferry_state_put_bytes(&pw, it->value, vlen);
    }
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
    g_autoptr(GByteArray) payload = g_byte_array_new();
    if (!encode_config(config, payload, error))
        return FALSE;

    uint8_t pre[PREAMBLE_LEN];
    memcpy(pre, ferry_stream_magic, sizeof(ferry_stream_magic));
    ferry_le_store32(pre + 8, FERRY_STREAM_VERSION);
    ferry_le_store32(pre + 12, w->flags);
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
    if (!writer_usable(w, FERRY_STREAM_RECORD_SECTION, error))
        return FALSE;
    size_t id_len = strlen(id);
    if (!ferry_stream_section_id_valid(id, id_len)) {
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
    ferry_le_store32(head, version);
    ferry_le_store16(head + 4, (uint16_t) id_len);
    ferry_le_store16(head + 6, 0);
    memcpy(head + SECTION_FIXED_LEN, id, id_len);
    return writer_put_record(w, FERRY_STREAM_RECORD_SECTION, head, SECTION_FIXED_LEN + id_len, data,
                             len, error);
}

/*
 * Replaces the @len bytes of page data at @data with one zstd frame when compression is on
 * and the frame is smaller; returns whether it did, with the frame's size in *@frame_len.
 */
static gboolean writer_compress(FerryStreamWriter *w, uint8_t *data, size_t len, size_t *frame_len)
{
#ifdef FERRY_HAVE_ZSTD
    if (w->zstd_level == 0 || len == 0)
        return FALSE;
    size_t n = ZSTD_compressCCtx(w->cctx, w->zscratch, len - 1, data, len, w->zstd_level);
    if (ZSTD_isError(n))
        return FALSE; /* not smaller, or zstd failed: send the pages raw */
    memcpy(data, w->zscratch, n);
    *frame_len = n;
    w->stats.compressed_batches++;
    return TRUE;
#else
    return FALSE;
#endif
}

gboolean ferry_stream_writer_put_ram_batch(FerryStreamWriter *w, uint64_t gpa, unsigned npages,
                                           const uint8_t *hva, const uint64_t *present,
                                           GError **error)
{
    if (!writer_usable(w, FERRY_STREAM_RECORD_RAM_BATCH, error))
        return FALSE;
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

    /* Built in place: header, fixed fields, bitmaps, then the data pages. */
    uint8_t *h = w->buf + w->used;
    uint8_t *p = h + RECORD_HEADER_LEN;
    uint8_t *q = p + RAM_FIXED_LEN;
    if (sparse) {
        memcpy(q, present_bm, nb);
        q += nb;
    }
    memcpy(q, zero_bm, nb);
    q += nb;
    uint8_t *data = q;
    for (unsigned i = 0; i < npages; i++) {
        if ((present_bm[i / 8] >> (i % 8)) & 1 && !((zero_bm[i / 8] >> (i % 8)) & 1)) {
            memcpy(q, hva + (size_t) i * PAGE, PAGE);
            q += PAGE;
        }
    }

    uint32_t flags = sparse ? RAM_FLAG_SPARSE : 0;
    size_t body_len = data_len;
    if (writer_compress(w, data, data_len, &body_len))
        flags |= RAM_FLAG_ZSTD;
    ferry_le_store64(p, gpa);
    ferry_le_store32(p + 8, npages);
    ferry_le_store32(p + 12, flags);

    /*
     * Checksum the copy, not the guest pages: guest RAM may change under us during pre-copy,
     * and the CRC must describe the bytes actually sent.
     */
    size_t payload_len = fixed + body_len;
    uint32_t pcrc = ferry_crc32c(0, p, payload_len);
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
    if (!writer_usable(w, FERRY_STREAM_RECORD_ROUND, error))
        return FALSE;
    if (flags & ~ROUND_FLAGS_KNOWN) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "invalid ROUND flags 0x%x", flags);
        return FALSE;
    }
    uint8_t p[ROUND_LEN];
    ferry_le_store32(p, round);
    ferry_le_store32(p + 4, flags);
    return writer_put_record(w, FERRY_STREAM_RECORD_ROUND, p, sizeof(p), NULL, 0, error);
}

/* Writes a PAGE_REQUEST or DISCARD record: @n (1..1024) page-aligned ranges. */
static gboolean writer_put_ranges(FerryStreamWriter *w, unsigned type,
                                  const FerryStreamRange *ranges, unsigned n, GError **error)
{
    const char *name = ferry_stream_record_spec(type)->name;
    unsigned max = type == FERRY_STREAM_RECORD_DISCARD ? FERRY_STREAM_MAX_DISCARD_RANGES
                                                       : FERRY_STREAM_MAX_PAGE_REQUESTS;

    if (!writer_usable(w, type, error))
        return FALSE;
    if (n == 0 || n > max) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "a %s record holds 1..%u ranges, not %u", name, max, n);
        return FALSE;
    }
    g_autoptr(GByteArray) payload = g_byte_array_new();
    FerryStateWriter pw = {.buf = payload};
    ferry_state_put_u32(&pw, n);
    ferry_state_put_u32(&pw, 0);
    for (unsigned i = 0; i < n; i++) {
        if (ranges[i].gpa % PAGE || ranges[i].bytes % PAGE || ranges[i].bytes == 0 ||
            ranges[i].gpa + ranges[i].bytes < ranges[i].gpa) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                        "%s range %u (GPA 0x%" G_GINT64_MODIFIER "x, %" G_GUINT64_FORMAT
                        " bytes) is not a whole number of 4 KiB pages",
                        name, i, ranges[i].gpa, ranges[i].bytes);
            return FALSE;
        }
        ferry_state_put_u64(&pw, ranges[i].gpa);
        ferry_state_put_u64(&pw, ranges[i].bytes);
    }
    return writer_put_record(w, type, payload->data, payload->len, NULL, 0, error);
}

gboolean ferry_stream_writer_put_page_request(FerryStreamWriter *w, const FerryStreamRange *ranges,
                                              unsigned n, GError **error)
{
    return writer_put_ranges(w, FERRY_STREAM_RECORD_PAGE_REQUEST, ranges, n, error);
}

gboolean ferry_stream_writer_put_discard(FerryStreamWriter *w, const FerryStreamRange *ranges,
                                         unsigned n, GError **error)
{
    return writer_put_ranges(w, FERRY_STREAM_RECORD_DISCARD, ranges, n, error);
}

gboolean ferry_stream_writer_put_status(FerryStreamWriter *w, FerryStreamStatus code,
                                        const char *message, GError **error)
{
    if (!writer_usable(w, FERRY_STREAM_RECORD_STATUS, error))
        return FALSE;
    if (code < FERRY_STREAM_STATUS_READY || code > FERRY_STREAM_STATUS_FAILED) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "%u is not a STATUS code", (unsigned) code);
        return FALSE;
    }
    /* control characters become spaces; the text is cut at a character boundary */
    g_autofree char *text = g_utf8_make_valid(message ? message : "", -1);
    for (char *c = text; *c; c++)
        if ((unsigned char) *c < 0x20 || *c == 0x7f)
            *c = ' ';
    size_t len = strlen(text);
    if (len > FERRY_STREAM_MAX_STATUS_MESSAGE) {
        const char *cut = g_utf8_find_prev_char(text, text + FERRY_STREAM_MAX_STATUS_MESSAGE + 1);
        len = (size_t) (cut - text);
    }
    g_autoptr(GByteArray) payload = g_byte_array_new();
    FerryStateWriter pw = {.buf = payload};
    ferry_state_put_u32(&pw, code);
    ferry_state_put_u32(&pw, (uint32_t) len);
    g_byte_array_append(payload, (const guint8 *) text, (guint) len);
    return writer_put_record(w, FERRY_STREAM_RECORD_STATUS, payload->data, payload->len, NULL, 0,
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

/* Writes an END or CHECKPOINT record: the counts and CRC of everything before it. */
static gboolean writer_put_totals(FerryStreamWriter *w, unsigned type, GError **error)
{
    if (!writer_usable(w, type, error))
        return FALSE;
    uint8_t p[END_LEN];
    ferry_le_store64(p, w->stats.records);
    ferry_le_store64(p + 8, w->stats.bytes);
    ferry_le_store32(p + 16, w->crc);
    ferry_le_store32(p + 20, 0);
    return writer_put_record(w, type, p, sizeof(p), NULL, 0, error);
}

gboolean ferry_stream_writer_put_checkpoint(FerryStreamWriter *w, GError **error)
{
    return writer_put_totals(w, FERRY_STREAM_RECORD_CHECKPOINT, error) &&
           ferry_stream_writer_flush(w, error);
}

gboolean ferry_stream_writer_put_end(FerryStreamWriter *w, GError **error)
{
    if (!writer_put_totals(w, FERRY_STREAM_RECORD_END, error))
        return FALSE;
    w->state = WRITER_ENDED;
    return ferry_stream_writer_flush(w, error);
}

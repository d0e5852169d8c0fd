/*
 * The machine-state stream reader (docs/migration-protocol.md, "Reading and validation").
 */
#include "migration/crc32c.h"
#include "migration/stream-internal.h"
#include "util/state.h"

#include <string.h>

#ifdef FERRY_HAVE_ZSTD
#include <zstd.h>
#endif

#define READER_BUF_SIZE (256 * 1024)

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
    FerryStreamRange *ram; /* the RAM layout, n_ram ranges */
    unsigned n_ram;

    uint8_t *buf; /* READER_BUF_SIZE */
    size_t buf_pos, buf_len;

    uint64_t offset;         /* bytes consumed */
    uint32_t crc;            /* CRC-32C of every byte read in whole records so far */
    uint32_t crc_before;     /* CRC-32C of every byte before the current record */
    uint64_t records_before; /* records before the current one */
    FerryStreamStats stats;
    int64_t last_round;

    uint8_t *payload;
    size_t payload_cap;
    uint8_t *pages; /* decompressed data pages */
    uint64_t present[BITMAP_WORDS];
    uint64_t zero[BITMAP_WORDS];
    char section_id[FERRY_STREAM_MAX_SECTION_ID + 1];
    /* the ranges of the last PAGE_REQUEST or DISCARD */
    FerryStreamRange requests[MAX(FERRY_STREAM_MAX_PAGE_REQUESTS, FERRY_STREAM_MAX_DISCARD_RANGES)];
    char *status_message; /* of the last STATUS record */

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
        r->ram = g_memdup2(ram, n_ram * sizeof(*ram));
        r->n_ram = n_ram;
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
    g_free(r->ram);
    g_ptr_array_unref(r->expected_keys);
    g_ptr_array_unref(r->expected_values);
    g_free(r->payload);
    g_free(r->status_message);
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
    if (ferry_le_load32(h + 12) != ferry_crc32c(0, h, 12))
        return reader_fail(r, error, FERRY_STREAM_ERROR_CHECKSUM,
                           "the record header at byte %" G_GUINT64_FORMAT
                           " is corrupted (header checksum mismatch)",
                           *at);

    unsigned t = ferry_le_load16(h);
    uint16_t rflags = ferry_le_load16(h + 2);
    uint32_t plen = ferry_le_load32(h + 4);
    uint32_t pcrc = ferry_le_load32(h + 8);
    const FerryStreamRecordSpec *spec = ferry_stream_record_spec(t);

    if (!spec)
        return reader_fail(r, error, FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                           "unknown record type %u at byte %" G_GUINT64_FORMAT
                           " (written by a newer ferry?)",
                           t, *at);
    const char *name = spec->name;
    if (!ferry_stream_record_allowed(t, r->flags))
        return reader_fail(r, error, FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                           "a %s record (byte %" G_GUINT64_FORMAT ") is not valid in a %s stream",
                           name, *at, ferry_stream_direction_name(r->flags));
    if (rflags != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " has flags 0x%x this ferry does not know",
                           name, *at, rflags);
    if (plen > spec->max_len)
        return reader_fail(r, error, FERRY_STREAM_ERROR_OVERSIZED,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " claims %u bytes; the limit is %zu",
                           name, *at, plen, spec->max_len);
    if (plen < spec->min_len)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " has %u bytes; it needs at least %zu",
                           name, *at, plen, spec->min_len);
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
    r->crc_before = r->crc;
    r->records_before = r->stats.records;
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
    if (!r->have_expected ||
        memcmp(r->config.digest, r->expected_digest, FERRY_STREAM_DIGEST_LEN) == 0)
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
    unsigned n = ferry_le_load16(p + 32);

    if (n > FERRY_STREAM_MAX_CONFIG_ITEMS || ferry_le_load16(p + 34) != 0)
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
        size_t klen = ferry_le_load16(p + pos), vlen = ferry_le_load16(p + pos + 2);
        pos += CONFIG_ITEM_FIXED_LEN;
        if (len - pos < klen + vlen)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "the CONFIG record ends inside summary item %u", i);
        const char *k = (const char *) p + pos, *v = k + klen;
        if (!ferry_stream_config_key_valid(k, klen) || !ferry_stream_config_value_valid(v, vlen))
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

    if (r->state != READER_START) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "cannot read the stream header: it has already been read");
        return FALSE;
    }
    int rc = reader_read(r, pre, sizeof(pre), &got, error);
    if (rc < 0)
        return FALSE;
    if (memcmp(pre, ferry_stream_magic, MIN(got, sizeof(ferry_stream_magic))) != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_MAGIC,
                           "bad magic: not a ferry state stream");
    if (rc == 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_TRUNCATED,
                           "truncated after %zu bytes, inside the preamble", got);
    uint32_t version = ferry_le_load32(pre + 8), flags = ferry_le_load32(pre + 12);
    if (version != FERRY_STREAM_VERSION)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "format version %u; this ferry reads version %d", version,
                           FERRY_STREAM_VERSION);
    if (flags & ~FERRY_STREAM_FLAG_RETURN_PATH)
        return reader_fail(r, error, FERRY_STREAM_ERROR_VERSION,
                           "unknown preamble flags 0x%x (written by a newer ferry?)", flags);
    if (flags != r->flags)
        return reader_fail(
            r, error, FERRY_STREAM_ERROR_INVALID, "a %s stream where a %s stream was expected",
            ferry_stream_direction_name(flags), ferry_stream_direction_name(r->flags));
    r->crc = ferry_crc32c(0, pre, sizeof(pre));

    unsigned type;
    size_t len;
    uint64_t at;
    if (!reader_record(r, &type, &len, &at, error))
        return FALSE;
    if (type != FERRY_STREAM_RECORD_CONFIG)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "starts with a %s record instead of CONFIG",
                           ferry_stream_record_spec(type)->name);
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
    uint64_t gpa = ferry_le_load64(p);
    uint32_t npages = ferry_le_load32(p + 8), flags = ferry_le_load32(p + 12);
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
    size_t id_len = ferry_le_load16(p + 4);

    if (ferry_le_load16(p + 6) != 0 || id_len > len - SECTION_FIXED_LEN ||
        !ferry_stream_section_id_valid((const char *) p + SECTION_FIXED_LEN, id_len))
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the SECTION record at byte %" G_GUINT64_FORMAT " has a malformed id",
                           rec->offset);
    memcpy(r->section_id, p + SECTION_FIXED_LEN, id_len);
    r->section_id[id_len] = '\0';
    rec->section.id = r->section_id;
    rec->section.version = ferry_le_load32(p);
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
    uint32_t round = ferry_le_load32(r->payload), flags = ferry_le_load32(r->payload + 4);

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

/* A PAGE_REQUEST or DISCARD payload: n page-aligned ranges inside the RAM layout. */
static gboolean reader_parse_ranges(FerryStreamReader *r, FerryStreamRecord *rec, size_t len,
                                    unsigned max, GError **error)
{
    const uint8_t *p = r->payload;
    const char *name = ferry_stream_record_spec(rec->type)->name;
    uint32_t n = ferry_le_load32(p);

    if (ferry_le_load32(p + 4) != 0 || n == 0 || n > max ||
        len != PAGE_REQUEST_FIXED_LEN + (size_t) n * PAGE_REQUEST_ENTRY_LEN)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the %s record at byte %" G_GUINT64_FORMAT
                           " is malformed (%u ranges in %zu bytes)",
                           name, rec->offset, n, len);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = p + PAGE_REQUEST_FIXED_LEN + (size_t) i * PAGE_REQUEST_ENTRY_LEN;
        uint64_t gpa = ferry_le_load64(e), bytes = ferry_le_load64(e + 8);
        if (gpa % PAGE || bytes % PAGE || bytes == 0 || gpa + bytes < gpa)
            return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                               "%s range %u at byte %" G_GUINT64_FORMAT
                               " is not a whole number of pages",
                               name, i, rec->offset);
        if (!in_ram(r, gpa, bytes))
            return reader_fail(r, error, FERRY_STREAM_ERROR_RANGE,
                               "%s range %u at byte %" G_GUINT64_FORMAT
                               " covers GPA 0x%" G_GINT64_MODIFIER "x..0x%" G_GINT64_MODIFIER
                               "x, outside this VM's RAM",
                               name, i, rec->offset, gpa, gpa + bytes - 1);
        r->requests[i].gpa = gpa;
        r->requests[i].bytes = bytes;
    }
    if (rec->type == FERRY_STREAM_RECORD_DISCARD) {
        rec->discard.ranges = r->requests;
        rec->discard.n = n;
    } else {
        rec->page_request.ranges = r->requests;
        rec->page_request.n = n;
    }
    return TRUE;
}

static gboolean reader_parse_status(FerryStreamReader *r, FerryStreamRecord *rec, size_t len,
                                    GError **error)
{
    const uint8_t *p = r->payload;
    uint32_t code = ferry_le_load32(p), n = ferry_le_load32(p + 4);

    if (code < FERRY_STREAM_STATUS_READY || code > FERRY_STREAM_STATUS_FAILED ||
        n > FERRY_STREAM_MAX_STATUS_MESSAGE || len != STATUS_FIXED_LEN + (size_t) n)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the STATUS record at byte %" G_GUINT64_FORMAT
                           " is malformed (code %u, %u message bytes in %zu)",
                           rec->offset, code, n, len);
    const char *text = (const char *) p + STATUS_FIXED_LEN;
    if (!g_utf8_validate(text, n, NULL) || memchr(text, 0, n))
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID,
                           "the STATUS record at byte %" G_GUINT64_FORMAT
                           " has a message that is not UTF-8 text",
                           rec->offset);
    g_free(r->status_message);
    r->status_message = g_strndup(text, n);
    rec->status.code = code;
    rec->status.message = r->status_message;
    return TRUE;
}

/*
 * An END or CHECKPOINT payload: the record count, byte count and CRC must match what was read
 * before the record.
 */
static gboolean reader_check_totals(FerryStreamReader *r, FerryStreamRecord *rec, GError **error)
{
    const uint8_t *p = r->payload;
    const char *name = ferry_stream_record_spec(rec->type)->name;
    uint64_t records = ferry_le_load64(p), bytes = ferry_le_load64(p + 8);
    uint32_t crc = ferry_le_load32(p + 16);

    if (ferry_le_load32(p + 20) != 0)
        return reader_fail(r, error, FERRY_STREAM_ERROR_INVALID, "the %s record is malformed",
                           name);
    if (records != r->records_before || bytes != rec->offset)
        return reader_fail(
            r, error, FERRY_STREAM_ERROR_CHECKSUM,
            "records were lost or duplicated: the %s record counts %" G_GUINT64_FORMAT
            " records in %" G_GUINT64_FORMAT " bytes, the stream had %" G_GUINT64_FORMAT
            " in %" G_GUINT64_FORMAT,
            name, records, bytes, r->records_before, rec->offset);
    if (crc != r->crc_before)
        return reader_fail(r, error, FERRY_STREAM_ERROR_CHECKSUM,
                           "the stream checksum does not match at the %s record (corrupted "
                           "or reordered data)",
                           name);
    if (rec->type == FERRY_STREAM_RECORD_CHECKPOINT) {
        rec->checkpoint.records = records;
        rec->checkpoint.bytes = bytes;
    }
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
        return reader_parse_ranges(r, rec, len, FERRY_STREAM_MAX_PAGE_REQUESTS, error);
    case FERRY_STREAM_RECORD_DISCARD:
        return reader_parse_ranges(r, rec, len, FERRY_STREAM_MAX_DISCARD_RANGES, error);
    case FERRY_STREAM_RECORD_STATUS:
        return reader_parse_status(r, rec, len, error);
    case FERRY_STREAM_RECORD_CHECKPOINT:
        return reader_check_totals(r, rec, error);
    case FERRY_STREAM_RECORD_END:
        if (!reader_check_totals(r, rec, error))
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

/*
 * Unit tests: the machine-state stream codec (vmm/migration/stream.c) and its CRC-32C
 * (vmm/migration/crc32c.c), against the layout in docs/migration-protocol.md.
 *
 * Streams are built by the writer and also by hand (raw_stream_*), so every check of the
 * reader can be reached with otherwise valid input: correct CRCs around a bad length, a bad
 * flag, a page outside RAM.
 */
#include "migration/crc32c.h"
#include "migration/stream.h"

#include <gio/gunixinputstream.h>
#include <string.h>
#include <unistd.h>

#define PAGE FERRY_STREAM_PAGE_SIZE
#define MiB  (1024ull * 1024)

static const uint8_t magic[8] = {0x89, 'F', 'R', 'Y', '\r', '\n', 0x1a, '\n'};

/* ---- helpers ---- */

static const FerryStreamConfigItem items_a[] = {
    {"memory", "1024 MiB"},
    {"vcpus", "2"},
    {"disk vda", "/var/lib/ferry/a.img"},
};

static void config_a(FerryStreamConfig *c)
{
    ferry_stream_config_digest("memory=1024M;vcpus=2;disk=vda:/var/lib/ferry/a.img", c->digest);
    c->items = items_a;
    c->n_items = G_N_ELEMENTS(items_a);
}

static const FerryStreamRange ram_layout[] = {
    {0, 16 * MiB},
    {4096 * MiB, 4 * MiB},
};

static GOutputStream *mem_out(void)
{
    return g_memory_output_stream_new_resizable();
}

static GBytes *mem_out_bytes(GOutputStream *out)
{
    g_assert_true(g_output_stream_close(out, NULL, NULL));
    return g_memory_output_stream_steal_as_bytes(G_MEMORY_OUTPUT_STREAM(out));
}

/* Fills a page with bytes from @seed (never all zero). */
static void fill_page(uint8_t *p, uint32_t seed)
{
    GRand *rand = g_rand_new_with_seed(seed);
    for (unsigned i = 0; i < PAGE; i += 4) {
        uint32_t v = g_rand_int(rand);
        memcpy(p + i, &v, 4);
    }
    p[0] |= 1;
    g_rand_free(rand);
}

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t) p[i] << (8 * i);
    return v;
}

/*
 * Reads a whole stream; returns TRUE once END was verified.  @records (nullable) receives the
 * type of every record read, END included.
 */
static gboolean read_stream_full(GBytes *bytes, uint32_t flags, const FerryStreamConfig *expected,
                                 const FerryStreamRange *ram, unsigned n_ram, GArray *records,
                                 GError **error)
{
    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(in, flags, expected, ram, n_ram, NULL);

    if (!ferry_stream_reader_read_header(r, error))
        return FALSE;
    for (;;) {
        FerryStreamRecord rec;
        if (!ferry_stream_reader_next(r, &rec, error))
            return FALSE;
        if (records)
            g_array_append_val(records, rec.type);
        if (rec.type == FERRY_STREAM_RECORD_RAM_BATCH) {
            /* Touch every page so ASan sees any bad pointer. */
            FerryStreamPageIter it;
            uint64_t gpa;
            const uint8_t *data;
            volatile uint8_t sink = 0;
            ferry_stream_page_iter_init(&it, &rec);
            while (ferry_stream_page_iter_next(&it, &gpa, &data)) {
                if (data)
                    sink ^= data[0] ^ data[PAGE - 1];
            }
            (void) sink;
        }
        if (rec.type == FERRY_STREAM_RECORD_SECTION && rec.section.len) {
            volatile uint8_t sink = rec.section.data[0] ^ rec.section.data[rec.section.len - 1];
            (void) sink;
        }
        if (rec.type == FERRY_STREAM_RECORD_END)
            return TRUE;
    }
}

static gboolean read_stream(GBytes *bytes, GError **error)
{
    FerryStreamConfig c;
    config_a(&c);
    return read_stream_full(bytes, 0, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL, error);
}

/* ---- raw streams built by hand, following docs/migration-protocol.md ---- */

typedef struct {
    unsigned type;
    GByteArray *payload;
} RawRecord;

static void raw_record_clear(gpointer p)
{
    RawRecord *r = p;
    g_byte_array_unref(r->payload);
}

static GArray *raw_records_new(void)
{
    GArray *a = g_array_new(FALSE, TRUE, sizeof(RawRecord));
    g_array_set_clear_func(a, raw_record_clear);
    return a;
}

static void raw_add(GArray *recs, unsigned type, const void *payload, size_t len)
{
    RawRecord r = {type, g_byte_array_new()};
    g_byte_array_append(r.payload, payload, (guint) len);
    g_array_append_val(recs, r);
}

static void raw_append_record(GByteArray *out, unsigned type, uint16_t flags, uint32_t len_field,
                              const uint8_t *payload, size_t len)
{
    uint8_t h[16];
    put_le(h, type, 2);
    put_le(h + 2, flags, 2);
    put_le(h + 4, len_field, 4);
    put_le(h + 8, ferry_crc32c(0, payload, len), 4);
    put_le(h + 12, ferry_crc32c(0, h, 12), 4);
    g_byte_array_append(out, h, 16);
    g_byte_array_append(out, payload, (guint) len);
}

/* Serializes @recs with a preamble and (if @end) a correct END record. */
static GBytes *raw_stream(uint32_t version, uint32_t flags, GArray *recs, gboolean end)
{
    GByteArray *out = g_byte_array_new();
    uint8_t pre[16];
    memcpy(pre, magic, 8);
    put_le(pre + 8, version, 4);
    put_le(pre + 12, flags, 4);
    g_byte_array_append(out, pre, 16);
    for (guint i = 0; i < recs->len; i++) {
        RawRecord *r = &g_array_index(recs, RawRecord, i);
        raw_append_record(out, r->type, 0, r->payload->len, r->payload->data, r->payload->len);
    }
    if (end) {
        uint8_t e[24];
        put_le(e, recs->len, 8);
        put_le(e + 8, out->len, 8);
        put_le(e + 16, ferry_crc32c(0, out->data, out->len), 4);
        put_le(e + 20, 0, 4);
        raw_append_record(out, 0x7fff, 0, 24, e, 24);
    }
    return g_byte_array_free_to_bytes(out);
}

/* Splits a valid stream into its records (END excluded). */
static GArray *raw_parse(GBytes *bytes)
{
    gsize len;
    const uint8_t *p = g_bytes_get_data(bytes, &len);
    GArray *recs = raw_records_new();
    size_t pos = 16;
    while (pos + 16 <= len) {
        unsigned type = (unsigned) get_le(p + pos, 2);
        size_t plen = get_le(p + pos + 4, 4);
        if (type != 0x7fff)
            raw_add(recs, type, p + pos + 16, plen);
        pos += 16 + plen;
    }
    g_assert_cmpuint(pos, ==, len);
    return recs;
}

/* A CONFIG payload for config_a(). */
static GByteArray *config_a_payload(void)
{
    FerryStreamConfig c;
    config_a(&c);
    GByteArray *p = g_byte_array_new();
    uint8_t fixed[36];
    memcpy(fixed, c.digest, 32);
    put_le(fixed + 32, c.n_items, 2);
    put_le(fixed + 34, 0, 2);
    g_byte_array_append(p, fixed, 36);
    for (unsigned i = 0; i < c.n_items; i++) {
        uint8_t ih[4];
        put_le(ih, strlen(c.items[i].key), 2);
        put_le(ih + 2, strlen(c.items[i].value), 2);
        g_byte_array_append(p, ih, 4);
        g_byte_array_append(p, (const guint8 *) c.items[i].key, (guint) strlen(c.items[i].key));
        g_byte_array_append(p, (const guint8 *) c.items[i].value, (guint) strlen(c.items[i].value));
    }
    return p;
}

static GArray *raw_with_config(void)
{
    GArray *recs = raw_records_new();
    g_autoptr(GByteArray) cfg = config_a_payload();
    raw_add(recs, 1, cfg->data, cfg->len);
    return recs;
}

static void assert_read_fails(GBytes *bytes, FerryStreamError code, const char *fragment)
{
    g_autoptr(GError) error = NULL;
    g_assert_false(read_stream(bytes, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, (gint) code);
    if (fragment && !strstr(error->message, fragment))
        g_error("message \"%s\" lacks \"%s\"", error->message, fragment);
}

/*
 * A forward stream of CONFIG (if @with_config), one record of @type with @payload and a
 * correct END must fail with @code and a message containing @fragment (nullable).
 */
static void expect_record_fails(gboolean with_config, unsigned type, const void *payload,
                                size_t len, FerryStreamError code, const char *fragment)
{
    g_autoptr(GArray) recs = with_config ? raw_with_config() : raw_records_new();
    raw_add(recs, type, payload, len);
    g_autoptr(GBytes) b = raw_stream(1, 0, recs, TRUE);
    assert_read_fails(b, code, fragment);
}

/* The preamble, CONFIG and then only the header of a record: no payload follows. */
static GBytes *header_only_stream(uint32_t flags, unsigned type, uint16_t rflags,
                                  uint32_t len_field, const uint8_t *payload, size_t len)
{
    g_autoptr(GArray) recs = raw_with_config();
    g_autoptr(GBytes) head = raw_stream(1, flags, recs, FALSE);
    GByteArray *s = g_byte_array_new();
    g_byte_array_append(s, g_bytes_get_data(head, NULL), (guint) g_bytes_get_size(head));
    raw_append_record(s, type, rflags, len_field, payload, len);
    return g_byte_array_free_to_bytes(s);
}

/*
 * A small stream with every forward record type: CONFIG, ROUND, SECTION, a sparse RAM batch
 * with zero pages and one data page, a final ROUND, a section, END.
 */
static GBytes *small_stream(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    FerryStreamConfig c;
    g_autofree uint8_t *pages = g_malloc0(4 * PAGE);
    uint64_t present = 0xb; /* pages 0, 1, 3 */

    config_a(&c);
    fill_page(pages + PAGE, 7);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_round(w, 0, 0, NULL));
    g_assert_true(ferry_stream_writer_put_section(w, "rtc", 3, "\x01\x02\x03\x04", 4, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0x2000, 4, pages, &present, NULL));
    g_assert_true(ferry_stream_writer_put_round(w, 1, FERRY_STREAM_ROUND_FINAL, NULL));
    g_assert_true(ferry_stream_writer_put_section(w, "vcpu/0", 1, "regs", 4, NULL));
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    return mem_out_bytes(out);
}

/* ---- CRC-32C ---- */

static void test_crc32c(void)
{
    g_assert_cmphex(ferry_crc32c(0, "123456789", 9), ==, 0xE3069283);
    g_assert_cmphex(ferry_crc32c_sw(0, "123456789", 9), ==, 0xE3069283);
    g_assert_cmphex(ferry_crc32c(0, "", 0), ==, 0);
    /* 32 zero bytes: a published iSCSI test vector (RFC 3720, B.4). */
    uint8_t zeros[32] = {0};
    g_assert_cmphex(ferry_crc32c(0, zeros, 32), ==, 0x8A9136AA);

    size_t n = 5 * 4096 * 3 + 77;
    g_autofree uint8_t *buf = g_malloc(n);
    g_autoptr(GRand) rand = g_rand_new_with_seed(42);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t) g_rand_int(rand);
    static const size_t lens[] = {0, 1, 7, 8, 9, 63, 4096, 12287, 12288, 12289, 40000};
    for (unsigned i = 0; i < G_N_ELEMENTS(lens); i++) {
        for (size_t off = 0; off < 9; off += 3) {
            size_t len = MIN(lens[i], n - off);
            uint32_t hw = ferry_crc32c(0, buf + off, len);
            g_assert_cmphex(hw, ==, ferry_crc32c_sw(0, buf + off, len));
            /* Piecewise and combined CRCs agree with the one-shot CRC. */
            for (size_t cut = 0; cut <= len; cut += len / 5 + 1) {
                uint32_t a = ferry_crc32c(0, buf + off, cut);
                uint32_t b = ferry_crc32c(0, buf + off + cut, len - cut);
                g_assert_cmphex(ferry_crc32c(a, buf + off + cut, len - cut), ==, hw);
                g_assert_cmphex(ferry_crc32c_combine(a, b, len - cut), ==, hw);
            }
        }
    }
}

static void test_zero_page(void)
{
    g_autofree uint8_t *p = g_malloc0(PAGE);
    g_assert_true(ferry_stream_page_is_zero(p));
    for (unsigned i = 0; i < PAGE; i++) {
        p[i] = 0x80;
        g_assert_false(ferry_stream_page_is_zero(p));
        p[i] = 0;
    }
}

/* ---- round trips ---- */

static void test_roundtrip_forward(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    FerryStreamConfig c;
    unsigned np = FERRY_STREAM_MAX_BATCH_PAGES;
    g_autofree uint8_t *ram = g_malloc0((size_t) np * PAGE);
    g_autofree uint8_t *big = g_malloc(FERRY_STREAM_MAX_SECTION_DATA);
    uint64_t present[FERRY_STREAM_MAX_BATCH_PAGES / 64];

    config_a(&c);
    for (unsigned i = 0; i < np; i++) {
        if (i % 3 == 0)
            fill_page(ram + (size_t) i * PAGE, i);
    }
    for (size_t i = 0; i < FERRY_STREAM_MAX_SECTION_DATA; i++)
        big[i] = (uint8_t) (i * 31);
    for (unsigned i = 0; i < G_N_ELEMENTS(present); i++)
        present[i] = 0x5555555555555555ull << (i % 2);

    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_round(w, 0, 0, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0, np, ram, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 4096 * MiB, np, ram, present, NULL));
    g_assert_true(ferry_stream_writer_put_round(w, 7, FERRY_STREAM_ROUND_FINAL, NULL));
    g_assert_true(ferry_stream_writer_put_section(w, "empty", 0, NULL, 0, NULL));
    g_assert_true(ferry_stream_writer_put_section(
        w, "virtio-blk/00:03.0_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS", 0xfeedbeef, big,
        FERRY_STREAM_MAX_SECTION_DATA, NULL));
    g_assert_true(ferry_stream_writer_put_round(
        w, 8, FERRY_STREAM_ROUND_FINAL | FERRY_STREAM_ROUND_POSTCOPY, NULL));
    g_assert_true(ferry_stream_writer_put_end(w, NULL));

    FerryStreamStats ws;
    ferry_stream_writer_get_stats(w, &ws);
    g_assert_cmpuint(ws.records, ==, 9); /* END included */
    unsigned expect_data = 0;
    for (unsigned i = 0; i < np; i++)
        expect_data += (i % 3 == 0) + (i % 3 == 0 && ((present[i / 64] >> (i % 64)) & 1));
    g_assert_cmpuint(ws.data_pages, ==, expect_data);
    g_assert_cmpuint(ws.zero_pages, ==, np + np / 2 - expect_data);
    g_autoptr(GBytes) bytes = mem_out_bytes(out);
    g_assert_cmpuint(ws.bytes, ==, g_bytes_get_size(bytes));

    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(FerryStreamReader) r =
        ferry_stream_reader_new(in, 0, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL);
    g_autoptr(GError) error = NULL;
    FerryStreamRecord rec;

    g_assert_true(ferry_stream_reader_read_header(r, &error));
    g_assert_no_error(error);
    const FerryStreamConfig *sc = ferry_stream_reader_get_config(r);
    g_assert_cmpmem(sc->digest, 32, c.digest, 32);
    g_assert_cmpuint(sc->n_items, ==, 3);
    g_assert_cmpstr(sc->items[2].key, ==, "disk vda");
    g_assert_cmpstr(sc->items[2].value, ==, "/var/lib/ferry/a.img");

    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_ROUND);
    g_assert_cmpuint(rec.round.round, ==, 0);
    g_assert_cmpuint(rec.round.flags, ==, 0);

    for (unsigned b = 0; b < 2; b++) {
        g_assert_true(ferry_stream_reader_next(r, &rec, &error));
        g_assert_no_error(error);
        g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_RAM_BATCH);
        g_assert_cmpuint(rec.ram.gpa, ==, b ? 4096 * MiB : 0);
        g_assert_cmpuint(rec.ram.npages, ==, np);
        FerryStreamPageIter it;
        uint64_t gpa;
        const uint8_t *data;
        unsigned seen = 0;
        unsigned expect_index = 0;
        ferry_stream_page_iter_init(&it, &rec);
        while (ferry_stream_page_iter_next(&it, &gpa, &data)) {
            unsigned i = (unsigned) ((gpa - rec.ram.gpa) / PAGE);
            if (b) {
                g_assert_true((present[i / 64] >> (i % 64)) & 1);
                /* Pages come in order: the next present index. */
                while (!((present[expect_index / 64] >> (expect_index % 64)) & 1))
                    expect_index++;
            }
            g_assert_cmpuint(i, ==, expect_index);
            expect_index++;
            if (i % 3 == 0)
                g_assert_cmpmem(data, PAGE, ram + (size_t) i * PAGE, PAGE);
            else
                g_assert_null(data);
            seen++;
        }
        g_assert_cmpuint(seen, ==, b ? np / 2 : np);
    }

    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_ROUND);
    g_assert_cmpuint(rec.round.round, ==, 7);
    g_assert_cmpuint(rec.round.flags, ==, FERRY_STREAM_ROUND_FINAL);

    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_SECTION);
    g_assert_cmpstr(rec.section.id, ==, "empty");
    g_assert_cmpuint(rec.section.len, ==, 0);

    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_no_error(error);
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_SECTION);
    g_assert_cmpuint(strlen(rec.section.id), ==, FERRY_STREAM_MAX_SECTION_ID);
    g_assert_cmpuint(rec.section.version, ==, 0xfeedbeef);
    g_assert_cmpmem(rec.section.data, rec.section.len, big, FERRY_STREAM_MAX_SECTION_DATA);

    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpuint(rec.round.flags, ==, FERRY_STREAM_ROUND_FINAL | FERRY_STREAM_ROUND_POSTCOPY);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_END);

    FerryStreamStats rs;
    ferry_stream_reader_get_stats(r, &rs);
    g_assert_cmpuint(rs.bytes, ==, ws.bytes);
    g_assert_cmpuint(rs.records, ==, ws.records);
    g_assert_cmpuint(rs.zero_pages, ==, ws.zero_pages);
    g_assert_cmpuint(rs.data_pages, ==, ws.data_pages);

    /* Nothing after END. */
    g_assert_false(ferry_stream_reader_next(r, &rec, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
}

static void test_roundtrip_return_path(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w =
        ferry_stream_writer_new(out, FERRY_STREAM_FLAG_RETURN_PATH, NULL);
    FerryStreamConfig c;
    g_autoptr(GError) error = NULL;
    FerryStreamRange req[FERRY_STREAM_MAX_PAGE_REQUESTS];

    config_a(&c);
    for (unsigned i = 0; i < G_N_ELEMENTS(req); i++) {
        req[i].gpa = (uint64_t) i * PAGE;
        req[i].bytes = PAGE * (1 + i % 3);
    }
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_page_request(w, req, 1, NULL));
    g_assert_true(ferry_stream_writer_put_page_request(w, req, G_N_ELEMENTS(req), NULL));
    /* Forward-only records are refused on a return path. */
    g_assert_false(ferry_stream_writer_put_section(w, "x", 1, "", 0, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    g_autoptr(GBytes) bytes = mem_out_bytes(out);

    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(
        in, FERRY_STREAM_FLAG_RETURN_PATH, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL);
    FerryStreamRecord rec;
    g_assert_true(ferry_stream_reader_read_header(r, &error));
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_PAGE_REQUEST);
    g_assert_cmpuint(rec.page_request.n, ==, 1);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(rec.page_request.n, ==, G_N_ELEMENTS(req));
    g_assert_cmpmem(rec.page_request.ranges, sizeof(req), req, sizeof(req));
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_END);

    /* A forward reader refuses a return-path stream, and the reverse. */
    g_assert_false(read_stream(bytes, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_autoptr(GBytes) fwd = small_stream();
    g_assert_false(read_stream_full(fwd, FERRY_STREAM_FLAG_RETURN_PATH, &c, NULL, 0, NULL, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
}

/* STATUS (return path): round trip, cleaning of messages, and malformed payloads. */
static void test_status_records(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w =
        ferry_stream_writer_new(out, FERRY_STREAM_FLAG_RETURN_PATH, NULL);
    FerryStreamConfig c;
    g_autoptr(GError) error = NULL;
    config_a(&c);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_status(w, FERRY_STREAM_STATUS_READY, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_status(w, FERRY_STREAM_STATUS_RESUMED, "", NULL));
    g_assert_true(ferry_stream_writer_put_status(w, FERRY_STREAM_STATUS_FAILED,
                                                 "disk 'ü.img'\nbusy\t", NULL));
    /* 1023 ASCII bytes then a 2-byte character: cut before it, not inside */
    g_autofree char *longmsg = g_strnfill(1023, 'x');
    g_autofree char *longer = g_strconcat(longmsg, "é and more", NULL);
    g_assert_true(ferry_stream_writer_put_status(w, FERRY_STREAM_STATUS_FAILED, longer, NULL));
    g_assert_false(ferry_stream_writer_put_status(w, 7, NULL, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    g_autoptr(GBytes) bytes = mem_out_bytes(out);

    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(
        in, FERRY_STREAM_FLAG_RETURN_PATH, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL);
    FerryStreamRecord rec;
    g_assert_true(ferry_stream_reader_read_header(r, &error));
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_STATUS);
    g_assert_cmpint(rec.status.code, ==, FERRY_STREAM_STATUS_READY);
    g_assert_cmpstr(rec.status.message, ==, "");
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.status.code, ==, FERRY_STREAM_STATUS_RESUMED);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.status.code, ==, FERRY_STREAM_STATUS_FAILED);
    g_assert_cmpstr(rec.status.message, ==, "disk 'ü.img' busy ");
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpstr(rec.status.message, ==, longmsg);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_no_error(error);
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_END);

    /* a forward stream has no STATUS */
    g_autoptr(GOutputStream) out2 = mem_out();
    g_autoptr(FerryStreamWriter) fw = ferry_stream_writer_new(out2, 0, NULL);
    g_assert_true(ferry_stream_writer_put_header(fw, &c, NULL));
    g_assert_false(ferry_stream_writer_put_status(fw, FERRY_STREAM_STATUS_READY, NULL, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);

    /* malformed payloads: bad codes, length fields that disagree, bytes that are not text */
    static const struct {
        uint32_t code, n;
        const char *text;
        size_t len;
    } bad[] = {
        {0, 0, "", 0},          {4, 0, "", 0},        {1, 5, "abc", 3},
        {3, 2, "abc", 3},       {3, 2, "\xff\xfe", 2}, {3, 3, "a\0b", 3},
        {3, 2000, "", 0},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        uint8_t p[16] = {0};
        put_le(p, bad[i].code, 4);
        put_le(p + 4, bad[i].n, 4);
        memcpy(p + 8, bad[i].text, bad[i].len);
        g_autoptr(GArray) recs = raw_with_config();
        raw_add(recs, FERRY_STREAM_RECORD_STATUS, p, 8 + bad[i].len);
        g_autoptr(GBytes) b = raw_stream(1, FERRY_STREAM_FLAG_RETURN_PATH, recs, TRUE);
        g_assert_false(read_stream_full(b, FERRY_STREAM_FLAG_RETURN_PATH, NULL, NULL, 0, NULL,
                                        &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
        g_clear_error(&error);
    }
    /* a STATUS in a forward stream is refused by the reader too */
    uint8_t ok[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    expect_record_fails(TRUE, FERRY_STREAM_RECORD_STATUS, ok, sizeof(ok),
                        FERRY_STREAM_ERROR_UNKNOWN_RECORD, NULL);
}

/* ---- DISCARD and CHECKPOINT (post-copy switch) ---- */

/*
 * A forward stream as the post-copy switch writes it: CONFIG, ROUND 0, a RAM batch, ROUND 1
 * POSTCOPY, DISCARD (two ranges), a section, CHECKPOINT, a RAM batch, END.  @cp (nullable)
 * receives the writer's figures just before the CHECKPOINT.
 */
static GBytes *postcopy_stream(FerryStreamStats *cp)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    FerryStreamConfig c;
    g_autofree uint8_t *pages = g_malloc0(2 * PAGE);
    static const FerryStreamRange discard[] = {{0x3000, PAGE}, {4096 * MiB, 2 * PAGE}};

    config_a(&c);
    fill_page(pages, 11);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_round(w, 0, 0, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0x3000, 2, pages, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_round(w, 1, FERRY_STREAM_ROUND_POSTCOPY, NULL));
    g_assert_true(ferry_stream_writer_put_discard(w, discard, G_N_ELEMENTS(discard), NULL));
    g_assert_true(ferry_stream_writer_put_section(w, "vcpu/0", 1, "regs", 4, NULL));
    if (cp)
        ferry_stream_writer_get_stats(w, cp);
    g_assert_true(ferry_stream_writer_put_checkpoint(w, NULL));
    /* put_checkpoint flushed: everything so far is in the output */
    FerryStreamStats now;
    ferry_stream_writer_get_stats(w, &now);
    g_assert_cmpuint(g_memory_output_stream_get_data_size(G_MEMORY_OUTPUT_STREAM(out)), ==,
                     now.bytes);
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0x3000, 1, pages, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    return mem_out_bytes(out);
}

static void test_postcopy_records(void)
{
    FerryStreamStats cp;
    g_autoptr(GBytes) bytes = postcopy_stream(&cp);
    g_autoptr(GError) error = NULL;
    FerryStreamConfig c;
    config_a(&c);

    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(FerryStreamReader) r =
        ferry_stream_reader_new(in, 0, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL);
    FerryStreamRecord rec;
    g_assert_true(ferry_stream_reader_read_header(r, &error));
    for (unsigned i = 0; i < 3; i++)
        g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_ROUND);
    g_assert_cmpuint(rec.round.flags, ==, FERRY_STREAM_ROUND_POSTCOPY);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_DISCARD);
    g_assert_cmpuint(rec.discard.n, ==, 2);
    g_assert_cmphex(rec.discard.ranges[0].gpa, ==, 0x3000);
    g_assert_cmphex(rec.discard.ranges[0].bytes, ==, PAGE);
    g_assert_cmphex(rec.discard.ranges[1].gpa, ==, 4096 * MiB);
    g_assert_cmphex(rec.discard.ranges[1].bytes, ==, 2 * PAGE);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_SECTION);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_no_error(error);
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_CHECKPOINT);
    g_assert_cmpuint(rec.checkpoint.records, ==, cp.records);
    g_assert_cmpuint(rec.checkpoint.bytes, ==, cp.bytes);
    g_assert_cmpuint(rec.offset, ==, cp.bytes);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_RAM_BATCH);
    /* END counts the CHECKPOINT like any record */
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_no_error(error);
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_END);

    /* A stream cut after the CHECKPOINT: everything up to it verifies, then TRUNCATED. */
    g_autoptr(GBytes) cut = g_bytes_new_from_bytes(bytes, 0, cp.bytes + 16 + 24);
    g_autoptr(GInputStream) in2 = g_memory_input_stream_new_from_bytes(cut);
    g_autoptr(FerryStreamReader) r2 =
        ferry_stream_reader_new(in2, 0, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL);
    g_assert_true(ferry_stream_reader_read_header(r2, &error));
    do {
        g_assert_true(ferry_stream_reader_next(r2, &rec, &error));
    } while (rec.type != FERRY_STREAM_RECORD_CHECKPOINT);
    g_assert_false(ferry_stream_reader_next(r2, &rec, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_TRUNCATED);
    g_clear_error(&error);

    /* The most ranges a DISCARD holds; writer refusals. */
    FerryStreamRange many[FERRY_STREAM_MAX_DISCARD_RANGES + 1];
    for (unsigned i = 0; i < G_N_ELEMENTS(many); i++)
        many[i] = (FerryStreamRange){(uint64_t) i * 2 * PAGE, PAGE * (1 + i % 2)};
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_discard(w, many, FERRY_STREAM_MAX_DISCARD_RANGES, NULL));
    g_assert_false(ferry_stream_writer_put_discard(w, many, G_N_ELEMENTS(many), &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_discard(w, many, 0, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    static const FerryStreamRange bad[] = {
        {0x800, PAGE}, {0, 0}, {0, 100}, {~0ull - PAGE + 1, 2 * PAGE}};
    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_false(ferry_stream_writer_put_discard(w, &bad[i], 1, &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
        g_assert_nonnull(strstr(error->message, "DISCARD range 0"));
        g_clear_error(&error);
    }
    g_assert_true(ferry_stream_writer_put_checkpoint(w, NULL));
    g_assert_true(ferry_stream_writer_put_checkpoint(w, NULL)); /* back to back is fine */
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    g_assert_false(ferry_stream_writer_put_checkpoint(w, &error)); /* not after END */
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_autoptr(GBytes) b = mem_out_bytes(out);
    g_autoptr(GArray) types = g_array_new(FALSE, FALSE, sizeof(FerryStreamRecordType));
    g_assert_true(read_stream_full(b, 0, &c, NULL, 0, types, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(types->len, ==, 4);
    g_assert_cmpint(g_array_index(types, FerryStreamRecordType, 0), ==,
                    FERRY_STREAM_RECORD_DISCARD);
    g_assert_cmpint(g_array_index(types, FerryStreamRecordType, 2), ==,
                    FERRY_STREAM_RECORD_CHECKPOINT);

    /* Both are forward-only: a return-path writer refuses them. */
    g_autoptr(GOutputStream) out2 = mem_out();
    g_autoptr(FerryStreamWriter) rw =
        ferry_stream_writer_new(out2, FERRY_STREAM_FLAG_RETURN_PATH, NULL);
    g_assert_true(ferry_stream_writer_put_header(rw, &c, NULL));
    g_assert_false(ferry_stream_writer_put_discard(rw, many, 1, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_checkpoint(rw, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
}

/*
 * A raw forward stream: CONFIG, ROUND 0, a CHECKPOINT whose figures are the true ones plus
 * @records_delta, @bytes_delta, CRC xor @crc_xor and reserved word @reserved, then ROUND 1 and
 * a correct END (if @end).
 */
static GBytes *raw_checkpoint_stream(int64_t records_delta, int64_t bytes_delta, uint32_t crc_xor,
                                     uint32_t reserved, gboolean end)
{
    g_autoptr(GArray) recs = raw_with_config();
    uint8_t round[8] = {0};
    raw_add(recs, FERRY_STREAM_RECORD_ROUND, round, 8);
    g_autoptr(GBytes) head = raw_stream(1, 0, recs, FALSE);
    GByteArray *out = g_byte_array_new();
    g_byte_array_append(out, g_bytes_get_data(head, NULL), (guint) g_bytes_get_size(head));
    uint8_t cp[24];
    put_le(cp, recs->len + records_delta, 8);
    put_le(cp + 8, out->len + bytes_delta, 8);
    put_le(cp + 16, ferry_crc32c(0, out->data, out->len) ^ crc_xor, 4);
    put_le(cp + 20, reserved, 4);
    raw_append_record(out, FERRY_STREAM_RECORD_CHECKPOINT, 0, 24, cp, 24);
    put_le(round, 1, 4);
    raw_append_record(out, FERRY_STREAM_RECORD_ROUND, 0, 8, round, 8);
    if (end) {
        uint8_t e[24];
        put_le(e, recs->len + 2, 8);
        put_le(e + 8, out->len, 8);
        put_le(e + 16, ferry_crc32c(0, out->data, out->len), 4);
        put_le(e + 20, 0, 4);
        raw_append_record(out, FERRY_STREAM_RECORD_END, 0, 24, e, 24);
    }
    return g_byte_array_free_to_bytes(out);
}

static void test_postcopy_records_malformed(void)
{
    /* a hand-built CHECKPOINT with the right figures reads (the layout matches the doc) */
    g_autoptr(GBytes) good = raw_checkpoint_stream(0, 0, 0, 0, TRUE);
    g_autoptr(GError) error = NULL;
    g_assert_true(read_stream(good, &error));
    g_assert_no_error(error);

    /* wrong figures fail at the CHECKPOINT itself, not at END: no END follows here */
    static const struct {
        int64_t records, bytes;
        uint32_t crc_xor, reserved;
        FerryStreamError code;
        const char *fragment;
    } cps[] = {
        {1, 0, 0, 0, FERRY_STREAM_ERROR_CHECKSUM, "lost or duplicated: the CHECKPOINT"},
        {-1, 0, 0, 0, FERRY_STREAM_ERROR_CHECKSUM, "lost or duplicated"},
        {0, 16, 0, 0, FERRY_STREAM_ERROR_CHECKSUM, "lost or duplicated"},
        {0, 0, 0x100, 0, FERRY_STREAM_ERROR_CHECKSUM, "does not match at the CHECKPOINT"},
        {0, 0, 0, 1, FERRY_STREAM_ERROR_INVALID, "CHECKPOINT record is malformed"},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cps); i++) {
        g_autoptr(GBytes) b = raw_checkpoint_stream(cps[i].records, cps[i].bytes, cps[i].crc_xor,
                                                    cps[i].reserved, FALSE);
        assert_read_fails(b, cps[i].code, cps[i].fragment);
    }

    /* a record dropped before the CHECKPOINT (the first ROUND) is caught there */
    g_autoptr(GBytes) pc = postcopy_stream(NULL);
    gsize len;
    const uint8_t *p = g_bytes_get_data(pc, &len);
    size_t cfg_end = 16 + 16 + get_le(p + 16 + 4, 4);
    g_autoptr(GByteArray) dropped = g_byte_array_new();
    g_byte_array_append(dropped, p, (guint) cfg_end);
    g_byte_array_append(dropped, p + cfg_end + 16 + 8, (guint) (len - cfg_end - 16 - 8));
    g_autoptr(GBytes) b1 = g_byte_array_free_to_bytes(g_steal_pointer(&dropped));
    assert_read_fails(b1, FERRY_STREAM_ERROR_CHECKSUM, "the CHECKPOINT record counts");

    /* CHECKPOINT lengths other than 24 */
    uint8_t zeros[32] = {0};
    expect_record_fails(TRUE, FERRY_STREAM_RECORD_CHECKPOINT, zeros, 23, FERRY_STREAM_ERROR_INVALID,
                        "needs at least 24");
    g_autoptr(GBytes) big = header_only_stream(0, FERRY_STREAM_RECORD_CHECKPOINT, 0, 25, zeros, 0);
    assert_read_fails(big, FERRY_STREAM_ERROR_OVERSIZED, "CHECKPOINT");
    g_autoptr(GBytes) bigd =
        header_only_stream(0, FERRY_STREAM_RECORD_DISCARD, 0, 8 + 1025 * 16, zeros, 0);
    assert_read_fails(bigd, FERRY_STREAM_ERROR_OVERSIZED, "DISCARD");

    /* DISCARD payloads: count/length disagreements, reserved word, ranges that are not pages */
    static const struct {
        uint32_t n, reserved;
        unsigned entries;
        uint64_t gpa, bytes;
        FerryStreamError code;
        const char *fragment;
    } ds[] = {
        {0, 0, 1, 0, PAGE, FERRY_STREAM_ERROR_INVALID, "malformed (0 ranges"},
        {2, 0, 1, 0, PAGE, FERRY_STREAM_ERROR_INVALID, "malformed (2 ranges in 24"},
        {1, 0, 2, 0, PAGE, FERRY_STREAM_ERROR_INVALID, "malformed (1 ranges in 40"},
        {1, 7, 1, 0, PAGE, FERRY_STREAM_ERROR_INVALID, "malformed"},
        {1, 0, 1, 0x10, PAGE, FERRY_STREAM_ERROR_INVALID, "not a whole number of pages"},
        {1, 0, 1, 0, 0, FERRY_STREAM_ERROR_INVALID, "not a whole number of pages"},
        {1, 0, 1, 0, 3 * PAGE / 2, FERRY_STREAM_ERROR_INVALID, "not a whole number"},
        {1, 0, 1, ~0ull - PAGE + 1, 2 * PAGE, FERRY_STREAM_ERROR_INVALID, "whole number"},
        {1, 0, 1, 16 * MiB - PAGE, 2 * PAGE, FERRY_STREAM_ERROR_RANGE, "outside this VM's RAM"},
        {1, 0, 1, 64 * MiB, PAGE, FERRY_STREAM_ERROR_RANGE, "DISCARD range 0"},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(ds); i++) {
        uint8_t d[8 + 2 * 16] = {0};
        put_le(d, ds[i].n, 4);
        put_le(d + 4, ds[i].reserved, 4);
        for (unsigned k = 0; k < ds[i].entries; k++) {
            put_le(d + 8 + 16 * k, ds[i].gpa, 8);
            put_le(d + 16 + 16 * k, ds[i].bytes, 8);
        }
        expect_record_fails(TRUE, FERRY_STREAM_RECORD_DISCARD, d, 8 + 16 * ds[i].entries,
                            ds[i].code, ds[i].fragment);
    }

    /* Neither belongs in a return path. */
    uint8_t d1[24] = {0};
    put_le(d1, 1, 4);
    put_le(d1 + 16, PAGE, 8);
    uint8_t cp[24] = {0};
    put_le(cp, 1, 8);
    put_le(cp + 8, 16, 8);
    const struct {
        unsigned type;
        const uint8_t *payload;
        const char *name;
    } rp[] = {{FERRY_STREAM_RECORD_DISCARD, d1, "DISCARD"},
              {FERRY_STREAM_RECORD_CHECKPOINT, cp, "CHECKPOINT"}};
    for (unsigned i = 0; i < G_N_ELEMENTS(rp); i++) {
        g_autoptr(GArray) recs = raw_with_config();
        raw_add(recs, rp[i].type, rp[i].payload, 24);
        g_autoptr(GBytes) b = raw_stream(1, FERRY_STREAM_FLAG_RETURN_PATH, recs, TRUE);
        g_assert_false(
            read_stream_full(b, FERRY_STREAM_FLAG_RETURN_PATH, NULL, NULL, 0, NULL, &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_UNKNOWN_RECORD);
        g_assert_nonnull(strstr(error->message, rp[i].name));
        g_clear_error(&error);
    }
}

/* The post-copy stream cut at every byte, and with every bit flipped, never reads. */
static void test_postcopy_records_damaged(void)
{
    g_autoptr(GBytes) bytes = postcopy_stream(NULL);
    gsize len;
    const uint8_t *orig = g_bytes_get_data(bytes, &len);

    for (gsize cut = 0; cut < len; cut++) {
        g_autoptr(GBytes) part = g_bytes_new(orig, cut);
        g_autoptr(GError) error = NULL;
        g_assert_false(read_stream(part, &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_TRUNCATED);
    }
    g_autofree uint8_t *p = g_memdup2(orig, len);
    for (gsize i = 0; i < len; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            p[i] ^= (uint8_t) (1u << bit);
            g_autoptr(GBytes) bad = g_bytes_new_static(p, len);
            g_autoptr(GError) error = NULL;
            if (read_stream(bad, &error))
                g_error("flipping bit %u of byte %zu went unnoticed", bit, (size_t) i);
            p[i] ^= (uint8_t) (1u << bit);
        }
    }
}

static void test_roundtrip_small(void)
{
    g_autoptr(GBytes) bytes = small_stream();
    g_autoptr(GArray) types = g_array_new(FALSE, FALSE, sizeof(FerryStreamRecordType));
    g_autoptr(GError) error = NULL;
    FerryStreamConfig c;
    static const FerryStreamRecordType expect[] = {
        FERRY_STREAM_RECORD_ROUND, FERRY_STREAM_RECORD_SECTION, FERRY_STREAM_RECORD_RAM_BATCH,
        FERRY_STREAM_RECORD_ROUND, FERRY_STREAM_RECORD_SECTION, FERRY_STREAM_RECORD_END,
    };

    config_a(&c);
    g_assert_true(read_stream_full(bytes, 0, &c, ram_layout, 2, types, &error));
    g_assert_no_error(error);
    g_assert_cmpmem(types->data, types->len * sizeof(FerryStreamRecordType), expect,
                    sizeof(expect));
    /* Without an expected configuration or layout (an inspection tool) it reads too. */
    g_assert_true(read_stream_full(bytes, 0, NULL, NULL, 0, NULL, &error));
    g_assert_no_error(error);
}

/* Feeds a stream through a pipe in 7-byte writes: partial reads and refills. */
typedef struct {
    int fd;
    GBytes *bytes;
} PipeFeed;

static gpointer pipe_feeder(gpointer data)
{
    PipeFeed *f = data;
    gsize len;
    const uint8_t *p = g_bytes_get_data(f->bytes, &len);
    for (gsize off = 0; off < len;) {
        ssize_t n = write(f->fd, p + off, MIN(7, len - off));
        g_assert_cmpint(n, >, 0);
        off += (gsize) n;
    }
    close(f->fd);
    return NULL;
}

static void test_pipe_chunks(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    FerryStreamConfig c;
    g_autofree uint8_t *ram = g_malloc((size_t) 300 * PAGE);
    int fds[2];

    config_a(&c);
    for (unsigned i = 0; i < 300; i++)
        fill_page(ram + (size_t) i * PAGE, i + 1000);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    for (unsigned i = 0; i < 50; i++)
        g_assert_true(ferry_stream_writer_put_section(w, "dev", i, ram, i * 13, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0x100000, 300, ram, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    g_autoptr(GBytes) bytes = mem_out_bytes(out);

    g_assert_cmpint(pipe(fds), ==, 0);
    PipeFeed feed = {fds[1], bytes};
    GThread *t = g_thread_new("feeder", pipe_feeder, &feed);
    g_autoptr(GInputStream) in = g_unix_input_stream_new(fds[0], TRUE);
    g_autoptr(FerryStreamReader) r =
        ferry_stream_reader_new(in, 0, &c, ram_layout, G_N_ELEMENTS(ram_layout), NULL);
    g_autoptr(GError) error = NULL;
    FerryStreamRecord rec;
    g_assert_true(ferry_stream_reader_read_header(r, &error));
    for (unsigned i = 0; i < 50; i++) {
        g_assert_true(ferry_stream_reader_next(r, &rec, &error));
        g_assert_no_error(error);
        g_assert_cmpuint(rec.section.version, ==, i);
        g_assert_cmpmem(rec.section.data, rec.section.len, ram, i * 13);
    }
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpuint(rec.ram.n_data, ==, 300);
    g_assert_cmpmem(rec.ram.data, (size_t) 300 * PAGE, ram, (size_t) 300 * PAGE);
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_END);
    g_thread_join(t);
}

/* ---- zero pages and compression ---- */

static void test_zero_pages_cost_flags(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    FerryStreamConfig c;
    g_autofree uint8_t *ram = g_malloc0((size_t) 1000 * PAGE);
    FerryStreamStats before, after;

    config_a(&c);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    ferry_stream_writer_get_stats(w, &before);
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0, 1000, ram, NULL, NULL));
    ferry_stream_writer_get_stats(w, &after);
    /* 16-byte header + 16 fixed bytes + a 125-byte zero bitmap; no page data. */
    g_assert_cmpuint(after.bytes - before.bytes, ==, 16 + 16 + 125);
    g_assert_cmpuint(after.zero_pages, ==, 1000);
    g_assert_cmpuint(after.data_pages, ==, 0);

    /* 1000 zero pages in 100-page batches: each batch costs 45 bytes. */
    for (unsigned i = 0; i < 10; i++)
        g_assert_true(
            ferry_stream_writer_put_ram_batch(w, (uint64_t) i * 100 * PAGE, 100, ram, NULL, NULL));
    ferry_stream_writer_get_stats(w, &before);
    g_assert_cmpuint(before.bytes - after.bytes, ==, 10 * (16 + 16 + 13));

    /* A selection of no pages writes nothing. */
    uint64_t none[16] = {0};
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0, 1000, ram, none, NULL));
    ferry_stream_writer_get_stats(w, &after);
    g_assert_cmpuint(after.bytes, ==, before.bytes);
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    g_autoptr(GBytes) bytes = mem_out_bytes(out);
    g_autoptr(GError) error = NULL;
    g_assert_true(read_stream(bytes, &error));
    g_assert_no_error(error);
}

static void test_compression(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    g_autoptr(GError) error = NULL;
    FerryStreamConfig c;
    g_autofree uint8_t *text = g_malloc0((size_t) 64 * PAGE);
    g_autofree uint8_t *noise = g_malloc0((size_t) 64 * PAGE);

    if (!ferry_stream_writer_set_compression(w, 3, &error)) {
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_VERSION);
        g_test_skip("built without libzstd");
        return;
    }
    g_assert_false(ferry_stream_writer_set_compression(w, 20, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    config_a(&c);
    for (unsigned i = 0; i < 64 * PAGE; i++)
        text[i] = (i / PAGE) % 4 == 1 ? 0 : (uint8_t) "ferry carries guests "[i % 21];
    for (unsigned i = 0; i < 64; i++)
        fill_page(noise + (size_t) i * PAGE, i);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0, 64, text, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 64 * PAGE, 64, noise, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    FerryStreamStats ws;
    ferry_stream_writer_get_stats(w, &ws);
    g_assert_cmpuint(ws.compressed_batches, ==, 1); /* the random pages stay raw */
    g_assert_cmpuint(ws.zero_pages, ==, 16);
    g_assert_cmpuint(ws.bytes, <, (64 + 1) * PAGE + 4096);
    g_autoptr(GBytes) bytes = mem_out_bytes(out);

    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(in, 0, &c, ram_layout, 2, NULL);
    FerryStreamRecord rec;
    g_assert_true(ferry_stream_reader_read_header(r, &error));
    for (unsigned b = 0; b < 2; b++) {
        const uint8_t *src = b ? noise : text;
        g_assert_true(ferry_stream_reader_next(r, &rec, &error));
        g_assert_no_error(error);
        FerryStreamPageIter it;
        uint64_t gpa;
        const uint8_t *data;
        ferry_stream_page_iter_init(&it, &rec);
        while (ferry_stream_page_iter_next(&it, &gpa, &data)) {
            const uint8_t *want = src + (gpa - rec.ram.gpa);
            if (data)
                g_assert_cmpmem(data, PAGE, want, PAGE);
            else
                g_assert_true(ferry_stream_page_is_zero(want));
        }
    }
    g_assert_true(ferry_stream_reader_next(r, &rec, &error));
    g_assert_cmpint(rec.type, ==, FERRY_STREAM_RECORD_END);
    FerryStreamStats rs;
    ferry_stream_reader_get_stats(r, &rs);
    g_assert_cmpuint(rs.compressed_batches, ==, 1);

    /* A compressed batch whose zstd frame is damaged (with valid CRCs) is refused. */
    g_autoptr(GArray) recs = raw_parse(bytes);
    RawRecord *batch = &g_array_index(recs, RawRecord, 1);
    g_assert_cmpuint(get_le(batch->payload->data + 12, 4), ==, 2);
    size_t fixed = 16 + 8;
    for (size_t i = fixed + 4; i < batch->payload->len; i += 7)
        batch->payload->data[i] ^= 0x5a;
    g_autoptr(GBytes) bad = raw_stream(1, 0, recs, TRUE);
    assert_read_fails(bad, FERRY_STREAM_ERROR_INVALID, "decompress");
}

/* ---- damaged input ---- */

static void test_truncated_everywhere(void)
{
    g_autoptr(GBytes) bytes = small_stream();
    gsize len;
    const uint8_t *p = g_bytes_get_data(bytes, &len);

    for (gsize cut = 0; cut < len; cut++) {
        g_autoptr(GBytes) part = g_bytes_new(p, cut);
        g_autoptr(GError) error = NULL;
        g_assert_false(read_stream(part, &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_TRUNCATED);
    }
    g_autoptr(GError) error = NULL;
    g_assert_true(read_stream(bytes, &error));
    g_assert_no_error(error);
}

static void test_bitflip_everywhere(void)
{
    g_autoptr(GBytes) bytes = small_stream();
    gsize len;
    const uint8_t *orig = g_bytes_get_data(bytes, &len);
    g_autofree uint8_t *p = g_memdup2(orig, len);
    unsigned by_code[FERRY_STREAM_ERROR_INVALID + 1] = {0};

    for (gsize i = 0; i < len; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            p[i] ^= (uint8_t) (1u << bit);
            g_autoptr(GBytes) bad = g_bytes_new_static(p, len);
            g_autoptr(GError) error = NULL;
            if (read_stream(bad, &error))
                g_error("flipping bit %u of byte %zu went unnoticed", bit, (size_t) i);
            g_assert_nonnull(error);
            g_assert_true(error->domain == FERRY_STREAM_ERROR);
            by_code[error->code]++;
            p[i] ^= (uint8_t) (1u << bit);
        }
    }
    g_test_message("%zu bytes: magic %u version %u checksum %u unknown-type %u truncated %u "
                   "oversized %u invalid %u",
                   (size_t) len, by_code[FERRY_STREAM_ERROR_MAGIC],
                   by_code[FERRY_STREAM_ERROR_VERSION], by_code[FERRY_STREAM_ERROR_CHECKSUM],
                   by_code[FERRY_STREAM_ERROR_UNKNOWN_RECORD],
                   by_code[FERRY_STREAM_ERROR_TRUNCATED], by_code[FERRY_STREAM_ERROR_OVERSIZED],
                   by_code[FERRY_STREAM_ERROR_INVALID]);
    g_assert_cmpuint(by_code[FERRY_STREAM_ERROR_MAGIC], ==, 64);
    g_assert_cmpuint(by_code[FERRY_STREAM_ERROR_CHECKSUM], >, len * 7);
}

static void test_bad_preamble(void)
{
    g_autoptr(GArray) recs = raw_with_config();
    g_autoptr(GBytes) good = raw_stream(1, 0, recs, TRUE);
    g_autoptr(GError) error = NULL;
    g_assert_true(read_stream(good, &error));
    g_assert_no_error(error);

    g_autoptr(GBytes) v2 = raw_stream(2, 0, recs, TRUE);
    assert_read_fails(v2, FERRY_STREAM_ERROR_VERSION, "format version 2");
    g_autoptr(GBytes) flags = raw_stream(1, 0x100, recs, TRUE);
    assert_read_fails(flags, FERRY_STREAM_ERROR_VERSION, "flags 0x100");
    g_autoptr(GBytes) text = g_bytes_new_static("QEVM\0\0\0\3 this is something else", 32);
    assert_read_fails(text, FERRY_STREAM_ERROR_MAGIC, "not a ferry state stream");
    g_autoptr(GBytes) empty = g_bytes_new_static("", 0);
    assert_read_fails(empty, FERRY_STREAM_ERROR_TRUNCATED, NULL);

    /* The first record must be CONFIG, and only the first. */
    uint8_t round[8] = {0};
    expect_record_fails(FALSE, 4, round, 8, FERRY_STREAM_ERROR_INVALID, "instead of CONFIG");
    g_autoptr(GByteArray) cfg = config_a_payload();
    expect_record_fails(TRUE, 1, cfg->data, cfg->len, FERRY_STREAM_ERROR_INVALID, "second CONFIG");
}

static void test_config_mismatch(void)
{
    g_autoptr(GBytes) bytes = small_stream();
    static const FerryStreamConfigItem here[] = {
        {"memory", "2048 MiB"},
        {"vcpus", "2"},
        {"net 0", "tap0"},
    };
    FerryStreamConfig c = {.items = here, .n_items = G_N_ELEMENTS(here)};
    g_autoptr(GError) error = NULL;

    ferry_stream_config_digest("memory=2048M;vcpus=2;net=tap0", c.digest);
    g_assert_false(read_stream_full(bytes, 0, &c, NULL, 0, NULL, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_CONFIG_MISMATCH);
    g_test_message("%s", error->message);
    g_assert_nonnull(strstr(error->message, "memory: 1024 MiB in the stream, 2048 MiB here"));
    g_assert_nonnull(strstr(error->message, "net 0: absent in the stream, tap0 here"));
    g_assert_nonnull(
        strstr(error->message, "disk vda: /var/lib/ferry/a.img in the stream, absent here"));
    g_assert_null(strstr(error->message, "vcpus"));
    g_clear_error(&error);

    /* Same summary, other digest: the digests are named. */
    FerryStreamConfig c2;
    config_a(&c2);
    c2.digest[5] ^= 1;
    g_assert_false(read_stream_full(bytes, 0, &c2, NULL, 0, NULL, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_CONFIG_MISMATCH);
    g_assert_nonnull(strstr(error->message, "digests differ"));
    g_clear_error(&error);

    /* Same digest: summaries are informative only. */
    FerryStreamConfig c3 = c;
    config_a(&c3);
    c3.items = here;
    c3.n_items = G_N_ELEMENTS(here);
    g_assert_true(read_stream_full(bytes, 0, &c3, NULL, 0, NULL, &error));
    g_assert_no_error(error);
}

/* A record with a valid header CRC but a length far above its type's limit. */
static void test_oversized(void)
{
    static const struct {
        unsigned type;
        uint32_t len;
    } cases[] = {
        {2, 8 + 64 + 16 * 1024 * 1024 + 1},
        {2, 0xffffffffu},
        {3, 16 + 256 + 1024 * 4096 + 1},
        {3, 0x80000000u},
        {1, 36 + 64 * (4 + 64 + 256) + 1},
        {4, 9},
        {5, 0xfffffff0u},
        {0x7fff, 25},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        /* Only the header: a reader that allocated or waited for the payload would fail
         * differently (TRUNCATED). */
        uint8_t pad[64] = {0};
        g_autoptr(GBytes) bytes =
            header_only_stream(cases[i].type == 5, cases[i].type, 0, cases[i].len, pad, 0);
        g_autoptr(GError) error = NULL;
        FerryStreamConfig c;
        config_a(&c);
        g_assert_false(
            read_stream_full(bytes, cases[i].type == 5, &c, ram_layout, 2, NULL, &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_OVERSIZED);
    }

    /* The same header with record flags set: from a newer writer. */
    uint8_t round[8] = {0};
    g_autoptr(GBytes) bytes = header_only_stream(0, 4, 0x8000, 8, round, 8);
    assert_read_fails(bytes, FERRY_STREAM_ERROR_VERSION, "flags 0x8000");
}

static void test_unknown_record(void)
{
    expect_record_fails(TRUE, 0x42, "abc", 3, FERRY_STREAM_ERROR_UNKNOWN_RECORD, "type 66");

    uint8_t req[24] = {0};
    put_le(req, 1, 4);
    put_le(req + 16, PAGE, 8);
    expect_record_fails(TRUE, 5, req, sizeof(req), FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                        "PAGE_REQUEST");
}

static void test_end_checks(void)
{
    g_autoptr(GBytes) bytes = small_stream();
    g_autoptr(GArray) recs = raw_parse(bytes);
    g_autoptr(GError) error = NULL;

    /* raw_stream() re-serializes identically. */
    g_autoptr(GBytes) same = raw_stream(1, 0, recs, TRUE);
    g_assert_true(g_bytes_equal(same, bytes));

    /* Each record valid on its own, but one dropped / duplicated / two swapped. */
    gsize len;
    const uint8_t *p = g_bytes_get_data(bytes, &len);
    size_t end_at = len - 16 - 24;
    g_autoptr(GByteArray) end = g_byte_array_new();
    g_byte_array_append(end, p + end_at, 40);
    size_t r0 = 16, r0_len = 16 + g_array_index(recs, RawRecord, 0).payload->len;
    size_t r1 = r0 + r0_len, r1_len = 16 + g_array_index(recs, RawRecord, 1).payload->len;
    size_t r2 = r1 + r1_len, r2_len = 16 + g_array_index(recs, RawRecord, 2).payload->len;
    size_t r3 = r2 + r2_len;

    /* dropped: the first SECTION */
    g_autoptr(GByteArray) dropped = g_byte_array_new();
    g_byte_array_append(dropped, p, (guint) r2);
    g_byte_array_append(dropped, p + r3, (guint) (len - r3));
    g_autoptr(GBytes) b1 = g_byte_array_free_to_bytes(g_steal_pointer(&dropped));
    assert_read_fails(b1, FERRY_STREAM_ERROR_CHECKSUM, "lost or duplicated");

    /* duplicated SECTION */
    g_autoptr(GByteArray) dup = g_byte_array_new();
    g_byte_array_append(dup, p, (guint) r3);
    g_byte_array_append(dup, p + r2, (guint) r2_len);
    g_byte_array_append(dup, p + r3, (guint) (len - r3));
    g_autoptr(GBytes) b2 = g_byte_array_free_to_bytes(g_steal_pointer(&dup));
    assert_read_fails(b2, FERRY_STREAM_ERROR_CHECKSUM, "lost or duplicated");

    /* swapped: CONFIG, SECTION, ROUND 0 ... (same count and size) */
    g_autoptr(GByteArray) swapped = g_byte_array_new();
    g_byte_array_append(swapped, p, (guint) r1);
    g_byte_array_append(swapped, p + r2, (guint) r2_len);
    g_byte_array_append(swapped, p + r1, (guint) r1_len);
    g_byte_array_append(swapped, p + r3, (guint) (len - r3));
    g_autoptr(GBytes) b3 = g_byte_array_free_to_bytes(g_steal_pointer(&swapped));
    assert_read_fails(b3, FERRY_STREAM_ERROR_CHECKSUM, "stream checksum");

    /* Rounds must increase. */
    g_autoptr(GArray) r = raw_with_config();
    uint8_t round[8] = {0};
    put_le(round, 3, 4);
    raw_add(r, 4, round, 8);
    raw_add(r, 4, round, 8);
    g_autoptr(GBytes) b4 = raw_stream(1, 0, r, TRUE);
    assert_read_fails(b4, FERRY_STREAM_ERROR_INVALID, "rounds must increase");
    put_le(round + 4, 4, 4);
    expect_record_fails(TRUE, 4, round, 8, FERRY_STREAM_ERROR_VERSION, "flags 0x4");
}

/* Builds a RAM_BATCH payload by hand. */
static GByteArray *ram_payload(uint64_t gpa, uint32_t npages, uint32_t flags,
                               const uint8_t *present, const uint8_t *zero, size_t data_pages)
{
    GByteArray *p = g_byte_array_new();
    uint8_t fixed[16];
    size_t nb = (npages + 7) / 8;
    put_le(fixed, gpa, 8);
    put_le(fixed + 8, npages, 4);
    put_le(fixed + 12, flags, 4);
    g_byte_array_append(p, fixed, 16);
    if (flags & 1)
        g_byte_array_append(p, present, (guint) nb);
    g_byte_array_append(p, zero, (guint) nb);
    for (size_t i = 0; i < data_pages * PAGE; i++) {
        uint8_t b = (uint8_t) (i + 1);
        g_byte_array_append(p, &b, 1);
    }
    return p;
}

/* expect_record_fails() for a RAM_BATCH @payload, which it frees. */
static void expect_ram_error(GByteArray *payload, FerryStreamError code, const char *fragment)
{
    expect_record_fails(TRUE, 3, payload->data, payload->len, code, fragment);
    g_byte_array_unref(payload);
}

static void test_ram_validation(void)
{
    uint8_t all[160], none[160] = {0}, some[160] = {0};
    memset(all, 0xff, sizeof(all));
    some[0] = 0x05;

    /* Outside the layout: straddles the end of low RAM, or beyond everything. */
    expect_ram_error(ram_payload(16 * MiB - PAGE, 2, 0, NULL, all, 0), FERRY_STREAM_ERROR_RANGE,
                     "outside this VM's RAM");
    expect_ram_error(ram_payload(4100 * MiB, 1, 0, NULL, all, 0), FERRY_STREAM_ERROR_RANGE, NULL);
    expect_ram_error(ram_payload(UINT64_MAX - PAGE + 1, 1, 0, NULL, all, 0),
                     FERRY_STREAM_ERROR_RANGE, NULL);
    expect_ram_error(ram_payload(0x1001, 1, 0, NULL, all, 0), FERRY_STREAM_ERROR_INVALID,
                     "unaligned");
    expect_ram_error(ram_payload(0, 0, 0, NULL, all, 1), FERRY_STREAM_ERROR_OVERSIZED, NULL);
    expect_ram_error(ram_payload(0, 1025, 0, NULL, all, 0), FERRY_STREAM_ERROR_OVERSIZED, NULL);
    expect_ram_error(ram_payload(0, 8, 0x10, NULL, all, 0), FERRY_STREAM_ERROR_VERSION,
                     "flags 0x10");
    /* Page data length must match the bitmaps. */
    expect_ram_error(ram_payload(0, 8, 0, NULL, none, 7), FERRY_STREAM_ERROR_INVALID, "page data");
    expect_ram_error(ram_payload(0, 8, 0, NULL, none, 9), FERRY_STREAM_ERROR_INVALID, "page data");
    /* Bits beyond npages, zero pages that are not present, no page at all. */
    expect_ram_error(ram_payload(0, 4, 0, NULL, all, 0), FERRY_STREAM_ERROR_INVALID, "bitmaps");
    expect_ram_error(ram_payload(0, 8, 1, some, all, 0), FERRY_STREAM_ERROR_INVALID, "bitmaps");
    expect_ram_error(ram_payload(0, 8, 1, none, none, 0), FERRY_STREAM_ERROR_INVALID, "no pages");
    /* Valid by hand: pages 0 and 2 present, 2 zero, 1 data page. */
    uint8_t z[1] = {0x04};
    g_autoptr(GByteArray) ok = ram_payload(8 * MiB, 8, 1, some, z, 1);
    g_autoptr(GArray) recs = raw_with_config();
    raw_add(recs, 3, ok->data, ok->len);
    g_autoptr(GBytes) b = raw_stream(1, 0, recs, TRUE);
    g_autoptr(GError) error = NULL;
    g_assert_true(read_stream(b, &error));
    g_assert_no_error(error);

    /* Page requests outside RAM. */
    g_autoptr(GArray) r2 = raw_with_config();
    uint8_t req[24] = {0};
    put_le(req, 1, 4);
    put_le(req + 8, 16 * MiB, 8);
    put_le(req + 16, PAGE, 8);
    raw_add(r2, 5, req, sizeof(req));
    g_autoptr(GBytes) b2 = raw_stream(1, FERRY_STREAM_FLAG_RETURN_PATH, r2, TRUE);
    FerryStreamConfig c;
    config_a(&c);
    g_assert_false(
        read_stream_full(b2, FERRY_STREAM_FLAG_RETURN_PATH, &c, ram_layout, 2, NULL, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_RANGE);
}

static void test_malformed_records(void)
{
    /* SECTION: bad id characters, id longer than the payload, nonzero reserved field. */
    uint8_t sec[16] = {0};
    put_le(sec, 1, 4);
    put_le(sec + 4, 3, 2);
    memcpy(sec + 8, "a b", 3);
    expect_record_fails(TRUE, 2, sec, 11, FERRY_STREAM_ERROR_INVALID, "malformed id");
    put_le(sec + 4, 9, 2);
    memcpy(sec + 8, "abc", 3);
    expect_record_fails(TRUE, 2, sec, 11, FERRY_STREAM_ERROR_INVALID, "malformed id");

    /* CONFIG: too many items, an item running past the end, a duplicate key, a control
     * character in a value, trailing bytes. */
    g_autoptr(GByteArray) cfg = config_a_payload();
    struct {
        size_t off;
        uint8_t val;
        int trunc;
    } muts[] = {
        {32, 65, 0},          /* n_items = 65 */
        {36, 0xff, 0},        /* first key length 255 */
        {36 + 4 + 1, 'm', 0}, /* "mmmory"... fine key: only a sanity mutation below */
        {0, 0, 1},            /* trailing byte */
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(muts); i++) {
        g_autoptr(GByteArray) p = g_byte_array_new();
        g_byte_array_append(p, cfg->data, cfg->len);
        if (muts[i].trunc) {
            uint8_t x = 0;
            g_byte_array_append(p, &x, 1);
        } else {
            p->data[muts[i].off] = muts[i].val;
        }
        g_autoptr(GArray) r = raw_records_new();
        raw_add(r, 1, p->data, p->len);
        g_autoptr(GBytes) b = raw_stream(1, 0, r, TRUE);
        g_autoptr(GError) error = NULL;
        gboolean ok = read_stream_full(b, 0, NULL, NULL, 0, NULL, &error);
        if (i == 2) {
            g_assert_true(ok); /* a different key, still well-formed */
            continue;
        }
        g_assert_false(ok);
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    }
    /* Duplicate key: make the second key equal to the first ("vcpus" → "memor"). */
    g_autoptr(GByteArray) dupk = g_byte_array_new();
    g_byte_array_append(dupk, cfg->data, cfg->len);
    size_t second = 36 + 4 + 6 + 8; /* after "memory"/"1024 MiB" */
    g_assert_cmpuint(get_le(dupk->data + second, 2), ==, 5);
    memcpy(dupk->data + second + 4, "memor", 5);
    put_le(dupk->data + 36, 5, 2);
    put_le(dupk->data + 38, 9, 2); /* "memor" + "y1024 MiB" */
    expect_record_fails(FALSE, 1, dupk->data, dupk->len, FERRY_STREAM_ERROR_INVALID,
                        "appears twice");

    g_autoptr(GByteArray) ctl = g_byte_array_new();
    g_byte_array_append(ctl, cfg->data, cfg->len);
    ctl->data[36 + 4 + 6] = '\n';
    expect_record_fails(FALSE, 1, ctl->data, ctl->len, FERRY_STREAM_ERROR_INVALID, "malformed");
}

static void test_writer_errors(void)
{
    g_autoptr(GOutputStream) out = mem_out();
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    g_autoptr(GError) error = NULL;
    FerryStreamConfig c;
    g_autofree uint8_t *ram = g_malloc0(2 * PAGE);

    config_a(&c);
    g_assert_false(ferry_stream_writer_put_section(w, "a", 1, "", 0, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_clear_error(&error);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL));
    g_assert_false(ferry_stream_writer_put_header(w, &c, &error));
    g_clear_error(&error);

    static const char *const bad_ids[] = {
        "", "with space", "x\n",
        "an-id-that-is-far-too-long-0123456789012345678901234567890123456789"};
    for (unsigned i = 0; i < G_N_ELEMENTS(bad_ids); i++) {
        g_assert_false(ferry_stream_writer_put_section(w, bad_ids[i], 1, "", 0, &error));
        g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
        g_clear_error(&error);
    }
    g_assert_false(ferry_stream_writer_put_section(w, "big", 1, ram,
                                                   FERRY_STREAM_MAX_SECTION_DATA + 1, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_OVERSIZED);
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_ram_batch(w, 0x800, 1, ram, NULL, &error));
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_ram_batch(w, 0, 0, ram, NULL, &error));
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_ram_batch(w, 0, 1025, ram, NULL, &error));
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_round(w, 1, 0x80, &error));
    g_clear_error(&error);
    FerryStreamRange rg = {0, PAGE};
    g_assert_false(ferry_stream_writer_put_page_request(w, &rg, 1, &error));
    g_clear_error(&error);

    /* The failures above left the stream valid. */
    g_assert_true(ferry_stream_writer_put_ram_batch(w, 0, 2, ram, NULL, NULL));
    g_assert_true(ferry_stream_writer_put_end(w, NULL));
    g_assert_false(ferry_stream_writer_put_round(w, 1, 0, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
    g_autoptr(GBytes) bytes = mem_out_bytes(out);
    g_clear_error(&error);
    g_assert_true(read_stream(bytes, &error));
    g_assert_no_error(error);

    /* A summary with a bad or duplicate key is refused before anything is written. */
    static const FerryStreamConfigItem dup[] = {{"a", "1"}, {"a", "2"}};
    static const FerryStreamConfigItem ctl[] = {{"a", "1\n"}};
    FerryStreamConfig cd = {.items = dup, .n_items = 2};
    FerryStreamConfig cc = {.items = ctl, .n_items = 1};
    g_autoptr(GOutputStream) out2 = mem_out();
    g_autoptr(FerryStreamWriter) w2 = ferry_stream_writer_new(out2, 0, NULL);
    g_assert_false(ferry_stream_writer_put_header(w2, &cd, &error));
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_header(w2, &cc, &error));
    g_clear_error(&error);
    g_assert_cmpuint(g_memory_output_stream_get_data_size(G_MEMORY_OUTPUT_STREAM(out2)), ==, 0);
}

/* An output that fails: the writer reports it and refuses further records. */
static void test_writer_io_error(void)
{
    uint8_t small[64];
    g_autoptr(GOutputStream) out = g_memory_output_stream_new(small, sizeof(small), NULL, NULL);
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    g_autoptr(GError) error = NULL;
    FerryStreamConfig c;

    config_a(&c);
    g_assert_true(ferry_stream_writer_put_header(w, &c, NULL)); /* buffered */
    g_assert_false(ferry_stream_writer_put_end(w, &error));
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE);
    g_assert_nonnull(strstr(error->message, "writing the state stream"));
    g_clear_error(&error);
    g_assert_false(ferry_stream_writer_put_round(w, 0, 0, &error));
    g_assert_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID);
}

static void test_cancel(void)
{
    g_autoptr(GBytes) bytes = small_stream();
    g_autoptr(GInputStream) in = g_memory_input_stream_new_from_bytes(bytes);
    g_autoptr(GCancellable) cancel = g_cancellable_new();
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(in, 0, NULL, NULL, 0, cancel);
    g_autoptr(GError) error = NULL;

    g_cancellable_cancel(cancel);
    g_assert_false(ferry_stream_reader_read_header(r, &error));
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/stream/crc32c", test_crc32c);
    g_test_add_func("/stream/zero-page", test_zero_page);
    g_test_add_func("/stream/roundtrip/forward", test_roundtrip_forward);
    g_test_add_func("/stream/roundtrip/return-path", test_roundtrip_return_path);
    g_test_add_func("/stream/roundtrip/small", test_roundtrip_small);
    g_test_add_func("/stream/status", test_status_records);
    g_test_add_func("/stream/postcopy-records", test_postcopy_records);
    g_test_add_func("/stream/postcopy-records/malformed", test_postcopy_records_malformed);
    g_test_add_func("/stream/postcopy-records/damaged", test_postcopy_records_damaged);
    g_test_add_func("/stream/roundtrip/pipe-chunks", test_pipe_chunks);
    g_test_add_func("/stream/zero-pages-cost-flags", test_zero_pages_cost_flags);
    g_test_add_func("/stream/compression", test_compression);
    g_test_add_func("/stream/truncated-everywhere", test_truncated_everywhere);
    g_test_add_func("/stream/bitflip-everywhere", test_bitflip_everywhere);
    g_test_add_func("/stream/bad-preamble", test_bad_preamble);
    g_test_add_func("/stream/config-mismatch", test_config_mismatch);
    g_test_add_func("/stream/oversized", test_oversized);
    g_test_add_func("/stream/unknown-record", test_unknown_record);
    g_test_add_func("/stream/end-checks", test_end_checks);
    g_test_add_func("/stream/ram-validation", test_ram_validation);
    g_test_add_func("/stream/malformed-records", test_malformed_records);
    g_test_add_func("/stream/writer-errors", test_writer_errors);
    g_test_add_func("/stream/writer-io-error", test_writer_io_error);
    g_test_add_func("/stream/cancel", test_cancel);
    return g_test_run();
}

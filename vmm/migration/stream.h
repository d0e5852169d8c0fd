/*
 * The machine-state stream: the save file format and the live-migration wire format
 * (docs/migration-protocol.md).
 *
 * A stream is a 16-byte preamble (magic, format version, flags) followed by records.  Each
 * record has a 16-byte header (type, flags, payload length, payload CRC, header CRC) and a
 * typed payload.  The first record is always CONFIG (digest and summary of the VM
 * configuration); the last is END, which carries the CRC-32C of every byte before it
 * (CHECKPOINT records carry the same figures part-way, for post-copy).  The
 * format is written and read strictly in order (no seeking), so the same code writes a file,
 * a pipe or a TLS socket.  Records may repeat: pre-copy sends RAM in ROUNDs and a later copy
 * of a page or section replaces an earlier one.
 *
 * The writer buffers records and writes them to a GOutputStream (a GFileOutputStream, a
 * GUnixOutputStream on a file descriptor, or the output side of a GSocketConnection or
 * GTlsConnection).  The reader reads a GInputStream and returns one validated record at a
 * time.  Both are blocking and meant for a migration or save thread; neither is thread-safe.
 * Every length is checked against a per-type limit before anything is allocated.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>
#include <stdint.h>

#define FERRY_STREAM_ERROR (ferry_stream_error_quark())
GQuark ferry_stream_error_quark(void);

typedef enum {
    FERRY_STREAM_ERROR_MAGIC,           /* not a ferry state stream */
    FERRY_STREAM_ERROR_VERSION,         /* a format version or feature this build lacks */
    FERRY_STREAM_ERROR_CONFIG_MISMATCH, /* made for another VM configuration */
    FERRY_STREAM_ERROR_UNKNOWN_RECORD,  /* record type unknown, or wrong for the direction */
    FERRY_STREAM_ERROR_OVERSIZED,       /* a length above its limit */
    FERRY_STREAM_ERROR_TRUNCATED,       /* the input ended before the END record */
    FERRY_STREAM_ERROR_CHECKSUM,        /* a header, payload or stream CRC mismatch */
    FERRY_STREAM_ERROR_RANGE,           /* guest pages outside the RAM layout */
    FERRY_STREAM_ERROR_INVALID,         /* a malformed field, or records out of order */
} FerryStreamError;

/* Format constants (docs/migration-protocol.md, "Limits"). */
#define FERRY_STREAM_VERSION            1
#define FERRY_STREAM_PAGE_SIZE          4096u
#define FERRY_STREAM_DIGEST_LEN         32 /* SHA-256 */
#define FERRY_STREAM_MAX_BATCH_PAGES    1024
#define FERRY_STREAM_MAX_SECTION_DATA   (16u * 1024 * 1024)
#define FERRY_STREAM_MAX_SECTION_ID     64
#define FERRY_STREAM_MAX_CONFIG_ITEMS   64
#define FERRY_STREAM_MAX_CONFIG_KEY     64
#define FERRY_STREAM_MAX_CONFIG_VALUE   256
#define FERRY_STREAM_MAX_PAGE_REQUESTS  1024
#define FERRY_STREAM_MAX_DISCARD_RANGES 1024

/* Preamble flags. */
#define FERRY_STREAM_FLAG_RETURN_PATH 0x1u /* destination → source (page requests) */

/* Record types (u16 on the wire). */
typedef enum {
    FERRY_STREAM_RECORD_CONFIG = 1,
    FERRY_STREAM_RECORD_SECTION = 2,
    FERRY_STREAM_RECORD_RAM_BATCH = 3,
    FERRY_STREAM_RECORD_ROUND = 4,
    FERRY_STREAM_RECORD_PAGE_REQUEST = 5,
    FERRY_STREAM_RECORD_STATUS = 6,
    FERRY_STREAM_RECORD_DISCARD = 7,
    FERRY_STREAM_RECORD_CHECKPOINT = 8,
    FERRY_STREAM_RECORD_END = 0x7fff,
} FerryStreamRecordType;

/* ROUND flags. */
#define FERRY_STREAM_ROUND_FINAL    0x1u /* the vCPUs are stopped: stop-and-copy */
#define FERRY_STREAM_ROUND_POSTCOPY 0x2u /* the destination may run; pages may be missing */

/* STATUS codes (return path): what the destination tells the source. */
typedef enum {
    FERRY_STREAM_STATUS_READY = 1,   /* whole state received, verified and applied: committed */
    FERRY_STREAM_STATUS_RESUMED = 2, /* the guest runs on the destination */
    FERRY_STREAM_STATUS_FAILED = 3,  /* the destination gives up; the message says why */
} FerryStreamStatus;

#define FERRY_STREAM_MAX_STATUS_MESSAGE 1024 /* bytes */

/* One line of the human-readable configuration summary ("memory" → "1024 MiB"). */
typedef struct {
    const char *key;   /* 1..64 printable ASCII bytes, unique */
    const char *value; /* 0..256 bytes of UTF-8 without control characters */
} FerryStreamConfigItem;

/*
 * The VM configuration a stream belongs to: @digest is SHA-256 over whatever canonical
 * description the VMM chooses (ferry_stream_config_digest() helps); @items name the parts
 * a user cares about, so a mismatch can be explained.
 */
typedef struct {
    uint8_t digest[FERRY_STREAM_DIGEST_LEN];
    const FerryStreamConfigItem *items;
    unsigned n_items;
} FerryStreamConfig;

/* Fills @digest with SHA-256 of the NUL-terminated @canonical. */
void ferry_stream_config_digest(const char *canonical, uint8_t digest[FERRY_STREAM_DIGEST_LEN]);

/* A guest-physical range: a RAM region of the layout, a post-copy page request or discard. */
typedef struct {
    uint64_t gpa;   /* bytes, page-aligned */
    uint64_t bytes; /* page-aligned, > 0 */
} FerryStreamRange;

/* Byte and page counters of a writer or reader (progress reporting). */
typedef struct {
    uint64_t bytes;      /* stream bytes so far, preamble included */
    uint64_t records;    /* records so far */
    uint64_t zero_pages; /* pages sent as a zero flag */
    uint64_t data_pages; /* pages sent with their 4 KiB */
    uint64_t compressed_batches;
} FerryStreamStats;

/* ---- Writer ---- */

typedef struct FerryStreamWriter FerryStreamWriter;

/*
 * Creates a writer on @out (a reference is taken) for a forward stream (@flags 0) or a
 * return path (FERRY_STREAM_FLAG_RETURN_PATH).  @cancellable (nullable, referenced) aborts
 * blocking writes with G_IO_ERROR_CANCELLED.  Nothing is written until the header.
 */
FerryStreamWriter *ferry_stream_writer_new(GOutputStream *out, uint32_t flags,
                                           GCancellable *cancellable);

/*
 * Compresses RAM batches with zstd at @level (1..19; 0 = off, the default).  A batch is only
 * sent compressed when that makes it smaller.  Fails with FERRY_STREAM_ERROR_VERSION when
 * ferry was built without libzstd.
 */
gboolean ferry_stream_writer_set_compression(FerryStreamWriter *w, int level, GError **error);

/* Writes the preamble and the CONFIG record.  Must be the first call. */
gboolean ferry_stream_writer_put_header(FerryStreamWriter *w, const FerryStreamConfig *config,
                                        GError **error);

/*
 * Writes a SECTION record: the state blob @data[0..@len) (@len <= 16 MiB) of the object
 * named @id (1..64 bytes of [A-Za-z0-9_.:/-], e.g. "vcpu/0" or "virtio-blk/00:03.0") in
 * the object's own format @version.
 */
gboolean ferry_stream_writer_put_section(FerryStreamWriter *w, const char *id, uint32_t version,
                                         const void *data, size_t len, GError **error);

/*
 * Writes a RAM_BATCH record for the @npages (1..1024) guest pages starting at the
 * page-aligned @gpa, whose contents are at @hva (@npages * 4 KiB, contiguous).  @present
 * (nullable) selects pages: bit i of @present[i / 64] set = page i is sent; NULL sends all.
 * Pages that are entirely zero are sent as a flag only.  A batch with no selected page
 * writes nothing.
 */
gboolean ferry_stream_writer_put_ram_batch(FerryStreamWriter *w, uint64_t gpa, unsigned npages,
                                           const uint8_t *hva, const uint64_t *present,
                                           GError **error);

/* Writes a ROUND record: round @round (0-based) begins; FERRY_STREAM_ROUND_* @flags. */
gboolean ferry_stream_writer_put_round(FerryStreamWriter *w, uint32_t round, uint32_t flags,
                                       GError **error);

/* Writes a PAGE_REQUEST record (return path only): @n (1..1024) ranges of @ranges. */
gboolean ferry_stream_writer_put_page_request(FerryStreamWriter *w, const FerryStreamRange *ranges,
                                              unsigned n, GError **error);

/*
 * Writes a STATUS record (return path only): @code with @message (nullable; UTF-8 without
 * control characters, cut to FERRY_STREAM_MAX_STATUS_MESSAGE bytes at a character boundary).
 */
gboolean ferry_stream_writer_put_status(FerryStreamWriter *w, FerryStreamStatus code,
                                        const char *message, GError **error);

/*
 * Writes a DISCARD record (forward only): @n (1..1024) ranges of @ranges whose pages changed
 * after their last copy, so the destination must drop them (sent at the post-copy switch;
 * the pages come later, pushed or on request).  Same layout and checks as PAGE_REQUEST.
 */
gboolean ferry_stream_writer_put_discard(FerryStreamWriter *w, const FerryStreamRange *ranges,
                                         unsigned n, GError **error);

/*
 * Writes a CHECKPOINT record (forward only) and flushes: the record count, byte count and
 * CRC-32C of everything written so far, as in END, but the stream goes on.  The reader
 * verifies them, so the destination can check all it received before it runs the guest in
 * post-copy.
 */
gboolean ferry_stream_writer_put_checkpoint(FerryStreamWriter *w, GError **error);

/* Pushes buffered records to the output stream (and flushes it). */
gboolean ferry_stream_writer_flush(FerryStreamWriter *w, GError **error);

/* Writes the END record (record count, byte count, stream CRC) and flushes.  Last call. */
gboolean ferry_stream_writer_put_end(FerryStreamWriter *w, GError **error);

void ferry_stream_writer_get_stats(const FerryStreamWriter *w, FerryStreamStats *stats);

/* Frees @w without writing anything more (buffered records are dropped). */
void ferry_stream_writer_free(FerryStreamWriter *w);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryStreamWriter, ferry_stream_writer_free)

/* ---- Reader ---- */

typedef struct FerryStreamReader FerryStreamReader;

/*
 * A record returned by ferry_stream_reader_next().  Every pointer is borrowed from the
 * reader and valid until its next call or its free.
 */
typedef struct {
    FerryStreamRecordType type;
    uint64_t offset; /* stream offset of the record header */
    union {
        struct {
            const char *id; /* NUL-terminated */
            uint32_t version;
            const uint8_t *data;
            size_t len;
        } section;
        struct {
            uint64_t gpa;
            unsigned npages;
            const uint64_t *present; /* bit i of word i / 64: page i is in this batch */
            const uint64_t *zero;    /* bit i: page i is zero (only for present pages) */
            const uint8_t *data;     /* the non-zero present pages, 4 KiB each, in order */
            unsigned n_data;         /* number of pages in @data */
        } ram;
        struct {
            uint32_t round;
            uint32_t flags;
        } round;
        struct {
            const FerryStreamRange *ranges;
            unsigned n;
        } page_request;
        struct {
            FerryStreamStatus code;
            const char *message; /* NUL-terminated, possibly empty */
        } status;
        struct {
            const FerryStreamRange *ranges; /* page-aligned, inside the RAM layout */
            unsigned n;
        } discard;
        struct {
            uint64_t records; /* records before the CHECKPOINT (verified) */
            uint64_t bytes;   /* stream bytes before its header (verified) */
        } checkpoint;
    };
} FerryStreamRecord;

/*
 * Creates a reader on @in (referenced).  @expected (nullable; copied) is the configuration
 * of this VMM: the stream's CONFIG must match it.  @ram (nullable; copied)
 * is the RAM layout every RAM_BATCH and PAGE_REQUEST must fall in; NULL accepts any address
 * (only for tools that inspect a stream, never for one that writes guest memory).
 * @flags must equal the preamble's flags (forward or return path).
 */
FerryStreamReader *ferry_stream_reader_new(GInputStream *in, uint32_t flags,
                                           const FerryStreamConfig *expected,
                                           const FerryStreamRange *ram, unsigned n_ram,
                                           GCancellable *cancellable);

/*
 * Reads the preamble and the CONFIG record and checks them.  A configuration mismatch
 * fails with FERRY_STREAM_ERROR_CONFIG_MISMATCH and a message naming each difference
 * ("memory: 1024 MiB in the stream, 2048 MiB here").  Must be the first call.
 */
gboolean ferry_stream_reader_read_header(FerryStreamReader *r, GError **error);

/* The stream's configuration summary (after the header was read; borrowed). */
const FerryStreamConfig *ferry_stream_reader_get_config(const FerryStreamReader *r);

/*
 * Reads and validates the next record into @rec.  Returns TRUE with rec->type ==
 * FERRY_STREAM_RECORD_END once the END record and the stream CRC have been verified; after
 * that, further calls fail.  A CHECKPOINT is returned only once its counts and CRC matched
 * everything read before it (else FERRY_STREAM_ERROR_CHECKSUM, as for END).  Returns FALSE
 * with a FERRY_STREAM_ERROR (or G_IO_ERROR from the input) on any problem; the reader is then
 * unusable.
 */
gboolean ferry_stream_reader_next(FerryStreamReader *r, FerryStreamRecord *rec, GError **error);

void ferry_stream_reader_get_stats(const FerryStreamReader *r, FerryStreamStats *stats);

void ferry_stream_reader_free(FerryStreamReader *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryStreamReader, ferry_stream_reader_free)

/* Walks the present pages of a RAM_BATCH record in order. */
typedef struct {
    const FerryStreamRecord *rec;
    unsigned index;
    unsigned data_index;
} FerryStreamPageIter;

void ferry_stream_page_iter_init(FerryStreamPageIter *it, const FerryStreamRecord *rec);

/*
 * Moves to the next present page: sets @gpa and @data (its 4 KiB, or NULL for a zero page).
 * Returns FALSE after the last.
 */
gboolean ferry_stream_page_iter_next(FerryStreamPageIter *it, uint64_t *gpa, const uint8_t **data);

/* TRUE if the 4 KiB at @page are all zero (word-wise, early exit). */
gboolean ferry_stream_page_is_zero(const uint8_t *page);

/*
 * What the stream writer (stream-writer.c) and reader (stream-reader.c) share: the wire
 * layout and limits of docs/migration-protocol.md and the format rules both sides enforce
 * (stream.c).  Not part of the public API (stream.h).
 */
#pragma once

#include "migration/stream.h"

#include <stddef.h>
#include <stdint.h>

/* "\x89FRY\r\n\x1a\n": high bit, name, and the line endings a text-mode copy would mangle. */
extern const uint8_t ferry_stream_magic[8];

/* Fixed sizes in bytes ("Layout"). */
#define PREAMBLE_LEN           16
#define RECORD_HEADER_LEN      16
#define CONFIG_FIXED_LEN       36
#define CONFIG_ITEM_FIXED_LEN  4
#define SECTION_FIXED_LEN      8
#define RAM_FIXED_LEN          16
#define ROUND_LEN              8
#define PAGE_REQUEST_FIXED_LEN 8  /* also DISCARD */
#define PAGE_REQUEST_ENTRY_LEN 16 /* also DISCARD */
#define END_LEN                24
#define CHECKPOINT_LEN         END_LEN
#define STATUS_FIXED_LEN       8

/* RAM_BATCH flags. */
#define RAM_FLAG_SPARSE 0x1u
#define RAM_FLAG_ZSTD   0x2u
#define RAM_FLAGS_KNOWN (RAM_FLAG_SPARSE | RAM_FLAG_ZSTD)

#define ROUND_FLAGS_KNOWN (FERRY_STREAM_ROUND_FINAL | FERRY_STREAM_ROUND_POSTCOPY)

#define PAGE             FERRY_STREAM_PAGE_SIZE
#define BITMAP_BYTES(n)  (((size_t) (n) + 7) / 8)
#define MAX_BITMAP_BYTES BITMAP_BYTES(FERRY_STREAM_MAX_BATCH_PAGES)
#define BITMAP_WORDS     (FERRY_STREAM_MAX_BATCH_PAGES / 64)

/* Largest payload of each variable-length type ("Limits"). */
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
#define MAX_DISCARD_PAYLOAD                                                                        \
    (PAGE_REQUEST_FIXED_LEN + FERRY_STREAM_MAX_DISCARD_RANGES * PAGE_REQUEST_ENTRY_LEN)

#define MAX_STATUS_PAYLOAD (STATUS_FIXED_LEN + FERRY_STREAM_MAX_STATUS_MESSAGE)

/* One record type: its name in messages, payload length bounds and allowed directions. */
typedef struct {
    const char *name;
    size_t min_len, max_len; /* payload bytes */
    gboolean forward;        /* may appear in a forward stream */
    gboolean return_path;    /* may appear in a return-path stream */
} FerryStreamRecordSpec;

/* The rules of record @type, or NULL for a type this build does not know. */
const FerryStreamRecordSpec *ferry_stream_record_spec(unsigned type);

/* Whether a known record @type may appear in a stream with preamble @flags. */
gboolean ferry_stream_record_allowed(unsigned type, uint32_t flags);

/* "forward" or "return-path" for preamble @flags. */
const char *ferry_stream_direction_name(uint32_t flags);

/* Field rules (docs/migration-protocol.md, SECTION and CONFIG); @len bytes, no NUL needed. */
gboolean ferry_stream_section_id_valid(const char *id, size_t len);
gboolean ferry_stream_config_key_valid(const char *key, size_t len);
gboolean ferry_stream_config_value_valid(const char *value, size_t len);

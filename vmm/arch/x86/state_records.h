/*
 * Framing shared by the x86 vCPU and VM state blobs (docs/machine-state.md): a version byte,
 * the byte length of the body, then typed, length-prefixed records.
 *
 *   u8  version
 *   u32 body length in bytes (everything after this field)
 *   records, each: u8 type, u32 payload length, payload
 *
 * All integers little-endian.  The reader consumes exactly one blob, so blobs can follow each
 * other in one FerryStateReader.  Parsing checks every length against what remains, rejects
 * unknown and repeated record types, lengths outside a record's allowed range and missing
 * required records, and borrows the payloads from the reader's buffer (no copies); fields
 * inside a payload are read with ferry_le_load32/64() (util/state.h) once its length is known.
 */
#pragma once

#include "util/state.h"

#include <glib.h>
#include <stdint.h>

/* What a blob may hold: one entry per record type. */
typedef struct {
    uint8_t type;
    const char *name; /* in error messages: "LAPIC" */
    uint32_t min_len; /* allowed payload lengths, bytes */
    uint32_t max_len;
    gboolean required; /* the blob is rejected without it */
} FerryX86RecordSpec;

/* One parsed record; data borrows the reader's buffer. */
typedef struct {
    gboolean present;
    const uint8_t *data;
    uint32_t len;
} FerryX86Record;

/* Writes the version byte and a placeholder body length; returns the offset to patch. */
gsize ferry_x86_records_begin(FerryStateWriter *w, uint8_t version);
/* Appends one record of @len bytes. */
void ferry_x86_record_put(FerryStateWriter *w, uint8_t type, const void *data, uint32_t len);
/* Patches the body length written by ferry_x86_records_begin() at @mark. */
void ferry_x86_records_end(FerryStateWriter *w, gsize mark);

/*
 * Parses one blob of version 1..@max_version from @r into @out (indexed like @specs,
 * @n_specs entries).  On error nothing is consumed reliably; the reader should be dropped.
 * Errors are FERRY_STATE_ERROR_{TRUNCATED,VERSION,INVALID} naming @r->what and the record.
 */
gboolean ferry_x86_records_parse(FerryStateReader *r, uint8_t max_version,
                                 const FerryX86RecordSpec *specs, gsize n_specs,
                                 FerryX86Record *out, uint8_t *version, GError **error);

/*
 * Device state serialization helpers.
 *
 * Every device saves its state into a versioned, little-endian byte string and loads it back
 * (the device interface in device.h).  A writer appends to a GByteArray; a reader walks a
 * borrowed buffer and turns every overrun into a GError, so a truncated or corrupted state
 * blob is reported, never read past its end.  The stream that carries these blobs is
 * described in docs/migration-protocol.md (issue 4).
 */
#pragma once

#include <glib.h>
#include <stdint.h>
#include <string.h>

#define FERRY_STATE_ERROR (ferry_state_error_quark())
GQuark ferry_state_error_quark(void);

typedef enum {
    FERRY_STATE_ERROR_TRUNCATED, /* fewer bytes than a field needs */
    FERRY_STATE_ERROR_VERSION,   /* a section version this build cannot read */
    FERRY_STATE_ERROR_INVALID,   /* a value out of its allowed range */
} FerryStateError;

/*
 * Little-endian stores and loads at @p, for fixed layouts whose length the caller has already
 * checked (a record header in a buffer, a payload after its length was validated).  Use the
 * writer and reader below for anything read field by field from untrusted input.
 */
static inline void ferry_le_store16(uint8_t *p, uint16_t v)
{
    v = GUINT16_TO_LE(v);
    memcpy(p, &v, sizeof(v));
}

static inline void ferry_le_store32(uint8_t *p, uint32_t v)
{
    v = GUINT32_TO_LE(v);
    memcpy(p, &v, sizeof(v));
}

static inline void ferry_le_store64(uint8_t *p, uint64_t v)
{
    v = GUINT64_TO_LE(v);
    memcpy(p, &v, sizeof(v));
}

static inline uint16_t ferry_le_load16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return GUINT16_FROM_LE(v);
}

static inline uint32_t ferry_le_load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return GUINT32_FROM_LE(v);
}

static inline uint64_t ferry_le_load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return GUINT64_FROM_LE(v);
}

/* Appends fields to @buf (not owned). */
typedef struct {
    GByteArray *buf;
} FerryStateWriter;

void ferry_state_put_u8(FerryStateWriter *w, uint8_t v);
void ferry_state_put_u16(FerryStateWriter *w, uint16_t v);
void ferry_state_put_u32(FerryStateWriter *w, uint32_t v);
void ferry_state_put_u64(FerryStateWriter *w, uint64_t v);
void ferry_state_put_bytes(FerryStateWriter *w, const void *data, size_t len);

/*
 * Reads fields from a borrowed buffer.  @what names the blob in error messages
 * ("serial state").  Getters return FALSE and set @error on overrun.
 */
typedef struct {
    const uint8_t *data;
    size_t len;
    size_t pos;
    const char *what;
} FerryStateReader;

void ferry_state_reader_init(FerryStateReader *r, const void *data, size_t len, const char *what);
gboolean ferry_state_get_u8(FerryStateReader *r, uint8_t *v, GError **error);
gboolean ferry_state_get_u16(FerryStateReader *r, uint16_t *v, GError **error);
gboolean ferry_state_get_u32(FerryStateReader *r, uint32_t *v, GError **error);
gboolean ferry_state_get_u64(FerryStateReader *r, uint64_t *v, GError **error);
gboolean ferry_state_get_bytes(FerryStateReader *r, void *out, size_t len, GError **error);
/* Checks the version byte at the current position against @max_version. */
gboolean ferry_state_get_version(FerryStateReader *r, uint8_t max_version, uint8_t *version,
                                 GError **error);
/* Fails unless every byte was consumed (trailing garbage is corruption). */
gboolean ferry_state_reader_finish(FerryStateReader *r, GError **error);

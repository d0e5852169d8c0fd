#include "util/state.h"

#include <string.h>

G_DEFINE_QUARK(ferry-state-error-quark, ferry_state_error)

static void put_le(FerryStateWriter *w, uint64_t v, unsigned bytes)
{
    uint8_t b[8];
    for (unsigned i = 0; i < bytes; i++)
        b[i] = (uint8_t) (v >> (8 * i));
    g_byte_array_append(w->buf, b, bytes);
}

void ferry_state_put_u8(FerryStateWriter *w, uint8_t v)
{
    put_le(w, v, 1);
}

void ferry_state_put_u16(FerryStateWriter *w, uint16_t v)
{
    put_le(w, v, 2);
}

void ferry_state_put_u32(FerryStateWriter *w, uint32_t v)
{
    put_le(w, v, 4);
}

void ferry_state_put_u64(FerryStateWriter *w, uint64_t v)
{
    put_le(w, v, 8);
}

void ferry_state_put_bytes(FerryStateWriter *w, const void *data, size_t len)
{
    g_byte_array_append(w->buf, data, len);
}

void ferry_state_reader_init(FerryStateReader *r, const void *data, size_t len, const char *what)
{
    r->data = data;
    r->len = len;
    r->pos = 0;
    r->what = what;
}

static gboolean need(FerryStateReader *r, size_t n, GError **error)
{
    if (r->len - r->pos < n) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED,
                    "%s is truncated: needs %zu more bytes at offset %zu, has %zu", r->what, n,
                    r->pos, r->len - r->pos);
        return FALSE;
    }
    return TRUE;
}

static gboolean get_le(FerryStateReader *r, uint64_t *v, unsigned bytes, GError **error)
{
    if (!need(r, bytes, error))
        return FALSE;
    uint64_t x = 0;
    for (unsigned i = 0; i < bytes; i++)
        x |= (uint64_t) r->data[r->pos + i] << (8 * i);
    r->pos += bytes;
    *v = x;
    return TRUE;
}

gboolean ferry_state_get_u8(FerryStateReader *r, uint8_t *v, GError **error)
{
    uint64_t x;
    if (!get_le(r, &x, 1, error))
        return FALSE;
    *v = (uint8_t) x;
    return TRUE;
}

gboolean ferry_state_get_u16(FerryStateReader *r, uint16_t *v, GError **error)
{
    uint64_t x;
    if (!get_le(r, &x, 2, error))
        return FALSE;
    *v = (uint16_t) x;
    return TRUE;
}

gboolean ferry_state_get_u32(FerryStateReader *r, uint32_t *v, GError **error)
{
    uint64_t x;
    if (!get_le(r, &x, 4, error))
        return FALSE;
    *v = (uint32_t) x;
    return TRUE;
}

gboolean ferry_state_get_u64(FerryStateReader *r, uint64_t *v, GError **error)
{
    return get_le(r, v, 8, error);
}

gboolean ferry_state_get_bytes(FerryStateReader *r, void *out, size_t len, GError **error)
{
    if (!need(r, len, error))
        return FALSE;
    memcpy(out, r->data + r->pos, len);
    r->pos += len;
    return TRUE;
}

gboolean ferry_state_get_version(FerryStateReader *r, uint8_t max_version, uint8_t *version,
                                 GError **error)
{
    if (!ferry_state_get_u8(r, version, error))
        return FALSE;
    if (*version == 0 || *version > max_version) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_VERSION,
                    "%s has version %u; this build reads versions 1 to %u", r->what, *version,
                    max_version);
        return FALSE;
    }
    return TRUE;
}

gboolean ferry_state_reader_finish(FerryStateReader *r, GError **error)
{
    if (r->pos != r->len) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s has %zu unexpected trailing bytes", r->what, r->len - r->pos);
        return FALSE;
    }
    return TRUE;
}

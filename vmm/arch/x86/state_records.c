#include "arch/x86/state_records.h"

#include <string.h>

gsize ferry_x86_records_begin(FerryStateWriter *w, uint8_t version)
{
    ferry_state_put_u8(w, version);
    gsize mark = w->buf->len;
    ferry_state_put_u32(w, 0);
    return mark;
}

void ferry_x86_record_put(FerryStateWriter *w, uint8_t type, const void *data, uint32_t len)
{
    ferry_state_put_u8(w, type);
    ferry_state_put_u32(w, len);
    ferry_state_put_bytes(w, data, len);
}

void ferry_x86_records_end(FerryStateWriter *w, gsize mark)
{
    ferry_le_store32(w->buf->data + mark, (uint32_t) (w->buf->len - mark - 4));
}

static gssize find_spec(const FerryX86RecordSpec *specs, gsize n_specs, uint8_t type)
{
    for (gsize i = 0; i < n_specs; i++)
        if (specs[i].type == type)
            return (gssize) i;
    return -1;
}

gboolean ferry_x86_records_parse(FerryStateReader *r, uint8_t max_version,
                                 const FerryX86RecordSpec *specs, gsize n_specs,
                                 FerryX86Record *out, uint8_t *version, GError **error)
{
    memset(out, 0, n_specs * sizeof(*out));
    uint32_t body_len;
    if (!ferry_state_get_version(r, max_version, version, error) ||
        !ferry_state_get_u32(r, &body_len, error))
        return FALSE;
    if (body_len > r->len - r->pos) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED,
                    "%s is truncated: its body claims %u bytes at offset %zu, %zu remain", r->what,
                    body_len, r->pos, r->len - r->pos);
        return FALSE;
    }

    FerryStateReader body;
    ferry_state_reader_init(&body, r->data + r->pos, body_len, r->what);
    while (body.pos < body.len) {
        uint8_t type;
        uint32_t len;
        size_t at = body.pos;
        if (!ferry_state_get_u8(&body, &type, error) || !ferry_state_get_u32(&body, &len, error))
            return FALSE;
        gssize i = find_spec(specs, n_specs, type);
        if (i < 0) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                        "%s has a record of unknown type %u at body offset %zu", r->what, type, at);
            return FALSE;
        }
        const FerryX86RecordSpec *s = &specs[i];
        if (len > body.len - body.pos) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED,
                        "%s: record %s claims %u bytes, only %zu remain", r->what, s->name, len,
                        body.len - body.pos);
            return FALSE;
        }
        if (out[i].present) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                        "%s has record %s twice", r->what, s->name);
            return FALSE;
        }
        if (len < s->min_len || len > s->max_len) {
            if (s->min_len == s->max_len)
                g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                            "%s: record %s has %u bytes, expected %u", r->what, s->name, len,
                            s->min_len);
            else
                g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                            "%s: record %s has %u bytes, expected %u to %u", r->what, s->name, len,
                            s->min_len, s->max_len);
            return FALSE;
        }
        out[i].present = TRUE;
        out[i].data = body.data + body.pos;
        out[i].len = len;
        body.pos += len;
    }
    for (gsize i = 0; i < n_specs; i++) {
        if (specs[i].required && !out[i].present) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                        "%s lacks the %s record", r->what, specs[i].name);
            return FALSE;
        }
    }
    r->pos += body_len;
    return TRUE;
}

/*
 * The machine-state stream (docs/migration-protocol.md): the format rules shared by the
 * writer (stream-writer.c) and the reader (stream-reader.c).
 */
#include "migration/stream-internal.h"

#include <string.h>

/* clang-format off */
G_DEFINE_QUARK(ferry-stream-error-quark, ferry_stream_error)
/* clang-format on */

const uint8_t ferry_stream_magic[8] = {0x89, 'F', 'R', 'Y', '\r', '\n', 0x1a, '\n'};

/* Indexed by type; END (0x7fff) is looked up separately. */
static const FerryStreamRecordSpec record_specs[] = {
    [FERRY_STREAM_RECORD_CONFIG] = {"CONFIG", CONFIG_FIXED_LEN, MAX_CONFIG_PAYLOAD, TRUE, TRUE},
    [FERRY_STREAM_RECORD_SECTION] = {"SECTION", SECTION_FIXED_LEN + 1, MAX_SECTION_PAYLOAD, TRUE,
                                     FALSE},
    [FERRY_STREAM_RECORD_RAM_BATCH] = {"RAM_BATCH", RAM_FIXED_LEN + 1, MAX_RAM_PAYLOAD, TRUE,
                                       FALSE},
    [FERRY_STREAM_RECORD_ROUND] = {"ROUND", ROUND_LEN, ROUND_LEN, TRUE, FALSE},
    [FERRY_STREAM_RECORD_PAGE_REQUEST] = {"PAGE_REQUEST",
                                          PAGE_REQUEST_FIXED_LEN + PAGE_REQUEST_ENTRY_LEN,
                                          MAX_PAGE_REQUEST_PAYLOAD, FALSE, TRUE},
    [FERRY_STREAM_RECORD_STATUS] = {"STATUS", STATUS_FIXED_LEN, MAX_STATUS_PAYLOAD, FALSE, TRUE},
    [FERRY_STREAM_RECORD_DISCARD] = {"DISCARD", PAGE_REQUEST_FIXED_LEN + PAGE_REQUEST_ENTRY_LEN,
                                     MAX_DISCARD_PAYLOAD, TRUE, FALSE},
    [FERRY_STREAM_RECORD_CHECKPOINT] = {"CHECKPOINT", CHECKPOINT_LEN, CHECKPOINT_LEN, TRUE, FALSE},
};
static const FerryStreamRecordSpec end_spec = {"END", END_LEN, END_LEN, TRUE, TRUE};

const FerryStreamRecordSpec *ferry_stream_record_spec(unsigned type)
{
    if (type == FERRY_STREAM_RECORD_END)
        return &end_spec;
    if (type >= G_N_ELEMENTS(record_specs) || !record_specs[type].name)
        return NULL;
    return &record_specs[type];
}

gboolean ferry_stream_record_allowed(unsigned type, uint32_t flags)
{
    const FerryStreamRecordSpec *s = ferry_stream_record_spec(type);

    return (flags & FERRY_STREAM_FLAG_RETURN_PATH) ? s->return_path : s->forward;
}

const char *ferry_stream_direction_name(uint32_t flags)
{
    return (flags & FERRY_STREAM_FLAG_RETURN_PATH) ? "return-path" : "forward";
}

gboolean ferry_stream_section_id_valid(const char *id, size_t len)
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

gboolean ferry_stream_config_key_valid(const char *key, size_t len)
{
    if (len == 0 || len > FERRY_STREAM_MAX_CONFIG_KEY)
        return FALSE;
    for (size_t i = 0; i < len; i++) {
        if (key[i] < 0x20 || key[i] > 0x7e)
            return FALSE;
    }
    return TRUE;
}

gboolean ferry_stream_config_value_valid(const char *value, size_t len)
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

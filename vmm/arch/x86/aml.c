#include "arch/x86/aml.h"

#include <string.h>

/* Opcodes, ACPI 6.4 section 20.3 "AML Byte Stream Byte Values". */
#define ZERO_OP           0x00
#define ONE_OP            0x01
#define NAME_OP           0x08
#define BYTE_PREFIX       0x0a
#define WORD_PREFIX       0x0b
#define DWORD_PREFIX      0x0c
#define STRING_PREFIX     0x0d
#define QWORD_PREFIX      0x0e
#define SCOPE_OP          0x10
#define BUFFER_OP         0x11
#define PACKAGE_OP        0x12
#define METHOD_OP         0x14
#define DUAL_NAME_PREFIX  0x2e
#define MULTI_NAME_PREFIX 0x2f
#define EXT_OP_PREFIX     0x5b
#define ROOT_CHAR         '\\'
#define PARENT_PREFIX     '^'
#define STORE_OP          0x70
#define AND_OP            0x7b
#define NOTIFY_OP         0x86
#define IF_OP             0xa0
#define ONES_OP           0xff
#define EXT_OP_REGION     0x80
#define EXT_FIELD         0x81
#define EXT_DEVICE        0x82

/* Resource descriptor tags (6.4.2, 6.4.3). */
#define RES_IO_PORT        0x47 /* small item 0x08, length 7 */
#define RES_END_TAG        0x79 /* small item 0x0f, length 1 */
#define RES_MEMORY32_FIXED 0x86
#define RES_DWORD_ADDR     0x87
#define RES_WORD_ADDR      0x88
#define RES_EXT_IRQ        0x89
#define RES_QWORD_ADDR     0x8a

/* Address space descriptor fields (6.4.3.5.1-3). */
#define ADDR_TYPE_MEMORY     0
#define ADDR_TYPE_IO         1
#define ADDR_TYPE_BUS        2
#define ADDR_MIN_FIXED       (1u << 2) /* _MIF */
#define ADDR_MAX_FIXED       (1u << 3) /* _MAF; bit 0 clear: producer, bit 1 clear: positive */
#define ADDR_IO_ENTIRE_RANGE 3         /* _RNG */
#define ADDR_MEM_READ_WRITE  1         /* _RW; _MEM (bits 2:1) 0: non-cacheable */

static void put_bytes(GByteArray *b, const void *p, size_t n)
{
    g_byte_array_append(b, p, (guint) n);
}

static void put8(GByteArray *b, uint8_t v)
{
    put_bytes(b, &v, 1);
}

static void put16(GByteArray *b, uint16_t v)
{
    uint8_t le[2] = {(uint8_t) v, (uint8_t) (v >> 8)};
    put_bytes(b, le, 2);
}

static void put32(GByteArray *b, uint32_t v)
{
    put16(b, (uint16_t) v);
    put16(b, (uint16_t) (v >> 16));
}

static void put64(GByteArray *b, uint64_t v)
{
    put32(b, (uint32_t) v);
    put32(b, (uint32_t) (v >> 32));
}

/* Encodes PkgLength for @content_len bytes of contents into @out; returns 1-4. */
static size_t encode_pkg_length(size_t content_len, uint8_t out[4])
{
    /* The value counts the PkgLength bytes themselves.  One byte holds 6 bits (up to 63);
     * with n following bytes the lead byte holds 4 bits and n in bits 7:6 (20.2.4). */
    size_t total;
    if (content_len + 1 <= 0x3f) {
        out[0] = (uint8_t) (content_len + 1);
        return 1;
    }
    for (size_t n = 1; n <= 3; n++) {
        total = content_len + 1 + n;
        if (total < (1u << (4 + 8 * n))) {
            out[0] = (uint8_t) ((n << 6) | (total & 0x0f));
            for (size_t i = 1; i <= n; i++)
                out[i] = (uint8_t) (total >> (4 + 8 * (i - 1)));
            return n + 1;
        }
    }
    g_return_val_if_reached(0); /* beyond 2^28 bytes: not a table we build */
}

void ferry_aml_pkg_length(GByteArray *b, size_t content_len)
{
    uint8_t enc[4];
    size_t n = encode_pkg_length(content_len, enc);
    put_bytes(b, enc, n);
}

void ferry_aml_end(GByteArray *b, size_t mark)
{
    g_return_if_fail(mark <= b->len);
    uint8_t enc[4];
    size_t content = b->len - mark;
    size_t n = encode_pkg_length(content, enc);
    g_byte_array_set_size(b, b->len + (guint) n);
    memmove(b->data + mark + n, b->data + mark, content);
    memcpy(b->data + mark, enc, n);
}

static gboolean valid_seg_char(char c, gboolean first)
{
    return c == '_' || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9');
}

/* Appends one NameSeg from @seg (1-4 characters of [A-Z_][A-Z0-9_]*), padding with '_'. */
static void put_name_seg(GByteArray *b, const char *seg, size_t len)
{
    char out[4] = {'_', '_', '_', '_'};
    g_return_if_fail(len >= 1 && len <= 4);
    for (size_t i = 0; i < len; i++) {
        g_return_if_fail(valid_seg_char(seg[i], i == 0));
        out[i] = seg[i];
    }
    put_bytes(b, out, 4);
}

void ferry_aml_name_string(GByteArray *b, const char *path)
{
    if (*path == ROOT_CHAR) {
        put8(b, ROOT_CHAR);
        path++;
    } else {
        while (*path == PARENT_PREFIX) {
            put8(b, PARENT_PREFIX);
            path++;
        }
    }
    if (!*path) {
        put8(b, ZERO_OP); /* NullName */
        return;
    }
    g_auto(GStrv) segs = g_strsplit(path, ".", -1);
    guint n = g_strv_length(segs);
    g_return_if_fail(n <= 255);
    if (n == 2) {
        put8(b, DUAL_NAME_PREFIX);
    } else if (n > 2) {
        put8(b, MULTI_NAME_PREFIX);
        put8(b, (uint8_t) n);
    }
    for (guint i = 0; i < n; i++)
        put_name_seg(b, segs[i], strlen(segs[i]));
}

void ferry_aml_integer(GByteArray *b, uint64_t v)
{
    if (v == 0) {
        put8(b, ZERO_OP);
    } else if (v == 1) {
        put8(b, ONE_OP);
    } else if (v == UINT64_MAX) {
        put8(b, ONES_OP);
    } else if (v <= 0xff) {
        put8(b, BYTE_PREFIX);
        put8(b, (uint8_t) v);
    } else if (v <= 0xffff) {
        put8(b, WORD_PREFIX);
        put16(b, (uint16_t) v);
    } else if (v <= 0xffffffff) {
        put8(b, DWORD_PREFIX);
        put32(b, (uint32_t) v);
    } else {
        put8(b, QWORD_PREFIX);
        put64(b, v);
    }
}

void ferry_aml_string(GByteArray *b, const char *s)
{
    for (const char *p = s; *p; p++)
        g_return_if_fail((unsigned char) *p <= 0x7f);
    put8(b, STRING_PREFIX);
    put_bytes(b, s, strlen(s) + 1);
}

static int hex_digit(char c)
{
    return g_ascii_isxdigit(c) ? g_ascii_xdigit_value(c) : -1;
}

void ferry_aml_eisaid(GByteArray *b, const char *id)
{
    g_return_if_fail(strlen(id) == 7);
    for (int i = 0; i < 3; i++)
        g_return_if_fail(id[i] >= 'A' && id[i] <= 'Z');
    for (int i = 3; i < 7; i++)
        g_return_if_fail(hex_digit(id[i]) >= 0);
    /* The 16-bit vendor code (letters - 0x40, 5 bits each) and the 16-bit product number,
     * each stored most significant byte first. */
    uint16_t vendor = (uint16_t) (((id[0] - 0x40) << 10) | ((id[1] - 0x40) << 5) | (id[2] - 0x40));
    uint8_t bytes[4] = {
        (uint8_t) (vendor >> 8),
        (uint8_t) vendor,
        (uint8_t) (hex_digit(id[3]) << 4 | hex_digit(id[4])),
        (uint8_t) (hex_digit(id[5]) << 4 | hex_digit(id[6])),
    };
    put8(b, DWORD_PREFIX);
    put_bytes(b, bytes, 4);
}

void ferry_aml_name(GByteArray *b, const char *name)
{
    put8(b, NAME_OP);
    ferry_aml_name_string(b, name);
}

/* Appends @op (and @ext when EXT_OP_PREFIX is @op) and returns the PkgLength mark. */
static size_t begin(GByteArray *b, uint8_t op, uint8_t ext)
{
    put8(b, op);
    if (op == EXT_OP_PREFIX)
        put8(b, ext);
    return b->len;
}

size_t ferry_aml_scope_begin(GByteArray *b, const char *path)
{
    size_t mark = begin(b, SCOPE_OP, 0);
    ferry_aml_name_string(b, path);
    return mark;
}

size_t ferry_aml_device_begin(GByteArray *b, const char *name)
{
    size_t mark = begin(b, EXT_OP_PREFIX, EXT_DEVICE);
    ferry_aml_name_string(b, name);
    return mark;
}

size_t ferry_aml_method_begin(GByteArray *b, const char *name, unsigned nargs)
{
    size_t mark = begin(b, METHOD_OP, 0);
    ferry_aml_name_string(b, name);
    /* MethodFlags: ArgCount bits 2:0, SerializeFlag bit 3 (0), SyncLevel bits 7:4 (0). */
    put8(b, (uint8_t) MIN(nargs, 7u));
    return mark;
}

size_t ferry_aml_if_begin(GByteArray *b)
{
    return begin(b, IF_OP, 0);
}

size_t ferry_aml_package_begin(GByteArray *b, uint8_t count)
{
    size_t mark = begin(b, PACKAGE_OP, 0);
    put8(b, count); /* NumElements; the PkgLength goes before it */
    return mark;
}

size_t ferry_aml_field_begin(GByteArray *b, const char *region, uint8_t access_type)
{
    size_t mark = begin(b, EXT_OP_PREFIX, EXT_FIELD);
    ferry_aml_name_string(b, region);
    /* FieldFlags: AccessType bits 3:0, LockRule bit 4 (NoLock), UpdateRule 6:5 (Preserve). */
    put8(b, access_type & 0x0f);
    return mark;
}

void ferry_aml_field_unit(GByteArray *b, const char *name, uint32_t bits)
{
    g_return_if_fail(bits >= 1 && bits < (1u << 28));
    put_name_seg(b, name, strlen(name));
    /* The bit count uses the PkgLength encoding, but as a plain value (it does not count
     * its own bytes). */
    if (bits <= 0x3f) {
        put8(b, (uint8_t) bits);
        return;
    }
    uint8_t enc[4];
    size_t n = bits < (1u << 12) ? 1 : bits < (1u << 20) ? 2 : 3;
    enc[0] = (uint8_t) ((n << 6) | (bits & 0x0f));
    for (size_t i = 1; i <= n; i++)
        enc[i] = (uint8_t) (bits >> (4 + 8 * (i - 1)));
    put_bytes(b, enc, n + 1);
}

void ferry_aml_operation_region(GByteArray *b, const char *name, uint8_t space, uint64_t offset,
                                uint64_t len)
{
    put8(b, EXT_OP_PREFIX);
    put8(b, EXT_OP_REGION);
    ferry_aml_name_string(b, name);
    put8(b, space);
    ferry_aml_integer(b, offset);
    ferry_aml_integer(b, len);
}

void ferry_aml_store(GByteArray *b)
{
    put8(b, STORE_OP);
}

void ferry_aml_and(GByteArray *b)
{
    put8(b, AND_OP);
}

void ferry_aml_notify(GByteArray *b, const char *path, uint64_t value)
{
    put8(b, NOTIFY_OP);
    ferry_aml_name_string(b, path);
    ferry_aml_integer(b, value);
}

void ferry_aml_buffer(GByteArray *b, const uint8_t *data, size_t len)
{
    size_t mark = begin(b, BUFFER_OP, 0);
    ferry_aml_integer(b, len); /* BufferSize */
    put_bytes(b, data, len);
    ferry_aml_end(b, mark);
}

void ferry_aml_resource_template(GByteArray *b, const GByteArray *descriptors)
{
    g_autoptr(GByteArray) r = g_byte_array_sized_new(descriptors->len + 2);
    put_bytes(r, descriptors->data, descriptors->len);
    put8(r, RES_END_TAG);
    uint8_t sum = RES_END_TAG;
    for (guint i = 0; i < descriptors->len; i++)
        sum += descriptors->data[i];
    put8(r, (uint8_t) -sum);
    ferry_aml_buffer(b, r->data, r->len);
}

void ferry_aml_res_io(GByteArray *r, uint16_t base, uint8_t len)
{
    put8(r, RES_IO_PORT);
    put8(r, 1);     /* Information: bit 0, 16-bit decode */
    put16(r, base); /* _MIN */
    put16(r, base); /* _MAX */
    put8(r, 1);     /* _ALN */
    put8(r, len);   /* _LEN */
}

void ferry_aml_res_memory32_fixed(GByteArray *r, uint32_t base, uint32_t len)
{
    put8(r, RES_MEMORY32_FIXED);
    put16(r, 9);
    put8(r, 1); /* Information: bit 0, read/write */
    put32(r, base);
    put32(r, len);
}

void ferry_aml_res_interrupt(GByteArray *r, uint32_t gsi, gboolean edge, gboolean active_low)
{
    put8(r, RES_EXT_IRQ);
    put16(r, 6); /* flags, table length, one interrupt number */
    /* Flags: bit 0 consumer, bit 1 edge (_HE), bit 2 active-low (_LL), bit 3 shared
     * (0: exclusive), bit 4 wake capable (0). */
    put8(r, (uint8_t) (1u | (edge ? 2u : 0u) | (active_low ? 4u : 0u)));
    put8(r, 1);
    put32(r, gsi);
}

/* The common head of the address space descriptors: tag, length, type, flags. */
static void addr_head(GByteArray *r, uint8_t tag, uint16_t len, uint8_t type, uint8_t tflags)
{
    put8(r, tag);
    put16(r, len);
    put8(r, type);
    put8(r, ADDR_MIN_FIXED | ADDR_MAX_FIXED); /* producer, positive decode */
    put8(r, tflags);
}

static void word_addr(GByteArray *r, uint8_t type, uint8_t tflags, uint16_t min, uint16_t max)
{
    g_return_if_fail(max >= min);
    addr_head(r, RES_WORD_ADDR, 13, type, tflags);
    put16(r, 0); /* _GRA: 0 for fixed-size windows */
    put16(r, min);
    put16(r, max);
    put16(r, 0); /* _TRA */
    put16(r, (uint16_t) (max - min + 1));
}

void ferry_aml_res_word_bus(GByteArray *r, uint16_t min, uint16_t max)
{
    word_addr(r, ADDR_TYPE_BUS, 0, min, max);
}

void ferry_aml_res_word_io(GByteArray *r, uint16_t min, uint16_t max)
{
    word_addr(r, ADDR_TYPE_IO, ADDR_IO_ENTIRE_RANGE, min, max);
}

void ferry_aml_res_dword_memory(GByteArray *r, uint32_t min, uint32_t max)
{
    g_return_if_fail(max >= min);
    addr_head(r, RES_DWORD_ADDR, 23, ADDR_TYPE_MEMORY, ADDR_MEM_READ_WRITE);
    put32(r, 0);
    put32(r, min);
    put32(r, max);
    put32(r, 0);
    put32(r, max - min + 1);
}

void ferry_aml_res_qword_memory(GByteArray *r, uint64_t min, uint64_t max)
{
    g_return_if_fail(max >= min);
    addr_head(r, RES_QWORD_ADDR, 43, ADDR_TYPE_MEMORY, ADDR_MEM_READ_WRITE);
    put64(r, 0);
    put64(r, min);
    put64(r, max);
    put64(r, 0);
    put64(r, max - min + 1);
}

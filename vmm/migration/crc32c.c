#include "migration/crc32c.h"
#include "util/state.h"

#include <glib.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

/* Reflected polynomial: bit 31 stands for x^0, bit 0 for x^31. */
#define CRC32C_POLY 0x82F63B78u

/* Bytes per lane in the three-lane hardware loop. */
#define LANE_BYTES 4096

static uint32_t slice_table[8][256];
/* x_pow[k] = x^(8 * 2^k) mod P, in the reflected form. */
static uint32_t x_pow[64];
/* x^(8 * LANE_BYTES) and x^(16 * LANE_BYTES) mod P: shifts one and two lanes forward. */
static uint32_t lane_shift1, lane_shift2;
static gboolean have_sse42;

/* Returns a * b mod P for polynomials in the reflected form. */
static uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
    uint32_t prod = 0;

    for (int i = 31; i >= 0; i--) {
        if (a & (1u << i))
            prod ^= b;
        b = (b & 1) ? (b >> 1) ^ CRC32C_POLY : b >> 1;
    }
    return prod;
}

/* Returns x^(8 * n) mod P. */
static uint32_t x_pow_bytes(uint64_t n)
{
    uint32_t r = 1u << 31; /* x^0 */

    for (unsigned k = 0; n != 0; k++, n >>= 1) {
        if (n & 1)
            r = gf2_mulmod(r, x_pow[k]);
    }
    return r;
}

static void crc32c_init_tables(void)
{
    for (unsigned b = 0; b < 256; b++) {
        uint32_t c = b;
        for (unsigned j = 0; j < 8; j++)
            c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        slice_table[0][b] = c;
    }
    for (unsigned b = 0; b < 256; b++) {
        for (unsigned t = 1; t < 8; t++) {
            uint32_t prev = slice_table[t - 1][b];
            slice_table[t][b] = (prev >> 8) ^ slice_table[0][prev & 0xff];
        }
    }
    x_pow[0] = 1u << (31 - 8); /* x^8 */
    for (unsigned k = 1; k < G_N_ELEMENTS(x_pow); k++)
        x_pow[k] = gf2_mulmod(x_pow[k - 1], x_pow[k - 1]);
    lane_shift1 = x_pow_bytes(LANE_BYTES);
    lane_shift2 = x_pow_bytes(2 * LANE_BYTES);
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static void crc32c_once(void)
{
    static gsize done;

    if (g_once_init_enter(&done)) {
        crc32c_init_tables();
        g_once_init_leave(&done, 1);
    }
}

/* Advances the raw CRC register @r (no pre/post inversion) over @p[0..@len). */
static uint32_t raw_sw(uint32_t r, const uint8_t *p, size_t len)
{
    while (len >= 8) {
        uint64_t v = ferry_le_load64(p) ^ r;
        r = slice_table[7][v & 0xff] ^ slice_table[6][(v >> 8) & 0xff] ^
            slice_table[5][(v >> 16) & 0xff] ^ slice_table[4][(v >> 24) & 0xff] ^
            slice_table[3][(v >> 32) & 0xff] ^ slice_table[2][(v >> 40) & 0xff] ^
            slice_table[1][(v >> 48) & 0xff] ^ slice_table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        r = (r >> 8) ^ slice_table[0][(r ^ *p++) & 0xff];
    return r;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t raw_hw(uint32_t r, const uint8_t *p, size_t len)
{
    /*
     * Three independent lanes hide the instruction's 3-cycle latency; the lanes are then
     * joined by shifting the first two forward (CRC linearity: reg(A||B) = reg(A)·x^8|B| +
     * reg_0(B)).
     */
    while (len >= 3 * LANE_BYTES) {
        uint64_t a = r, b = 0, c = 0;
        for (size_t i = 0; i < LANE_BYTES; i += 8) {
            a = _mm_crc32_u64(a, ferry_le_load64(p + i));
            b = _mm_crc32_u64(b, ferry_le_load64(p + LANE_BYTES + i));
            c = _mm_crc32_u64(c, ferry_le_load64(p + 2 * LANE_BYTES + i));
        }
        r = gf2_mulmod(lane_shift2, (uint32_t) a) ^ gf2_mulmod(lane_shift1, (uint32_t) b) ^
            (uint32_t) c;
        p += 3 * LANE_BYTES;
        len -= 3 * LANE_BYTES;
    }
    uint64_t r64 = r;
    while (len >= 8) {
        r64 = _mm_crc32_u64(r64, ferry_le_load64(p));
        p += 8;
        len -= 8;
    }
    r = (uint32_t) r64;
    while (len--)
        r = _mm_crc32_u8(r, *p++);
    return r;
}
#endif

uint32_t ferry_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    crc32c_once();
    return ~raw_sw(~crc, data, len);
}

uint32_t ferry_crc32c(uint32_t crc, const void *data, size_t len)
{
    crc32c_once();
#if defined(__x86_64__)
    if (have_sse42)
        return ~raw_hw(~crc, data, len);
#endif
    return ~raw_sw(~crc, data, len);
}

uint32_t ferry_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    crc32c_once();
    /* The pre/post inversions cancel out: crc(A||B) = crc(A)·x^(8|B|) + crc(B). */
    return gf2_mulmod(x_pow_bytes(len_b), crc_a) ^ crc_b;
}

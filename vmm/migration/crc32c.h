/*
 * CRC-32C (Castagnoli): the checksum of the migration stream (docs/migration-protocol.md,
 * "Checksums").
 *
 * Polynomial 0x1EDC6F41 (reflected 0x82F63B78), initial value and final XOR 0xFFFFFFFF,
 * bits processed least significant first — the CRC of iSCSI, ext4 and SCTP; the check value
 * of "123456789" is 0xE3069283.  Uses the SSE4.2 crc32 instruction when the CPU has it
 * (three interleaved lanes), else a slicing-by-8 table.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/*
 * Returns the CRC-32C of the bytes covered by @crc followed by @data[0..@len).  Start with
 * @crc = 0; feeding a buffer in pieces gives the same result as feeding it at once.
 */
uint32_t ferry_crc32c(uint32_t crc, const void *data, size_t len);

/*
 * Returns the CRC-32C of A || B given @crc_a = CRC-32C(A), @crc_b = CRC-32C(B) and
 * @len_b = |B| in bytes, without touching the data (O(log len_b)).
 */
uint32_t ferry_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* The portable table implementation, for tests that compare it with the SSE4.2 one. */
uint32_t ferry_crc32c_sw(uint32_t crc, const void *data, size_t len);

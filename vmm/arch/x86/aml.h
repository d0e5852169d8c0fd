/*
 * A small AML encoder for the DSDT (ACPI 6.4 chapter 20 "ACPI Machine Language (AML)
 * Specification", resource descriptors from section 6.4 "Resource Data Types for ACPI").
 *
 * Everything appends bytes to a GByteArray.  Objects with a PkgLength (scopes, devices,
 * methods, If, packages, buffers, fields) are written in two steps: ferry_aml_*_begin()
 * appends the opcode (and what precedes the contents) and returns a mark; the caller
 * appends the contents; ferry_aml_end() inserts the PkgLength at the mark.  Marks nest.
 *
 * Name paths are ASL-style strings: "\\_SB.PCI0", "_HID", "^PWRB"; segments shorter than
 * four characters are padded with '_' ("GED" is "GED_").  Paths and identifiers come from
 * this program, not from users: a malformed one is a programming error (g_return_if_fail).
 */
#pragma once

#include <glib.h>
#include <stdint.h>

/* Opcodes used directly by callers (ACPI 6.4 20.2.5, 20.2.6). */
#define FERRY_AML_LOCAL0    0x60 /* Local0Op */
#define FERRY_AML_ARG0      0x68 /* Arg0Op */
#define FERRY_AML_NULL_NAME 0x00 /* NullName: "no target" */

/* Region spaces for OperationRegion (20.2.5.2, 5.5.2.4). */
#define FERRY_AML_SYSTEM_MEMORY 0x00
#define FERRY_AML_SYSTEM_IO     0x01

/* Field access types (FieldFlags bits 3:0, 20.2.5.2 / 19.6.48). */
#define FERRY_AML_FIELD_BYTE_ACC  1
#define FERRY_AML_FIELD_DWORD_ACC 3

/* Appends the PkgLength encoding (20.2.4) of a package whose contents (everything after the
 * PkgLength) are @content_len bytes: the encoded value counts its own 1-4 bytes too. */
void ferry_aml_pkg_length(GByteArray *b, size_t content_len);
/* Inserts the PkgLength for everything appended since @mark (from a *_begin() call). */
void ferry_aml_end(GByteArray *b, size_t mark);

/* NameString (20.2.2): RootChar/ParentPrefixChar prefixes, then NullName, one NameSeg,
 * DualNamePrefix or MultiNamePrefix as the number of segments needs. */
void ferry_aml_name_string(GByteArray *b, const char *path);
/* Integer constant (20.2.3): ZeroOp, OneOp, OnesOp, or the smallest Byte/Word/DWord/QWord. */
void ferry_aml_integer(GByteArray *b, uint64_t v);
/* String (20.2.3): StringPrefix, ASCII characters 0x01-0x7f, NUL. */
void ferry_aml_string(GByteArray *b, const char *s);
/* EISAID ("PNP0A03"; _HID 6.1.5, ASL operator reference 19.6): three upper-case letters
 * packed 5 bits each and four hex digits, emitted as a DWordConst. */
void ferry_aml_eisaid(GByteArray *b, const char *id);
/* Name (@name, ...) (20.2.5.1): NameOp and the name; the caller appends the data object. */
void ferry_aml_name(GByteArray *b, const char *name);

/* Scope (@path) { ... } (20.2.5.1) */
size_t ferry_aml_scope_begin(GByteArray *b, const char *path);
/* Device (@name) { ... } (20.2.5.2) */
size_t ferry_aml_device_begin(GByteArray *b, const char *name);
/* Method (@name, @nargs (0-7), NotSerialized) { ... } (20.2.5.2) */
size_t ferry_aml_method_begin(GByteArray *b, const char *name, unsigned nargs);
/* If (predicate) { ... } (20.2.5.3): the caller appends the predicate then the body. */
size_t ferry_aml_if_begin(GByteArray *b);
/* Package (@count) { ... } (20.2.5.4): the caller appends @count data objects. */
size_t ferry_aml_package_begin(GByteArray *b, uint8_t count);
/* Field (@region, @access_type, NoLock, Preserve) { ... } (20.2.5.2); the caller appends
 * elements with ferry_aml_field_unit(). */
size_t ferry_aml_field_begin(GByteArray *b, const char *region, uint8_t access_type);
/* A NamedField element: NameSeg @name and its width in bits (1..0x0fffffff). */
void ferry_aml_field_unit(GByteArray *b, const char *name, uint32_t bits);

/* OperationRegion (@name, @space, @offset, @len) (20.2.5.2). */
void ferry_aml_operation_region(GByteArray *b, const char *name, uint8_t space, uint64_t offset,
                                uint64_t len);
/* Store (<source>, <target>) (20.2.5.4): appends StoreOp; the caller appends both operands. */
void ferry_aml_store(GByteArray *b);
/* And (<a>, <b>, <target>) (20.2.5.4): appends AndOp; the caller appends the operands. */
void ferry_aml_and(GByteArray *b);
/* Notify (@path, @value) (20.2.5.3). */
void ferry_aml_notify(GByteArray *b, const char *path, uint64_t value);

/* Buffer (BufferSize) { bytes } (20.2.5.4) holding @len bytes of @data. */
void ferry_aml_buffer(GByteArray *b, const uint8_t *data, size_t len);

/*
 * Resource templates (section 6.4): descriptors are appended to a scratch GByteArray,
 * then ferry_aml_resource_template() wraps them in a Buffer with an End Tag whose checksum
 * makes the descriptor bytes sum to zero (6.4.2.9).
 */
void ferry_aml_resource_template(GByteArray *b, const GByteArray *descriptors);

/* I/O Port Descriptor (6.4.2.5), 16-bit decode, fixed @base, @len ports (alignment 1). */
void ferry_aml_res_io(GByteArray *r, uint16_t base, uint8_t len);
/* Memory32Fixed (6.4.3.4), read/write. */
void ferry_aml_res_memory32_fixed(GByteArray *r, uint32_t base, uint32_t len);
/*
 * Extended Interrupt Descriptor (6.4.3.6) for one interrupt @gsi: consumer, exclusive,
 * not wake-capable, with the given trigger (@edge FALSE = level) and polarity.
 */
void ferry_aml_res_interrupt(GByteArray *r, uint32_t gsi, gboolean edge, gboolean active_low);

/* Resource producers for a bridge's windows, fixed minimum and maximum, positive decode:
 * Word Bus Number (6.4.3.5.3), Word I/O with EntireRange (6.4.3.5.3), DWord/QWord Memory
 * read/write, non-cacheable (6.4.3.5.2, 6.4.3.5.1).  [@min, @max] inclusive, @max >= @min. */
void ferry_aml_res_word_bus(GByteArray *r, uint16_t min, uint16_t max);
void ferry_aml_res_word_io(GByteArray *r, uint16_t min, uint16_t max);
void ferry_aml_res_dword_memory(GByteArray *r, uint32_t min, uint32_t max);
void ferry_aml_res_qword_memory(GByteArray *r, uint64_t min, uint64_t max);

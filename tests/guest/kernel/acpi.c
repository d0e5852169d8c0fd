/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * ACPI table discovery. RSDP search order (ACPI 6.4, 5.2.5.1 "Finding the RSDP on
 * IA-PC Systems"): the loader's pointer (PVH rsdp_paddr / boot_params
 * acpi_rsdp_addr), else the first KiB of the EBDA, else 0xE0000-0xFFFFF, on
 * 16-byte boundaries. The scan compares 8 bytes at a time: it runs at CPL0.
 */
#include "kernel/acpi.h"
#include "kernel/console.h"
#include "lib/string.h"
#include "lib/x86.h"

#define RSDP_SIG 0x2052545020445352ull      /* "RSD PTR " little endian */

struct acpi_header {
    char signature[4];
    u32 length;
    u8 revision;
    u8 checksum;
    char oem_id[6];
    char oem_table_id[8];
    u32 oem_revision;
    u32 creator_id;
    u32 creator_revision;
} PACKED;

static bool checksum_ok(const void *p, u32 len)
{
    u8 sum = 0;
    for (u32 i = 0; i < len; i++)
        sum += ((const u8 *)p)[i];
    return sum == 0;
}

static bool rsdp_valid(u64 addr)
{
    const u8 *p = (const u8 *)addr;
    return *(const u64 *)p == RSDP_SIG && checksum_ok(p, 20);
}

static u64 scan(u64 start, u64 end)
{
    for (u64 a = start; a < end; a += 16) {
        if (*(const u64 *)phys(a) == RSDP_SIG && rsdp_valid(a))
            return a;
    }
    return 0;
}

static u64 find_rsdp(u64 hint)
{
    if (hint && rsdp_valid(hint))
        return hint;
    u64 ebda = (u64)*(const u16 *)phys(0x40e) << 4;   /* BDA: EBDA segment */
    u64 r = 0;
    if (ebda >= 0x80000 && ebda < 0xa0000)
        r = scan(ebda, ebda + 1024);
    if (!r)
        r = scan(0xe0000, 0x100000);
    return r;
}

static void parse_madt(struct acpi_info *ai, const struct acpi_header *h)
{
    const u8 *p = (const u8 *)h + 44;
    const u8 *end = (const u8 *)h + h->length;

    ai->lapic_addr = *(const u32 *)((const u8 *)h + 36);
    while (p + 2 <= end && p[1] >= 2 && p + p[1] <= end) {
        switch (p[0]) {
        case 0:         /* Processor Local APIC: uid, apic id, flags (bit 0 enabled) */
            if ((*(const u32 *)(p + 4) & 1) && ai->ncpus < MAX_CPUS)
                ai->cpu_apic_id[ai->ncpus++] = p[3];
            break;
        case 9:         /* Processor Local x2APIC: x2apic id at 4, flags at 8 */
            if ((*(const u32 *)(p + 8) & 1) && ai->ncpus < MAX_CPUS)
                ai->cpu_apic_id[ai->ncpus++] = *(const u32 *)(p + 4);
            break;
        case 1:         /* I/O APIC: id, address at 4, GSI base at 8 */
            if (ai->nioapics < ACPI_MAX_IOAPICS) {
                struct acpi_ioapic *io = &ai->ioapic[ai->nioapics++];
                io->id = p[2];
                io->addr = *(const u32 *)(p + 4);
                io->gsi_base = *(const u32 *)(p + 8);
            }
            break;
        case 2:         /* Interrupt Source Override: bus, source, GSI at 4, flags at 8 */
            if (ai->nisos < ACPI_MAX_ISOS) {
                struct acpi_iso *o = &ai->iso[ai->nisos++];
                o->bus_irq = p[3];
                o->gsi = *(const u32 *)(p + 4);
                o->flags = *(const u16 *)(p + 8);
            }
            break;
        case 5:         /* Local APIC Address Override */
            ai->lapic_addr = *(const u64 *)(p + 4);
            break;
        }
        p += p[1];
    }
}

/* FADT field offsets, ACPI 6.4 table 5.9. */
static void parse_fadt(struct acpi_info *ai, const struct acpi_header *h)
{
    const u8 *f = (const u8 *)h;
    u32 len = h->length;

    ai->fadt_len = len;
    if (len >= 44)
        ai->dsdt = *(const u32 *)(f + 40);
    if (len >= 148 && *(const u64 *)(f + 140))
        ai->dsdt = *(const u64 *)(f + 140);
    if (len >= 72) {
        ai->pm1a_cnt = *(const u32 *)(f + 64);
        ai->pm1b_cnt = *(const u32 *)(f + 68);
    }
    if (len >= 116)
        ai->fadt_flags = *(const u32 *)(f + 112);
    if (len >= 129) {
        memcpy(&ai->reset_reg, f + 116, sizeof(ai->reset_reg));
        ai->reset_value = f[128];
    }
    if (len >= 196) {
        memcpy(&ai->x_pm1a_cnt, f + 172, sizeof(struct acpi_gas));
        memcpy(&ai->x_pm1b_cnt, f + 184, sizeof(struct acpi_gas));
    }
    if (len >= 256)
        memcpy(&ai->sleep_control, f + 244, sizeof(struct acpi_gas));
}

void acpi_init(u64 rsdp_hint, struct acpi_info *ai)
{
    u64 rsdp = find_rsdp(rsdp_hint);
    if (!rsdp)
        return;
    ai->rsdp = rsdp;

    const u8 *r = (const u8 *)rsdp;
    u64 xsdt = r[15] >= 2 ? *(const u64 *)(r + 24) : 0;     /* revision, XsdtAddress */
    u64 rsdt = *(const u32 *)(r + 16);
    ai->xsdt = xsdt != 0;
    ai->sdt = xsdt ? xsdt : rsdt;
    if (!ai->sdt)
        return;

    const struct acpi_header *sdt = (const void *)ai->sdt;
    u32 width = ai->xsdt ? 8 : 4;
    u32 n = (sdt->length - sizeof(*sdt)) / width;
    const u8 *ent = (const u8 *)sdt + sizeof(*sdt);
    for (u32 i = 0; i < n; i++) {
        u64 a = ai->xsdt ? *(const u64 *)(ent + i * 8) : *(const u32 *)(ent + i * 4);
        const struct acpi_header *h = (const void *)a;
        if (!a)
            continue;
        if (!ai->madt && memcmp(h->signature, "APIC", 4) == 0) {
            ai->madt = a;
            parse_madt(ai, h);
        } else if (!ai->fadt && memcmp(h->signature, "FACP", 4) == 0) {
            ai->fadt = a;
            parse_fadt(ai, h);
        }
    }
}

/*
 * \_S5_ in the DSDT (ACPI 6.4 7.4.2 "\_Sx (System States)", 4.8.3.7 sleep type
 * values): NameOp (0x08) "_S5_" PackageOp (0x12) PkgLength NumElements, then
 * SLP_TYPa and SLP_TYPb as ZeroOp (0x00), OneOp (0x01) or BytePrefix (0x0A) nn
 * (AML encoding: ACPI 6.4 20.2). A byte scan is enough for the tables VMMs build.
 */
static bool aml_byte(const u8 **p, const u8 *end, u8 *out)
{
    if (*p >= end)
        return false;
    u8 op = *(*p)++;
    if (op == 0x0a) {
        if (*p >= end)
            return false;
        *out = *(*p)++;
    } else if (op == 0x00 || op == 0x01) {
        *out = op;
    } else if (op == 0xff) {
        *out = 0xff;
    } else {
        *out = op;              /* be lenient: some tables store the raw byte */
    }
    return true;
}

bool acpi_s5(const struct acpi_info *ai, u8 *a, u8 *b)
{
    if (!ai->dsdt)
        return false;
    const struct acpi_header *h = (const void *)ai->dsdt;
    const u8 *p = (const u8 *)h + sizeof(*h);
    const u8 *end = (const u8 *)h + h->length;

    for (; p + 8 < end; p++) {
        if (p[0] != '_' || p[1] != 'S' || p[2] != '5' || p[3] != '_')
            continue;
        if (!(p[-1] == 0x08 || (p[-1] == '\\' && p[-2] == 0x08)) || p[4] != 0x12)
            continue;
        const u8 *q = p + 5;
        q += 1 + (*q >> 6);             /* PkgLength: bits 7:6 = extra bytes */
        q++;                            /* NumElements */
        *b = 0;
        if (!aml_byte(&q, end, a))
            return false;
        aml_byte(&q, end, b);
        return true;
    }
    return false;
}

/*
 * GED discovery (see acpi.h). The AML pieces matched (ACPI 6.4 20.2): StringPrefix
 * (0x0D) "ACPI0013" NUL; NameOp (0x08) "_CRS" BufferOp (0x11) PkgLength BufferSize
 * (Byte/Word/DWord const) then the resource bytes. Descriptors (6.4.1): small items
 * are tag bits 6:3 type, 2:0 length; large items (bit 7) have a 16-bit length after
 * the tag. The walk stops at the End Tag (small type 0xF) or the buffer's end.
 */
#define GED_SCOPE_MAX   1024            /* bytes after the _HID searched for its _CRS */

static bool aml_int(const u8 **p, const u8 *end, u32 *v)
{
    const u8 *q = *p;
    u32 n;

    if (q >= end)
        return false;
    switch (*q++) {
    case 0x00: *v = 0; n = 0; break;
    case 0x01: *v = 1; n = 0; break;
    case 0x0a: n = 1; break;
    case 0x0b: n = 2; break;
    case 0x0c: n = 4; break;
    default: return false;
    }
    if (q + n > end)
        return false;
    if (n) {
        *v = 0;
        for (u32 i = 0; i < n; i++)
            *v |= (u32)q[i] << (8 * i);
    }
    *p = q + n;
    return true;
}

static bool ged_resources(struct acpi_info *ai, const u8 *p, const u8 *end)
{
    bool have_irq = false, have_mem = false;
    u64 base = 0;

    while (p < end) {
        u32 type, len, hdr;
        if (p[0] & 0x80) {
            if (p + 3 > end)
                break;
            type = p[0];
            len = p[1] | (u32)p[2] << 8;
            hdr = 3;
        } else {
            type = (p[0] >> 3) & 0x0f;
            len = p[0] & 7;
            hdr = 1;
            if (type == 0x0f)           /* End Tag */
                break;
        }
        if (p + hdr + len > end)
            break;
        if (type == 0x89 && len >= 6 && p[4] >= 1 && !have_irq) {
            /* flags: bit 1 edge (else level), bit 2 active-low; count; GSI */
            ai->ged_level = !(p[3] & 2);
            ai->ged_active_low = (p[3] & 4) != 0;
            ai->ged_gsi = *(const u32 *)(p + 5);
            have_irq = true;
        } else if (type == 0x86 && len >= 9 && !have_mem) {
            base = *(const u32 *)(p + 4);
            have_mem = base != 0;
        }
        p += hdr + len;
    }
    if (!have_irq || !have_mem)
        return false;
    ai->ged_base = base;
    return true;
}

/* Looks for Name (_CRS, Buffer) in [p, end), stopping at the next _HID. */
static bool ged_crs(struct acpi_info *ai, const u8 *p, const u8 *end)
{
    for (; p + 7 < end; p++) {
        if (p[0] != 0x08 || p[1] != '_')
            continue;
        if (p[2] == 'H' && p[3] == 'I' && p[4] == 'D')
            return false;               /* the next device's: ours has no _CRS */
        if (p[2] != 'C' || p[3] != 'R' || p[4] != 'S' || p[5] != 0x11)
            continue;
        const u8 *q = p + 6;
        u32 extra = *q >> 6;            /* PkgLength: bits 7:6 = following bytes */
        u32 pkg = extra ? (*q & 0x0f) : (*q & 0x3f);
        for (u32 i = 1; i <= extra; i++) {
            if (q + i >= end)
                return false;
            pkg |= (u32)q[i] << (4 + 8 * (i - 1));
        }
        const u8 *buf_end = q + pkg;    /* PkgLength counts from its own first byte */
        if (buf_end > end)
            buf_end = end;
        q += 1 + extra;
        u32 size;
        if (!aml_int(&q, buf_end, &size))
            return false;
        if (q + size < buf_end)
            buf_end = q + size;
        return ged_resources(ai, q, buf_end);
    }
    return false;
}

bool acpi_find_ged(struct acpi_info *ai)
{
    if (!ai->dsdt)
        return false;
    const struct acpi_header *h = (const void *)ai->dsdt;
    const u8 *p = (const u8 *)h + sizeof(*h);
    const u8 *end = (const u8 *)h + h->length;

    for (; p + 10 <= end; p++) {
        /* "ACPI" as one compare: this runs at CPL0, where every instruction counts. */
        if (*(const u32 *)(p + 1) != 0x49504341u || p[0] != 0x0d ||
            memcmp(p + 5, "0013", 5) != 0)
            continue;
        const u8 *stop = end - p > GED_SCOPE_MAX ? p + GED_SCOPE_MAX : end;
        if (ged_crs(ai, p + 10, stop))
            return true;
    }
    ai->ged_base = 0;
    return false;
}

static u32 gas_width(const struct acpi_gas *g)
{
    if (g->access_size >= 1 && g->access_size <= 4)
        return 8u << (g->access_size - 1);
    if (g->bit_width == 16 || g->bit_width == 32 || g->bit_width == 64)
        return g->bit_width;
    return 8;
}

void acpi_gas_write(const struct acpi_gas *g, u64 v)
{
    u32 w = gas_width(g);

    if (g->space_id == 0) {
        volatile void *p = (volatile void *)g->address;
        if (w == 8)
            *(volatile u8 *)p = (u8)v;
        else if (w == 16)
            *(volatile u16 *)p = (u16)v;
        else if (w == 32)
            *(volatile u32 *)p = (u32)v;
        else
            *(volatile u64 *)p = v;
    } else if (g->space_id == 1) {
        u16 port = (u16)g->address;
        if (w == 8)
            outb(port, (u8)v);
        else if (w == 16)
            outw(port, (u16)v);
        else
            outl(port, (u32)v);
    }
}

u64 acpi_gas_read(const struct acpi_gas *g)
{
    u32 w = gas_width(g);

    if (g->space_id == 0) {
        volatile void *p = (volatile void *)g->address;
        if (w == 8)
            return *(volatile u8 *)p;
        if (w == 16)
            return *(volatile u16 *)p;
        if (w == 32)
            return *(volatile u32 *)p;
        return *(volatile u64 *)p;
    }
    if (g->space_id == 1) {
        u16 port = (u16)g->address;
        if (w == 8)
            return inb(port);
        if (w == 16)
            return inw(port);
        return inl(port);
    }
    return 0;
}

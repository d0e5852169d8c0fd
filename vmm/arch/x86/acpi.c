#include "arch/x86/acpi.h"

#include "arch/x86/aml.h"
#include "arch/x86/layout.h"
#include "devices/acpi_pm.h"
#include "devices/ged.h"

#include <gio/gio.h>
#include <string.h>

#define OEM_ID       "FERRY "
#define OEM_TABLE_ID "FERRYVMM"
#define CREATOR_ID   "FRRY"

#define FADT_LEN 276
#define FADT_FLAG_PWR_BUTTON      (1u << 4) /* power button is a control-method device */
#define FADT_FLAG_SLP_BUTTON      (1u << 5) /* no fixed-feature sleep button */
#define FADT_FLAG_RESET_REG_SUP   (1u << 10)
#define FADT_FLAG_HW_REDUCED_ACPI (1u << 20)
#define FADT_BOOT_ARCH_8042       (1u << 1)
#define FADT_BOOT_ARCH_NO_VGA     (1u << 2)
#define GAS_SYSTEM_IO 1

/* PCI configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2): 0xcf8 address, 0xcfc data. */
#define FERRY_PCI_CONFIG_PORT 0xcf8
#define FERRY_PCI_CONFIG_LEN  8
#define GAS_ACCESS_BYTE 1

#define MADT_PCAT_COMPAT 1
#define MADT_LAPIC   0
#define MADT_IOAPIC  1
#define MADT_LAPIC_NMI 4
#define MADT_X2APIC  9

static void put8(GByteArray *b, size_t off, uint8_t v)
{
    b->data[off] = v;
}

static void put16(GByteArray *b, size_t off, uint16_t v)
{
    v = GUINT16_TO_LE(v);
    memcpy(b->data + off, &v, 2);
}

static void put32(GByteArray *b, size_t off, uint32_t v)
{
    v = GUINT32_TO_LE(v);
    memcpy(b->data + off, &v, 4);
}

static void put64(GByteArray *b, size_t off, uint64_t v)
{
    v = GUINT64_TO_LE(v);
    memcpy(b->data + off, &v, 8);
}

uint8_t ferry_acpi_checksum(const uint8_t *data, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += data[i];
    return sum;
}

/* Grows @b to a 16-byte boundary and reserves @len zeroed bytes; returns their offset. */
static size_t reserve(GByteArray *b, size_t len)
{
    size_t off = (b->len + 15) & ~(size_t) 15;
    size_t old = b->len;
    g_byte_array_set_size(b, off + len);
    memset(b->data + old, 0, off + len - old);
    return off;
}

/* Writes the common table header (ACPI 6.4, 5.2.6) at @off. */
static void header(GByteArray *b, size_t off, const char *sig, uint32_t len, uint8_t rev)
{
    memcpy(b->data + off, sig, 4);
    put32(b, off + 4, len);
    put8(b, off + 8, rev);
    memcpy(b->data + off + 10, OEM_ID, 6);
    memcpy(b->data + off + 16, OEM_TABLE_ID, 8);
    put32(b, off + 24, 1);
    memcpy(b->data + off + 28, CREATOR_ID, 4);
    put32(b, off + 32, 1);
}

static void finish(GByteArray *b, size_t off, uint32_t len)
{
    put8(b, off + 9, 0);
    put8(b, off + 9, (uint8_t) -ferry_acpi_checksum(b->data + off, len));
}

/* Generic Address Structure (5.2.3.2) for one byte of I/O space. */
static void gas_io_byte(GByteArray *b, size_t off, uint16_t port)
{
    put8(b, off, GAS_SYSTEM_IO);
    put8(b, off + 1, 8);
    put8(b, off + 2, 0);
    put8(b, off + 3, GAS_ACCESS_BYTE);
    put64(b, off + 4, port);
}

/* Device (PCI0): the PCI root bridge (ACPI 6.4 6.1.5 _HID, 6.1.2 _CID, 6.5.6 _SEG,
 * 6.5.5 _BBN, 6.2.2 _CRS; PCI Firmware Specification 3.3 4.1.1). */
static void dsdt_pci0(GByteArray *a, const FerryAcpiConfig *cfg)
{
    size_t dev = ferry_aml_device_begin(a, "PCI0");
    ferry_aml_name(a, "_HID");
    ferry_aml_eisaid(a, "PNP0A08"); /* PCI Express root bridge */
    ferry_aml_name(a, "_CID");
    ferry_aml_eisaid(a, "PNP0A03"); /* PCI root bridge */
    ferry_aml_name(a, "_SEG");
    ferry_aml_integer(a, 0);
    ferry_aml_name(a, "_BBN");
    ferry_aml_integer(a, 0);
    ferry_aml_name(a, "_UID");
    ferry_aml_integer(a, 0);

    g_autoptr(GByteArray) r = g_byte_array_new();
    ferry_aml_res_word_bus(r, 0, 0);
    ferry_aml_res_io(r, FERRY_PCI_CONFIG_PORT, FERRY_PCI_CONFIG_LEN);
    ferry_aml_res_word_io(r, 0x0000, FERRY_PCI_CONFIG_PORT - 1);
    ferry_aml_res_word_io(r, 0x0d00, 0xffff);
    ferry_aml_res_dword_memory(r, (uint32_t) cfg->pci_mmio32_base,
                               (uint32_t) (cfg->pci_mmio32_base + cfg->pci_mmio32_size - 1));
    if (cfg->pci_mmio64_size)
        ferry_aml_res_qword_memory(r, cfg->pci_mmio64_base,
                                   cfg->pci_mmio64_base + cfg->pci_mmio64_size - 1);
    ferry_aml_name(a, "_CRS");
    ferry_aml_resource_template(a, r);
    /* No _PRT: Ferry's PCI devices interrupt with MSI-X only. */
    ferry_aml_end(a, dev);
}

/* Device (PWRB): the control-method power button (4.8.2.2.1.2); Notify 0x80 presses it. */
static void dsdt_pwrb(GByteArray *a)
{
    size_t dev = ferry_aml_device_begin(a, "PWRB");
    ferry_aml_name(a, "_HID");
    ferry_aml_eisaid(a, "PNP0C0C");
    ferry_aml_name(a, "_UID");
    ferry_aml_integer(a, 0);
    ferry_aml_end(a, dev);
}

/*
 * Device (GED_): the Generic Event Device (5.6.9) of devices/ged.h.  Its interrupt and
 * register block are in _CRS; _EVT (5.6.9.3) reads the read-to-clear event register once:
 *
 *   OperationRegion (EREG, SystemMemory, FERRY_GED_BASE, FERRY_GED_SIZE)
 *   Field (EREG, DWordAcc, NoLock, Preserve) { EVTS, 32 }
 *   Method (_EVT, 1) { Store (EVTS, Local0)
 *                      If (And (Local0, 1)) { Notify (\_SB.PWRB, 0x80) } }
 */
static void dsdt_ged(GByteArray *a)
{
    size_t dev = ferry_aml_device_begin(a, "GED");
    ferry_aml_name(a, "_HID");
    ferry_aml_string(a, "ACPI0013");
    ferry_aml_name(a, "_UID");
    ferry_aml_integer(a, 0);

    g_autoptr(GByteArray) r = g_byte_array_new();
    ferry_aml_res_interrupt(r, FERRY_GED_GSI, FALSE, FALSE); /* level, active-high */
    ferry_aml_res_memory32_fixed(r, (uint32_t) FERRY_GED_BASE, FERRY_GED_SIZE);
    ferry_aml_name(a, "_CRS");
    ferry_aml_resource_template(a, r);

    ferry_aml_operation_region(a, "EREG", FERRY_AML_SYSTEM_MEMORY, FERRY_GED_BASE, FERRY_GED_SIZE);
    size_t field = ferry_aml_field_begin(a, "EREG", FERRY_AML_FIELD_DWORD_ACC);
    ferry_aml_field_unit(a, "EVTS", 32);
    ferry_aml_end(a, field);

    size_t method = ferry_aml_method_begin(a, "_EVT", 1);
    ferry_aml_store(a);
    ferry_aml_name_string(a, "EVTS");
    g_byte_array_append(a, (const guint8[]){FERRY_AML_LOCAL0}, 1);
    size_t cond = ferry_aml_if_begin(a);
    ferry_aml_and(a);
    g_byte_array_append(a, (const guint8[]){FERRY_AML_LOCAL0}, 1);
    ferry_aml_integer(a, FERRY_GED_EVENT_POWER_BUTTON);
    g_byte_array_append(a, (const guint8[]){FERRY_AML_NULL_NAME}, 1);
    ferry_aml_notify(a, "\\_SB.PWRB", 0x80);
    ferry_aml_end(a, cond);
    ferry_aml_end(a, method);
    ferry_aml_end(a, dev);
}

static size_t build_dsdt(GByteArray *b, const FerryAcpiConfig *cfg)
{
    g_autoptr(GByteArray) a = g_byte_array_new();

    /* Name (_S5, Package (4) { 5, 5, 0, 0 }): SLP_TYPa/b for soft-off (7.4.2). */
    ferry_aml_name(a, "_S5");
    size_t pkg = ferry_aml_package_begin(a, 4);
    ferry_aml_integer(a, FERRY_ACPI_SLP_TYP_S5);
    ferry_aml_integer(a, FERRY_ACPI_SLP_TYP_S5);
    ferry_aml_integer(a, 0);
    ferry_aml_integer(a, 0);
    ferry_aml_end(a, pkg);

    size_t sb = ferry_aml_scope_begin(a, "\\_SB");
    dsdt_pci0(a, cfg);
    dsdt_pwrb(a);
    dsdt_ged(a);
    ferry_aml_end(a, sb);

    uint32_t len = 36 + a->len;
    size_t off = reserve(b, len);
    header(b, off, "DSDT", len, 2);
    memcpy(b->data + off + 36, a->data, a->len);
    finish(b, off, len);
    return off;
}

static size_t build_fadt(GByteArray *b, uint64_t dsdt_gpa)
{
    size_t off = reserve(b, FADT_LEN);
    header(b, off, "FACP", FADT_LEN, 6);
    put32(b, off + 40, (uint32_t) dsdt_gpa);          /* DSDT */
    put8(b, off + 108, 0x32);                         /* CENTURY: CMOS register */
    put16(b, off + 109, FADT_BOOT_ARCH_8042 | FADT_BOOT_ARCH_NO_VGA); /* IAPC_BOOT_ARCH */
    put32(b, off + 112, /* Flags */
          FADT_FLAG_HW_REDUCED_ACPI | FADT_FLAG_RESET_REG_SUP | FADT_FLAG_PWR_BUTTON |
              FADT_FLAG_SLP_BUTTON);
    gas_io_byte(b, off + 116, FERRY_ACPI_RESET);      /* RESET_REG */
    put8(b, off + 128, FERRY_ACPI_RESET_VALUE);       /* RESET_VALUE */
    put8(b, off + 131, 4);                            /* FADT minor version (6.4) */
    put64(b, off + 140, dsdt_gpa);                    /* X_DSDT */
    gas_io_byte(b, off + 244, FERRY_ACPI_SLEEP_CONTROL);
    gas_io_byte(b, off + 256, FERRY_ACPI_SLEEP_STATUS);
    memcpy(b->data + off + 268, "FERRYVMM", 8);       /* hypervisor vendor identity */
    finish(b, off, FADT_LEN);
    return off;
}

static size_t build_madt(GByteArray *b, unsigned nr_vcpus)
{
    uint32_t len = 44;
    for (unsigned i = 0; i < nr_vcpus; i++)
        len += i < 255 ? 8 : 16;
    len += 12 + 6;
    size_t off = reserve(b, len);
    header(b, off, "APIC", len, 5);
    put32(b, off + 36, (uint32_t) FERRY_LAPIC_BASE);
    put32(b, off + 40, MADT_PCAT_COMPAT);
    size_t p = off + 44;
    for (unsigned i = 0; i < nr_vcpus; i++) {
        if (i < 255) { /* Processor Local APIC (5.2.12.2) */
            put8(b, p, MADT_LAPIC);
            put8(b, p + 1, 8);
            put8(b, p + 2, (uint8_t) i); /* ACPI processor UID */
            put8(b, p + 3, (uint8_t) i); /* APIC ID */
            put32(b, p + 4, 1);          /* enabled */
            p += 8;
        } else { /* Processor Local x2APIC (5.2.12.12) */
            put8(b, p, MADT_X2APIC);
            put8(b, p + 1, 16);
            put32(b, p + 4, i); /* x2APIC ID */
            put32(b, p + 8, 1);
            put32(b, p + 12, i);
            p += 16;
        }
    }
    put8(b, p, MADT_IOAPIC); /* I/O APIC (5.2.12.3) */
    put8(b, p + 1, 12);
    put8(b, p + 2, 0); /* IOAPIC ID */
    put32(b, p + 4, (uint32_t) FERRY_IOAPIC_BASE);
    put32(b, p + 8, 0); /* GSI base */
    p += 12;
    put8(b, p, MADT_LAPIC_NMI); /* Local APIC NMI on LINT1 of every CPU (5.2.12.7) */
    put8(b, p + 1, 6);
    put8(b, p + 2, 0xff);
    put16(b, p + 3, 0);
    put8(b, p + 5, 1);
    finish(b, off, len);
    return off;
}

GByteArray *ferry_acpi_build_tables(uint64_t base, const FerryAcpiConfig *cfg)
{
    GByteArray *b = g_byte_array_new();
    size_t rsdp = reserve(b, 36);
    size_t dsdt = build_dsdt(b, cfg);
    size_t fadt = build_fadt(b, base + dsdt);
    size_t madt = build_madt(b, cfg->nr_vcpus);

    const uint32_t xsdt_len = 36 + 2 * 8;
    size_t xsdt = reserve(b, xsdt_len);
    header(b, xsdt, "XSDT", xsdt_len, 1);
    put64(b, xsdt + 36, base + fadt);
    put64(b, xsdt + 44, base + madt);
    finish(b, xsdt, xsdt_len);

    /* RSDP (5.2.5.3): revision 2, XSDT only. */
    memcpy(b->data + rsdp, "RSD PTR ", 8);
    memcpy(b->data + rsdp + 9, OEM_ID, 6);
    put8(b, rsdp + 15, 2);
    put32(b, rsdp + 20, 36);
    put64(b, rsdp + 24, base + xsdt);
    put8(b, rsdp + 8, (uint8_t) -ferry_acpi_checksum(b->data + rsdp, 20));
    put8(b, rsdp + 32, (uint8_t) -ferry_acpi_checksum(b->data + rsdp, 36));
    return b;
}

/* The windows must fit their descriptors: 32-bit below 4 GiB, 64-bit without wrapping. */
static gboolean check_config(const FerryAcpiConfig *cfg, GError **error)
{
    if (!cfg->pci_mmio32_size || cfg->pci_mmio32_base > G_MAXUINT32 ||
        cfg->pci_mmio32_size > (uint64_t) G_MAXUINT32 + 1 - cfg->pci_mmio32_base) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "PCI 32-bit MMIO window 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                    "x must be non-empty and end at or below 4 GiB",
                    cfg->pci_mmio32_base, cfg->pci_mmio32_size);
        return FALSE;
    }
    if (cfg->pci_mmio64_size &&
        cfg->pci_mmio64_base + cfg->pci_mmio64_size - 1 < cfg->pci_mmio64_base) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "PCI 64-bit MMIO window 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                    "x wraps around the address space",
                    cfg->pci_mmio64_base, cfg->pci_mmio64_size);
        return FALSE;
    }
    return TRUE;
}

gboolean ferry_acpi_install(FerryGuestMemory *mem, const FerryAcpiConfig *cfg, uint64_t *rsdp_gpa,
                            GError **error)
{
    if (!check_config(cfg, error))
        return FALSE;
    g_autoptr(GByteArray) tables = ferry_acpi_build_tables(FERRY_ACPI_START, cfg);
    if (tables->len > FERRY_ACPI_END - FERRY_ACPI_START) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                    "ACPI tables for %u vCPUs (%u bytes) do not fit below 1 MiB", cfg->nr_vcpus,
                    tables->len);
        return FALSE;
    }
    if (!ferry_guest_memory_write(mem, FERRY_ACPI_START, tables->data, tables->len, error))
        return FALSE;
    *rsdp_gpa = FERRY_ACPI_START;
    return TRUE;
}

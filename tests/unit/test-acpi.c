/* Unit tests: the AML encoder, the DSDT's devices (PCI0, PWRB, GED), and the GED device. */
#include "arch/x86/acpi.h"
#include "arch/x86/aml.h"
#include "arch/x86/layout.h"
#include "devices/ged.h"
#include "util/state.h"

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>

#define assert_bytes(arr, ...)                                                                     \
    do {                                                                                           \
        const uint8_t expect_[] = {__VA_ARGS__};                                                   \
        g_assert_cmpmem((arr)->data, (arr)->len, expect_, sizeof(expect_));                        \
    } while (0)

/* ---- AML encoder ---- */

static void test_pkg_length(void)
{
    /* Sizes around each encoding boundary (ACPI 6.4 20.2.4): the value includes itself. */
    static const struct {
        size_t content;
        uint8_t enc[4];
        size_t n;
    } cases[] = {
        {0, {0x01}, 1},
        {62, {0x3f}, 1},
        {63, {0x41, 0x04}, 2},            /* 65 = 0x041 */
        {0xffd, {0x4f, 0xff}, 2},         /* 0xfff */
        {0xffe, {0x81, 0x00, 0x01}, 3},   /* 0x1001 */
        {0xffffc, {0x8f, 0xff, 0xff}, 3}, /* 0xfffff */
        {0xffffd, {0xc1, 0x00, 0x00, 0x01}, 4},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GByteArray) b = g_byte_array_new();
        ferry_aml_pkg_length(b, cases[i].content);
        g_assert_cmpmem(b->data, b->len, cases[i].enc, cases[i].n);
    }

    /* ferry_aml_end inserts the PkgLength in front of the contents. */
    g_autoptr(GByteArray) p = g_byte_array_new();
    size_t mark = ferry_aml_package_begin(p, 2);
    ferry_aml_integer(p, 0x12);
    ferry_aml_integer(p, 0);
    ferry_aml_end(p, mark);
    assert_bytes(p, 0x12, 0x05, 0x02, 0x0a, 0x12, 0x00);

    /* A 100-byte body needs a two-byte PkgLength: 100 + 1 (count) + 2 = 103 = 0x067. */
    g_autoptr(GByteArray) big = g_byte_array_new();
    mark = ferry_aml_package_begin(big, 50);
    for (int i = 0; i < 50; i++)
        ferry_aml_integer(big, 0x40);
    ferry_aml_end(big, mark);
    g_assert_cmpuint(big->len, ==, 1 + 2 + 1 + 100);
    g_assert_cmphex(big->data[1], ==, 0x47);
    g_assert_cmphex(big->data[2], ==, 0x06);
    g_assert_cmphex(big->data[3], ==, 50);
}

static void test_name_string(void)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    ferry_aml_name_string(b, "_HID");
    assert_bytes(b, '_', 'H', 'I', 'D');

    g_byte_array_set_size(b, 0);
    ferry_aml_name_string(b, "GED"); /* padded */
    assert_bytes(b, 'G', 'E', 'D', '_');

    g_byte_array_set_size(b, 0);
    ferry_aml_name_string(b, "\\_SB");
    assert_bytes(b, '\\', '_', 'S', 'B', '_');

    g_byte_array_set_size(b, 0);
    ferry_aml_name_string(b, "\\_SB.PWRB"); /* DualNamePrefix */
    assert_bytes(b, '\\', 0x2e, '_', 'S', 'B', '_', 'P', 'W', 'R', 'B');

    g_byte_array_set_size(b, 0);
    ferry_aml_name_string(b, "_SB.PCI0.S08"); /* MultiNamePrefix, count 3 */
    assert_bytes(b, 0x2f, 3, '_', 'S', 'B', '_', 'P', 'C', 'I', '0', 'S', '0', '8', '_');

    g_byte_array_set_size(b, 0);
    ferry_aml_name_string(b, "^^PWRB");
    assert_bytes(b, '^', '^', 'P', 'W', 'R', 'B');

    g_byte_array_set_size(b, 0);
    ferry_aml_name_string(b, "\\"); /* the root itself: RootChar NullName */
    assert_bytes(b, '\\', 0x00);
}

static void test_data_objects(void)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    ferry_aml_integer(b, 0);
    ferry_aml_integer(b, 1);
    ferry_aml_integer(b, UINT64_MAX);
    ferry_aml_integer(b, 2);
    ferry_aml_integer(b, 0x100);
    ferry_aml_integer(b, 0x10000);
    ferry_aml_integer(b, 0x100000000ULL);
    assert_bytes(b, 0x00, 0x01, 0xff, 0x0a, 0x02, 0x0b, 0x00, 0x01, 0x0c, 0x00, 0x00, 0x01, 0x00,
                 0x0e, 0, 0, 0, 0, 1, 0, 0, 0);

    g_byte_array_set_size(b, 0);
    ferry_aml_string(b, "ACPI0013");
    assert_bytes(b, 0x0d, 'A', 'C', 'P', 'I', '0', '0', '1', '3', 0);

    /* EISAID: the well-known encodings of the PCI root bridge and power button IDs. */
    g_byte_array_set_size(b, 0);
    ferry_aml_eisaid(b, "PNP0A03");
    assert_bytes(b, 0x0c, 0x41, 0xd0, 0x0a, 0x03);
    g_byte_array_set_size(b, 0);
    ferry_aml_eisaid(b, "PNP0C0C");
    assert_bytes(b, 0x0c, 0x41, 0xd0, 0x0c, 0x0c);

    g_byte_array_set_size(b, 0);
    const uint8_t raw[] = {1, 2, 3};
    ferry_aml_buffer(b, raw, sizeof(raw));
    assert_bytes(b, 0x11, 0x06, 0x0a, 0x03, 1, 2, 3);
}

static void test_named_objects(void)
{
    /* Device (DEV0) {
     *     Method (_EVT, 1) { If (And (Arg0, 2, Zero)) { Notify (\_SB.PWRB, 0x80) } } } */
    g_autoptr(GByteArray) b = g_byte_array_new();
    size_t dev = ferry_aml_device_begin(b, "DEV0");
    size_t m = ferry_aml_method_begin(b, "_EVT", 1);
    size_t cond = ferry_aml_if_begin(b);
    ferry_aml_and(b);
    g_byte_array_append(b, (const guint8[]){FERRY_AML_ARG0}, 1);
    ferry_aml_integer(b, 2);
    g_byte_array_append(b, (const guint8[]){FERRY_AML_NULL_NAME}, 1);
    ferry_aml_notify(b, "\\_SB.PWRB", 0x80);
    ferry_aml_end(b, cond);
    ferry_aml_end(b, m);
    ferry_aml_end(b, dev);
    /* Each PkgLength counts its own byte: If 18 + 1, Method 25 + 1, Device 31 + 1. */
    assert_bytes(b, 0x5b, 0x82, 0x20, 'D', 'E', 'V', '0', /* Device, PkgLength 32 */
                 0x14, 0x1a, '_', 'E', 'V', 'T', 0x01,    /* Method, 26, 1 arg */
                 0xa0, 0x13,                              /* If, 19 */
                 0x7b, 0x68, 0x0a, 0x02, 0x00,            /* And (Arg0, 2, NullName) */
                 0x86, '\\', 0x2e, '_', 'S', 'B', '_', 'P', 'W', 'R', 'B', 0x0a, 0x80);

    /* OperationRegion and Field with a 32-bit unit and a 100-bit unit (two-byte length). */
    g_byte_array_set_size(b, 0);
    ferry_aml_operation_region(b, "EREG", FERRY_AML_SYSTEM_MEMORY, 0xfeb00000, 16);
    size_t f = ferry_aml_field_begin(b, "EREG", FERRY_AML_FIELD_DWORD_ACC);
    ferry_aml_field_unit(b, "EVTS", 32);
    ferry_aml_field_unit(b, "WIDE", 100);
    ferry_aml_end(b, f);
    assert_bytes(b, 0x5b, 0x80, 'E', 'R', 'E', 'G', 0x00, 0x0c, 0x00, 0x00, 0xb0, 0xfe, 0x0a,
                 0x10,                                       /* OpRegion */
                 0x5b, 0x81, 0x11, 'E', 'R', 'E', 'G', 0x03, /* Field, PkgLength 17, DWordAcc */
                 'E', 'V', 'T', 'S', 0x20, 'W', 'I', 'D', 'E', 0x44, 0x06);

    /* Scope and Store */
    g_byte_array_set_size(b, 0);
    size_t sc = ferry_aml_scope_begin(b, "\\_SB");
    ferry_aml_store(b);
    ferry_aml_integer(b, 1);
    g_byte_array_append(b, (const guint8[]){FERRY_AML_LOCAL0}, 1);
    ferry_aml_end(b, sc);
    assert_bytes(b, 0x10, 0x09, '\\', '_', 'S', 'B', '_', 0x70, 0x01, 0x60);
}

static uint8_t sum(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += p[i];
    return s;
}

static void test_resources(void)
{
    g_autoptr(GByteArray) r = g_byte_array_new();
    ferry_aml_res_interrupt(r, 5, FALSE, FALSE);
    assert_bytes(r, 0x89, 0x06, 0x00, 0x01, 0x01, 0x05, 0x00, 0x00, 0x00);
    g_byte_array_set_size(r, 0);
    ferry_aml_res_interrupt(r, 300, TRUE, TRUE);
    assert_bytes(r, 0x89, 0x06, 0x00, 0x07, 0x01, 0x2c, 0x01, 0x00, 0x00);

    g_byte_array_set_size(r, 0);
    ferry_aml_res_memory32_fixed(r, 0xfeb00000, 16);
    assert_bytes(r, 0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xb0, 0xfe, 0x10, 0x00, 0x00, 0x00);

    g_byte_array_set_size(r, 0);
    ferry_aml_res_io(r, 0xcf8, 8);
    assert_bytes(r, 0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08);

    g_byte_array_set_size(r, 0);
    ferry_aml_res_word_bus(r, 0, 0);
    assert_bytes(r, 0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00);

    g_byte_array_set_size(r, 0);
    ferry_aml_res_word_io(r, 0x0d00, 0xffff);
    assert_bytes(r, 0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0x00, 0x0d, 0xff, 0xff, 0, 0, 0x00,
                 0xf3);

    g_byte_array_set_size(r, 0);
    ferry_aml_res_dword_memory(r, 0xc0000000, 0xfdffffff);
    assert_bytes(r, 0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0xc0, 0xff,
                 0xff, 0xff, 0xfd, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x3e);

    g_byte_array_set_size(r, 0);
    ferry_aml_res_qword_memory(r, 0x10000000000ULL, 0x13fffffffffULL);
    g_assert_cmpuint(r->len, ==, 46);
    g_assert_cmphex(r->data[0], ==, 0x8a);
    g_assert_cmphex(r->data[1], ==, 43);
    uint64_t min, max, len;
    memcpy(&min, r->data + 14, 8);
    memcpy(&max, r->data + 22, 8);
    memcpy(&len, r->data + 38, 8);
    g_assert_cmphex(GUINT64_FROM_LE(min), ==, 0x10000000000ULL);
    g_assert_cmphex(GUINT64_FROM_LE(max), ==, 0x13fffffffffULL);
    g_assert_cmphex(GUINT64_FROM_LE(len), ==, 0x4000000000ULL);

    /* The template: Buffer (size) { descriptors, End Tag with a zero-sum checksum }. */
    g_autoptr(GByteArray) d = g_byte_array_new();
    ferry_aml_res_interrupt(d, 5, FALSE, FALSE);
    ferry_aml_res_memory32_fixed(d, 0xfeb00000, 16);
    g_autoptr(GByteArray) b = g_byte_array_new();
    ferry_aml_resource_template(b, d);
    g_assert_cmphex(b->data[0], ==, 0x11);
    g_assert_cmpuint(b->data[1], ==, b->len - 1); /* one-byte PkgLength */
    g_assert_cmphex(b->data[2], ==, 0x0a);        /* BufferSize: ByteConst */
    g_assert_cmpuint(b->data[3], ==, d->len + 2);
    const uint8_t *res = b->data + 4;
    g_assert_cmpmem(res, d->len, d->data, d->len);
    g_assert_cmphex(res[d->len], ==, 0x79);
    g_assert_cmpuint(sum(res, d->len + 2), ==, 0);
}

/* ---- the DSDT ---- */

static const FerryAcpiConfig test_cfg = {
    .nr_vcpus = 2,
    .pci_mmio32_base = FERRY_PCI_MMIO32_BASE,
    .pci_mmio32_size = FERRY_PCI_MMIO32_SIZE,
    .pci_mmio64_base = 0x8000000000ULL,
    .pci_mmio64_size = 0x4000000000ULL,
};

/* Returns a copy of the DSDT built for @cfg. */
static GBytes *build_dsdt(const FerryAcpiConfig *cfg)
{
    const uint64_t base = FERRY_ACPI_START;
    g_autoptr(GByteArray) t = ferry_acpi_build_tables(base, cfg);
    uint64_t xsdt, fadt = 0, dsdt;
    uint32_t xlen, dlen;
    memcpy(&xsdt, t->data + 24, 8);
    memcpy(&xlen, t->data + (xsdt - base) + 4, 4);
    for (size_t p = xsdt - base + 36; p < xsdt - base + xlen; p += 8) {
        uint64_t a;
        memcpy(&a, t->data + p, 8);
        if (memcmp(t->data + (a - base), "FACP", 4) == 0)
            fadt = a - base;
    }
    g_assert_cmpuint(fadt, !=, 0);
    memcpy(&dsdt, t->data + fadt + 140, 8);
    memcpy(&dlen, t->data + (dsdt - base) + 4, 4);
    return g_bytes_new(t->data + (dsdt - base), dlen);
}

static const uint8_t *find(GBytes *blob, const void *needle, size_t len)
{
    gsize n;
    const uint8_t *d = g_bytes_get_data(blob, &n);
    return memmem(d, n, needle, len);
}

static void test_dsdt_devices(void)
{
    g_autoptr(GBytes) dsdt = build_dsdt(&test_cfg);
    gsize len;
    const uint8_t *d = g_bytes_get_data(dsdt, &len);
    g_assert_cmpuint(sum(d, len), ==, 0);

    /* Scope (\_SB) holds Device (PCI0), Device (PWRB), Device (GED_). */
    g_assert_nonnull(find(dsdt, "\\_SB_", 5));
    g_assert_nonnull(find(dsdt, "PCI0", 4));
    g_assert_nonnull(find(dsdt, (const uint8_t[]){0x0c, 0x41, 0xd0, 0x0a, 0x08}, 5)); /* PNP0A08 */
    g_assert_nonnull(find(dsdt, (const uint8_t[]){0x0c, 0x41, 0xd0, 0x0a, 0x03}, 5)); /* PNP0A03 */
    g_assert_nonnull(find(dsdt, (const uint8_t[]){0x0c, 0x41, 0xd0, 0x0c, 0x0c}, 5)); /* PNP0C0C */
    g_assert_nonnull(find(dsdt, "\rACPI0013", 10)); /* StringPrefix (0x0d) "ACPI0013" NUL */
    g_assert_nonnull(find(dsdt, "_EVT", 4));
    g_assert_nonnull(find(dsdt, "_S5_", 4));

    /* GED _CRS: the interrupt on FERRY_GED_GSI, level, active-high, and the register block. */
    g_assert_nonnull(
        find(dsdt, (const uint8_t[]){0x89, 0x06, 0x00, 0x01, 0x01, FERRY_GED_GSI, 0, 0, 0}, 9));
    g_assert_nonnull(find(
        dsdt,
        (const uint8_t[]){0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xb0, 0xfe, FERRY_GED_SIZE, 0, 0, 0},
        12));
    /* PCI0 _CRS: config ports, both memory windows. */
    g_assert_nonnull(
        find(dsdt, (const uint8_t[]){0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08}, 8));
    g_assert_nonnull(find(dsdt, (const uint8_t[]){0x87, 0x17, 0x00}, 3));
    g_assert_nonnull(find(dsdt, (const uint8_t[]){0x8a, 0x2b, 0x00}, 3));

    /* Without a 64-bit window there is no QWord descriptor. */
    FerryAcpiConfig no64 = test_cfg;
    no64.pci_mmio64_base = no64.pci_mmio64_size = 0;
    g_autoptr(GBytes) dsdt2 = build_dsdt(&no64);
    g_assert_null(find(dsdt2, (const uint8_t[]){0x8a, 0x2b, 0x00}, 3));
    g_assert_cmpuint(g_bytes_get_size(dsdt2), ==, len - 46);
}

static void test_fadt_buttons(void)
{
    const uint64_t base = FERRY_ACPI_START;
    g_autoptr(GByteArray) t = ferry_acpi_build_tables(base, &test_cfg);
    const uint8_t *fadt = memmem(t->data, t->len, "FACP", 4);
    g_assert_nonnull(fadt);
    uint32_t flags;
    memcpy(&flags, fadt + 112, 4);
    g_assert_true(flags & (1u << 20)); /* HW_REDUCED_ACPI */
    g_assert_true(flags & (1u << 4));  /* PWR_BUTTON: control-method power button */
    g_assert_true(flags & (1u << 5));  /* SLP_BUTTON: no fixed sleep button */
}

static void test_install_rejects_bad_windows(void)
{
    FerryAcpiConfig c = test_cfg;
    g_autoptr(GError) e1 = NULL;
    c.pci_mmio32_base = 0xf0000000;
    c.pci_mmio32_size = 0x20000000; /* crosses 4 GiB */
    uint64_t rsdp;
    g_assert_false(ferry_acpi_install(NULL, &c, &rsdp, &e1));
    g_assert_error(e1, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);

    g_autoptr(GError) e2 = NULL;
    c = test_cfg;
    c.pci_mmio32_size = 0;
    g_assert_false(ferry_acpi_install(NULL, &c, &rsdp, &e2));
    g_assert_error(e2, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);

    g_autoptr(GError) e3 = NULL;
    c = test_cfg;
    c.pci_mmio64_base = UINT64_MAX - 0xfff;
    c.pci_mmio64_size = 0x2000;
    g_assert_false(ferry_acpi_install(NULL, &c, &rsdp, &e3));
    g_assert_error(e3, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
}

/* Runs @argv in @dir; fails the test with iasl's output if it exits non-zero. */
static void run_iasl(const char *dir, const char *const *argv)
{
    g_autoptr(GError) error = NULL;
    g_autofree char *out = NULL, *err = NULL;
    int status;
    g_assert_true(g_spawn_sync(dir, (char **) argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, &err,
                               &status, &error));
    g_assert_no_error(error);
    if (!g_spawn_check_wait_status(status, NULL))
        g_error("%s %s failed:\n%s\n%s", argv[0], argv[1], out, err);
}

/*
 * With ACPICA's iasl (Debian acpica-tools, contrib/install-deps): the DSDT disassembles
 * without errors, the listing shows the objects as ASL, and compiling the listing again
 * (no optimizations) gives back the same AML, except that iasl writes 0 ("no checksum",
 * ACPI 6.4 6.4.2.9) where we write the End Tag checksums.  Skipped without iasl.
 */
static void test_dsdt_iasl(void)
{
    g_autofree char *iasl = g_find_program_in_path("iasl");
    if (!iasl) {
        g_test_skip("iasl not installed (Debian package acpica-tools)");
        return;
    }
    g_autoptr(GError) error = NULL;
    g_autofree char *dir = g_dir_make_tmp("ferry-test-acpi-XXXXXX", &error);
    g_assert_no_error(error);
    g_autofree char *aml = g_build_filename(dir, "dsdt.aml", NULL);
    g_autofree char *dsl = g_build_filename(dir, "dsdt.dsl", NULL);
    g_autofree char *prefix = g_build_filename(dir, "again", NULL);
    g_autofree char *again = g_build_filename(dir, "again.aml", NULL);
    g_autoptr(GBytes) dsdt = build_dsdt(&test_cfg);
    gsize len;
    const uint8_t *ours = g_bytes_get_data(dsdt, &len);
    g_assert_true(g_file_set_contents(aml, (const char *) ours, (gssize) len, &error));

    run_iasl(dir, (const char *const[]){iasl, "-d", aml, NULL});
    g_autofree char *listing = NULL;
    g_assert_true(g_file_get_contents(dsl, &listing, NULL, &error));
    g_test_message("%s", listing);
    static const char *const expect[] = {
        "Name (_S5, Package (0x04)",
        "Device (PCI0)",
        "Name (_HID, EisaId (\"PNP0A08\")",
        "Name (_CID, EisaId (\"PNP0A03\")",
        "Name (_SEG, Zero)",
        "Name (_BBN, Zero)",
        "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
        "IO (Decode16,",
        "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
        "0x0CF7,",
        "0x0D00,",
        "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
        "0xFDFFFFFF,",
        "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
        "0x000000BFFFFFFFFF,",
        "Device (PWRB)",
        "Name (_HID, EisaId (\"PNP0C0C\")",
        "Device (GED)",
        "Name (_HID, \"ACPI0013\"",
        "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )",
        "0x00000005,",
        "Memory32Fixed (ReadWrite,",
        "0xFEB00000,",
        "OperationRegion (EREG, SystemMemory, 0xFEB00000, 0x10)",
        "Field (EREG, DWordAcc, NoLock, Preserve)",
        "EVTS,   32",
        "Method (_EVT, 1, NotSerialized)",
        "Local0 = EVTS",
        "If ((Local0 & One))",
        "Notify (\\_SB.PWRB, 0x80)",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(expect); i++) {
        if (!strstr(listing, expect[i]))
            g_error("iasl listing lacks \"%s\":\n%s", expect[i], listing);
    }

    run_iasl(dir, (const char *const[]){iasl, "-oa", "-p", prefix, dsl, NULL});
    g_autofree char *theirs = NULL;
    gsize theirs_len;
    g_assert_true(g_file_get_contents(again, &theirs, &theirs_len, &error));
    g_assert_cmpuint(theirs_len, ==, len);
    for (size_t i = 36; i < len; i++) { /* the header names the compiler and differs */
        if (ours[i] != (uint8_t) theirs[i] && !(ours[i - 1] == 0x79 && theirs[i] == 0))
            g_error("DSDT byte %zu: ours 0x%02x, recompiled 0x%02x", i, ours[i],
                    (uint8_t) theirs[i]);
    }

    g_unlink(aml);
    g_unlink(dsl);
    g_unlink(again);
    g_rmdir(dir);
}

/* ---- GED ---- */

typedef struct {
    FerryMachine m;
    int level[24];
    int raises;
} GedMachine;

static void gm_request(FerryMachine *m, FerryMachineRequest req)
{
    g_assert_not_reached();
}

static void gm_set_irq(FerryMachine *m, uint32_t gsi, int level)
{
    GedMachine *g = (GedMachine *) m;
    g_assert_cmpuint(gsi, ==, FERRY_GED_GSI);
    if (level && !g->level[gsi])
        g->raises++;
    g->level[gsi] = level;
}

static const FerryMachineOps gm_ops = {gm_request, gm_set_irq};

static uint32_t mmio_read32(FerryBus *bus, uint64_t addr)
{
    uint8_t v[4];
    g_assert_true(ferry_bus_dispatch(bus, addr, v, 4, FALSE));
    return v[0] | v[1] << 8 | v[2] << 16 | (uint32_t) v[3] << 24;
}

static void test_ged_events(void)
{
    GedMachine gm = {{&gm_ops}};
    FerryBus mmio;
    ferry_bus_init(&mmio, "mmio");
    g_autoptr(GError) error = NULL;
    FerryGed *ged = ferry_ged_new(&mmio, &gm.m, &error);
    g_assert_no_error(error);
    g_assert_nonnull(ged);

    /* Idle: nothing pending, line low. */
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE), ==, 0);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 0);

    /* A press raises the line; the read returns bit 0 and clears it, dropping the line. */
    ferry_ged_press_power_button(ged);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 1);
    g_assert_cmpint(gm.raises, ==, 1);
    ferry_ged_press_power_button(ged); /* a second press while pending: same bit */
    g_assert_cmpint(gm.raises, ==, 1);
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE), ==, FERRY_GED_EVENT_POWER_BUTTON);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 0);
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE), ==, 0);

    /* Writes do nothing; the rest of the block reads 0 and does not clear events. */
    ferry_ged_press_power_button(ged);
    uint8_t w[4] = {0xff, 0xff, 0xff, 0xff};
    ferry_bus_dispatch(&mmio, FERRY_GED_BASE, w, 4, TRUE);
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE + 4), ==, 0);
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE + 12), ==, 0);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 1);
    /* A byte read of byte 1 returns 0 and leaves bit 0 pending. */
    uint8_t b;
    ferry_bus_dispatch(&mmio, FERRY_GED_BASE + 1, &b, 1, FALSE);
    g_assert_cmphex(b, ==, 0);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 1);
    ferry_bus_dispatch(&mmio, FERRY_GED_BASE, &b, 1, FALSE);
    g_assert_cmphex(b, ==, 1);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 0);

    /* Reset drops a pending press. */
    ferry_ged_press_power_button(ged);
    ferry_device_reset(ferry_ged_device(ged));
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 0);
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE), ==, 0);

    /* The block is claimed: a second GED on the same bus fails with the bus's error. */
    g_autoptr(GError) e2 = NULL;
    g_assert_null(ferry_ged_new(&mmio, &gm.m, &e2));
    g_assert_error(e2, G_IO_ERROR, G_IO_ERROR_EXISTS);

    ferry_device_free(ferry_ged_device(ged));
    ferry_bus_clear(&mmio);
}

static void test_ged_state(void)
{
    GedMachine gm = {{&gm_ops}}, gm2 = {{&gm_ops}};
    FerryBus mmio, mmio2;
    ferry_bus_init(&mmio, "mmio");
    ferry_bus_init(&mmio2, "mmio");
    FerryGed *a = ferry_ged_new(&mmio, &gm.m, NULL);
    FerryGed *b = ferry_ged_new(&mmio2, &gm2.m, NULL);

    ferry_ged_press_power_button(a);
    g_autoptr(GBytes) st = ferry_device_save(ferry_ged_device(a));
    g_assert_cmpuint(g_bytes_get_size(st), ==, 5);

    /* Loading a pending press raises the new device's line. */
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_device_load(ferry_ged_device(b), st, &error));
    g_assert_no_error(error);
    g_assert_cmpint(gm2.level[FERRY_GED_GSI], ==, 1);
    g_assert_cmphex(mmio_read32(&mmio2, FERRY_GED_BASE), ==, FERRY_GED_EVENT_POWER_BUTTON);
    g_assert_cmpint(gm2.level[FERRY_GED_GSI], ==, 0);

    /* Truncated, unknown event bits, future version: rejected, state unchanged. */
    gsize len;
    const uint8_t *d = g_bytes_get_data(st, &len);
    g_autoptr(GBytes) trunc = g_bytes_new(d, len - 1);
    g_autoptr(GError) e1 = NULL;
    g_assert_false(ferry_device_load(ferry_ged_device(b), trunc, &e1));
    g_assert_error(e1, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED);

    const uint8_t unknown[] = {1, 0x02, 0, 0, 0};
    g_autoptr(GBytes) bad = g_bytes_new(unknown, sizeof(unknown));
    g_autoptr(GError) e2 = NULL;
    g_assert_false(ferry_device_load(ferry_ged_device(b), bad, &e2));
    g_assert_error(e2, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);

    const uint8_t future[] = {2, 0x01, 0, 0, 0};
    g_autoptr(GBytes) fut = g_bytes_new(future, sizeof(future));
    g_autoptr(GError) e3 = NULL;
    g_assert_false(ferry_device_load(ferry_ged_device(b), fut, &e3));
    g_assert_error(e3, FERRY_STATE_ERROR, FERRY_STATE_ERROR_VERSION);
    g_assert_cmpint(gm2.level[FERRY_GED_GSI], ==, 0);
    g_assert_cmphex(mmio_read32(&mmio2, FERRY_GED_BASE), ==, 0);

    ferry_device_free(ferry_ged_device(a));
    ferry_device_free(ferry_ged_device(b));
    ferry_bus_clear(&mmio);
    ferry_bus_clear(&mmio2);
}

/* Presses from other threads while a "vCPU" reads: every press is seen exactly once, or
 * merged with one still pending, and the line is low once the register reads 0. */
static gpointer presser(gpointer ged)
{
    for (int i = 0; i < 10000; i++)
        ferry_ged_press_power_button(ged);
    return NULL;
}

static void test_ged_threads(void)
{
    GedMachine gm = {{&gm_ops}};
    FerryBus mmio;
    ferry_bus_init(&mmio, "mmio");
    FerryGed *ged = ferry_ged_new(&mmio, &gm.m, NULL);
    GThread *t = g_thread_new("presser", presser, ged);
    unsigned seen = 0;
    for (int i = 0; i < 20000; i++)
        seen += mmio_read32(&mmio, FERRY_GED_BASE) & 1;
    g_thread_join(t);
    seen += mmio_read32(&mmio, FERRY_GED_BASE) & 1;
    g_assert_cmpuint(seen, >=, 1);
    g_assert_cmpint(gm.level[FERRY_GED_GSI], ==, 0);
    g_assert_cmphex(mmio_read32(&mmio, FERRY_GED_BASE), ==, 0);
    ferry_device_free(ferry_ged_device(ged));
    ferry_bus_clear(&mmio);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/aml/pkg-length", test_pkg_length);
    g_test_add_func("/aml/name-string", test_name_string);
    g_test_add_func("/aml/data-objects", test_data_objects);
    g_test_add_func("/aml/named-objects", test_named_objects);
    g_test_add_func("/aml/resources", test_resources);
    g_test_add_func("/acpi/dsdt-devices", test_dsdt_devices);
    g_test_add_func("/acpi/fadt-buttons", test_fadt_buttons);
    g_test_add_func("/acpi/install-rejects-bad-windows", test_install_rejects_bad_windows);
    g_test_add_func("/acpi/dsdt-iasl", test_dsdt_iasl);
    g_test_add_func("/ged/events", test_ged_events);
    g_test_add_func("/ged/state", test_ged_state);
    g_test_add_func("/ged/threads", test_ged_threads);
    return g_test_run();
}

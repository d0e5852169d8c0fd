/* Unit tests: UART, RTC, i8042, ACPI PM device and tables, device state codecs. */
#include "arch/x86/acpi.h"
#include "arch/x86/layout.h"
#include "devices/acpi_pm.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"
#include "util/state.h"

#include <string.h>

/* A machine that records what devices ask of it. */
typedef struct {
    FerryMachine m;
    int poweroffs, resets;
    int irq_level[24];
    int irq_edges[24];
} TestMachine;

static void tm_request(FerryMachine *m, FerryMachineRequest req)
{
    TestMachine *t = (TestMachine *) m;
    if (req == FERRY_MACHINE_POWEROFF)
        t->poweroffs++;
    else
        t->resets++;
}

static void tm_set_irq(FerryMachine *m, uint32_t gsi, int level)
{
    TestMachine *t = (TestMachine *) m;
    if (level && !t->irq_level[gsi])
        t->irq_edges[gsi]++;
    t->irq_level[gsi] = level;
}

static const FerryMachineOps tm_ops = {tm_request, tm_set_irq};

static void tm_init(TestMachine *t)
{
    memset(t, 0, sizeof(*t));
    t->m.ops = &tm_ops;
}

static uint8_t pio_in(FerryBus *bus, uint16_t port)
{
    uint8_t v;
    ferry_bus_dispatch(bus, port, &v, 1, FALSE);
    return v;
}

static void pio_out(FerryBus *bus, uint16_t port, uint8_t v)
{
    ferry_bus_dispatch(bus, port, &v, 1, TRUE);
}

/* ---- 16550A ---- */

#define COM1 FERRY_COM1_BASE

static void test_serial_registers(void)
{
    TestMachine tm;
    FerryBus pio;
    tm_init(&tm);
    ferry_bus_init(&pio, "pio");
    FerrySerial *s = ferry_serial_new("serial0", &pio, COM1, 4, &tm.m, NULL, NULL);
    g_assert_nonnull(s);

    /* Scratch register and divisor latch */
    pio_out(&pio, COM1 + 7, 0x5a);
    g_assert_cmpuint(pio_in(&pio, COM1 + 7), ==, 0x5a);
    pio_out(&pio, COM1 + 3, 0x83); /* DLAB */
    pio_out(&pio, COM1 + 0, 0x01);
    pio_out(&pio, COM1 + 1, 0x00);
    g_assert_cmpuint(pio_in(&pio, COM1 + 0), ==, 0x01);
    pio_out(&pio, COM1 + 3, 0x03);

    /* Idle: no interrupt, transmitter empty */
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0x0f, ==, 0x01);
    g_assert_cmpuint(pio_in(&pio, COM1 + 5) & 0x60, ==, 0x60);

    /* FIFO enabled shows in IIR bits 7:6 */
    pio_out(&pio, COM1 + 2, 0x07);
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0xc0, ==, 0xc0);

    /* Linux's loopback probe: MCR = LOOP | RTS | OUT2 -> MSR = CTS | DCD */
    pio_out(&pio, COM1 + 4, 0x1a);
    g_assert_cmpuint(pio_in(&pio, COM1 + 6) & 0xf0, ==, 0x90);
    /* Loopback data: THR -> RBR */
    pio_out(&pio, COM1 + 0, 'x');
    g_assert_cmpuint(pio_in(&pio, COM1 + 5) & 0x01, ==, 0x01);
    g_assert_cmpuint(pio_in(&pio, COM1 + 0), ==, 'x');
    g_assert_cmpuint(pio_in(&pio, COM1 + 5) & 0x01, ==, 0);
    pio_out(&pio, COM1 + 4, 0x0b);
    g_assert_cmpuint(pio_in(&pio, COM1 + 6) & 0xb0, ==, 0xb0);

    ferry_device_free(ferry_serial_device(s));
    ferry_bus_clear(&pio);
}

static void test_serial_interrupts(void)
{
    TestMachine tm;
    FerryBus pio;
    tm_init(&tm);
    ferry_bus_init(&pio, "pio");
    FerrySerial *s = ferry_serial_new("serial0", &pio, COM1, 4, &tm.m, NULL, NULL);
    pio_out(&pio, COM1 + 2, 0x01); /* FIFO on */

    /* Enabling THRI raises the THR-empty interrupt; reading IIR acknowledges it. */
    pio_out(&pio, COM1 + 1, 0x02);
    g_assert_cmpint(tm.irq_level[4], ==, 1);
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0x0f, ==, 0x02);
    g_assert_cmpint(tm.irq_level[4], ==, 0);
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0x0f, ==, 0x01);

    /* Received data outranks THRE and stays until the FIFO is drained. */
    pio_out(&pio, COM1 + 1, 0x03);
    g_assert_cmpuint(ferry_serial_receive(s, (const uint8_t *) "hi\n", 3), ==, 3);
    g_assert_cmpint(tm.irq_level[4], ==, 1);
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0x0f, ==, 0x04);
    g_assert_cmpuint(pio_in(&pio, COM1 + 0), ==, 'h');
    g_assert_cmpuint(pio_in(&pio, COM1 + 0), ==, 'i');
    g_assert_cmpuint(pio_in(&pio, COM1 + 0), ==, '\n');
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0x0f, ==, 0x01);
    g_assert_cmpint(tm.irq_level[4], ==, 0);
    /* Transmitting a byte empties THR again: THRE re-arms. */
    pio_out(&pio, COM1 + 0, '.');
    g_assert_cmpint(tm.irq_level[4], ==, 1);
    g_assert_cmpuint(pio_in(&pio, COM1 + 2) & 0x0f, ==, 0x02);
    g_assert_cmpint(tm.irq_level[4], ==, 0);

    /* The FIFO takes 16 bytes and no more: the rest stays with the sender. */
    uint8_t many[40];
    memset(many, 'a', sizeof(many));
    g_assert_cmpuint(ferry_serial_receive(s, many, sizeof(many)), ==, 16);
    g_assert_cmpuint(ferry_serial_receive(s, many, sizeof(many)), ==, 0);
    for (int i = 0; i < 16; i++)
        pio_in(&pio, COM1 + 0);
    g_assert_cmpuint(ferry_serial_receive(s, many, 1), ==, 1);

    /* Without FIFO, one byte at a time. */
    pio_in(&pio, COM1 + 0);
    pio_out(&pio, COM1 + 2, 0x00);
    g_assert_cmpuint(ferry_serial_receive(s, many, 5), ==, 1);

    ferry_device_free(ferry_serial_device(s));
    ferry_bus_clear(&pio);
}

static void test_serial_state(void)
{
    TestMachine tm;
    FerryBus pio;
    tm_init(&tm);
    ferry_bus_init(&pio, "pio");
    FerrySerial *a = ferry_serial_new("serial0", &pio, COM1, 4, &tm.m, NULL, NULL);
    pio_out(&pio, COM1 + 2, 0x01);
    pio_out(&pio, COM1 + 1, 0x01);
    pio_out(&pio, COM1 + 7, 0x42);
    ferry_serial_receive(a, (const uint8_t *) "abc", 3);
    pio_in(&pio, COM1 + 0); /* 'a' consumed: FIFO head moves */
    g_autoptr(GBytes) state = ferry_device_save(ferry_serial_device(a));

    FerrySerial *b = ferry_serial_new("serial1", NULL, 0, 3, &tm.m, NULL, NULL);
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_device_load(ferry_serial_device(b), state, &error));
    g_assert_no_error(error);
    g_assert_cmpint(tm.irq_level[3], ==, 1); /* pending RX interrupt re-raised */
    uint8_t v;
    ferry_serial_access(b, 7, &v, 1, FALSE);
    g_assert_cmpuint(v, ==, 0x42);
    ferry_serial_access(b, 0, &v, 1, FALSE);
    g_assert_cmpuint(v, ==, 'b');
    ferry_serial_access(b, 0, &v, 1, FALSE);
    g_assert_cmpuint(v, ==, 'c');

    /* Truncated, oversized FIFO, trailing bytes, future version: each rejected, unchanged. */
    gsize len;
    const uint8_t *d = g_bytes_get_data(state, &len);
    g_autoptr(GBytes) trunc = g_bytes_new(d, len - 1);
    g_autoptr(GError) e1 = NULL;
    g_assert_false(ferry_device_load(ferry_serial_device(b), trunc, &e1));
    g_assert_error(e1, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED);

    g_autofree uint8_t *copy = g_memdup2(d, len);
    copy[11] = 200; /* FIFO count */
    g_autoptr(GBytes) bad = g_bytes_new(copy, len);
    g_autoptr(GError) e2 = NULL;
    g_assert_false(ferry_device_load(ferry_serial_device(b), bad, &e2));
    g_assert_error(e2, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);

    g_autofree uint8_t *longer = g_malloc0(len + 1);
    memcpy(longer, d, len);
    g_autoptr(GBytes) extra = g_bytes_new(longer, len + 1);
    g_autoptr(GError) e3 = NULL;
    g_assert_false(ferry_device_load(ferry_serial_device(b), extra, &e3));
    g_assert_error(e3, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);

    copy[11] = d[11];
    copy[0] = 9;
    g_autoptr(GBytes) future = g_bytes_new(copy, len);
    g_autoptr(GError) e4 = NULL;
    g_assert_false(ferry_device_load(ferry_serial_device(b), future, &e4));
    g_assert_error(e4, FERRY_STATE_ERROR, FERRY_STATE_ERROR_VERSION);
    ferry_serial_access(b, 7, &v, 1, FALSE);
    g_assert_cmpuint(v, ==, 0x42); /* still the loaded state */

    ferry_device_free(ferry_serial_device(a));
    ferry_device_free(ferry_serial_device(b));
    ferry_bus_clear(&pio);
}

/* ---- RTC ---- */

static time_t fixed_now = 1795000000; /* 2026-11-18 11:06:40 UTC, a Wednesday */

static time_t fake_clock(void)
{
    return fixed_now;
}

static uint8_t cmos_read(FerryBus *pio, uint8_t reg)
{
    pio_out(pio, 0x70, reg);
    return pio_in(pio, 0x71);
}

static void cmos_write(FerryBus *pio, uint8_t reg, uint8_t v)
{
    pio_out(pio, 0x70, reg);
    pio_out(pio, 0x71, v);
}

static void test_rtc(void)
{
    FerryBus pio;
    ferry_bus_init(&pio, "pio");
    FerryRtc *rtc = ferry_rtc_new(&pio, fake_clock, NULL);
    g_assert_nonnull(rtc);

    /* BCD, 24-hour */
    g_assert_cmpuint(cmos_read(&pio, 0x00), ==, 0x40);
    g_assert_cmpuint(cmos_read(&pio, 0x02), ==, 0x06);
    g_assert_cmpuint(cmos_read(&pio, 0x04), ==, 0x11);
    g_assert_cmpuint(cmos_read(&pio, 0x06), ==, 0x04); /* Wednesday = 4 */
    g_assert_cmpuint(cmos_read(&pio, 0x07), ==, 0x18);
    g_assert_cmpuint(cmos_read(&pio, 0x08), ==, 0x11);
    g_assert_cmpuint(cmos_read(&pio, 0x09), ==, 0x26);
    g_assert_cmpuint(cmos_read(&pio, 0x32), ==, 0x20);
    g_assert_cmpuint(cmos_read(&pio, 0x0a) & 0x80, ==, 0); /* no update in progress */
    g_assert_cmpuint(cmos_read(&pio, 0x0d), ==, 0x80);

    /* NMI-mask bit in the index is ignored for addressing. */
    pio_out(&pio, 0x70, 0x80 | 0x09);
    g_assert_cmpuint(pio_in(&pio, 0x71), ==, 0x26);

    /* Binary, 12-hour mode: 11:06 is 11 AM */
    cmos_write(&pio, 0x0b, 0x04);
    g_assert_cmpuint(cmos_read(&pio, 0x04), ==, 11);
    g_assert_cmpuint(cmos_read(&pio, 0x00), ==, 40);
    /* Writing 3 PM in 12-hour mode reads back as 15 in 24-hour mode, then back to 11. */
    cmos_write(&pio, 0x04, 0x80 | 3);
    cmos_write(&pio, 0x0b, 0x06);
    g_assert_cmpuint(cmos_read(&pio, 0x04), ==, 15);
    cmos_write(&pio, 0x04, 11);

    /* Set the clock one year ahead with SET, in BCD/24h; the clock then runs from there. */
    cmos_write(&pio, 0x0b, 0x82);
    cmos_write(&pio, 0x09, 0x27);
    cmos_write(&pio, 0x0b, 0x02);
    fixed_now += 10;
    g_assert_cmpuint(cmos_read(&pio, 0x09), ==, 0x27);
    g_assert_cmpuint(cmos_read(&pio, 0x00), ==, 0x50);

    /* NVRAM keeps its bytes across a reset; the clock keeps its offset. */
    cmos_write(&pio, 0x40, 0xaa);
    ferry_device_reset(ferry_rtc_device(rtc));
    g_assert_cmpuint(cmos_read(&pio, 0x40), ==, 0xaa);
    g_assert_cmpuint(cmos_read(&pio, 0x09), ==, 0x27);

    /* State round trip into a fresh RTC */
    g_autoptr(GBytes) state = ferry_device_save(ferry_rtc_device(rtc));
    FerryBus pio2;
    ferry_bus_init(&pio2, "pio");
    FerryRtc *rtc2 = ferry_rtc_new(&pio2, fake_clock, NULL);
    g_assert_true(ferry_device_load(ferry_rtc_device(rtc2), state, NULL));
    g_assert_cmpuint(cmos_read(&pio2, 0x40), ==, 0xaa);
    g_assert_cmpuint(cmos_read(&pio2, 0x09), ==, 0x27);
    g_autoptr(GBytes) shortstate = g_bytes_new_from_bytes(state, 0, 20);
    g_autoptr(GError) error = NULL;
    g_assert_false(ferry_device_load(ferry_rtc_device(rtc2), shortstate, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED);

    ferry_device_free(ferry_rtc_device(rtc));
    ferry_device_free(ferry_rtc_device(rtc2));
    ferry_bus_clear(&pio);
    ferry_bus_clear(&pio2);
}

/* ---- i8042 and ACPI PM ---- */

static void test_i8042(void)
{
    TestMachine tm;
    FerryBus pio;
    tm_init(&tm);
    ferry_bus_init(&pio, "pio");
    FerryI8042 *k = ferry_i8042_new(&pio, &tm.m, NULL);
    g_assert_nonnull(k);

    pio_out(&pio, 0x64, 0xaa); /* self-test */
    g_assert_cmpuint(pio_in(&pio, 0x64) & 0x01, ==, 0x01);
    g_assert_cmpuint(pio_in(&pio, 0x60), ==, 0x55);
    g_assert_cmpuint(pio_in(&pio, 0x64) & 0x01, ==, 0);

    pio_out(&pio, 0x64, 0x60); /* write CTR */
    pio_out(&pio, 0x60, 0x00);
    pio_out(&pio, 0x64, 0x20);
    g_assert_cmpuint(pio_in(&pio, 0x60), ==, 0x00);

    g_assert_cmpint(tm.resets, ==, 0);
    pio_out(&pio, 0x64, 0xfe); /* pulse reset */
    g_assert_cmpint(tm.resets, ==, 1);
    pio_out(&pio, 0x64, 0xd1); /* output port with reset bit clear */
    pio_out(&pio, 0x60, 0x02);
    g_assert_cmpint(tm.resets, ==, 2);
    pio_out(&pio, 0x64, 0xff); /* pulse nothing */
    g_assert_cmpint(tm.resets, ==, 2);

    g_autoptr(GBytes) st = ferry_device_save(ferry_i8042_device(k));
    g_assert_true(ferry_device_load(ferry_i8042_device(k), st, NULL));
    ferry_device_free(ferry_i8042_device(k));
    ferry_bus_clear(&pio);
}

static void test_acpi_pm(void)
{
    TestMachine tm;
    FerryBus pio;
    tm_init(&tm);
    ferry_bus_init(&pio, "pio");
    FerryAcpiPm *pm = ferry_acpi_pm_new(&pio, &tm.m, NULL);
    pio_out(&pio, FERRY_ACPI_SLEEP_CONTROL, (5 << 2)); /* SLP_TYP without SLP_EN */
    g_assert_cmpint(tm.poweroffs, ==, 0);
    pio_out(&pio, FERRY_ACPI_SLEEP_CONTROL, (3 << 2) | 0x20); /* S3: not offered */
    g_assert_cmpint(tm.poweroffs, ==, 0);
    pio_out(&pio, FERRY_ACPI_SLEEP_CONTROL, (5 << 2) | 0x20);
    g_assert_cmpint(tm.poweroffs, ==, 1);
    pio_out(&pio, FERRY_ACPI_RESET, 0x02);
    g_assert_cmpint(tm.resets, ==, 0);
    pio_out(&pio, FERRY_ACPI_RESET, FERRY_ACPI_RESET_VALUE);
    g_assert_cmpint(tm.resets, ==, 1);
    ferry_device_free(ferry_acpi_pm_device(pm));
    ferry_bus_clear(&pio);
}

/* Finds the table with @sig via the XSDT; returns its offset in @blob. */
static size_t find_table(GByteArray *blob, uint64_t base, const char *sig)
{
    uint64_t xsdt;
    memcpy(&xsdt, blob->data + 24, 8);
    size_t x = xsdt - base;
    uint32_t len;
    memcpy(&len, blob->data + x + 4, 4);
    for (size_t p = x + 36; p < x + len; p += 8) {
        uint64_t t;
        memcpy(&t, blob->data + p, 8);
        if (memcmp(blob->data + (t - base), sig, 4) == 0)
            return t - base;
    }
    g_assert_not_reached();
}

static void test_acpi_tables(void)
{
    const uint64_t base = FERRY_ACPI_START;
    const FerryAcpiConfig cfg = {
        .nr_vcpus = 4,
        .pci_mmio32_base = FERRY_PCI_MMIO32_BASE,
        .pci_mmio32_size = FERRY_PCI_MMIO32_SIZE,
    };
    g_autoptr(GByteArray) b = ferry_acpi_build_tables(base, &cfg);
    g_assert_cmpmem(b->data, 8, "RSD PTR ", 8);
    g_assert_cmpuint(ferry_acpi_checksum(b->data, 20), ==, 0);
    g_assert_cmpuint(ferry_acpi_checksum(b->data, 36), ==, 0);
    g_assert_cmpuint(b->data[15], ==, 2);

    size_t fadt = find_table(b, base, "FACP");
    size_t madt = find_table(b, base, "APIC");
    uint32_t len, flags;
    memcpy(&len, b->data + fadt + 4, 4);
    g_assert_cmpuint(len, ==, 276);
    g_assert_cmpuint(ferry_acpi_checksum(b->data + fadt, len), ==, 0);
    memcpy(&flags, b->data + fadt + 112, 4);
    g_assert_true(flags & (1u << 20)); /* hardware-reduced */
    uint64_t sleep_ctl;
    memcpy(&sleep_ctl, b->data + fadt + 248, 8);
    g_assert_cmpuint(sleep_ctl, ==, FERRY_ACPI_SLEEP_CONTROL);
    uint64_t dsdt;
    memcpy(&dsdt, b->data + fadt + 140, 8);
    g_assert_cmpmem(b->data + (dsdt - base), 4, "DSDT", 4);
    g_assert_nonnull(memmem(b->data + (dsdt - base), 60, "_S5_", 4));
    uint32_t dlen;
    memcpy(&dlen, b->data + (dsdt - base) + 4, 4);
    g_assert_cmpuint(ferry_acpi_checksum(b->data + (dsdt - base), dlen), ==, 0);

    memcpy(&len, b->data + madt + 4, 4);
    g_assert_cmpuint(ferry_acpi_checksum(b->data + madt, len), ==, 0);
    unsigned lapics = 0, ioapics = 0;
    for (size_t p = madt + 44; p < madt + len; p += b->data[p + 1]) {
        if (b->data[p] == 0) {
            g_assert_cmpuint(b->data[p + 3], ==, lapics); /* APIC IDs 0..n-1 */
            lapics++;
        }
        if (b->data[p] == 1)
            ioapics++;
    }
    g_assert_cmpuint(lapics, ==, 4);
    g_assert_cmpuint(ioapics, ==, 1);

    /* Many vCPUs: x2APIC entries beyond 254, still fits below 1 MiB. */
    const FerryAcpiConfig big_cfg = {
        .nr_vcpus = 300,
        .pci_mmio32_base = FERRY_PCI_MMIO32_BASE,
        .pci_mmio32_size = FERRY_PCI_MMIO32_SIZE,
        .pci_mmio64_base = 1ULL << 40,
        .pci_mmio64_size = 1ULL << 38,
    };
    g_autoptr(GByteArray) big = ferry_acpi_build_tables(base, &big_cfg);
    g_assert_cmpuint(big->len, <, FERRY_ACPI_END - FERRY_ACPI_START);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/serial/registers", test_serial_registers);
    g_test_add_func("/serial/interrupts", test_serial_interrupts);
    g_test_add_func("/serial/state", test_serial_state);
    g_test_add_func("/rtc/clock-and-nvram", test_rtc);
    g_test_add_func("/i8042/reset", test_i8042);
    g_test_add_func("/acpi/pm", test_acpi_pm);
    g_test_add_func("/acpi/tables", test_acpi_tables);
    return g_test_run();
}

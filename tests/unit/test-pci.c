/*
 * PCI host bridge: configuration mechanism #1, BAR assignment, sizing and moves, capability
 * lists, slots, save/load.  No KVM needed.
 */
#include "devices/bus.h"
#include "pci/pci.h"
#include "vm_config.h"

#include <gio/gio.h>
#include <string.h>

#define W32_BASE 0xc0000000ULL
#define W32_SIZE 0x10000000ULL
#define W64_BASE 0x1000000000ULL
#define W64_SIZE 0x100000000ULL

typedef struct {
    FerryPciDevice pci;
    unsigned remaps;
    uint64_t last_addr;
    gboolean last_enabled;
    uint64_t last_offset;
    uint32_t last_value;
    unsigned last_bar;
} TestDev;

static void test_bar_access(FerryPciDevice *pci, unsigned bar, uint64_t offset, uint8_t *data,
                            uint32_t len, gboolean is_write)
{
    TestDev *t = (TestDev *) pci;
    t->last_bar = bar;
    t->last_offset = offset;
    if (is_write) {
        t->last_value = 0;
        memcpy(&t->last_value, data, MIN(len, 4));
    } else {
        memset(data, 0x5a, len);
    }
}

static void test_bar_remap(FerryPciDevice *pci, unsigned bar, uint64_t addr, gboolean enabled)
{
    TestDev *t = (TestDev *) pci;
    t->remaps++;
    t->last_addr = addr;
    t->last_enabled = enabled;
}

static const FerryPciDeviceOps test_ops = {
    .bar_access = test_bar_access,
    .bar_remap = test_bar_remap,
};

typedef struct {
    FerryBus pio, mmio;
    FerryPciHost *host;
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer data)
{
    ferry_bus_init(&f->pio, "pio");
    ferry_bus_init(&f->mmio, "mmio");
    g_autoptr(GError) error = NULL;
    f->host = ferry_pci_host_new(&f->pio, &f->mmio, W32_BASE, W32_SIZE, W64_BASE, W64_SIZE,
                                 &error);
    g_assert_no_error(error);
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    ferry_pci_host_free(f->host);
    ferry_bus_clear(&f->pio);
    ferry_bus_clear(&f->mmio);
}

static uint32_t cfg_read(Fixture *f, unsigned slot, unsigned reg, unsigned len)
{
    uint32_t addr = 0x80000000u | slot << 11 | (reg & 0xfc);
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &addr, 4, TRUE);
    uint32_t v = 0;
    ferry_bus_dispatch(&f->pio, 0xcfc + (reg & 3), (uint8_t *) &v, len, FALSE);
    return v;
}

static void cfg_write(Fixture *f, unsigned slot, unsigned reg, unsigned len, uint32_t v)
{
    uint32_t addr = 0x80000000u | slot << 11 | (reg & 0xfc);
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &addr, 4, TRUE);
    ferry_bus_dispatch(&f->pio, 0xcfc + (reg & 3), (uint8_t *) &v, len, TRUE);
}

static void make_dev(TestDev *t)
{
    memset(t, 0, sizeof(*t));
    ferry_pci_device_init(&t->pci, &test_ops, "test", 0x1af4, 0x1042, 0x010000, 1, 0x1af4,
                          0x1100);
    ferry_pci_device_add_bar(&t->pci, 0, 0x2000, FALSE);
    ferry_pci_device_add_bar(&t->pci, 2, 0x4000, TRUE);
}

static void test_host_bridge(Fixture *f, gconstpointer data)
{
    g_assert_cmphex(cfg_read(f, 0, 0, 4), ==, 0x00081b36);
    g_assert_cmphex(cfg_read(f, 0, 0x08, 4) >> 8, ==, 0x060000);
    /* empty slot, other function, other bus: all ones */
    g_assert_cmphex(cfg_read(f, 5, 0, 4), ==, 0xffffffff);
    uint32_t addr = 0x80010000u;
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &addr, 4, TRUE);
    uint32_t v = 0;
    ferry_bus_dispatch(&f->pio, 0xcfc, (uint8_t *) &v, 4, FALSE);
    g_assert_cmphex(v, ==, 0xffffffff);
    /* the address latch reads back (Linux's type 1 probe) */
    addr = 0x80000000u;
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &addr, 4, TRUE);
    v = 0;
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &v, 4, FALSE);
    g_assert_cmphex(v, ==, 0x80000000u);
}

static void test_bars(Fixture *f, gconstpointer data)
{
    TestDev t;
    make_dev(&t);
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_pci_host_add(f->host, &t.pci, FERRY_PCI_SLOT_AUTO, &error));
    g_assert_cmpuint(t.pci.slot, ==, 1);
    /* assigned: 32-bit BAR in the 32-bit window, 64-bit BAR in the 64-bit window */
    uint32_t bar0 = cfg_read(f, 1, 0x10, 4);
    g_assert_cmphex(bar0 & 0xfff, ==, 0);
    g_assert_true(bar0 >= W32_BASE && bar0 < W32_BASE + W32_SIZE);
    uint64_t bar2 = (cfg_read(f, 1, 0x10 + 8, 4) & ~0xfu) | (uint64_t) cfg_read(f, 1, 0x18 + 4, 4) << 32;
    g_assert_cmphex(cfg_read(f, 1, 0x18, 4) & 0xf, ==, 0x4);
    g_assert_true(bar2 >= W64_BASE && bar2 < W64_BASE + W64_SIZE);
    /* decoding is on from power-on, as firmware would leave it; off stops it */
    g_assert_cmpuint(t.remaps, ==, 2);
    g_assert_cmphex(cfg_read(f, 1, 0x04, 2), ==, PCI_COMMAND_MEMORY);
    uint32_t v = 0;
    cfg_write(f, 1, 0x04, 2, 0);
    g_assert_cmpuint(t.remaps, ==, 4);
    ferry_bus_dispatch(&f->mmio, bar0, (uint8_t *) &v, 4, FALSE);
    g_assert_cmphex(v, ==, 0xffffffff);
    cfg_write(f, 1, 0x04, 2, 0x0006);
    g_assert_cmpuint(t.remaps, ==, 6);
    ferry_bus_dispatch(&f->mmio, bar0 + 0x10, (uint8_t *) &v, 4, FALSE);
    g_assert_cmphex(v, ==, 0x5a5a5a5a);
    v = 0x1234;
    ferry_bus_dispatch(&f->mmio, bar2 + 0x3000, (uint8_t *) &v, 2, TRUE);
    g_assert_cmpuint(t.last_bar, ==, 2);
    g_assert_cmphex(t.last_offset, ==, 0x3000);
    g_assert_cmphex(t.last_value, ==, 0x1234);

    /* sizing: all ones reads back the size mask; decoding stops meanwhile */
    cfg_write(f, 1, 0x10, 4, 0xffffffff);
    g_assert_cmphex(cfg_read(f, 1, 0x10, 4), ==, 0xffffe000);
    g_assert_false(t.last_enabled);
    /* move BAR 0 inside the window */
    uint32_t moved = (uint32_t) W32_BASE + 0x100000;
    cfg_write(f, 1, 0x10, 4, moved);
    g_assert_true(t.last_enabled);
    g_assert_cmphex(t.last_addr, ==, moved);
    ferry_bus_dispatch(&f->mmio, moved + 4, (uint8_t *) &v, 4, FALSE);
    g_assert_cmphex(v, ==, 0x5a5a5a5a);
    g_assert_cmpuint(t.last_bar, ==, 0);
    /* the old address no longer decodes */
    v = 0;
    ferry_bus_dispatch(&f->mmio, bar0 + 4, (uint8_t *) &v, 4, FALSE);
    g_assert_cmphex(v, ==, 0xffffffff);
    /* read-only registers ignore writes */
    cfg_write(f, 1, 0x00, 4, 0);
    g_assert_cmphex(cfg_read(f, 1, 0, 4), ==, 0x10421af4);

    /* reset puts back the assigned BARs */
    ferry_pci_host_reset(f->host);
    g_assert_cmphex(cfg_read(f, 1, 0x10, 4), ==, bar0);
    g_assert_true(t.last_enabled);
    g_assert_cmphex(t.last_addr, ==, bar0);
}

static void test_caps(Fixture *f, gconstpointer data)
{
    TestDev t;
    make_dev(&t);
    uint8_t body[16] = {0, 0, 16, 1, 2}, wmask[16] = {0};
    wmask[8] = 0xff;
    uint8_t a = ferry_pci_device_add_cap(&t.pci, PCI_CAP_ID_VNDR, body, wmask, 16);
    uint8_t b = ferry_pci_device_add_cap(&t.pci, PCI_CAP_ID_MSIX, body, NULL, 12);
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_pci_host_add(f->host, &t.pci, 7, &error));
    g_assert_true(cfg_read(f, 7, 0x06, 2) & PCI_STATUS_CAP_LIST);
    g_assert_cmpuint(cfg_read(f, 7, 0x34, 1), ==, a);
    g_assert_cmpuint(cfg_read(f, 7, a, 1), ==, PCI_CAP_ID_VNDR);
    g_assert_cmpuint(cfg_read(f, 7, a + 1, 1), ==, b);
    g_assert_cmpuint(cfg_read(f, 7, b, 1), ==, PCI_CAP_ID_MSIX);
    g_assert_cmpuint(cfg_read(f, 7, b + 1, 1), ==, 0);
    cfg_write(f, 7, a + 8, 4, 0xa5a5a5a5);
    g_assert_cmphex(cfg_read(f, 7, a + 8, 4), ==, 0x000000a5);
}

static void test_slots(Fixture *f, gconstpointer data)
{
    TestDev t1, t2;
    make_dev(&t1);
    make_dev(&t2);
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_pci_host_add(f->host, &t1.pci, 3, &error));
    g_assert_false(ferry_pci_host_add(f->host, &t2.pci, 3, &error));
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS);
    g_assert_nonnull(strstr(error->message, "slot 3"));
    g_clear_error(&error);
    g_assert_true(ferry_pci_host_add(f->host, &t2.pci, FERRY_PCI_SLOT_AUTO, &error));
    g_assert_cmpuint(t2.pci.slot, ==, 1);
}

static void test_window_full(Fixture *f, gconstpointer data)
{
    ferry_pci_host_free(f->host);
    ferry_bus_clear(&f->pio);
    ferry_bus_clear(&f->mmio);
    ferry_bus_init(&f->pio, "pio");
    ferry_bus_init(&f->mmio, "mmio");
    g_autoptr(GError) error = NULL;
    f->host = ferry_pci_host_new(&f->pio, &f->mmio, W32_BASE, 0x4000, 0, 0, &error);
    g_assert_no_error(error);
    TestDev t;
    make_dev(&t); /* 8 KiB + 16 KiB > 16 KiB */
    g_assert_false(ferry_pci_host_add(f->host, &t.pci, FERRY_PCI_SLOT_AUTO, &error));
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE);
}

static void test_save_load(Fixture *f, gconstpointer data)
{
    TestDev t;
    make_dev(&t);
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_pci_host_add(f->host, &t.pci, 2, &error));
    cfg_write(f, 2, 0x04, 2, 0x0006);
    cfg_write(f, 2, 0x10, 4, (uint32_t) W32_BASE + 0x200000);
    cfg_write(f, 2, 0x3c, 1, 11);
    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter w = {blob};
    ferry_pci_host_save(f->host, &w);

    ferry_pci_host_reset(f->host);
    g_assert_cmpuint(cfg_read(f, 2, 0x3c, 1), ==, 0);
    FerryStateReader r;
    ferry_state_reader_init(&r, blob->data, blob->len, "pci");
    g_assert_true(ferry_pci_host_load(f->host, &r, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(cfg_read(f, 2, 0x3c, 1), ==, 11);
    g_assert_cmphex(cfg_read(f, 2, 0x10, 4), ==, (uint32_t) W32_BASE + 0x200000);
    g_assert_true(t.last_enabled);

    /* truncated: error, nothing changed */
    ferry_pci_host_reset(f->host);
    ferry_state_reader_init(&r, blob->data, blob->len - 7, "pci");
    g_assert_false(ferry_pci_host_load(f->host, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED);
    g_clear_error(&error);
    g_assert_cmpuint(cfg_read(f, 2, 0x3c, 1), ==, 0);

    /* a different device in the slot */
    blob->data[1 + 4 + 4 + FERRY_PCI_CONFIG_SIZE + 2] ^= 0xff; /* slot 2: device ID */
    ferry_state_reader_init(&r, blob->data, blob->len, "pci");
    g_assert_false(ferry_pci_host_load(f->host, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
    ADD("/pci/host-bridge", test_host_bridge);
    ADD("/pci/bars", test_bars);
    ADD("/pci/capabilities", test_caps);
    ADD("/pci/slots", test_slots);
    ADD("/pci/window-full", test_window_full);
    ADD("/pci/save-load", test_save_load);
    return g_test_run();
}

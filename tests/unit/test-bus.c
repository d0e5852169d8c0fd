/* Unit tests: PIO/MMIO bus registration and dispatch (vmm/devices/bus.c). */
#include "devices/bus.h"

#include <gio/gio.h>
#include <string.h>

typedef struct {
    uint64_t last_offset;
    uint32_t last_len;
    gboolean last_write;
    uint8_t last_data[8];
    int calls;
} Recorder;

static void record(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, gboolean is_write)
{
    Recorder *r = opaque;
    r->last_offset = offset;
    r->last_len = len;
    r->last_write = is_write;
    r->calls++;
    if (is_write)
        memcpy(r->last_data, data, len);
    else
        memset(data, 0xab, len);
}

static void test_dispatch(void)
{
    FerryBus bus;
    Recorder a = {0}, b = {0};
    g_autoptr(GError) error = NULL;
    ferry_bus_init(&bus, "pio");
    g_assert_true(ferry_bus_register(&bus, 0x3f8, 8, record, &a, "serial", &error));
    g_assert_true(ferry_bus_register(&bus, 0x60, 1, record, &b, "kbd", &error));

    uint8_t data[4] = {0x12, 0x34};
    g_assert_true(ferry_bus_dispatch(&bus, 0x3fb, data, 1, TRUE));
    g_assert_cmpint(a.calls, ==, 1);
    g_assert_cmpuint(a.last_offset, ==, 3);
    g_assert_true(a.last_write);
    g_assert_cmpuint(a.last_data[0], ==, 0x12);

    g_assert_true(ferry_bus_dispatch(&bus, 0x60, data, 1, FALSE));
    g_assert_cmpint(b.calls, ==, 1);
    g_assert_cmpuint(data[0], ==, 0xab);

    /* Unclaimed: reads all ones, nothing called, counted. */
    memset(data, 0, sizeof(data));
    g_assert_false(ferry_bus_dispatch(&bus, 0x61, data, 2, FALSE));
    g_assert_cmpuint(data[0], ==, 0xff);
    g_assert_cmpuint(data[1], ==, 0xff);
    g_assert_cmpint(bus.unclaimed, ==, 1);

    /* Straddling the end of a range is unclaimed. */
    g_assert_false(ferry_bus_dispatch(&bus, 0x3ff, data, 2, FALSE));
    g_assert_cmpint(a.calls, ==, 1);
    ferry_bus_clear(&bus);
}

static void test_overlap(void)
{
    FerryBus bus;
    Recorder r = {0};
    ferry_bus_init(&bus, "mmio");
    g_assert_true(ferry_bus_register(&bus, 0x1000, 0x100, record, &r, "a", NULL));
    g_assert_true(ferry_bus_register(&bus, 0x1100, 0x100, record, &r, "b", NULL));
    g_assert_true(ferry_bus_register(&bus, 0xf00, 0x100, record, &r, "c", NULL));

    g_autoptr(GError) e1 = NULL, e2 = NULL, e3 = NULL, e4 = NULL;
    g_assert_false(ferry_bus_register(&bus, 0x10ff, 2, record, &r, "d", &e1));
    g_assert_error(e1, G_IO_ERROR, G_IO_ERROR_EXISTS);
    g_assert_nonnull(strstr(e1->message, "overlaps a"));
    g_assert_false(ferry_bus_register(&bus, 0x0, 0xf01, record, &r, "e", &e2));
    g_assert_error(e2, G_IO_ERROR, G_IO_ERROR_EXISTS);
    g_assert_false(ferry_bus_register(&bus, 0x5000, 0, record, &r, "empty", &e3));
    g_assert_error(e3, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
    g_assert_false(ferry_bus_register(&bus, G_MAXUINT64 - 1, 4, record, &r, "wrap", &e4));
    g_assert_error(e4, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);

    /* Lookup at every boundary. */
    g_assert_null(ferry_bus_find(&bus, 0xeff));
    g_assert_cmpstr(ferry_bus_find(&bus, 0xf00)->name, ==, "c");
    g_assert_cmpstr(ferry_bus_find(&bus, 0xfff)->name, ==, "c");
    g_assert_cmpstr(ferry_bus_find(&bus, 0x1000)->name, ==, "a");
    g_assert_cmpstr(ferry_bus_find(&bus, 0x11ff)->name, ==, "b");
    g_assert_null(ferry_bus_find(&bus, 0x1200));
    ferry_bus_clear(&bus);
}

static void test_many_ranges(void)
{
    FerryBus bus;
    Recorder r = {0};
    ferry_bus_init(&bus, "mmio");
    /* Insert out of order; lookups must still be exact. */
    for (int i = 99; i >= 0; i--)
        g_assert_true(ferry_bus_register(&bus, (uint64_t) i * 0x1000, 0x800, record, &r, "x", NULL));
    for (uint64_t i = 0; i < 100; i++) {
        g_assert_nonnull(ferry_bus_find(&bus, i * 0x1000 + 0x7ff));
        g_assert_null(ferry_bus_find(&bus, i * 0x1000 + 0x800));
    }
    ferry_bus_clear(&bus);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/bus/dispatch", test_dispatch);
    g_test_add_func("/bus/overlap", test_overlap);
    g_test_add_func("/bus/many-ranges", test_many_ranges);
    return g_test_run();
}

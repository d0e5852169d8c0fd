#include "devices/bus.h"

#include <gio/gio.h>
#include <string.h>

void ferry_bus_init(FerryBus *bus, const char *name)
{
    bus->name = name;
    bus->ranges = g_array_new(FALSE, FALSE, sizeof(FerryBusRange));
    bus->unclaimed = 0;
}

void ferry_bus_clear(FerryBus *bus)
{
    if (bus->ranges)
        g_array_free(bus->ranges, TRUE);
    bus->ranges = NULL;
}

/* Index of the first range whose base is > @addr. */
static guint upper_bound(const FerryBus *bus, uint64_t addr)
{
    guint lo = 0, hi = bus->ranges->len;
    while (lo < hi) {
        guint mid = lo + (hi - lo) / 2;
        if (g_array_index(bus->ranges, FerryBusRange, mid).base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

gboolean ferry_bus_register(FerryBus *bus, uint64_t base, uint64_t len, FerryBusAccessFn access,
                            void *opaque, const char *name, GError **error)
{
    if (len == 0 || base + len - 1 < base) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s range for %s at 0x%" G_GINT64_MODIFIER "x (length %" G_GUINT64_FORMAT
                    ") is empty or wraps around",
                    bus->name, name, base, len);
        return FALSE;
    }
    guint pos = upper_bound(bus, base);
    /* The range before must end at or before @base; the one at @pos must start after us. */
    if (pos > 0) {
        const FerryBusRange *prev = &g_array_index(bus->ranges, FerryBusRange, pos - 1);
        if (prev->base + prev->len > base) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                        "%s range 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                        "x of %s overlaps %s",
                        bus->name, base, len, name, prev->name);
            return FALSE;
        }
    }
    if (pos < bus->ranges->len) {
        const FerryBusRange *next = &g_array_index(bus->ranges, FerryBusRange, pos);
        if (base + len > next->base) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                        "%s range 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                        "x of %s overlaps %s",
                        bus->name, base, len, name, next->name);
            return FALSE;
        }
    }
    FerryBusRange r = {
        .base = base, .len = len, .access = access, .opaque = opaque, .name = name};
    g_array_insert_val(bus->ranges, pos, r);
    return TRUE;
}

const FerryBusRange *ferry_bus_find(const FerryBus *bus, uint64_t addr)
{
    guint pos = upper_bound(bus, addr);
    if (pos == 0)
        return NULL;
    const FerryBusRange *r = &g_array_index(bus->ranges, FerryBusRange, pos - 1);
    return addr - r->base < r->len ? r : NULL;
}

gboolean ferry_bus_dispatch(FerryBus *bus, uint64_t addr, uint8_t *data, uint32_t len,
                            gboolean is_write)
{
    const FerryBusRange *r = ferry_bus_find(bus, addr);
    if (!r || len == 0 || addr - r->base + len > r->len) {
        g_atomic_int_inc(&bus->unclaimed);
        if (!is_write)
            memset(data, 0xff, len);
        return FALSE;
    }
    r->access(r->opaque, addr - r->base, data, len, is_write);
    return TRUE;
}

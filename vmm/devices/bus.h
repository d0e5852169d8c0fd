/*
 * PIO and MMIO dispatch.
 *
 * A bus maps non-overlapping address ranges to handlers.  vCPU threads call
 * ferry_bus_dispatch() on every KVM_EXIT_IO / KVM_EXIT_MMIO; registration happens while the
 * VM is being built (or with every vCPU stopped), so dispatch reads the table without a lock.
 * Lookup is a binary search over ranges sorted by base address.
 *
 * Accesses that hit no range read as all ones (like an unclaimed ISA/PCI cycle) and writes
 * are dropped; both are counted for diagnostics.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

/*
 * Handles one access of @len bytes (1, 2, 4 or 8) at @offset from the range's base.
 * @data is the little-endian value: filled by reads, consumed by writes.
 */
typedef void (*FerryBusAccessFn)(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                                 gboolean is_write);

typedef struct {
    uint64_t base;
    uint64_t len; /* bytes, > 0 */
    FerryBusAccessFn access;
    void *opaque;
    const char *name; /* borrowed; for diagnostics */
} FerryBusRange;

typedef struct {
    const char *name; /* "pio" or "mmio" */
    GArray *ranges;   /* FerryBusRange, sorted by base */
    gint unclaimed;   /* accesses that hit nothing (atomic) */
} FerryBus;

void ferry_bus_init(FerryBus *bus, const char *name);
void ferry_bus_clear(FerryBus *bus);

/*
 * Claims [@base, @base + @len).  Fails with G_IO_ERROR_EXISTS naming both owners if the
 * range overlaps one already registered, or G_IO_ERROR_INVALID_ARGUMENT if it is empty or
 * wraps around.
 */
gboolean ferry_bus_register(FerryBus *bus, uint64_t base, uint64_t len, FerryBusAccessFn access,
                            void *opaque, const char *name, GError **error);

/* Returns the range containing @addr, or NULL. */
const FerryBusRange *ferry_bus_find(const FerryBus *bus, uint64_t addr);

/*
 * Performs an access.  An access must lie wholly inside one range; one that straddles a
 * range end is treated as unclaimed.  Returns TRUE if a handler took it.
 */
gboolean ferry_bus_dispatch(FerryBus *bus, uint64_t addr, uint8_t *data, uint32_t len,
                            gboolean is_write);

/*
 * MSI-X (PCI Local Bus Specification 3.0, section 6.8.2): the capability, the vector table
 * and pending-bit array in a memory BAR, and delivery through KVM irqfds (irq_routing.h),
 * so raising an interrupt is one eventfd write from the device's I/O thread.
 *
 * A vector's route is (re)programmed when the guest unmasks it or changes its message while
 * unmasked; a vector raised while masked (per entry, or the whole function) sets its
 * pending bit and fires when unmasked.
 *
 * Threading: table accesses come from vCPU threads, notifications from I/O threads, the
 * capability's updates with the PCI host's lock held; all serialize on @lock.
 */
#pragma once

#include "irq_routing.h"
#include "pci/pci.h"

#include <glib.h>
#include <stdint.h>

#define FERRY_MSIX_ENTRY_SIZE 16
#define FERRY_MSIX_MAX_VECTORS 64

typedef struct {
    uint32_t addr_lo, addr_hi, data, ctrl; /* ctrl bit 0: masked */
} FerryMsixEntry;

typedef struct {
    FerryPciDevice *pci;       /* borrowed */
    FerryIrqRouting *routing;  /* borrowed */
    unsigned nr_vectors;
    uint8_t cap;               /* offset of the capability in configuration space */
    uint32_t table_offset, pba_offset; /* in the BAR */
    GMutex lock;
    gboolean enabled, function_masked;
    FerryMsixEntry entries[FERRY_MSIX_MAX_VECTORS];
    uint64_t pending;          /* bit per vector */
    int gsi[FERRY_MSIX_MAX_VECTORS];
} FerryMsix;

/*
 * Adds the capability to @pci for @nr_vectors (1..64) with the table at @table_offset and
 * the PBA at @pba_offset of BAR @bar, and allocates one irqfd GSI per vector.
 */
gboolean ferry_msix_init(FerryMsix *m, FerryPciDevice *pci, FerryIrqRouting *routing,
                         unsigned nr_vectors, unsigned bar, uint32_t table_offset,
                         uint32_t pba_offset, GError **error);

/*
 * An access to the table or PBA at @offset of the BAR; returns FALSE if @offset is in
 * neither (the caller handles it).  The PBA is read-only.
 */
gboolean ferry_msix_bar_access(FerryMsix *m, uint64_t offset, uint8_t *data, uint32_t len,
                               gboolean is_write);

/* The capability's Message Control may have changed (PCI host lock held). */
void ferry_msix_config_written(FerryMsix *m);

/* Raises @vector (any thread); ignored when MSI-X is disabled or @vector is out of range. */
void ferry_msix_notify(FerryMsix *m, unsigned vector);

/* Power-on state: disabled, every entry masked, nothing pending. */
void ferry_msix_reset(FerryMsix *m);

/* The table and PBA as saved (enable and function mask live in configuration space). */
typedef struct {
    FerryMsixEntry entries[FERRY_MSIX_MAX_VECTORS];
    uint64_t pending;
} FerryMsixState;

void ferry_msix_save(FerryMsix *m, FerryStateWriter *w);
/*
 * Reads a saved table and PBA into @state, checked against @m's vector count, without
 * changing @m; ferry_msix_set_state() applies it (after the PCI configuration space, whose
 * Message Control it reads).  Split so a device loading several parts changes nothing when
 * a later part is bad.
 */
gboolean ferry_msix_read_state(const FerryMsix *m, FerryStateReader *r, FerryMsixState *state,
                               GError **error);
void ferry_msix_set_state(FerryMsix *m, const FerryMsixState *state);

void ferry_msix_clear(FerryMsix *m);

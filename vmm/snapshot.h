/*
 * Whole-machine state as a Ferry state stream (docs/migration-protocol.md): what `save`
 * writes and `--restore` reads; live migration (issue 5) sends the same records in rounds.
 *
 * Stream contents, in order: CONFIG (digest + summary of what must match: RAM size and
 * layout, vCPU count, the PCI devices by id, kind and slot), one ROUND (0, FINAL), RAM
 * batches for the pages holding data (memfd holes are skipped, zero pages are flags), then
 * SECTIONs "machine" (PIC, IOAPIC, PIT, kvmclock), "vcpu/N", "pci" (configuration spaces)
 * and "dev/<id>" for every device, then END.
 */
#pragma once

#include "migration/stream.h"
#include "vm.h"

#include <gio/gio.h>

/*
 * Writes the state of @vm to @out.  Main thread; every vCPU must be parked and every device
 * paused (ferry_vm_pause).  Pending PIO/MMIO exits are completed first.  @stats (nullable)
 * receives the stream's figures.
 */
gboolean ferry_vm_save_state(FerryVm *vm, GOutputStream *out, FerryStreamStats *stats,
                             GError **error);

/* Saves into @path atomically (written to a temporary file in the same directory, renamed). */
gboolean ferry_vm_save_to_file(FerryVm *vm, const char *path, FerryStreamStats *stats,
                               GError **error);

/*
 * Loads a stream into @vm, freshly built from the same configuration and not yet running
 * (no kernel loaded).  RAM is written as batches arrive; machine, vCPU and device state are
 * applied only after END and its checksum were verified, in dependency order (PCI
 * configuration, devices, irqchip and PIT, vCPUs, kvmclock last).  On error the VM must not
 * be run.  A stream for another configuration fails naming each difference.
 */
gboolean ferry_vm_load_state(FerryVm *vm, GInputStream *in, GError **error);

/*
 * The CONFIG a stream of @vm carries (digest + summary): what save files and migrations
 * check.  Owned by the caller.
 */
typedef struct FerryVmIdentity FerryVmIdentity;
FerryVmIdentity *ferry_vm_identity_new(FerryVm *vm);
const FerryStreamConfig *ferry_vm_identity_config(const FerryVmIdentity *id); /* borrowed */
void ferry_vm_identity_free(FerryVmIdentity *id);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryVmIdentity, ferry_vm_identity_free)

/* Fills @ram with the guest RAM regions of @vm (for stream readers); returns their count. */
unsigned ferry_vm_ram_ranges(FerryVm *vm, FerryStreamRange ram[FERRY_MAX_RAM_REGIONS]);

/*
 * Writes every non-RAM SECTION of @vm ("pci", "dev/<id>", "vcpu/N", "machine" with kvmclock
 * last).  The VM must be paused; pending PIO/MMIO exits are completed first.
 */
gboolean ferry_vm_put_state_sections(FerryVm *vm, FerryStreamWriter *w, GError **error);

/*
 * Applies the state sections collected from a stream (@sections: id → GBytes) to @vm, in
 * dependency order, the guest clock last (advanced by the real time elapsed since it was
 * read).  Fails naming a missing or malformed section; the VM must then not run.
 */
gboolean ferry_vm_apply_state_sections(FerryVm *vm, GHashTable *sections, GError **error);

gboolean ferry_vm_restore_from_file(FerryVm *vm, const char *path, GError **error);

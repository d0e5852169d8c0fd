/*
 * The VM's KVM GSI routing table and irqfds (api.rst: KVM_SET_GSI_ROUTING, KVM_IRQFD).
 *
 * KVM_SET_GSI_ROUTING replaces the whole table, so one owner keeps it: the default routes
 * of the in-kernel irqchip (GSI 0-15 to the PIC and IOAPIC, 16-23 to the IOAPIC) plus one
 * MSI route per MSI-X vector in use.  An MSI vector is a GSI with an irqfd: a device
 * raises it by writing the eventfd, from any thread, without a KVM exit.
 *
 * Threading: every function may be called from any thread; the table has its own lock.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

typedef struct FerryIrqRouting FerryIrqRouting;

/*
 * Takes over routing of @vm_fd (whose irqchip exists) and installs the default routes.
 * @max_routes is KVM_CAP_IRQ_ROUTING (the number of entries KVM accepts).
 */
FerryIrqRouting *ferry_irq_routing_new(int vm_fd, unsigned max_routes, GError **error);

/*
 * Allocates an MSI GSI with an irqfd (eventfd, owned by the table) and a route that is
 * disabled (delivers nothing) until ferry_irq_routing_set_msi().  Returns the GSI, or -1
 * with @error when KVM's table is full.
 */
int ferry_irq_routing_add_msi(FerryIrqRouting *r, GError **error);

/*
 * Points MSI GSI @gsi at message (@address, @data) as a device would write it (PCI 3.0
 * section 6.8.2), and commits the table if the route changed.
 */
gboolean ferry_irq_routing_set_msi(FerryIrqRouting *r, int gsi, uint64_t address, uint32_t data,
                                   GError **error);

/* Raises MSI GSI @gsi (writes its irqfd).  Any thread, lock-free. */
void ferry_irq_routing_fire(FerryIrqRouting *r, int gsi);

void ferry_irq_routing_free(FerryIrqRouting *r);

/*
 * What devices may ask of the machine they are in: power off, reset, and raising interrupt
 * lines.  The VM (vm.c) implements it; unit tests implement it with recorders.
 * Calls may come from any thread (vCPU threads included).
 */
#pragma once

#include <glib.h>
#include <stdint.h>

typedef enum {
    FERRY_MACHINE_POWEROFF, /* the guest powered itself off */
    FERRY_MACHINE_RESET,    /* the guest asked for a reset (or triple-faulted) */
} FerryMachineRequest;

typedef struct FerryMachine FerryMachine;

typedef struct {
    /* Asks for a power-off or reset; returns at once, the VM acts on its main thread. */
    void (*request)(FerryMachine *m, FerryMachineRequest req);
    /* Drives interrupt line @gsi to @level (0/1) on the in-kernel PIC and IOAPIC. */
    void (*set_irq)(FerryMachine *m, uint32_t gsi, int level);
} FerryMachineOps;

struct FerryMachine {
    const FerryMachineOps *ops;
};

static inline void ferry_machine_request(FerryMachine *m, FerryMachineRequest req)
{
    m->ops->request(m, req);
}

static inline void ferry_machine_set_irq(FerryMachine *m, uint32_t gsi, int level)
{
    m->ops->set_irq(m, gsi, level);
}

/*
 * A virtual machine: KVM VM, guest memory, buses, devices, vCPUs, and its life cycle on the
 * GLib main loop of the thread that runs it.
 *
 * Life cycle: ferry_vm_new() builds everything in a fixed, visible order (see vm.c);
 * ferry_vm_run() starts the vCPUs and runs the main loop until the guest powers off, a stop
 * is requested (SIGTERM/SIGINT), or a fatal error; it returns ferry-vmm's exit status.
 * Guest resets (reboot, triple fault) are handled inside run(): every vCPU is parked, the
 * devices, irqchip and vCPUs return to their power-on state, RAM is cleared and the kernel
 * reloaded, and the vCPUs go again.
 */
#pragma once

#include "vm_config.h"
#include "devices/bus.h"
#include "devices/machine.h"
#include "memory.h"
#include "vcpu.h"

#include <glib.h>

/* Exit statuses of ferry-vmm */
#define FERRY_EXIT_OK    0 /* guest powered off, or stopped on request */
#define FERRY_EXIT_ERROR 1 /* start-up failure or fatal VM error */
#define FERRY_EXIT_USAGE 2 /* bad command line */

struct FerryVm {
    FerryMachine machine; /* first: devices reach the VM through it */
    const FerryVmConfig *cfg; /* borrowed, outlives the VM */
    FerryKvm *kvm;
    FerryGuestMemory *mem;
    FerryBus pio;
    FerryBus mmio;
    GPtrArray *devices; /* FerryDevice *, owned, in creation order */
    struct FerryChardev *console;
    FerryVcpu **vcpus;
    unsigned nr_vcpus;
    uint64_t rsdp_gpa;
    struct FerryIrqRouting *irq_routing; /* GSI routes and MSI irqfds */
    struct FerryPciHost *pci;            /* bus 0 and the BAR windows */
    uint64_t pci_mmio64_base, pci_mmio64_size; /* bytes; size 0 = no 64-bit window */
    struct FerryGed *ged;                /* power button (borrowed from devices) */

    GMainLoop *loop;
    int exit_status;
    struct FerryControl *control; /* NULL without --control-socket */
    gboolean user_paused;         /* paused by the control API (main thread only) */
    gboolean incoming;            /* waiting for an incoming migration (main thread only) */
    gboolean announce_on_resume;  /* migrated in paused: announce the NICs on resume */
    struct FerryMigration *migration; /* the migration engine (created by run()) */

    /* Run gate shared with the vCPU threads (vm.c). */
    GMutex lock;
    GCond cond;
    gint gate_closed;   /* atomic: non-zero while vCPUs must stop at the gate */
    gboolean pausing;   /* vCPUs park at the gate */
    gboolean stopping;  /* vCPUs leave their loop */
    unsigned nr_parked;
    unsigned nr_running; /* vCPU threads inside their run loop */
    unsigned requests;  /* FERRY_VM_REQ_* bits waiting for the main thread */
    char *fatal_message;

    /* In-kernel irqchip and PIT power-on state, restored on reset. */
    struct kvm_irqchip reset_irqchip[3];
    struct kvm_pit_state2 reset_pit;
};

/*
 * Builds the VM described by @cfg: opens KVM, creates RAM, devices and vCPUs, and loads the
 * kernel.  Nothing runs yet.  Errors name what failed and what to do.
 */
FerryVm *ferry_vm_new(const FerryVmConfig *cfg, GError **error);

/* Runs the VM to its end; returns FERRY_EXIT_OK or FERRY_EXIT_ERROR. */
int ferry_vm_run(FerryVm *vm);

/* Asks the VM to stop (main-loop thread or signal handler source); run() returns 0. */
void ferry_vm_request_stop(FerryVm *vm);

/* Asks for a machine reset, as if the guest had rebooted (any thread). */
void ferry_vm_request_reset(FerryVm *vm);

/*
 * Pauses every vCPU (main thread; returns once they are all parked) / lets them run again.
 * Devices are told through their pause/resume ops.  Both are no-ops in the target state.
 */
void ferry_vm_pause(FerryVm *vm);
void ferry_vm_resume(FerryVm *vm);

/*
 * Migration hooks (main thread).  ferry_vm_stop_for_migration() pauses the VM (as `pause`;
 * *@was_paused tells whether it already was) and hands the disk images over (flush, unlock);
 * on error the VM runs on as before.  ferry_vm_continue_after_migration() undoes it after a
 * failed migration: images locked again, resumed unless @was_paused.
 */
gboolean ferry_vm_stop_for_migration(FerryVm *vm, gboolean *was_paused, GError **error);
void ferry_vm_continue_after_migration(FerryVm *vm, gboolean was_paused);

/* Takes the disk images' locks (no-op for those held); errors name the image. */
gboolean ferry_vm_lock_images(FerryVm *vm, GError **error);

/*
 * Destination: the incoming state is applied; the vCPUs run unless --paused.  Returns TRUE
 * if the guest now runs.  ferry_vm_abandon_incoming() (any thread) ends ferry-vmm with exit
 * status 1 after printing @message: the guest never ran.
 */
gboolean ferry_vm_finish_incoming(FerryVm *vm);
void ferry_vm_abandon_incoming(FerryVm *vm, const char *message);

/* Presses the ACPI power button (any thread, also a signal source on the main loop). */
void ferry_vm_press_power_button(FerryVm *vm);

/* "running", "paused", "inmigrate" or "shutdown" (main thread). */
const char *ferry_vm_status(const FerryVm *vm);

/*
 * Reports a fatal error from any thread (a vCPU that cannot continue): every vCPU stops and
 * run() returns FERRY_EXIT_ERROR after printing @message.
 */
void ferry_vm_fatal(FerryVm *vm, const char *message);

/*
 * Called by each vCPU thread between KVM_RUN calls.  Parks the thread while the VM is
 * paused; returns FALSE when the thread must end.  Cheap when the gate is open (one atomic
 * read).
 */
gboolean ferry_vm_vcpu_gate(FerryVm *vm, FerryVcpu *vcpu);

/* Called by a vCPU thread as it leaves its run loop for good. */
void ferry_vm_vcpu_exited(FerryVm *vm, FerryVcpu *vcpu);

void ferry_vm_free(FerryVm *vm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryVm, ferry_vm_free)

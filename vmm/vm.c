#include "vm.h"

#include "arch/x86/acpi.h"
#include "arch/x86/boot.h"
#include "arch/x86/layout.h"
#include "arch/x86/vcpu_setup.h"
#include "chardev.h"
#include "control.h"
#include "devices/acpi_pm.h"
#include "devices/ged.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"
#include "irq_routing.h"
#include "migration/migration.h"
#include "pci/pci.h"
#include "virtio/blk.h"
#include "virtio/console.h"
#include "virtio/net.h"
#include "virtio/pci.h"
#include "virtio/rng.h"
#include "util/log.h"
#include "snapshot.h"
#include "vcpu_throttle.h"
#include "vm_control.h"

#include <errno.h>
#include <glib-unix.h>
#include <gio/gio.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>

/* Requests waiting for the main thread, highest priority first. */
#define FERRY_VM_REQ_FATAL    (1u << 0)
#define FERRY_VM_REQ_STOP     (1u << 1)
#define FERRY_VM_REQ_POWEROFF (1u << 2)
#define FERRY_VM_REQ_RESET    (1u << 3)
#define FERRY_VM_REQ_INCOMING_FAILED (1u << 4)

static gboolean process_requests(gpointer data);

/* ---- run gate ---------------------------------------------------------------------- */

gboolean ferry_vm_vcpu_gate(FerryVm *vm, FerryVcpu *vcpu)
{
    if (G_LIKELY(!g_atomic_int_get(&vm->gate_closed)))
        return TRUE;
    g_mutex_lock(&vm->lock);
    if (vm->pausing && !vm->stopping) {
        /* Tell the main thread once, then sleep: broadcasting on every wake-up would have
         * parked threads wake each other forever. */
        vm->nr_parked++;
        g_cond_broadcast(&vm->cond);
        while (vm->pausing && !vm->stopping)
            g_cond_wait(&vm->cond, &vm->lock);
        vm->nr_parked--;
    }
    gboolean go_on = !vm->stopping;
    g_mutex_unlock(&vm->lock);
    return go_on;
}

static void kick_all(FerryVm *vm)
{
    for (unsigned i = 0; i < vm->nr_vcpus; i++)
        ferry_vcpu_kick(vm->vcpus[i]);
}

/* Queues @req for the main thread and closes the gate so every vCPU stops soon. */
static void post_request(FerryVm *vm, unsigned req)
{
    g_mutex_lock(&vm->lock);
    vm->requests |= req;
    vm->pausing = TRUE;
    g_atomic_int_set(&vm->gate_closed, 1);
    g_mutex_unlock(&vm->lock);
    kick_all(vm);
    g_main_context_invoke(NULL, process_requests, vm);
}

void ferry_vm_vcpu_exited(FerryVm *vm, FerryVcpu *vcpu)
{
    g_mutex_lock(&vm->lock);
    vm->nr_running--;
    g_cond_broadcast(&vm->cond);
    g_mutex_unlock(&vm->lock);
}

/*
 * Main thread: waits until every running vCPU thread is parked (or gone).  No re-kick is
 * needed: a kick sets immediate_exit before the signal, so a thread anywhere between its
 * gate check and KVM_RUN still comes back to the gate at once.
 */
static void wait_parked(FerryVm *vm)
{
    g_mutex_lock(&vm->lock);
    while (vm->nr_parked < vm->nr_running && !vm->stopping)
        g_cond_wait(&vm->cond, &vm->lock);
    g_mutex_unlock(&vm->lock);
}

static void release_parked(FerryVm *vm)
{
    g_mutex_lock(&vm->lock);
    vm->pausing = FALSE;
    g_atomic_int_set(&vm->gate_closed, 0);
    g_cond_broadcast(&vm->cond);
    g_mutex_unlock(&vm->lock);
}

/* Main thread: closes the gate, kicks every vCPU out of KVM_RUN and waits until all park. */
static void park_all(FerryVm *vm)
{
    g_mutex_lock(&vm->lock);
    vm->pausing = TRUE;
    g_atomic_int_set(&vm->gate_closed, 1);
    g_mutex_unlock(&vm->lock);
    kick_all(vm);
    wait_parked(vm);
}

/* Ends every vCPU thread; the VM cannot run again. */
static void stop_vcpus(FerryVm *vm)
{
    g_mutex_lock(&vm->lock);
    vm->stopping = TRUE;
    g_atomic_int_set(&vm->gate_closed, 1);
    g_cond_broadcast(&vm->cond);
    g_mutex_unlock(&vm->lock);
    kick_all(vm);
    for (unsigned i = 0; i < vm->nr_vcpus; i++)
        ferry_vcpu_join(vm->vcpus[i]);
}

/* ---- FerryMachine ------------------------------------------------------------------ */

static void machine_request(FerryMachine *m, FerryMachineRequest req)
{
    FerryVm *vm = (FerryVm *) m;
    post_request(vm, req == FERRY_MACHINE_POWEROFF ? FERRY_VM_REQ_POWEROFF : FERRY_VM_REQ_RESET);
}

static void machine_set_irq(FerryMachine *m, uint32_t gsi, int level)
{
    FerryVm *vm = (FerryVm *) m;
    struct kvm_irq_level irq = {.irq = gsi, .level = level};
    if (ioctl(vm->kvm->vm_fd, KVM_IRQ_LINE, &irq) < 0)
        ferry_log("KVM_IRQ_LINE %u failed: %s", gsi, g_strerror(errno));
}

static const FerryMachineOps machine_ops = {
    .request = machine_request,
    .set_irq = machine_set_irq,
};

void ferry_vm_request_stop(FerryVm *vm)
{
    post_request(vm, FERRY_VM_REQ_STOP);
}

void ferry_vm_request_reset(FerryVm *vm)
{
    post_request(vm, FERRY_VM_REQ_RESET);
}

/* Tells control clients about a state change; @reason may be NULL. */
static void notify_state(FerryVm *vm, const char *status, const char *reason)
{
    if (!vm->control)
        return;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", status);
    if (reason)
        json_object_set_string_member(o, "reason", reason);
    JsonNode *n = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    ferry_control_notify(vm->control, "state-changed", n);
}

const char *ferry_vm_status(const FerryVm *vm)
{
    if (vm->stopping)
        return "shutdown";
    if (vm->incoming)
        return "inmigrate";
    return vm->user_paused ? "paused" : "running";
}

void ferry_vm_pause(FerryVm *vm)
{
    if (vm->user_paused || vm->stopping)
        return;
    park_all(vm);
    for (guint i = 0; i < vm->devices->len; i++)
        ferry_device_pause(g_ptr_array_index(vm->devices, i));
    vm->user_paused = TRUE;
    notify_state(vm, "paused", NULL);
}

static void announce_nics(FerryVm *vm);

void ferry_vm_resume(FerryVm *vm)
{
    if (!vm->user_paused || vm->stopping || vm->incoming)
        return;
    vm->user_paused = FALSE;
    for (guint i = 0; i < vm->devices->len; i++)
        ferry_device_resume(g_ptr_array_index(vm->devices, i));
    release_parked(vm);
    notify_state(vm, "running", NULL);
    if (vm->announce_on_resume)
        announce_nics(vm);
}

/* ---- migration ---- */

/* The virtio device of devices[@i] if it is of @kind ("virtio-blk"), else NULL. */
static FerryVirtioDev *virtio_of_kind(FerryVm *vm, guint i, const char *kind)
{
    FerryVirtioPci *vp = ferry_virtio_pci_from_device(g_ptr_array_index(vm->devices, i));
    if (!vp || !g_str_equal(ferry_virtio_pci_vdev(vp)->ops->kind, kind))
        return NULL;
    return ferry_virtio_pci_vdev(vp);
}

/* After a migration: RARP from every NIC so that switches learn the guest's new port. */
static void announce_nics(FerryVm *vm)
{
    vm->announce_on_resume = FALSE;
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryVirtioDev *net = virtio_of_kind(vm, i, "virtio-net");
        if (net)
            ferry_virtio_net_announce(net);
    }
}

gboolean ferry_vm_lock_images(FerryVm *vm, GError **error)
{
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryVirtioDev *blk = virtio_of_kind(vm, i, "virtio-blk");
        if (blk && !ferry_virtio_blk_lock_image(blk, error))
            return FALSE;
    }
    return TRUE;
}

gboolean ferry_vm_stop_for_migration(FerryVm *vm, gboolean *was_paused, GError **error)
{
    if (vm->stopping) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "the VM has shut down");
        return FALSE;
    }
    *was_paused = vm->user_paused;
    ferry_vm_pause(vm);
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryVirtioDev *blk = virtio_of_kind(vm, i, "virtio-blk");
        if (blk && !ferry_virtio_blk_unlock_image(blk, error)) {
            ferry_vm_continue_after_migration(vm, *was_paused);
            return FALSE;
        }
    }
    return TRUE;
}

void ferry_vm_continue_after_migration(FerryVm *vm, gboolean was_paused)
{
    g_autoptr(GError) error = NULL;
    if (!ferry_vm_lock_images(vm, &error)) {
        /* someone took the image meanwhile: running on would corrupt it */
        ferry_log("the VM stays paused: %s", error->message);
        return;
    }
    if (!was_paused)
        ferry_vm_resume(vm);
}

gboolean ferry_vm_finish_incoming(FerryVm *vm)
{
    vm->incoming = FALSE;
    if (vm->cfg->paused || vm->stopping) {
        vm->user_paused = TRUE;
        vm->announce_on_resume = TRUE;
        notify_state(vm, "paused", NULL);
        return FALSE;
    }
    release_parked(vm);
    notify_state(vm, "running", NULL);
    announce_nics(vm);
    return TRUE;
}

void ferry_vm_abandon_incoming(FerryVm *vm, const char *message)
{
    g_mutex_lock(&vm->lock);
    if (!vm->fatal_message)
        vm->fatal_message = g_strdup(message);
    g_mutex_unlock(&vm->lock);
    post_request(vm, FERRY_VM_REQ_INCOMING_FAILED);
}

void ferry_vm_press_power_button(FerryVm *vm)
{
    ferry_log("pressing the ACPI power button");
    ferry_ged_press_power_button(vm->ged);
}

void ferry_vm_fatal(FerryVm *vm, const char *message)
{
    g_mutex_lock(&vm->lock);
    if (!vm->fatal_message)
        vm->fatal_message = g_strdup(message);
    g_mutex_unlock(&vm->lock);
    post_request(vm, FERRY_VM_REQ_FATAL);
}

/* ---- construction ------------------------------------------------------------------ */

static gboolean save_irqchip_state(FerryVm *vm, GError **error)
{
    for (unsigned chip = 0; chip < 3; chip++) {
        vm->reset_irqchip[chip].chip_id = chip;
        if (ioctl(vm->kvm->vm_fd, KVM_GET_IRQCHIP, &vm->reset_irqchip[chip]) < 0)
            goto fail;
    }
    if (ioctl(vm->kvm->vm_fd, KVM_GET_PIT2, &vm->reset_pit) < 0)
        goto fail;
    return TRUE;
fail:
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                "cannot read the in-kernel irqchip state: %s", g_strerror(errno));
    return FALSE;
}

static gboolean restore_irqchip_state(FerryVm *vm, GError **error)
{
    for (unsigned chip = 0; chip < 3; chip++)
        if (ioctl(vm->kvm->vm_fd, KVM_SET_IRQCHIP, &vm->reset_irqchip[chip]) < 0)
            goto fail;
    if (ioctl(vm->kvm->vm_fd, KVM_SET_PIT2, &vm->reset_pit) < 0)
        goto fail;
    return TRUE;
fail:
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                "cannot reset the in-kernel irqchip: %s", g_strerror(errno));
    return FALSE;
}

static gboolean create_devices(FerryVm *vm, GError **error)
{
    vm->console = ferry_chardev_new(&vm->cfg->serial, error);
    if (!vm->console)
        return FALSE;
    FerrySerial *serial = ferry_serial_new("serial0", &vm->pio, FERRY_COM1_BASE, FERRY_COM1_IRQ,
                                           &vm->machine, vm->console, error);
    if (!serial)
        return FALSE;
    g_ptr_array_add(vm->devices, ferry_serial_device(serial));

    FerryI8042 *kbc = ferry_i8042_new(&vm->pio, &vm->machine, error);
    if (!kbc)
        return FALSE;
    g_ptr_array_add(vm->devices, ferry_i8042_device(kbc));

    FerryRtc *rtc = ferry_rtc_new(&vm->pio, NULL, error);
    if (!rtc)
        return FALSE;
    g_ptr_array_add(vm->devices, ferry_rtc_device(rtc));

    FerryAcpiPm *pm = ferry_acpi_pm_new(&vm->pio, &vm->machine, error);
    if (!pm)
        return FALSE;
    g_ptr_array_add(vm->devices, ferry_acpi_pm_device(pm));

    vm->ged = ferry_ged_new(&vm->mmio, &vm->machine, error);
    if (!vm->ged)
        return FALSE;
    g_ptr_array_add(vm->devices, ferry_ged_device(vm->ged));
    return TRUE;
}

/*
 * The 64-bit PCI window: from the first 1 GiB boundary above RAM, 32 GiB, if the guest's
 * physical address width (CPUID 0x80000008) reaches that far; else none (64-bit BARs then
 * go below 4 GiB).
 */
static void choose_mmio64_window(FerryVm *vm)
{
    uint64_t ram_end = FERRY_HIGH_RAM_START;
    for (unsigned i = 0; i < vm->mem->nr_regions; i++)
        ram_end = MAX(ram_end, vm->mem->regions[i].gpa + vm->mem->regions[i].size);
    uint64_t base = (ram_end + FERRY_GIB - 1) & ~(FERRY_GIB - 1);
    uint64_t size = 32 * FERRY_GIB;
    unsigned phys_bits = 36;
    const struct kvm_cpuid2 *c = vm->kvm->supported_cpuid;
    for (unsigned i = 0; i < c->nent; i++)
        if (c->entries[i].function == 0x80000008)
            phys_bits = c->entries[i].eax & 0xff;
    if (phys_bits > 63 || base + size > (1ULL << phys_bits))
        base = size = 0;
    vm->pci_mmio64_base = base;
    vm->pci_mmio64_size = size;
}

/* Adds virtio device @vdev (owned from here) as PCI function @id. */
static gboolean add_virtio(FerryVm *vm, FerryVirtioDev *vdev, const char *id, int slot,
                           GError **error)
{
    if (!vdev)
        return FALSE;
    FerryVirtioPci *vp = ferry_virtio_pci_new(vdev, id, vm->pci, slot, vm->mem,
                                              vm->kvm->vm_fd, vm->irq_routing, error);
    if (!vp)
        return FALSE;
    g_ptr_array_add(vm->devices, ferry_virtio_pci_device(vp));
    return TRUE;
}

/* The PCI host bridge and the devices on it, in command-line order. */
static gboolean create_pci_devices(FerryVm *vm, GError **error)
{
    const FerryVmConfig *cfg = vm->cfg;
    int max_routes = ferry_kvm_check_extension(vm->kvm, KVM_CAP_IRQ_ROUTING);
    vm->irq_routing = ferry_irq_routing_new(vm->kvm->vm_fd, max_routes > 0 ? max_routes : 1024,
                                            error);
    if (!vm->irq_routing)
        return FALSE;
    choose_mmio64_window(vm);
    vm->pci = ferry_pci_host_new(&vm->pio, &vm->mmio, FERRY_PCI_MMIO32_BASE,
                                 FERRY_PCI_MMIO32_SIZE, vm->pci_mmio64_base,
                                 vm->pci_mmio64_size, error);
    if (!vm->pci)
        return FALSE;
    for (guint i = 0; i < cfg->disks->len; i++) {
        const FerryDiskSpec *d = &g_array_index(cfg->disks, FerryDiskSpec, i);
        g_autofree char *id = g_strdup_printf("disk%u", i);
        /* an incoming VM takes its images over from the source at the switch-over */
        FerryVirtioDev *blk = vm->cfg->incoming ? ferry_virtio_blk_new_unlocked(d, error)
                                                : ferry_virtio_blk_new(d, error);
        if (!add_virtio(vm, blk, id, d->slot, error))
            return FALSE;
    }
    for (guint i = 0; i < cfg->nets->len; i++) {
        const FerryNetSpec *n = &g_array_index(cfg->nets, FerryNetSpec, i);
        g_autofree char *id = g_strdup_printf("net%u", i);
        if (!add_virtio(vm, ferry_virtio_net_new(n, i, error), id, n->slot, error))
            return FALSE;
    }
    if (cfg->rng && !add_virtio(vm, ferry_virtio_rng_new(error), "rng0", cfg->rng_slot, error))
        return FALSE;
    if (cfg->has_virtio_console &&
        !add_virtio(vm, ferry_virtio_console_new(&cfg->virtio_console, error), "vcon0",
                    FERRY_PCI_SLOT_AUTO, error))
        return FALSE;
    return TRUE;
}

/* Writes everything the guest finds in RAM at power-on and points the BSP at the kernel. */
static gboolean load_guest(FerryVm *vm, GError **error)
{
    if (!ferry_x86_write_boot_tables(vm->mem, error) ||
        !ferry_acpi_install(vm->mem,
                            &(FerryAcpiConfig){
                                .nr_vcpus = vm->nr_vcpus,
                                .pci_mmio32_base = FERRY_PCI_MMIO32_BASE,
                                .pci_mmio32_size = FERRY_PCI_MMIO32_SIZE,
                                .pci_mmio64_base = vm->pci_mmio64_base,
                                .pci_mmio64_size = vm->pci_mmio64_size,
                            },
                            &vm->rsdp_gpa, error))
        return FALSE;
    FerryBootConfig boot = {
        .kernel_path = vm->cfg->kernel,
        .initrd_path = vm->cfg->initrd,
        .cmdline = vm->cfg->cmdline,
        .rsdp_gpa = vm->rsdp_gpa,
    };
    FerryBootSetup setup;
    if (!ferry_x86_load_kernel(vm->mem, &boot, &setup, error))
        return FALSE;
    return ferry_x86_vcpu_set_boot_regs(vm->vcpus[0]->fd, &setup, error);
}

FerryVm *ferry_vm_new(const FerryVmConfig *cfg, GError **error)
{
    g_autoptr(FerryVm) vm = g_new0(FerryVm, 1);
    vm->machine.ops = &machine_ops;
    vm->cfg = cfg;
    vm->devices = g_ptr_array_new_with_free_func((GDestroyNotify) ferry_device_free);
    ferry_bus_init(&vm->pio, "pio");
    ferry_bus_init(&vm->mmio, "mmio");
    g_mutex_init(&vm->lock);
    g_cond_init(&vm->cond);

    /* 1. KVM and the VM's limits */
    vm->kvm = ferry_kvm_open("/dev/kvm", error);
    if (!vm->kvm)
        return NULL;
    if (cfg->cpus > vm->kvm->max_vcpus) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%u vCPUs requested; this host's KVM allows at most %u", cfg->cpus,
                    vm->kvm->max_vcpus);
        return NULL;
    }
    /* 2. RAM (before the VM, so a size the host cannot give fails first and cheaply) */
    vm->mem = ferry_guest_memory_new(cfg->memory, error);
    if (!vm->mem)
        return NULL;
    /* 3. the VM with its in-kernel irqchip and PIT, then the memslots */
    if (!ferry_kvm_create_vm(vm->kvm, FERRY_KVM_TSS, FERRY_KVM_IDENTITY_MAP, error) ||
        !ferry_guest_memory_register(vm->mem, vm->kvm->vm_fd, error))
        return NULL;
    /* 4. devices on the buses, then PCI with its devices (their I/O threads start) */
    if (!create_devices(vm, error) || !create_pci_devices(vm, error))
        return NULL;
    /* 5. vCPUs */
    vm->vcpus = g_new0(FerryVcpu *, cfg->cpus);
    for (unsigned i = 0; i < cfg->cpus; i++) {
        vm->vcpus[i] = ferry_vcpu_new(vm, vm->kvm, i, cfg->cpus, error);
        if (!vm->vcpus[i])
            return NULL;
        vm->nr_vcpus++;
    }
    /* 6. power-on state to come back to on reset, then the guest itself: a kernel, or the
     * saved machine to continue */
    if (!save_irqchip_state(vm, error))
        return NULL;
    if (cfg->incoming)
        vm->incoming = TRUE; /* the state comes from the migration stream */
    else if (cfg->restore ? !ferry_vm_restore_from_file(vm, cfg->restore, error)
                          : !load_guest(vm, error))
        return NULL;
    return g_steal_pointer(&vm);
}

/* ---- running ----------------------------------------------------------------------- */

static gboolean reset_machine(FerryVm *vm, GError **error)
{
    for (guint i = 0; i < vm->devices->len; i++)
        ferry_device_reset(g_ptr_array_index(vm->devices, i));
    ferry_pci_host_reset(vm->pci);
    ferry_guest_memory_discard(vm->mem);
    if (!restore_irqchip_state(vm, error))
        return FALSE;
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        if (!ferry_vcpu_reset(vm->vcpus[i], vm->kvm, error) ||
            !ferry_x86_vcpu_set_lint(vm->vcpus[i]->fd, error))
            return FALSE;
    }
    return load_guest(vm, error);
}

static void finish(FerryVm *vm, int status, const char *reason)
{
    stop_vcpus(vm);
    vm->exit_status = status;
    notify_state(vm, "shutdown", reason);
    g_main_loop_quit(vm->loop);
}

static gboolean process_requests(gpointer data)
{
    FerryVm *vm = data;
    g_mutex_lock(&vm->lock);
    unsigned pending = vm->requests;
    g_mutex_unlock(&vm->lock);
    if (!pending || vm->stopping)
        return G_SOURCE_REMOVE; /* an earlier call took care of it */

    park_all(vm);
    g_mutex_lock(&vm->lock);
    unsigned req = vm->requests;
    vm->requests = 0;
    g_mutex_unlock(&vm->lock);

    if (req & FERRY_VM_REQ_INCOMING_FAILED) {
        ferry_log("%s", vm->fatal_message);
        finish(vm, FERRY_EXIT_ERROR, "migration-failed");
        return G_SOURCE_REMOVE;
    }
    if (req & FERRY_VM_REQ_FATAL) {
        ferry_log("%s", vm->fatal_message);
        finish(vm, FERRY_EXIT_ERROR, "crashed");
        return G_SOURCE_REMOVE;
    }
    if (req & FERRY_VM_REQ_STOP) {
        finish(vm, FERRY_EXIT_OK, "stopped");
        return G_SOURCE_REMOVE;
    }
    if (req & FERRY_VM_REQ_POWEROFF) {
        ferry_log("guest powered off");
        finish(vm, FERRY_EXIT_OK, "poweroff");
        return G_SOURCE_REMOVE;
    }
    if (req & FERRY_VM_REQ_RESET) {
        /* RAM is about to be cleared behind the dirty log's back */
        if (vm->migration && ferry_migration_busy(vm->migration))
            ferry_migration_abort(vm->migration, "the guest rebooted during the migration; "
                                                 "start the migration again");
        if (vm->cfg->on_reboot == FERRY_ON_REBOOT_EXIT) {
            ferry_log("guest rebooted; exiting as --on-reboot exit asks");
            finish(vm, FERRY_EXIT_OK, "reboot");
            return G_SOURCE_REMOVE;
        }
        g_autoptr(GError) error = NULL;
        if (!reset_machine(vm, &error)) {
            ferry_log("machine reset failed: %s", error->message);
            finish(vm, FERRY_EXIT_ERROR, "crashed");
            return G_SOURCE_REMOVE;
        }
        notify_state(vm, "reset", NULL);
    }
    if (!vm->user_paused && !vm->incoming)
        release_parked(vm);
    return G_SOURCE_REMOVE;
}

int ferry_vm_run(FerryVm *vm)
{
    vm->loop = g_main_loop_new(NULL, FALSE);
    ferry_vcpu_install_kick_handler();
    if (vm->cfg->control_socket) {
        g_autoptr(GError) error = NULL;
        vm->control = ferry_control_new(vm->cfg->control_socket, ferry_vm_control_methods, vm,
                                        &error);
        if (!vm->control) {
            ferry_log("%s", error->message);
            return FERRY_EXIT_ERROR;
        }
    }
    vm->migration = ferry_migration_new(vm, vm->cfg->tls_dir);
    if (vm->incoming || vm->cfg->paused) {
        /* the vCPU threads start parked at the gate */
        g_mutex_lock(&vm->lock);
        vm->pausing = TRUE;
        g_atomic_int_set(&vm->gate_closed, 1);
        g_mutex_unlock(&vm->lock);
        vm->user_paused = !vm->incoming;
    }
    if (vm->incoming && !g_str_equal(vm->cfg->incoming, "defer")) {
        g_autoptr(GError) error = NULL;
        g_autofree char *bound = NULL;
        if (!ferry_migration_receive(vm->migration, vm->cfg->incoming, &bound, &error)) {
            ferry_log("cannot receive a migration on %s: %s", vm->cfg->incoming, error->message);
            return FERRY_EXIT_ERROR;
        }
        ferry_log("waiting for an incoming migration on %s", bound);
    }
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        g_autoptr(GError) error = NULL;
        g_mutex_lock(&vm->lock);
        vm->nr_running++;
        g_mutex_unlock(&vm->lock);
        if (!ferry_vcpu_start(vm->vcpus[i], &error)) {
            g_mutex_lock(&vm->lock);
            vm->nr_running--;
            g_mutex_unlock(&vm->lock);
            ferry_log("cannot start vCPU %u: %s", i, error->message);
            stop_vcpus(vm);
            vm->exit_status = FERRY_EXIT_ERROR;
            goto out;
        }
    }
    g_main_loop_run(vm->loop);
out:
    if (vm->control)
        ferry_control_flush(vm->control, 1000);
    return vm->exit_status;
}

void ferry_vm_free(FerryVm *vm)
{
    if (!vm)
        return;
    /* first: the migration threads use the vCPUs, devices and RAM (joined here) */
    ferry_migration_free(vm->migration);
    ferry_vcpu_throttle_cleanup(vm); /* its thread kicks the vCPUs */
    if (vm->vcpus) {
        stop_vcpus(vm);
        for (unsigned i = 0; i < vm->nr_vcpus; i++)
            ferry_vcpu_free(vm->vcpus[i]);
        g_free(vm->vcpus);
    }
    if (vm->control)
        ferry_control_free(vm->control);
    g_ptr_array_unref(vm->devices); /* virtio devices stop their I/O threads here */
    ferry_pci_host_free(vm->pci);
    ferry_irq_routing_free(vm->irq_routing);
    if (vm->console)
        ferry_chardev_free(vm->console);
    ferry_bus_clear(&vm->pio);
    ferry_bus_clear(&vm->mmio);
    ferry_guest_memory_free(vm->mem);
    ferry_kvm_free(vm->kvm);
    if (vm->loop)
        g_main_loop_unref(vm->loop);
    g_free(vm->fatal_message);
    g_mutex_clear(&vm->lock);
    g_cond_clear(&vm->cond);
    g_free(vm);
}

#include "vcpu.h"

#include "arch/x86/vcpu_state.h"

#include "arch/x86/vcpu_setup.h"
#include "util/log.h"
#include "vcpu_throttle.h"
#include "vm.h"

#include <errno.h>
#include <gio/gio.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static void kick_handler(int sig)
{
}

void ferry_vcpu_install_kick_handler(void)
{
    struct sigaction sa = {.sa_handler = kick_handler};
    sigemptyset(&sa.sa_mask);
    sigaction(FERRY_VCPU_KICK_SIGNAL, &sa, NULL); /* no SA_RESTART: KVM_RUN returns EINTR */
}

static gboolean ioctl_error(GError **error, unsigned index, const char *what)
{
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "vCPU %u: %s failed: %s",
                index, what, g_strerror(errno));
    return FALSE;
}

static gboolean capture_reset_state(FerryVcpu *v, GError **error)
{
    if (ioctl(v->fd, KVM_GET_REGS, &v->reset_regs) < 0)
        return ioctl_error(error, v->index, "KVM_GET_REGS");
    if (ioctl(v->fd, KVM_GET_SREGS, &v->reset_sregs) < 0)
        return ioctl_error(error, v->index, "KVM_GET_SREGS");
    if (ioctl(v->fd, KVM_GET_LAPIC, &v->reset_lapic) < 0)
        return ioctl_error(error, v->index, "KVM_GET_LAPIC");
    if (ioctl(v->fd, KVM_GET_MP_STATE, &v->reset_mp_state) < 0)
        return ioctl_error(error, v->index, "KVM_GET_MP_STATE");
    if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &v->reset_events) < 0)
        return ioctl_error(error, v->index, "KVM_GET_VCPU_EVENTS");
    return TRUE;
}

FerryVcpu *ferry_vcpu_new(FerryVm *vm, FerryKvm *kvm, unsigned index, unsigned nr_vcpus,
                          GError **error)
{
    FerryVcpu *v = g_new0(FerryVcpu, 1);
    v->vm = vm;
    v->index = index;
    v->fd = ioctl(kvm->vm_fd, KVM_CREATE_VCPU, (unsigned long) index);
    if (v->fd < 0) {
        ioctl_error(error, index, "KVM_CREATE_VCPU");
        g_free(v);
        return NULL;
    }
    v->run_size = kvm->vcpu_mmap_size;
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED) {
        ioctl_error(error, index, "mmap of the run area");
        v->run = NULL;
        ferry_vcpu_free(v);
        return NULL;
    }
    if (!ferry_x86_vcpu_set_cpuid(kvm, v->fd, index, nr_vcpus, error) ||
        !ferry_x86_vcpu_set_msrs(kvm, v->fd, error) || !ferry_x86_vcpu_set_lint(v->fd, error) ||
        !capture_reset_state(v, error)) {
        g_prefix_error(error, "vCPU %u: ", index);
        ferry_vcpu_free(v);
        return NULL;
    }
    return v;
}

gboolean ferry_vcpu_reset(FerryVcpu *v, FerryKvm *kvm, GError **error)
{
    if (ioctl(v->fd, KVM_SET_SREGS, &v->reset_sregs) < 0)
        return ioctl_error(error, v->index, "KVM_SET_SREGS");
    if (ioctl(v->fd, KVM_SET_REGS, &v->reset_regs) < 0)
        return ioctl_error(error, v->index, "KVM_SET_REGS");
    if (ioctl(v->fd, KVM_SET_LAPIC, &v->reset_lapic) < 0)
        return ioctl_error(error, v->index, "KVM_SET_LAPIC");
    struct kvm_vcpu_events ev = v->reset_events;
    ev.flags = 0;
    if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &ev) < 0)
        return ioctl_error(error, v->index, "KVM_SET_VCPU_EVENTS");
    if (ioctl(v->fd, KVM_SET_MP_STATE, &v->reset_mp_state) < 0)
        return ioctl_error(error, v->index, "KVM_SET_MP_STATE");
    return ferry_x86_vcpu_set_msrs(kvm, v->fd, error);
}

static void handle_io(FerryVcpu *v)
{
    struct kvm_run *run = v->run;
    uint8_t *data = (uint8_t *) run + run->io.data_offset;
    gboolean is_write = run->io.direction == KVM_EXIT_IO_OUT;
    for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size)
        ferry_bus_dispatch(&v->vm->pio, run->io.port, data, run->io.size, is_write);
}

/* Handles one exit; returns FALSE if the VM cannot go on (the VM was told why). */
static gboolean handle_exit(FerryVcpu *v)
{
    struct kvm_run *run = v->run;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        handle_io(v);
        return TRUE;
    case KVM_EXIT_MMIO:
        ferry_bus_dispatch(&v->vm->mmio, run->mmio.phys_addr, run->mmio.data, run->mmio.len,
                           run->mmio.is_write);
        return TRUE;
    case KVM_EXIT_INTR:
    case KVM_EXIT_HLT:
        return TRUE;
    case KVM_EXIT_SHUTDOWN:
        ferry_log("vCPU %u: triple fault; resetting the machine", v->index);
        ferry_machine_request(&v->vm->machine, FERRY_MACHINE_RESET);
        return TRUE;
    case KVM_EXIT_SYSTEM_EVENT:
        switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
            ferry_machine_request(&v->vm->machine, FERRY_MACHINE_POWEROFF);
            return TRUE;
        case KVM_SYSTEM_EVENT_RESET:
            ferry_machine_request(&v->vm->machine, FERRY_MACHINE_RESET);
            return TRUE;
        default: {
            g_autofree char *msg = g_strdup_printf("vCPU %u: guest crashed (system event %u)",
                                                   v->index, run->system_event.type);
            ferry_vm_fatal(v->vm, msg);
            return FALSE;
        }
        }
    case KVM_EXIT_INTERNAL_ERROR: {
        struct kvm_regs regs = {0};
        ioctl(v->fd, KVM_GET_REGS, &regs);
        g_autofree char *msg = g_strdup_printf(
            "vCPU %u: KVM internal error (suberror %u) at RIP 0x%llx; the guest cannot continue",
            v->index, run->internal.suberror, (unsigned long long) regs.rip);
        ferry_vm_fatal(v->vm, msg);
        return FALSE;
    }
    case KVM_EXIT_FAIL_ENTRY: {
        g_autofree char *msg = g_strdup_printf(
            "vCPU %u: VM entry failed (hardware reason 0x%llx)", v->index,
            (unsigned long long) run->fail_entry.hardware_entry_failure_reason);
        ferry_vm_fatal(v->vm, msg);
        return FALSE;
    }
    default: {
        g_autofree char *msg =
            g_strdup_printf("vCPU %u: unexpected KVM exit reason %u", v->index, run->exit_reason);
        ferry_vm_fatal(v->vm, msg);
        return FALSE;
    }
    }
}

static gpointer vcpu_thread(gpointer data)
{
    FerryVcpu *v = data;
    /* Only the kick signal may interrupt this thread; SIGTERM and friends go elsewhere. */
    sigset_t set;
    sigfillset(&set);
    sigdelset(&set, FERRY_VCPU_KICK_SIGNAL);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    v->tid = pthread_self();
    g_atomic_int_set(&v->tid_valid, 1);

    while (ferry_vm_vcpu_gate(v->vm, v)) {
        if (ioctl(v->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                v->run->immediate_exit = 0;
                ferry_vcpu_throttle_point(v);
                continue;
            }
            g_autofree char *msg =
                g_strdup_printf("vCPU %u: KVM_RUN failed: %s", v->index, g_strerror(errno));
            ferry_vm_fatal(v->vm, msg);
            break;
        }
        if (!handle_exit(v))
            break;
    }
    ferry_vm_vcpu_exited(v->vm, v);
    return NULL;
}

gboolean ferry_vcpu_settle(FerryVcpu *v, GError **error)
{
    /* A string I/O instruction may need several exits; each is handled as usual. */
    for (unsigned i = 0; i < 4096; i++) {
        g_autoptr(GError) pending = NULL;
        if (ferry_x86_vcpu_complete_pending_io(v->fd, v->run, &pending))
            return TRUE;
        if (!g_error_matches(pending, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_EXIT_PENDING)) {
            g_propagate_error(error, g_steal_pointer(&pending));
            return FALSE;
        }
        if (!handle_exit(v)) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                        "vCPU %u stopped with a fatal exit while settling its state", v->index);
            return FALSE;
        }
    }
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                "vCPU %u keeps exiting; its state cannot be settled", v->index);
    return FALSE;
}

gboolean ferry_vcpu_start(FerryVcpu *v, GError **error)
{
    g_autofree char *name = g_strdup_printf("vcpu%u", v->index);
    v->thread = g_thread_try_new(name, vcpu_thread, v, error);
    if (!v->thread)
        return FALSE;
    v->started = TRUE;
    return TRUE;
}

void ferry_vcpu_join(FerryVcpu *v)
{
    if (!v->thread)
        return;
    g_thread_join(v->thread);
    v->thread = NULL;
    /* the thread id is gone with the thread: no more kicks */
    g_atomic_int_set(&v->tid_valid, 0);
    v->started = FALSE;
}

void ferry_vcpu_kick(FerryVcpu *v)
{
    if (!v->started)
        return;
    v->run->immediate_exit = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* Before the thread has its id it has not entered KVM_RUN yet; immediate_exit covers it. */
    if (g_atomic_int_get(&v->tid_valid))
        pthread_kill(v->tid, FERRY_VCPU_KICK_SIGNAL);
}

void ferry_vcpu_free(FerryVcpu *v)
{
    if (!v)
        return;
    ferry_vcpu_join(v);
    if (v->run)
        munmap(v->run, v->run_size);
    if (v->fd >= 0)
        close(v->fd);
    g_free(v);
}

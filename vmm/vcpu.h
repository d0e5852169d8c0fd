/*
 * vCPUs: one thread each, running KVM_RUN and dispatching exits to the VM's buses.
 *
 * A vCPU thread leaves KVM_RUN only for exits it must handle or when kicked: a kick sets
 * kvm_run.immediate_exit and sends FERRY_VCPU_KICK_SIGNAL to the thread (api.rst,
 * "immediate_exit"), so pausing never polls.  Between runs the thread passes the VM's gate
 * (ferry_vm_vcpu_gate), where it parks while the VM is paused and leaves when it stops.
 */
#pragma once

#include "kvm.h"

#include <glib.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>

typedef struct FerryVm FerryVm;

/* The signal ferry_vcpu_kick() sends; unblocked in vCPU threads only. */
#define FERRY_VCPU_KICK_SIGNAL (SIGRTMIN)

typedef struct {
    FerryVm *vm;           /* borrowed */
    unsigned index;        /* vCPU number = APIC ID */
    int fd;                /* owned */
    struct kvm_run *run;   /* mmap of the vCPU's run area */
    size_t run_size;
    GThread *thread;
    pthread_t tid;
    gint tid_valid;        /* atomic: tid is set */
    gboolean started;
    /* Power-on state captured at creation, restored on machine reset. */
    struct kvm_regs reset_regs;
    struct kvm_sregs reset_sregs;
    struct kvm_lapic_state reset_lapic;
    struct kvm_mp_state reset_mp_state;
    struct kvm_vcpu_events reset_events;
    /* Auto-converge throttling (vcpu_throttle.h); all atomic. */
    uint64_t throttle_request_ns; /* sleep this long at the next EINTR; 0 = none */
    gint throttle_sleeping;       /* inside a throttle sleep */
    uint64_t throttle_sleeps;     /* sleeps begun */
    uint64_t throttle_cut_short;  /* sleeps a kick ended early */
    uint64_t throttle_slept_ns;   /* time slept in all */
} FerryVcpu;

/* Installs the kick signal's (empty) handler; call once per process before vCPUs run. */
void ferry_vcpu_install_kick_handler(void);

/*
 * Creates vCPU @index of @nr_vcpus on @vm's KVM VM: KVM_CREATE_VCPU, its run area, CPUID,
 * MSRs and LAPIC LINT pins; captures the power-on state.
 */
FerryVcpu *ferry_vcpu_new(FerryVm *vm, FerryKvm *kvm, unsigned index, unsigned nr_vcpus,
                          GError **error);

/* Puts the vCPU back into its power-on state (machine reset); the thread must be parked. */
gboolean ferry_vcpu_reset(FerryVcpu *vcpu, FerryKvm *kvm, GError **error);

/*
 * Completes the PIO/MMIO exit a parked vCPU stopped in (handling any further exits it
 * makes), so its registers are consistent for saving.  Main thread, vCPU parked.
 */
gboolean ferry_vcpu_settle(FerryVcpu *vcpu, GError **error);

/* Starts the vCPU thread. */
gboolean ferry_vcpu_start(FerryVcpu *vcpu, GError **error);

/* Waits for the vCPU thread to end (it must have been told to) and forgets its id. */
void ferry_vcpu_join(FerryVcpu *v);

/* Makes the thread leave KVM_RUN soon (any thread may call it). */
void ferry_vcpu_kick(FerryVcpu *vcpu);

/* Waits for the thread to end (after the VM told it to stop), then frees everything. */
void ferry_vcpu_free(FerryVcpu *vcpu);

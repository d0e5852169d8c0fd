/*
 * The complete KVM state of one x86 vCPU as a versioned byte blob, for save/restore and
 * migration.  Layout in docs/machine-state.md; framing in state_records.h.
 *
 * Source: the kernel's Documentation/virt/kvm/api.rst (sections KVM_GET/SET_REGS, _SREGS,
 * _SREGS2, _FPU, _XSAVE, _XSAVE2, _XCRS, _MSRS, _LAPIC, _VCPU_EVENTS, _MP_STATE, _DEBUGREGS,
 * KVM_GET/SET_TSC_KHZ, and "5. The kvm_run structure" for completing pending I/O).
 *
 * Preconditions for both directions: the vCPU is not inside KVM_RUN (its thread is parked),
 * and, for saving, any PIO/MMIO exit it stopped in has been completed with
 * ferry_x86_vcpu_complete_pending_io().  For loading, the target vCPU already has its CPUID
 * (KVM_SET_CPUID2: KVM checks XSAVE, XCR and MSR values against it) and the guest RAM
 * memslots exist (the kvmclock, steal-time, PV-EOI and async-PF MSRs point into guest RAM and
 * KVM refuses them otherwise).
 */
#pragma once

#include "kvm.h"
#include "util/state.h"

#include <glib.h>
#include <linux/kvm.h>

#define FERRY_X86_STATE_ERROR (ferry_x86_state_error_quark())
GQuark ferry_x86_state_error_quark(void);

typedef enum {
    FERRY_X86_STATE_ERROR_IOCTL,        /* a KVM ioctl failed */
    FERRY_X86_STATE_ERROR_UNSUPPORTED,  /* the target KVM cannot hold the saved state */
    FERRY_X86_STATE_ERROR_EXIT_PENDING, /* KVM_RUN made a new exit the caller must handle */
} FerryX86StateError;

/* Version of the vCPU blob this build writes and the highest it reads. */
#define FERRY_X86_VCPU_STATE_VERSION 1

/*
 * Completes a PIO/MMIO exit the vCPU stopped in, without running guest code (api.rst,
 * "5. The kvm_run structure": the operation is complete and the guest state consistent only
 * after userspace re-enters KVM_RUN; re-entering with immediate_exit set completes it and
 * returns EINTR before any further instruction runs).  @run is the vCPU's mmapped kvm_run;
 * the caller must already have emulated the access (filled in the data of an IN or an MMIO
 * read) as for a normal re-entry.  Sets and clears run->immediate_exit.
 *
 * Returns TRUE once KVM_RUN returned EINTR: nothing is pending.  If KVM_RUN instead returns
 * with a new exit (the next piece of a string I/O or a split MMIO access), fails with
 * FERRY_X86_STATE_ERROR_EXIT_PENDING: handle that exit as usual and call again.  Harmless
 * when nothing is pending.  Call from the vCPU's thread or while that thread is parked.
 */
gboolean ferry_x86_vcpu_complete_pending_io(int vcpu_fd, struct kvm_run *run, GError **error);

/*
 * Appends the vCPU's state to @w: registers, segment/control registers (SREGS2 when
 * KVM_CAP_SREGS2), XSAVE area (KVM_GET_XSAVE2 with the KVM_CAP_XSAVE2 size, else
 * KVM_GET_XSAVE, else the legacy FPU), XCRs (KVM_CAP_XCRS), every MSR of KVM's index list
 * plus the MTRRs that KVM_GET_MSRS can read (the readable set is found by probing on every
 * save: one KVM_GET_MSRS for the whole list plus one per unreadable MSR), LAPIC, vCPU events,
 * MP state, debug registers (KVM_CAP_DEBUGREGS) and the TSC frequency (KVM_CAP_GET_TSC_KHZ).
 * On error @w may hold a partial blob; discard it.
 */
gboolean ferry_x86_vcpu_save_state(const FerryKvm *kvm, int vcpu_fd, FerryStateWriter *w,
                                   GError **error);

/*
 * Reads one vCPU blob from @r and applies it to @vcpu_fd.  The whole blob is parsed and
 * checked against the target KVM first (capabilities, XSAVE size, every MSR known to this
 * KVM, which is named in the error otherwise); a malformed blob or a missing capability
 * changes nothing.  Then, in this order (the constraints behind it are in
 * docs/machine-state.md): TSC frequency, SREGS(2), REGS, XSAVE/FPU, XCRS, MSRs, MP state,
 * LAPIC, the TSC-deadline MSR, vCPU events, debug registers.  A failing ioctl in that sequence
 * leaves the vCPU partly loaded; the caller then discards the VM.
 */
gboolean ferry_x86_vcpu_load_state(const FerryKvm *kvm, int vcpu_fd, FerryStateReader *r,
                                   GError **error);

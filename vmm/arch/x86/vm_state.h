/*
 * VM-wide KVM state of an x86 VM as a versioned byte blob: the in-kernel PICs and IOAPIC
 * (KVM_GET/SET_IRQCHIP), the PIT (KVM_GET/SET_PIT2) and kvmclock (KVM_GET/SET_CLOCK).
 * Layout in docs/machine-state.md; framing in state_records.h.  Source: the kernel's
 * Documentation/virt/kvm/api.rst, sections KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK and
 * KVM_SET_CLOCK.
 *
 * Restore order (docs/machine-state.md): ferry_x86_vm_load_state() (PICs, IOAPIC, PIT)
 * before any vCPU's ferry_x86_vcpu_load_state(), and ferry_x86_vm_restore_clock() after all
 * of them, just before the vCPUs run again.
 */
#pragma once

#include "util/state.h"

#include <glib.h>
#include <stdint.h>

#define FERRY_X86_VM_STATE_VERSION 1

/* A kvmclock reading (api.rst KVM_GET_CLOCK). */
typedef struct {
    uint64_t clock_ns;    /* kvmclock, ns since the VM's clock started */
    uint32_t kvm_flags;   /* KVM_GET_CLOCK's flags: KVM_CLOCK_TSC_STABLE, _REALTIME, _HOST_TSC */
    uint64_t realtime_ns; /* CLOCK_REALTIME at the same instant, ns since the epoch: KVM's own
                           * when kvm_flags has KVM_CLOCK_REALTIME, else read right after */
    uint64_t host_tsc;    /* host TSC at that instant when kvm_flags has KVM_CLOCK_HOST_TSC */
} FerryX86Clock;

/* Reads kvmclock now (KVM_GET_CLOCK) with the matching CLOCK_REALTIME. */
gboolean ferry_x86_vm_read_clock(int vm_fd, FerryX86Clock *clock, GError **error);

/*
 * Sets kvmclock (KVM_SET_CLOCK) from @clock.  With @advance_by_realtime the guest clock is
 * moved forward by the real time elapsed since @clock was read (save/restore and migration:
 * the guest's clock neither jumps back nor stands still over the gap): when this KVM supports
 * KVM_CLOCK_REALTIME in KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK), KVM is given the saved
 * realtime and advances the clock itself; otherwise Ferry adds now - realtime.  Never moves
 * the clock backwards: if CLOCK_REALTIME here is behind the saved one (skewed host clocks),
 * the clock is set to the saved value.  Without @advance_by_realtime the clock resumes from
 * the saved value (pause/resume: time the VM was paused is hidden from the guest).
 */
gboolean ferry_x86_vm_restore_clock(int vm_fd, const FerryX86Clock *clock,
                                    gboolean advance_by_realtime, GError **error);

/*
 * Appends the PIC master, PIC slave, IOAPIC, PIT and kvmclock state to @w.  The VM must have
 * its in-kernel irqchip and PIT (ferry_kvm_create_vm) and no vCPU running (kvmclock is read
 * last, at the save instant).
 */
gboolean ferry_x86_vm_save_state(int vm_fd, FerryStateWriter *w, GError **error);

/*
 * Reads one VM blob from @r, checks it whole, then sets the PICs, IOAPIC and PIT, and
 * returns the saved kvmclock in @clock for ferry_x86_vm_restore_clock() once every vCPU is
 * loaded.  A malformed blob changes nothing.
 */
gboolean ferry_x86_vm_load_state(int vm_fd, FerryStateReader *r, FerryX86Clock *clock,
                                 GError **error);

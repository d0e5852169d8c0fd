/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Guest time source, readable at CPL0 and CPL3 (rdtsc is allowed at CPL3 because
 * CR4.TSD stays 0).
 *
 * kvmclock: the hypervisor keeps a per-vCPU struct pvclock_vcpu_time_info up to
 * date at the guest physical address registered through MSR_KVM_SYSTEM_TIME_NEW
 * (0x4b564d01). Format and algorithm: Linux Documentation/virt/kvm/x86/msr.rst
 * ("MSR_KVM_SYSTEM_TIME_NEW"). Its system time counts nanoseconds from VM creation.
 *
 * Fallback: the TSC, frequency calibrated against PIT channel 2 at boot.
 */
#ifndef FERRY_GUEST_CLOCK_H
#define FERRY_GUEST_CLOCK_H

#include "kernel/layout.h"
#include "lib/types.h"

struct pvclock_vcpu_time_info {
    u32 version;            /* odd while the hypervisor updates the record */
    u32 pad0;
    u64 tsc_timestamp;
    u64 system_time;        /* ns at tsc_timestamp */
    u32 tsc_to_system_mul;
    s8 tsc_shift;
    u8 flags;               /* bit 0: PVCLOCK_TSC_STABLE_BIT */
    u8 pad[2];
} PACKED;

#define CLOCK_NONE      0
#define CLOCK_KVMCLOCK  1
#define CLOCK_TSC       2

struct clock_info {
    int kind;
    u64 tsc_hz;                 /* CLOCK_TSC: calibrated TSC frequency */
    u64 tsc_mul;                /* CLOCK_TSC: ns = (tsc * tsc_mul) >> 32 */
    struct pvclock_vcpu_time_info *pvti[MAX_CPUS];  /* CLOCK_KVMCLOCK, per CPU */
};

/* Nanoseconds since the VM was created (kvmclock) or since TSC 0 (fallback), read
 * on CPU `cpu` (the caller must run on that CPU for kvmclock). */
u64 clock_ns(const struct clock_info *ci, unsigned cpu);

#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Kernel side of the time source (lib/clock.h): detection of kvmclock
 * (CPUID 0x40000000 "KVMKVMKVM\0\0\0", 0x40000001 EAX bit 3
 * KVM_FEATURE_CLOCKSOURCE2; Linux Documentation/virt/kvm/x86/cpuid.rst), per-CPU
 * registration through MSR_KVM_SYSTEM_TIME_NEW, and the TSC fallback calibrated
 * against PIT channel 2.
 */
#ifndef FERRY_GUEST_KCLOCK_H
#define FERRY_GUEST_KCLOCK_H

#include "kernel/percpu.h"
#include "lib/types.h"

/* BSP, before clock_init_cpu: chooses kvmclock or calibrates the TSC. */
void clock_init_bsp(void);
/* Each CPU: registers its pvclock page (kvmclock). */
void clock_init_cpu(struct percpu *c);
/* Current time in ns on this CPU (kernel only: uses %gs). */
u64 now_ns(void);
/* Busy-waits `us` microseconds. */
void udelay(u64 us);
/* Human-readable source ("kvmclock", "tsc/pit", ...). */
const char *clock_source_name(void);

#endif

/*
 * Auto-converge throttling: makes every vCPU of a VM spend a chosen share of wall time asleep,
 * so that a guest dirtying memory faster than live migration can send it slows down enough
 * for pre-copy to converge.
 *
 * How: a throttle thread of the VM ticks once per period.  Each tick asks every vCPU for one
 * sleep of ferry_vcpu_throttle_sleep_ns(percent) and kicks it (ferry_vcpu_kick); the vCPU
 * thread, back from KVM_RUN with EINTR, sleeps in ferry_vcpu_throttle_point().  The period is
 * one 10 ms timeslice of running plus that sleep, so the sleeping share is percent / 100:
 *
 *     sleep  = percent / (100 - percent) × 10 ms      (0 ms at 0 %, 10 ms at 50 %, 990 ms at 99 %)
 *     period = 10 ms + sleep = 10 ms × 100 / (100 - percent)
 *
 * Kicks are the only way to take a vCPU out of the guest (guest code at CPL3 runs natively
 * here), which also means a guest sleeps a whole timeslice later at worst.  A sleep never
 * delays the VM's life cycle: any kick (pause, stop, reset, fatal error, a throttle change)
 * ends it at once, and it is skipped when the run gate is closed.
 *
 * Threads: set/get/cleanup from any thread (they serialize on a lock of this module); the
 * throttle thread is started by the first set() with percent > 0 and ended by set(0) or
 * cleanup().  ferry_vm_free() calls ferry_vcpu_throttle_cleanup() before freeing the vCPUs.
 */
#pragma once

#include "vcpu.h"

#include <glib.h>
#include <stdint.h>

#define FERRY_VCPU_THROTTLE_MAX          99u
#define FERRY_VCPU_THROTTLE_TIMESLICE_NS (10u * 1000u * 1000u) /* 10 ms of running per period */

/*
 * Makes every vCPU of @vm sleep @percent % of wall time (0 = off, values above 99 count as
 * 99).  Takes effect at once: a change ends sleeps in progress.  Errors (no thread could be
 * started) are logged and leave throttling off.
 */
void ferry_vcpu_throttle_set(FerryVm *vm, unsigned percent);

/* The percentage in force for @vm (0 = off). */
unsigned ferry_vcpu_throttle_get(FerryVm *vm);

/* Stops throttling @vm and forgets it; for ferry_vm_free(), before the vCPUs are freed. */
void ferry_vcpu_throttle_cleanup(FerryVm *vm);

/* Nanoseconds a vCPU sleeps per period at @percent (0..99; above 99 counts as 99). */
uint64_t ferry_vcpu_throttle_sleep_ns(unsigned percent);

/* Nanoseconds between two ticks at @percent: the timeslice plus the sleep. */
uint64_t ferry_vcpu_throttle_period_ns(unsigned percent);

/*
 * The vCPU thread's hook, called after KVM_RUN returned EINTR (and immediate_exit was reset):
 * sleeps if the throttle asked for it.  The sleep waits in ppoll() with the kick signal
 * unblocked only there, so a kick sent at any moment — before or during the sleep — ends it;
 * it is skipped when the VM's run gate is closed or a kick is already pending.
 */
void ferry_vcpu_throttle_point(FerryVcpu *vcpu);

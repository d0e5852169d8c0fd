/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Per-CPU kernel state. The GS base of each CPU points at its struct percpu
 * (CPL3 code never touches GS, so no swapgs is needed).
 */
#ifndef FERRY_GUEST_PERCPU_H
#define FERRY_GUEST_PERCPU_H

#include "kernel/layout.h"
#include "lib/clock.h"
#include "lib/types.h"

/* 64-bit TSS, Intel SDM vol. 3A, 7.7 "Task Management in 64-bit Mode". */
struct tss64 {
    u32 reserved0;
    u64 rsp0;
    u64 rsp1;
    u64 rsp2;
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3;
    u16 iomap_base;
} PACKED;

struct percpu {
    struct percpu *self;            /* %gs:0 */
    u32 index;                      /* 0 = BSP, then MADT order */
    u32 apic_id;
    u64 kstack_top;                 /* TSS.RSP0 */
    u64 ustack_top;                 /* CPL3 stack */
    volatile u64 ticks;             /* local APIC timer interrupts */
    volatile u32 alive;             /* set by the AP once it is ready for CPL3 */
    u64 gdt[GDT_ENTRIES] ALIGNED(16);
    struct tss64 tss ALIGNED(16);
    struct pvclock_vcpu_time_info pvclock ALIGNED(64);  /* written by the hypervisor */
};

extern struct percpu *g_percpu[MAX_CPUS];

static inline struct percpu *this_cpu(void)
{
    struct percpu *p;
    __asm__ volatile("mov %%gs:0, %0" : "=r"(p));
    return p;
}

/* Allocates CPU `index`'s struct and stacks (kernel stack unless kstack_top given). */
struct percpu *percpu_alloc(u32 index, u32 apic_id, u64 kstack_top);
/* Loads this CPU's GDT, TSS and GS base (gdt.c). */
void cpu_tables_init(struct percpu *c);

#endif

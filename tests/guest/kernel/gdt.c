/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Per-CPU GDT and TSS. Descriptor formats: Intel SDM vol. 3A, 3.4.5 "Segment
 * Descriptors" and 7.2.3 "TSS Descriptor in 64-bit mode". Each CPU needs its own
 * GDT because loading TR marks the TSS descriptor busy.
 */
#include "kernel/mm.h"
#include "kernel/percpu.h"
#include "lib/x86.h"

extern const u64 boot_gdt[GDT_ENTRIES];
void gdt_load(const void *gdtr);

struct percpu *g_percpu[MAX_CPUS];

struct percpu *percpu_alloc(u32 index, u32 apic_id, u64 kstack_top)
{
    struct percpu *c = kzalloc(sizeof(*c), 64);

    c->self = c;
    c->index = index;
    c->apic_id = apic_id;
    c->kstack_top = kstack_top ? kstack_top : (u64)kalloc(KSTACK_SIZE, 16) + KSTACK_SIZE;
    c->tss.ist[0] = (u64)kalloc(ISTACK_SIZE, 16) + ISTACK_SIZE;
    c->ustack_top = (u64)kalloc(USTACK_SIZE, 16) + USTACK_SIZE;
    g_percpu[index] = c;
    return c;
}

void cpu_tables_init(struct percpu *c)
{
    struct {
        u16 limit;
        u64 base;
    } PACKED gdtr = { sizeof(c->gdt) - 1, (u64)c->gdt };
    u64 tss = (u64)&c->tss;
    u64 limit = sizeof(c->tss) - 1;

    for (int i = 0; i < GDT_ENTRIES; i++)
        c->gdt[i] = boot_gdt[i];
    c->tss.rsp0 = c->kstack_top;
    c->tss.iomap_base = sizeof(c->tss);     /* no I/O bitmap: port I/O at CPL3 faults */
    c->gdt[TSS_SEL / 8] = (limit & 0xffff) | ((tss & 0xffffff) << 16) |
                          (0x89ull << 40) |             /* present, 64-bit TSS available */
                          (((limit >> 16) & 0xf) << 48) | (((tss >> 24) & 0xff) << 56);
    c->gdt[TSS_SEL / 8 + 1] = tss >> 32;
    gdt_load(&gdtr);
    wrmsr(MSR_GS_BASE, (u64)c);
}

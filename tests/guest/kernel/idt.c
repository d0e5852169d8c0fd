/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * IDT: 64-bit interrupt gates (Intel SDM vol. 3A, 6.14.1 "64-Bit Mode IDT").
 * Only the vectors the guest uses are present; any other vector raises #GP/#NP
 * and ends in the panic report. #DF, NMI and #MC run on IST 1.
 */
#include "kernel/layout.h"
#include "kernel/trap.h"

struct idt_entry {
    u16 off_lo;
    u16 sel;
    u8 ist;
    u8 type;            /* P | DPL | 0xE (interrupt gate) */
    u16 off_mid;
    u32 off_hi;
    u32 zero;
} PACKED;

extern const u64 isr_exc_table[32];
extern const u64 isr_msi_table[VEC_MSI_COUNT];
extern const u64 isr_timer, isr_serial, isr_ged, isr_syscall, isr_spurious;

static struct idt_entry idt[256] ALIGNED(16);

static void set_gate(u32 vec, u64 handler, u8 dpl, u8 ist)
{
    idt[vec] = (struct idt_entry){
        .off_lo = handler & 0xffff,
        .sel = KERNEL_CS,
        .ist = ist,
        .type = 0x8e | (dpl << 5),
        .off_mid = (handler >> 16) & 0xffff,
        .off_hi = handler >> 32,
    };
}

void idt_init(void)
{
    for (u32 v = 0; v < 32; v++)
        set_gate(v, isr_exc_table[v], 0, (v == 2 || v == 8 || v == 18) ? 1 : 0);
    set_gate(VEC_TIMER, isr_timer, 0, 0);
    set_gate(VEC_SERIAL, isr_serial, 0, 0);
    set_gate(VEC_GED, isr_ged, 0, 0);
    for (u32 v = 0; v < VEC_MSI_COUNT; v++)
        set_gate(VEC_MSI_BASE + v, isr_msi_table[v], 0, 0);
    set_gate(VEC_SYSCALL, isr_syscall, 3, 0);
    set_gate(VEC_SPURIOUS, isr_spurious, 0, 0);
}

void idt_load(void)
{
    struct {
        u16 limit;
        u64 base;
    } PACKED idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

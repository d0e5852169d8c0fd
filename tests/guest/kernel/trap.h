/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Interrupt frame built by boot/entry.S, and the IDT. */
#ifndef FERRY_GUEST_TRAP_H
#define FERRY_GUEST_TRAP_H

#include "lib/types.h"

struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8;
    u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;       /* pushed by the CPU */
};

/* Builds the IDT shared by all CPUs (BSP, once). */
void idt_init(void);
/* Loads it on the calling CPU. */
void idt_load(void);
/* Called by isr_common for every vector. */
void trap_dispatch(struct trap_frame *f);
/* int $0x80 handler (syscall.c); the return value goes to the caller's RAX. */
u64 syscall_dispatch(struct trap_frame *f);

#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * AP start-up trampoline. smp.c copies [tramp_start, tramp_end) to a free page
 * T below 1 MiB, fills the data block (TRAMP_* offsets in layout.h) and sends
 * INIT-SIPI-SIPI with vector T >> 12 (Intel SDM vol. 3A, 8.4.4 "MP Initialization
 * Example" and 10.6.1 "Interrupt Command Register"). The AP starts in real mode at
 * CS = T >> 4, IP = 0, goes through 32-bit protected mode into long mode on the
 * kernel's page tables and jumps to the C entry with RSP and RDI from the block.
 * The code is position independent: it derives T from CS and patches its own
 * far pointers, so the same bytes work at any page.
 */
#include "kernel/layout.h"

    .section .rodata.trampoline, "a"
    .balign 16
    .globl tramp_start, tramp_end
tramp_start:
    .code16
    cli
    cld
    movw    %cs, %ax
    movw    %ax, %ds
    xorl    %ebx, %ebx
    movw    %ax, %bx
    shll    $4, %ebx                            /* EBX = T (linear) */
    leal    TRAMP_GDT(%ebx), %eax
    movl    %eax, TRAMP_GDTR + 2                /* GDTR base */
    leal    (tramp_pm32 - tramp_start)(%ebx), %eax
    movl    %eax, TRAMP_FAR32                   /* far pointer offset */
    leal    (tramp_lm64 - tramp_start)(%ebx), %eax
    movl    %eax, TRAMP_FAR64
    lgdtl   TRAMP_GDTR
    movl    %cr0, %eax
    andl    $0x9fffffff, %eax                   /* CD, NW off: INIT leaves caches disabled */
    orl     $CR0_PE, %eax
    movl    %eax, %cr0
    ljmpl   *TRAMP_FAR32

    .code32
tramp_pm32:
    movl    $0x10, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %cr4, %eax
    orl     $CR4_PAE, %eax
    movl    %eax, %cr4
    movl    TRAMP_CR3(%ebx), %eax
    movl    %eax, %cr3
    movl    $MSR_EFER, %ecx
    rdmsr
    orl     $EFER_LME, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $(CR0_PG | CR0_PE), %eax
    movl    %eax, %cr0
    ljmpl   *TRAMP_FAR64(%ebx)

    .code64
tramp_lm64:
    movl    %ebx, %ebx
    movq    TRAMP_STACK(%rbx), %rsp
    movq    TRAMP_ARG(%rbx), %rdi
    jmpq    *TRAMP_ENTRY(%rbx)

    .org    TRAMP_CR3
    .quad   0                                   /* TRAMP_CR3: kernel PML4 (< 4 GiB) */
    .quad   0                                   /* TRAMP_STACK */
    .quad   0                                   /* TRAMP_ENTRY: C function */
    .quad   0                                   /* TRAMP_ARG: struct percpu * */
    .org    TRAMP_GDT
    .quad   0
    .quad   0x00cf9a000000ffff                  /* 0x08: 32-bit code */
    .quad   0x00cf92000000ffff                  /* 0x10: data */
    .quad   0x00af9a000000ffff                  /* 0x18: 64-bit code */
    .org    TRAMP_GDTR
    .word   31                                  /* limit */
    .long   0                                   /* base, patched by the AP */
    .org    TRAMP_FAR32
    .long   0
    .word   0x08
    .org    TRAMP_FAR64
    .long   0
    .word   0x18
    .org    TRAMP_SIZE
tramp_end:

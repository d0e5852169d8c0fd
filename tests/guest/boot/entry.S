/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Interrupt/exception stubs, the way into CPL3, and the GDT/TSS loader.
 * Every stub pushes a uniform frame (struct trap_frame in kernel/trap.h) and calls
 * trap_dispatch(frame). Vectors with a CPU error code: 8, 10-14, 17, 21, 29, 30
 * (Intel SDM vol. 3A, table 6-1).
 */
#include "kernel/layout.h"

    .text
    .code64

.macro ISR_NOERR vec
    .balign 16
isr_\vec:
    pushq   $0
    pushq   $\vec
    jmp     isr_common
.endm

.macro ISR_ERR vec
    .balign 16
isr_\vec:
    pushq   $\vec
    jmp     isr_common
.endm

    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR   8
    ISR_NOERR 9
    ISR_ERR   10
    ISR_ERR   11
    ISR_ERR   12
    ISR_ERR   13
    ISR_ERR   14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR   17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR   21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR   29
    ISR_ERR   30
    ISR_NOERR 31
    ISR_NOERR 32        /* VEC_TIMER */
    ISR_NOERR 36        /* VEC_SERIAL */
    ISR_NOERR 37        /* VEC_GED */
    .irp v, 48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79
    ISR_NOERR \v       /* VEC_MSI_BASE.. */
    .endr
    ISR_NOERR 128       /* VEC_SYSCALL */
    ISR_NOERR 255       /* VEC_SPURIOUS */

isr_common:
    pushq   %rax
    pushq   %rbx
    pushq   %rcx
    pushq   %rdx
    pushq   %rsi
    pushq   %rdi
    pushq   %rbp
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    movq    %rsp, %rdi
    call    trap_dispatch
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rbp
    popq    %rdi
    popq    %rsi
    popq    %rdx
    popq    %rcx
    popq    %rbx
    popq    %rax
    addq    $16, %rsp
    iretq

/* Stub addresses for idt.c: exceptions 0-31, MSI-X, then timer, serial, GED, syscall,
 * spurious. */
    .section .rodata
    .balign 8
    .globl isr_exc_table, isr_timer, isr_serial, isr_ged, isr_syscall, isr_spurious
    .globl isr_msi_table
isr_exc_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad   isr_\v
    .endr
isr_msi_table:
    .irp v, 48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79
    .quad   isr_\v
    .endr
isr_timer:      .quad isr_32
isr_serial:     .quad isr_36
isr_ged:        .quad isr_37
isr_syscall:    .quad isr_128
isr_spurious:   .quad isr_255

    .text
/*
 * void enter_user(u64 rip, u64 arg, u64 rsp): iretq to CPL3 with IF=1,
 * RDI = arg, all other general registers zero. Never returns.
 */
    .globl enter_user
enter_user:
    pushq   $USER_DS
    pushq   %rdx
    pushq   $0x202
    pushq   $USER_CS
    pushq   %rdi
    movq    %rsi, %rdi
    xorl    %eax, %eax
    xorl    %ebx, %ebx
    xorl    %ecx, %ecx
    xorl    %edx, %edx
    xorl    %esi, %esi
    xorl    %ebp, %ebp
    xorl    %r8d, %r8d
    xorl    %r9d, %r9d
    xorl    %r10d, %r10d
    xorl    %r11d, %r11d
    xorl    %r12d, %r12d
    xorl    %r13d, %r13d
    xorl    %r14d, %r14d
    xorl    %r15d, %r15d
    iretq

/*
 * void gdt_load(const void *gdtr): lgdt, reload CS (lretq) and the data segment
 * registers, load TR with TSS_SEL. FS/GS get the null selector; the GS base is
 * set through MSR_GS_BASE afterwards.
 */
    .globl gdt_load
gdt_load:
    lgdt    (%rdi)
    movl    $KERNEL_DS, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    xorl    %eax, %eax
    movl    %eax, %fs
    movl    %eax, %gs
    movl    $TSS_SEL, %eax
    ltr     %ax
    popq    %rsi                /* return address */
    pushq   $KERNEL_CS
    pushq   %rsi
    lretq                       /* returns to the caller with the new CS */

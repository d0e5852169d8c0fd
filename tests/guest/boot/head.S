/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Entry points of the Ferry test guest payload (linked at LOAD_ADDR = 0x100000):
 *
 *   0x100000  32-bit Linux boot protocol entry (setup header code32_start):
 *             flat protected mode, paging off, ESI = boot_params.
 *   0x100200  64-bit Linux boot protocol entry (XLF_KERNEL_64: load address + 0x200):
 *             long mode, loader's identity map, RSI = boot_params.
 *             Source: Linux Documentation/arch/x86/boot.rst, "32-bit Boot Protocol"
 *             and "64-bit Boot Protocol".
 *   _start_pvh  PVH entry named by the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18):
 *             flat protected mode, paging off, EBX = struct hvm_start_info.
 *             Source: Xen docs/misc/pvh.pandoc and public/elfnote.h.
 *
 * All three load our own GDT and page tables at once, switch to long mode if
 * needed, zero .bss and call kmain(entry_kind, info_gpa) on the boot stack.
 *
 * The page tables below are static data: an identity map of 0-4 GiB with 2 MiB
 * pages (U=1, the guest runs its workloads at CPL3 on the same map), 0xFE000000-
 * 0xFFFFFFFF (IOAPIC, HPET, LAPIC, firmware) uncached. mm.c adds RAM above 4 GiB.
 * Building them costs no CPL0 instructions at boot.
 */
#include "kernel/layout.h"

#define PTE_P       0x001
#define PTE_W       0x002
#define PTE_U       0x004
#define PTE_PWT     0x008
#define PTE_PCD     0x010
#define PTE_PS      0x080

    .section .head, "ax"

/* ---- 0x100000: 32-bit boot protocol entry (code32_start) ---- */
    .code32
    .globl _start32_bzimage
_start32_bzimage:
    movl    $ENTRY_BZIMAGE32, %edi
    jmp     common32

/* ---- 0x1001e0: information for tools/mkbzimage.py ---- */
    .org    0x1e0
    .ascii  "FERRYWRP"
    .long   _end - LOAD_ADDR                /* init_size: image + .bss + boot stack */
    .long   kernel_info - LOAD_ADDR         /* kernel_info_offset (protocol 2.15) */
    .long   _edata - LOAD_ADDR              /* bytes of the raw payload */
    .long   0

/* ---- 0x100200: 64-bit boot protocol entry ---- */
    .org    0x200
    .code64
    .globl _start64_bzimage
_start64_bzimage:
    cli
    cld
    lgdt    boot_gdt_desc(%rip)
    movl    $boot_pml4, %eax
    movq    %rax, %cr3                      /* our tables from the first instruction on */
    pushq   $KERNEL_CS
    leaq    1f(%rip), %rax
    pushq   %rax
    lretq
1:  movl    $KERNEL_DS, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    xorl    %eax, %eax
    movl    %eax, %fs
    movl    %eax, %gs
    movl    $ENTRY_BZIMAGE64, %edi          /* RSI = boot_params, kept as is */
    jmp     common64

/* ---- PVH entry ---- */
    .code32
    .globl _start_pvh
_start_pvh:
    movl    $ENTRY_PVH, %edi
    movl    %ebx, %esi

/* EDI = entry kind, ESI = boot info GPA; any flat 32-bit state, paging off. */
common32:
    cli
    cld
    lgdt    boot_gdt_desc                   /* 32-bit: limit + low 4 bytes of base */
    ljmp    $BOOT_CS32, $1f
1:  movl    $KERNEL_DS, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %ss
    movl    %eax, %fs
    movl    %eax, %gs
    movl    %cr4, %eax
    orl     $CR4_PAE, %eax
    movl    %eax, %cr4
    movl    $boot_pml4, %eax
    movl    %eax, %cr3
    movl    $MSR_EFER, %ecx
    rdmsr
    orl     $EFER_LME, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $(CR0_PG | CR0_PE), %eax
    movl    %eax, %cr0
    ljmp    $KERNEL_CS, $from32

    .code64
from32:
    movl    %edi, %edi                      /* upper halves are undefined after the switch */
    movl    %esi, %esi
    xorl    %eax, %eax
    movl    %eax, %fs
    movl    %eax, %gs

/* RDI = entry kind, RSI = info GPA. */
common64:
    movq    %rdi, %r12
    movq    %rsi, %r13
    leaq    boot_stack_top(%rip), %rsp
    leaq    __bss_start(%rip), %rdi
    leaq    __bss_end(%rip), %rcx
    subq    %rdi, %rcx
    shrq    $3, %rcx
    xorl    %eax, %eax
    rep stosq                               /* .bss only; stacks are not cleared */
    movq    %r12, %rdi
    movq    %r13, %rsi
    call    kmain
2:  cli
    hlt
    jmp     2b

/* ---- boot GDT (same layout as the per-CPU GDTs, see layout.h) ---- */
    .section .rodata
    .balign 16
    .globl boot_gdt
boot_gdt:
    .quad   0                               /* null */
    .quad   0x00af9a000000ffff              /* 0x08 KERNEL_CS: 64-bit code, DPL 0 */
    .quad   0x00cf92000000ffff              /* 0x10 KERNEL_DS */
    .quad   0x00cff2000000ffff              /* 0x18 user data, DPL 3 */
    .quad   0x00affa000000ffff              /* 0x20 user 64-bit code, DPL 3 */
    .quad   0, 0                            /* 0x28 TSS (per CPU only) */
    .quad   0x00cf9a000000ffff              /* 0x38 BOOT_CS32: 32-bit code */
boot_gdt_end:
    .balign 8
    .globl boot_gdt_desc
boot_gdt_desc:
    .word   boot_gdt_end - boot_gdt - 1
    .quad   boot_gdt

/* ---- kernel_info (boot protocol 2.15, boot.rst "The kernel_info") ---- */
    .balign 4
    .globl kernel_info
kernel_info:
    .ascii  "LToP"                          /* header */
    .long   kernel_info_end - kernel_info   /* size */
    .long   kernel_info_end - kernel_info   /* size_total */
    .long   0                               /* setup_type_max: setup_data is ignored */
kernel_info_end:

/* ---- PVH ELF note: Xen public/elfnote.h, XEN_ELFNOTE_PHYS32_ENTRY = 18 ---- */
    .section .note.Xen, "a", @note
    .p2align 2
    .long   4                               /* namesz: "Xen\0" */
    .long   8                               /* descsz: 64-bit, as Linux emits it */
    .long   18                              /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz  "Xen"
    .p2align 2
    .long   _start_pvh
    .long   0

/* ---- static identity map 0-4 GiB ---- */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl boot_pml4, boot_pdpt, boot_pd
boot_pml4:
    .quad   boot_pdpt + (PTE_P | PTE_W | PTE_U)
    .fill   511, 8, 0
boot_pdpt:
    .quad   boot_pd + 0x0000 + (PTE_P | PTE_W | PTE_U)
    .quad   boot_pd + 0x1000 + (PTE_P | PTE_W | PTE_U)
    .quad   boot_pd + 0x2000 + (PTE_P | PTE_W | PTE_U)
    .quad   boot_pd + 0x3000 + (PTE_P | PTE_W | PTE_U)
    .fill   508, 8, 0                       /* mm.c fills RAM above 4 GiB */
boot_pd:
    .set    i, 0
    .rept   2048
    .if     i >= 0x7f0                      /* 0xFE000000 and up: MMIO, uncached */
    .quad   (i << 21) | (PTE_P | PTE_W | PTE_U | PTE_PS | PTE_PWT | PTE_PCD)
    .else
    .quad   (i << 21) | (PTE_P | PTE_W | PTE_U | PTE_PS)
    .endif
    .set    i, i + 1
    .endr

/* ---- boot stack (not cleared; the BSP keeps it as its CPL0 stack) ---- */
    .section .stack, "aw", @nobits
    .balign 4096
    .globl boot_stack, boot_stack_top
boot_stack:
    .skip   BOOT_STACK_SIZE
boot_stack_top:

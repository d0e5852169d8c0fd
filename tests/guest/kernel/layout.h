/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fixed numbers shared by the assembly and C parts of the Ferry test guest:
 * load address, GDT selectors, interrupt vectors, entry kinds, sizes.
 * Must stay valid for both the C compiler and the assembler (#defines only).
 */
#ifndef FERRY_GUEST_LAYOUT_H
#define FERRY_GUEST_LAYOUT_H

/* Physical (= virtual, identity mapped) load address of the payload. */
#define LOAD_ADDR           0x100000

/* GDT layout, identical in the boot GDT and in every per-CPU GDT. */
#define KERNEL_CS           0x08    /* 64-bit code, DPL 0 */
#define KERNEL_DS           0x10    /* data, DPL 0 */
#define USER_DS             0x1b    /* 0x18 | RPL 3: data, DPL 3 */
#define USER_CS             0x23    /* 0x20 | RPL 3: 64-bit code, DPL 3 */
#define TSS_SEL             0x28    /* 16-byte 64-bit TSS descriptor */
#define BOOT_CS32           0x38    /* 32-bit code, used only while entering long mode */
#define GDT_ENTRIES         8

/* How the guest was entered (kmain's first argument). */
#define ENTRY_PVH           1       /* PVH: 32-bit, EBX = hvm_start_info */
#define ENTRY_BZIMAGE32     2       /* Linux boot protocol, 32-bit entry, ESI = boot_params */
#define ENTRY_BZIMAGE64     3       /* Linux boot protocol, 64-bit entry, RSI = boot_params */

/* Interrupt vectors. */
#define VEC_TIMER           0x20    /* local APIC timer */
#define VEC_SERIAL          0x24    /* COM1, ISA IRQ 4 through the IOAPIC */
#define VEC_GED             0x25    /* ACPI Generic Event Device (power button) */
#define VEC_MSI_BASE        0x30    /* MSI-X vectors of the virtio devices (user/pci.c) */
#define VEC_MSI_COUNT       32      /* 0x30-0x4f */
#define VEC_SYSCALL         0x80    /* int $0x80 from CPL3 */
#define VEC_SPURIOUS        0xff    /* local APIC spurious vector */

/* Stacks (bytes). */
#define BOOT_STACK_SIZE     16384   /* BSP boot stack, later its CPL0 stack */
#define KSTACK_SIZE         16384   /* per-AP CPL0 stack */
#define ISTACK_SIZE         4096    /* per-CPU IST stack for #DF, NMI, #MC */
#define USTACK_SIZE         65536   /* per-CPU CPL3 stack */

#define MAX_CPUS            128
#define CMDLINE_MAX         4096    /* bytes including the NUL */
#define E820_MAX            128

/* AP trampoline: data block offsets inside the copied trampoline page. */
#define TRAMP_CR3           0x100
#define TRAMP_STACK         0x108
#define TRAMP_ENTRY         0x110
#define TRAMP_ARG           0x118
#define TRAMP_GDT           0x120   /* 4 descriptors */
#define TRAMP_GDTR          0x140
#define TRAMP_FAR32         0x148
#define TRAMP_FAR64         0x150
#define TRAMP_SIZE          0x160

/* Control register / MSR bits used by the assembly. */
#define CR0_PE              0x00000001
#define CR0_WP              0x00010000
#define CR0_PG              0x80000000
#define CR4_PAE             0x00000020
#define MSR_EFER            0xc0000080
#define EFER_LME            0x00000100

#endif

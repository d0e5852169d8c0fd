/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Real-mode part of ferry-guest.bzImage: boot sector, setup header and a small
 * real-mode setup program. Layout and field meanings: Linux
 * Documentation/arch/x86/boot.rst ("The Real-Mode Kernel Header", "Details of
 * Header Fields", "Running the Kernel"). Linked at offset 0 of the setup segment;
 * tools/mkbzimage.py fills setup_sects, syssize, init_size and kernel_info_offset.
 *
 * Loaders that run the 16-bit entry (BIOS boot loaders, QEMU's -kernel on -M pc)
 * jump to segment X+0x20, offset 0 with DS = ES = SS = X. The setup program then:
 *   1. builds boot_params (the "zero page") at X+ZP: zeroed, setup header copied,
 *      e820 table from INT 15h AX=E820h;
 *   2. enables A20 (port 0x92), switches to flat 32-bit protected mode;
 *   3. jumps to code32_start (0x100000) with ESI = boot_params, as the 32-bit
 *      boot protocol requires (CS = 0x10, DS = ES = SS = 0x18, EBP=EDI=EBX=0).
 * Loaders that use the 32-bit or 64-bit boot protocol never run this code.
 */

#define ZP          0x1000      /* boot_params offset in the setup segment */
#define STACK_TOP   0x3000      /* real-mode stack: X+0x2000..X+0x3000 */
#define E820_MAX    128

    .code16
    .section .text, "ax"
    .globl _start
_start:
    /* 0x000: boot sector. Booting it directly from a disk is not supported. */
    cli
1:  hlt
    jmp     1b

    .org    0x1f1
hdr:
setup_sects:        .byte   0           /* 0x1f1, patched */
root_flags:         .word   0           /* 0x1f2 */
syssize:            .long   0           /* 0x1f4, patched: payload size / 16 */
ram_size:           .word   0           /* 0x1f8 */
vid_mode:           .word   0xffff      /* 0x1fa: NORMAL_VGA */
root_dev:           .word   0           /* 0x1fc */
boot_flag:          .word   0xaa55      /* 0x1fe */
    /* 0x200: real-mode entry (2-byte short jump over the header) */
    .byte   0xeb
    .byte   start_of_setup - 1f
1:
    .ascii  "HdrS"                      /* 0x202 */
version:            .word   0x020f      /* 0x206: protocol 2.15 */
realmode_swtch:     .long   0           /* 0x208 */
start_sys_seg:      .word   0x1000      /* 0x20c (obsolete) */
kernel_version:     .word   version_str - 0x200 /* 0x20e */
type_of_loader:     .byte   0           /* 0x210, loader writes */
loadflags:          .byte   0x01        /* 0x211: LOADED_HIGH */
setup_move_size:    .word   0x8000      /* 0x212 */
code32_start:       .long   0x100000    /* 0x214 */
ramdisk_image:      .long   0           /* 0x218 */
ramdisk_size:       .long   0           /* 0x21c */
bootsect_kludge:    .long   0           /* 0x220 */
heap_end_ptr:       .word   0           /* 0x224, loader writes */
ext_loader_ver:     .byte   0           /* 0x226 */
ext_loader_type:    .byte   0           /* 0x227 */
cmd_line_ptr:       .long   0           /* 0x228, loader writes */
initrd_addr_max:    .long   0x7fffffff  /* 0x22c */
kernel_alignment:   .long   0x100000    /* 0x230 */
relocatable_kernel: .byte   0           /* 0x234: load at pref_address only */
min_alignment:      .byte   20          /* 0x235: log2 of kernel_alignment */
xloadflags:         .word   0x0001      /* 0x236: XLF_KERNEL_64 (entry at +0x200) */
cmdline_size:       .long   4095        /* 0x238 */
hardware_subarch:   .long   0           /* 0x23c: default PC */
hardware_subarch_data: .quad 0          /* 0x240 */
payload_offset:     .long   0           /* 0x248: not compressed, no payload */
payload_length:     .long   0           /* 0x24c */
setup_data:         .quad   0           /* 0x250 */
pref_address:       .quad   0x100000    /* 0x258 */
init_size:          .long   0           /* 0x260, patched */
handover_offset:    .long   0           /* 0x264: no EFI handover */
kernel_info_offset: .long   0           /* 0x268, patched */
hdr_end:
    .org    0x26c                       /* fails if the header above grew */

version_str:
    .asciz  "ferry-guest"

start_of_setup:
    cli
    cld
    pushw   %ds                         /* normalize CS to X (we run at X+0x20:...) */
    pushw   $2f
    lretw
2:  movw    %ds, %ax
    movw    %ax, %es
    movw    %ax, %ss
    movw    $STACK_TOP, %sp

    /* boot_params: zero it, copy the setup header (with the loader's fields) */
    movw    $ZP, %di
    movw    $2048, %cx
    xorw    %ax, %ax
    rep stosw
    movw    $hdr, %si
    movw    $(ZP + 0x1f1), %di
    movw    $(hdr_end - hdr), %cx
    rep movsb

    /* e820 table at boot_params+0x2d0 (20-byte entries), count at +0x1e8 */
    xorl    %ebx, %ebx
    movw    $(ZP + 0x2d0), %di
    xorw    %bp, %bp
3:  movl    $0xe820, %eax
    movl    $20, %ecx
    movl    $0x534d4150, %edx           /* "SMAP" */
    int     $0x15
    jc      4f
    cmpl    $0x534d4150, %eax
    jne     4f
    addw    $20, %di
    incw    %bp
    testl   %ebx, %ebx
    jz      4f
    cmpw    $E820_MAX, %bp
    jb      3b
4:  movw    %bp, %ax
    movb    %al, (ZP + 0x1e8)

    /* A20 through System Control Port A */
    inb     $0x92, %al
    orb     $0x02, %al
    andb    $0xfe, %al
    outb    %al, $0x92

    /* flat protected mode */
    cli
    xorl    %ebx, %ebx
    movw    %ds, %bx
    shll    $4, %ebx                    /* EBX = X (linear) */
    addl    %ebx, gdt_desc + 2
    addl    %ebx, pm_far
    lgdtl   gdt_desc
    movl    %cr0, %eax
    orb     $1, %al
    movl    %eax, %cr0
    ljmpl   *pm_far

    .code32
pm32:
    movl    $0x18, %eax
    movl    %eax, %ds
    movl    %eax, %es
    movl    %eax, %fs
    movl    %eax, %gs
    movl    %eax, %ss
    leal    ZP(%ebx), %esi              /* ESI = boot_params */
    movl    0x214(%esi), %eax           /* code32_start */
    xorl    %ebp, %ebp
    xorl    %edi, %edi
    xorl    %ebx, %ebx
    jmp     *%eax

    .balign 8
gdt:
    .quad   0
    .quad   0
    .quad   0x00cf9a000000ffff          /* 0x10: __BOOT_CS, flat 32-bit code */
    .quad   0x00cf92000000ffff          /* 0x18: __BOOT_DS, flat data */
gdt_end:
gdt_desc:
    .word   gdt_end - gdt - 1
    .long   gdt                         /* + X at run time */
pm_far:
    .long   pm32                        /* + X at run time */
    .word   0x10
setup_end:                              /* mkbzimage.py checks setup_end <= ZP */

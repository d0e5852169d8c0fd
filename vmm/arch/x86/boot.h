/*
 * Loading a kernel into guest memory and describing the boot state of the first vCPU.
 *
 * Two formats, detected from the file:
 *  - bzImage, through the Linux x86 boot protocol's 64-bit entry (the kernel's
 *    Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"; protocol >= 2.12 with
 *    XLF_KERNEL_64).  docs/boot.md describes what Ferry fills in.
 *  - ELF with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, Xen's public elfnote.h and
 *    arch-x86/hvm/start_info.h): 32-bit protected mode, paging off, EBX = start_info.
 *
 * Low guest memory used by the loader (all below the EBDA, layout.h):
 */
#pragma once

#include "arch/x86/e820.h"
#include "memory.h"

#include <glib.h>

#define FERRY_BOOT_GDT        0x0500ULL  /* GDT, 6 descriptors */
#define FERRY_BOOT_START_INFO 0x6000ULL  /* PVH hvm_start_info, module list, memory map */
#define FERRY_BOOT_ZERO_PAGE  0x7000ULL  /* bzImage boot_params */
#define FERRY_BOOT_STACK      0x8ff0ULL  /* initial stack pointer */
#define FERRY_BOOT_PML4       0x9000ULL  /* identity-mapping page tables: PML4, PDPT, 4 PDs */
#define FERRY_BOOT_CMDLINE    0x20000ULL /* kernel command line */
#define FERRY_BOOT_CMDLINE_MAX 0x10000ULL /* bytes, including the NUL */

/* GDT selectors set up by the loader (boot.rst wants __BOOT_CS = 0x10, __BOOT_DS = 0x18). */
#define FERRY_SEL_CODE32 0x08
#define FERRY_SEL_CODE64 0x10
#define FERRY_SEL_DATA   0x18
#define FERRY_SEL_TSS    0x20

#define FERRY_BOOT_ERROR (ferry_boot_error_quark())
GQuark ferry_boot_error_quark(void);

typedef enum {
    FERRY_BOOT_ERROR_FILE,    /* cannot read the kernel or initrd */
    FERRY_BOOT_ERROR_FORMAT,  /* not a bzImage or PVH ELF, or a malformed one */
    FERRY_BOOT_ERROR_SPACE,   /* it does not fit in guest memory */
} FerryBootError;

typedef enum {
    FERRY_KERNEL_BZIMAGE, /* 64-bit boot protocol entry */
    FERRY_KERNEL_PVH,     /* 32-bit PVH entry */
} FerryKernelFormat;

typedef struct {
    const char *kernel_path;
    const char *initrd_path; /* NULL for none */
    const char *cmdline;     /* NULL or "" for none */
    uint64_t rsdp_gpa;       /* ACPI RSDP, 0 for none */
} FerryBootConfig;

/* What the first vCPU needs to start the kernel. */
typedef struct {
    FerryKernelFormat format;
    uint64_t entry;     /* GPA of the entry point */
    uint64_t boot_info; /* bzImage: boot_params (RSI); PVH: hvm_start_info (EBX) */
} FerryBootSetup;

/*
 * Reads the kernel (and initrd) named in @cfg, writes them, the command line and the boot
 * information block into @mem, and fills @setup.  Errors: FERRY_BOOT_ERROR_FILE,
 * _FORMAT (naming what is wrong with the file), _SPACE.
 */
gboolean ferry_x86_load_kernel(FerryGuestMemory *mem, const FerryBootConfig *cfg,
                               FerryBootSetup *setup, GError **error);

/* Writes the GDT and (for long-mode entry) the identity page tables used by setup_regs. */
gboolean ferry_x86_write_boot_tables(FerryGuestMemory *mem, GError **error);

/* Format-specific loaders, called by ferry_x86_load_kernel with the file's contents. */
gboolean ferry_x86_load_bzimage(FerryGuestMemory *mem, const FerryBootConfig *cfg,
                                const uint8_t *image, size_t size, GBytes *initrd,
                                FerryBootSetup *setup, GError **error);
gboolean ferry_x86_load_pvh(FerryGuestMemory *mem, const FerryBootConfig *cfg,
                            const uint8_t *image, size_t size, GBytes *initrd,
                            FerryBootSetup *setup, GError **error);

/*
 * Chooses where the initrd goes: the highest page-aligned address such that it ends at or
 * below @limit (exclusive) and starts at or above @floor.  Returns 0 if it does not fit.
 */
uint64_t ferry_x86_initrd_addr(uint64_t size, uint64_t floor, uint64_t limit);

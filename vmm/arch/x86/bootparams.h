/*
 * The x86 Linux boot protocol's data structures, as far as Ferry fills them.
 * Source: the kernel's Documentation/arch/x86/boot.rst ("The real-mode kernel header",
 * "Details of header fields") and Documentation/arch/x86/zero-page.rst (offsets).
 * Written here from those documents; offsets are checked at compile time.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define FERRY_SETUP_HEADER_OFFSET 0x1f1
#define FERRY_SETUP_MAGIC         0x53726448 /* "HdrS" */
#define FERRY_BOOT_FLAG           0xaa55

#define FERRY_LOADFLAGS_LOADED_HIGH 0x01
#define FERRY_LOADFLAGS_CAN_USE_HEAP 0x80
#define FERRY_XLF_KERNEL_64          0x0001

typedef struct __attribute__((packed)) {
    uint8_t setup_sects;         /* 0x1f1 */
    uint16_t root_flags;         /* 0x1f2 */
    uint32_t syssize;            /* 0x1f4 */
    uint16_t ram_size;           /* 0x1f8 */
    uint16_t vid_mode;           /* 0x1fa */
    uint16_t root_dev;           /* 0x1fc */
    uint16_t boot_flag;          /* 0x1fe */
    uint16_t jump;               /* 0x200 */
    uint32_t header;             /* 0x202 */
    uint16_t version;            /* 0x206 */
    uint32_t realmode_swtch;     /* 0x208 */
    uint16_t start_sys_seg;      /* 0x20c */
    uint16_t kernel_version;     /* 0x20e */
    uint8_t type_of_loader;      /* 0x210 */
    uint8_t loadflags;           /* 0x211 */
    uint16_t setup_move_size;    /* 0x212 */
    uint32_t code32_start;       /* 0x214 */
    uint32_t ramdisk_image;      /* 0x218 */
    uint32_t ramdisk_size;       /* 0x21c */
    uint32_t bootsect_kludge;    /* 0x220 */
    uint16_t heap_end_ptr;       /* 0x224 */
    uint8_t ext_loader_ver;      /* 0x226 */
    uint8_t ext_loader_type;     /* 0x227 */
    uint32_t cmd_line_ptr;       /* 0x228 */
    uint32_t initrd_addr_max;    /* 0x22c */
    uint32_t kernel_alignment;   /* 0x230 */
    uint8_t relocatable_kernel;  /* 0x234 */
    uint8_t min_alignment;       /* 0x235 */
    uint16_t xloadflags;         /* 0x236 */
    uint32_t cmdline_size;       /* 0x238 */
    uint32_t hardware_subarch;   /* 0x23c */
    uint64_t hardware_subarch_data; /* 0x240 */
    uint32_t payload_offset;     /* 0x248 */
    uint32_t payload_length;     /* 0x24c */
    uint64_t setup_data;         /* 0x250 */
    uint64_t pref_address;       /* 0x258 */
    uint32_t init_size;          /* 0x260 */
    uint32_t handover_offset;    /* 0x264 */
    uint32_t kernel_info_offset; /* 0x268 */
} FerrySetupHeader;

#define SH_AT(field, off) \
    _Static_assert(FERRY_SETUP_HEADER_OFFSET + offsetof(FerrySetupHeader, field) == (off), #field)
SH_AT(boot_flag, 0x1fe);
SH_AT(header, 0x202);
SH_AT(cmd_line_ptr, 0x228);
SH_AT(xloadflags, 0x236);
SH_AT(pref_address, 0x258);
SH_AT(kernel_info_offset, 0x268);
#undef SH_AT

/* boot_params ("zero page") offsets used by Ferry (zero-page.rst). */
#define FERRY_BP_ACPI_RSDP_ADDR   0x070 /* u64 */
#define FERRY_BP_EXT_RAMDISK_IMAGE 0x0c0 /* u32 */
#define FERRY_BP_EXT_RAMDISK_SIZE 0x0c4  /* u32 */
#define FERRY_BP_EXT_CMD_LINE_PTR 0x0c8  /* u32 */
#define FERRY_BP_E820_ENTRIES     0x1e8  /* u8 */
#define FERRY_BP_E820_TABLE       0x2d0  /* 128 x {u64 addr, u64 size, u32 type} */
#define FERRY_BP_E820_MAX         128
#define FERRY_BP_SIZE             4096

/* PVH start info (Xen public/arch-x86/hvm/start_info.h), version 1. */
#define FERRY_HVM_START_MAGIC 0x336ec578
#define FERRY_XEN_ELFNOTE_PHYS32_ENTRY 18

typedef struct __attribute__((packed)) {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
} FerryHvmStartInfo;
_Static_assert(sizeof(FerryHvmStartInfo) == 56, "hvm_start_info size");

typedef struct __attribute__((packed)) {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
} FerryHvmModlistEntry;

typedef struct __attribute__((packed)) {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
} FerryHvmMemmapEntry;

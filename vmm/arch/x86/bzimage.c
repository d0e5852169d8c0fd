/*
 * bzImage loading through the Linux x86 64-bit boot protocol (boot.rst, "64-bit Boot
 * Protocol" and "Loading the rest of the kernel").
 */
#include "arch/x86/boot.h"
#include "arch/x86/bootparams.h"
#include "arch/x86/layout.h"

#include <string.h>

/* boot.rst: initrd_addr_max before protocol 2.03 */
#define LEGACY_INITRD_ADDR_MAX 0x37ffffffULL

/* Validates the header and returns a copy of it in @hdr. */
static gboolean parse_header(const uint8_t *image, size_t size, const char *path,
                             FerrySetupHeader *hdr, GError **error)
{
    if (size < FERRY_SETUP_HEADER_OFFSET + sizeof(*hdr)) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s is too small (%zu bytes) to be a bzImage", path, size);
        return FALSE;
    }
    memcpy(hdr, image + FERRY_SETUP_HEADER_OFFSET, sizeof(*hdr));
    if (GUINT32_FROM_LE(hdr->header) != FERRY_SETUP_MAGIC ||
        GUINT16_FROM_LE(hdr->boot_flag) != FERRY_BOOT_FLAG) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s is not a bzImage: no 'HdrS' boot header", path);
        return FALSE;
    }
    uint16_t version = GUINT16_FROM_LE(hdr->version);
    if (version < 0x020c || !(GUINT16_FROM_LE(hdr->xloadflags) & FERRY_XLF_KERNEL_64)) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s uses boot protocol %u.%02u without a 64-bit entry point "
                    "(XLF_KERNEL_64, protocol 2.12+); Ferry boots 64-bit kernels only",
                    path, version >> 8, version & 0xff);
        return FALSE;
    }
    if (!(hdr->loadflags & FERRY_LOADFLAGS_LOADED_HIGH)) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s is a zImage (loads below 1 MiB), not a bzImage", path);
        return FALSE;
    }
    return TRUE;
}

uint64_t ferry_x86_initrd_addr(uint64_t size, uint64_t floor, uint64_t limit)
{
    if (size == 0 || size > limit || limit - size < floor)
        return 0;
    uint64_t addr = (limit - size) & ~0xfffULL;
    return addr >= floor ? addr : 0;
}

gboolean ferry_x86_load_bzimage(FerryGuestMemory *mem, const FerryBootConfig *cfg,
                                const uint8_t *image, size_t size, GBytes *initrd,
                                FerryBootSetup *setup, GError **error)
{
    FerrySetupHeader hdr;
    if (!parse_header(image, size, cfg->kernel_path, &hdr, error))
        return FALSE;

    unsigned setup_sects = hdr.setup_sects ? hdr.setup_sects : 4;
    size_t setup_size = (size_t) (setup_sects + 1) * 512;
    if (setup_size >= size) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s is truncated: its setup code claims %zu of its %zu bytes",
                    cfg->kernel_path, setup_size, size);
        return FALSE;
    }

    /* The protected-mode kernel goes to 1 MiB; a relocatable kernel moves itself from there
     * to an aligned address (boot.rst, "relocatable_kernel"). */
    uint64_t load_addr = FERRY_HIMEM_START;
    uint64_t kernel_size = size - setup_size;
    /* init_size counts from the runtime start: pref_address for a kernel that relocates
     * itself there (protocol 2.10+), else the load address. */
    uint64_t runtime_start = load_addr;
    if (GUINT16_FROM_LE(hdr.version) >= 0x020a && GUINT64_FROM_LE(hdr.pref_address) > load_addr)
        runtime_start = GUINT64_FROM_LE(hdr.pref_address);
    uint64_t kernel_end =
        MAX(load_addr + kernel_size, runtime_start + GUINT32_FROM_LE(hdr.init_size));
    uint64_t low_end = ferry_guest_memory_low_end(mem);
    if (kernel_end > low_end) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_SPACE,
                    "%s needs %" G_GUINT64_FORMAT " MiB of memory below 3 GiB to boot; the "
                    "guest has %" G_GUINT64_FORMAT " MiB there",
                    cfg->kernel_path, (uint64_t) ((kernel_end + FERRY_MIB - 1) / FERRY_MIB),
                    (uint64_t) (low_end / FERRY_MIB));
        return FALSE;
    }
    if (!ferry_guest_memory_write(mem, load_addr, image + setup_size, kernel_size, error))
        return FALSE;

    /* boot_params: zero, then the image's setup header, then what the loader fills in. */
    g_autofree uint8_t *bp = g_malloc0(FERRY_BP_SIZE);
    size_t hdr_end = 0x202 + ((GUINT16_FROM_LE(hdr.jump) >> 8) & 0xff);
    hdr_end = MIN(hdr_end, FERRY_SETUP_HEADER_OFFSET + sizeof(hdr));
    memcpy(bp + FERRY_SETUP_HEADER_OFFSET, image + FERRY_SETUP_HEADER_OFFSET,
           hdr_end - FERRY_SETUP_HEADER_OFFSET);
    FerrySetupHeader *h = (FerrySetupHeader *) (bp + FERRY_SETUP_HEADER_OFFSET);
    h->type_of_loader = 0xff; /* undefined loader */
    h->loadflags |= FERRY_LOADFLAGS_CAN_USE_HEAP;
    h->heap_end_ptr = GUINT16_TO_LE(0xfe00);
    h->code32_start = GUINT32_TO_LE((uint32_t) load_addr);

    const char *cmdline = cfg->cmdline ? cfg->cmdline : "";
    size_t cmdline_len = strlen(cmdline) + 1;
    uint64_t cmdline_max = MIN((uint64_t) GUINT32_FROM_LE(hdr.cmdline_size) + 1,
                               FERRY_BOOT_CMDLINE_MAX);
    if (cmdline_len > cmdline_max) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_SPACE,
                    "the kernel command line is %zu bytes; %s accepts at most %" G_GUINT64_FORMAT,
                    cmdline_len - 1, cfg->kernel_path, cmdline_max - 1);
        return FALSE;
    }
    if (!ferry_guest_memory_write(mem, FERRY_BOOT_CMDLINE, cmdline, cmdline_len, error))
        return FALSE;
    h->cmd_line_ptr = GUINT32_TO_LE((uint32_t) FERRY_BOOT_CMDLINE);

    if (initrd) {
        gsize initrd_size;
        const uint8_t *initrd_data = g_bytes_get_data(initrd, &initrd_size);
        uint64_t limit = MIN((uint64_t) GUINT32_FROM_LE(hdr.initrd_addr_max) + 1, low_end);
        if (GUINT16_FROM_LE(hdr.version) < 0x0203)
            limit = MIN(limit, LEGACY_INITRD_ADDR_MAX + 1);
        uint64_t addr = ferry_x86_initrd_addr(initrd_size, kernel_end, limit);
        if (!addr) {
            g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_SPACE,
                        "the initrd (%" G_GSIZE_FORMAT " bytes) does not fit between the "
                        "kernel and 0x%" G_GINT64_MODIFIER "x; give the guest more memory",
                        initrd_size, limit);
            return FALSE;
        }
        if (!ferry_guest_memory_write(mem, addr, initrd_data, initrd_size, error))
            return FALSE;
        h->ramdisk_image = GUINT32_TO_LE((uint32_t) addr);
        h->ramdisk_size = GUINT32_TO_LE((uint32_t) initrd_size);
    }

    uint64_t rsdp = GUINT64_TO_LE(cfg->rsdp_gpa);
    memcpy(bp + FERRY_BP_ACPI_RSDP_ADDR, &rsdp, sizeof(rsdp));

    FerryE820Entry e820[FERRY_E820_MAX];
    unsigned n = ferry_e820_build(low_end, mem->total - low_end, e820);
    bp[FERRY_BP_E820_ENTRIES] = (uint8_t) n;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *e = bp + FERRY_BP_E820_TABLE + 20 * i;
        uint64_t a = GUINT64_TO_LE(e820[i].addr), s = GUINT64_TO_LE(e820[i].size);
        uint32_t t = GUINT32_TO_LE(e820[i].type);
        memcpy(e, &a, 8);
        memcpy(e + 8, &s, 8);
        memcpy(e + 16, &t, 4);
    }
    if (!ferry_guest_memory_write(mem, FERRY_BOOT_ZERO_PAGE, bp, FERRY_BP_SIZE, error))
        return FALSE;

    setup->format = FERRY_KERNEL_BZIMAGE;
    setup->entry = load_addr + 0x200; /* boot.rst: 64-bit entry is 0x200 past the load address */
    setup->boot_info = FERRY_BOOT_ZERO_PAGE;
    return TRUE;
}

#include "arch/x86/boot.h"
#include "arch/x86/bootparams.h"

#include <elf.h>
#include <string.h>

G_DEFINE_QUARK(ferry-boot-error-quark, ferry_boot_error)

/* Largest kernel or initrd file Ferry reads (bytes). */
#define MAX_IMAGE_SIZE (2ULL << 30)

static GBytes *read_file(const char *path, const char *what, GError **error)
{
    g_autoptr(GMappedFile) mf = NULL;
    GError *local = NULL;
    mf = g_mapped_file_new(path, FALSE, &local);
    if (!mf) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FILE, "cannot read %s %s: %s",
                    what, path, local->message);
        g_error_free(local);
        return NULL;
    }
    if (g_mapped_file_get_length(mf) > MAX_IMAGE_SIZE) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FILE,
                    "%s %s is larger than 2 GiB", what, path);
        return NULL;
    }
    return g_mapped_file_get_bytes(mf);
}

gboolean ferry_x86_load_kernel(FerryGuestMemory *mem, const FerryBootConfig *cfg,
                               FerryBootSetup *setup, GError **error)
{
    g_autoptr(GBytes) kernel = read_file(cfg->kernel_path, "kernel", error);
    if (!kernel)
        return FALSE;
    g_autoptr(GBytes) initrd = NULL;
    if (cfg->initrd_path) {
        initrd = read_file(cfg->initrd_path, "initrd", error);
        if (!initrd)
            return FALSE;
    }

    gsize size;
    const uint8_t *image = g_bytes_get_data(kernel, &size);
    if (size >= SELFMAG && memcmp(image, ELFMAG, SELFMAG) == 0)
        return ferry_x86_load_pvh(mem, cfg, image, size, initrd, setup, error);
    if (size >= 0x206 && memcmp(image + 0x202, "HdrS", 4) == 0)
        return ferry_x86_load_bzimage(mem, cfg, image, size, initrd, setup, error);
    g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                "%s is neither a bzImage (no 'HdrS' boot header) nor an ELF kernel with a PVH "
                "entry note",
                cfg->kernel_path);
    return FALSE;
}

gboolean ferry_x86_write_boot_tables(FerryGuestMemory *mem, GError **error)
{
    /* Flat descriptors (Intel SDM vol. 3A, 3.4.5 "Segment Descriptors"). */
    const uint64_t gdt[6] = {
        0,                      /* null */
        0x00cf9b000000ffffULL,  /* 0x08: 32-bit code, base 0, 4 GiB */
        0x00af9b000000ffffULL,  /* 0x10: 64-bit code */
        0x00cf93000000ffffULL,  /* 0x18: data, base 0, 4 GiB */
        0x00008b0000000067ULL,  /* 0x20: busy TSS at 0, 104 bytes (low half) */
        0,                      /* 0x28: TSS high half */
    };
    if (!ferry_guest_memory_write(mem, FERRY_BOOT_GDT, gdt, sizeof(gdt), error))
        return FALSE;

    /* Identity map of the low 4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 page directories. */
    g_autofree uint64_t *pt = g_new0(uint64_t, 6 * 512);
    uint64_t *pml4 = pt, *pdpt = pt + 512, *pd = pt + 1024;
    const uint64_t pdpt_gpa = FERRY_BOOT_PML4 + 0x1000, pd_gpa = FERRY_BOOT_PML4 + 0x2000;
    pml4[0] = pdpt_gpa | 0x3; /* present, writable */
    for (unsigned i = 0; i < 4; i++)
        pdpt[i] = (pd_gpa + i * 0x1000) | 0x3;
    for (unsigned i = 0; i < 4 * 512; i++)
        pd[i] = ((uint64_t) i << 21) | 0x83; /* present, writable, 2 MiB page */
    return ferry_guest_memory_write(mem, FERRY_BOOT_PML4, pt, 6 * 512 * sizeof(uint64_t), error);
}

/*
 * PVH boot: an ELF kernel with a XEN_ELFNOTE_PHYS32_ENTRY note, entered in 32-bit protected
 * mode with paging off and EBX pointing at struct hvm_start_info.  Sources: Xen's
 * docs/misc/pvh.pandoc, public/elfnote.h and public/arch-x86/hvm/start_info.h; the ELF
 * layout from the System V gABI.
 */
#include "arch/x86/boot.h"
#include "arch/x86/bootparams.h"
#include "arch/x86/layout.h"

#include <elf.h>
#include <string.h>

typedef struct {
    uint64_t paddr, offset, filesz, memsz;
    uint32_t type;
} Segment;

static gboolean format_error(GError **error, const char *path, const char *what)
{
    g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT, "%s: malformed ELF: %s", path,
                what);
    return FALSE;
}

/* Reads program header @i of either ELF class into @seg, bounds-checked. */
static gboolean get_segment(const uint8_t *image, size_t size, gboolean is64, unsigned i,
                            const char *path, Segment *seg, GError **error)
{
    if (is64) {
        const Elf64_Ehdr *eh = (const Elf64_Ehdr *) image;
        uint64_t off = eh->e_phoff + (uint64_t) i * eh->e_phentsize;
        if (eh->e_phentsize < sizeof(Elf64_Phdr) || off > size || size - off < sizeof(Elf64_Phdr))
            return format_error(error, path, "program header outside the file");
        Elf64_Phdr ph;
        memcpy(&ph, image + off, sizeof(ph));
        *seg = (Segment){ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz, ph.p_type};
    } else {
        const Elf32_Ehdr *eh = (const Elf32_Ehdr *) image;
        uint64_t off = eh->e_phoff + (uint64_t) i * eh->e_phentsize;
        if (eh->e_phentsize < sizeof(Elf32_Phdr) || off > size || size - off < sizeof(Elf32_Phdr))
            return format_error(error, path, "program header outside the file");
        Elf32_Phdr ph;
        memcpy(&ph, image + off, sizeof(ph));
        *seg = (Segment){ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz, ph.p_type};
    }
    if (seg->offset > size || seg->filesz > size - seg->offset ||
        (seg->type == PT_LOAD && seg->filesz > seg->memsz))
        return format_error(error, path, "segment extends past the end of the file");
    return TRUE;
}

/* Scans a PT_NOTE segment for the Xen PHYS32_ENTRY note; sets *entry if found. */
static void find_pvh_note(const uint8_t *note, uint64_t len, uint64_t *entry)
{
    uint64_t pos = 0;
    while (len - pos >= 12) {
        uint32_t namesz, descsz, type;
        memcpy(&namesz, note + pos, 4);
        memcpy(&descsz, note + pos + 4, 4);
        memcpy(&type, note + pos + 8, 4);
        uint64_t name_off = pos + 12;
        uint64_t desc_off = name_off + (((uint64_t) namesz + 3) & ~3ULL);
        uint64_t next = desc_off + (((uint64_t) descsz + 3) & ~3ULL);
        if (desc_off > len || next > len)
            return;
        if (type == FERRY_XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 &&
            memcmp(note + name_off, "Xen", 4) == 0 && (descsz == 4 || descsz == 8)) {
            uint64_t v = 0;
            memcpy(&v, note + desc_off, descsz);
            *entry = descsz == 4 ? (uint32_t) v : v;
            return;
        }
        pos = next;
    }
}

gboolean ferry_x86_load_pvh(FerryGuestMemory *mem, const FerryBootConfig *cfg,
                            const uint8_t *image, size_t size, GBytes *initrd,
                            FerryBootSetup *setup, GError **error)
{
    const char *path = cfg->kernel_path;
    if (size < sizeof(Elf32_Ehdr))
        return format_error(error, path, "file smaller than an ELF header");
    gboolean is64 = image[EI_CLASS] == ELFCLASS64;
    if ((!is64 && image[EI_CLASS] != ELFCLASS32) || image[EI_DATA] != ELFDATA2LSB)
        return format_error(error, path, "not a little-endian ELF32 or ELF64 file");
    if (is64 && size < sizeof(Elf64_Ehdr))
        return format_error(error, path, "file smaller than an ELF64 header");
    unsigned phnum = is64 ? ((const Elf64_Ehdr *) image)->e_phnum
                          : ((const Elf32_Ehdr *) image)->e_phnum;
    if (phnum == 0 || phnum > 256)
        return format_error(error, path, "no usable program headers");

    uint64_t entry = UINT64_MAX, image_end = 0;
    for (unsigned i = 0; i < phnum; i++) {
        Segment seg;
        if (!get_segment(image, size, is64, i, path, &seg, error))
            return FALSE;
        if (seg.type == PT_NOTE)
            find_pvh_note(image + seg.offset, seg.filesz, &entry);
    }
    if (entry == UINT64_MAX) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                    "build the kernel with PVH support or boot its bzImage",
                    path);
        return FALSE;
    }
    if (entry >= FERRY_GIB * 4) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                    "%s: PVH entry point 0x%" G_GINT64_MODIFIER "x is above 4 GiB", path, entry);
        return FALSE;
    }

    for (unsigned i = 0; i < phnum; i++) {
        Segment seg;
        if (!get_segment(image, size, is64, i, path, &seg, error))
            return FALSE;
        if (seg.type != PT_LOAD || seg.memsz == 0)
            continue;
        if (seg.paddr < FERRY_HIMEM_START) {
            g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_FORMAT,
                        "%s: segment at 0x%" G_GINT64_MODIFIER "x is below 1 MiB, where Ferry "
                        "keeps its boot structures",
                        path, seg.paddr);
            return FALSE;
        }
        if (!ferry_guest_memory_hva(mem, seg.paddr, seg.memsz)) {
            g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_SPACE,
                        "%s: segment 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                        "x does not fit in guest RAM",
                        path, seg.paddr, seg.memsz);
            return FALSE;
        }
        if (!ferry_guest_memory_write(mem, seg.paddr, image + seg.offset, seg.filesz, error))
            return FALSE;
        uint8_t *bss = ferry_guest_memory_hva(mem, seg.paddr + seg.filesz, seg.memsz - seg.filesz);
        if (bss)
            memset(bss, 0, seg.memsz - seg.filesz);
        image_end = MAX(image_end, seg.paddr + seg.memsz);
    }

    /* Start info, module list and memory map share the page at FERRY_BOOT_START_INFO. */
    FerryHvmStartInfo si = {
        .magic = FERRY_HVM_START_MAGIC,
        .version = 1,
        .cmdline_paddr = FERRY_BOOT_CMDLINE,
        .rsdp_paddr = cfg->rsdp_gpa,
    };
    const uint64_t modlist_gpa = FERRY_BOOT_START_INFO + 0x40;
    const uint64_t memmap_gpa = FERRY_BOOT_START_INFO + 0x80;

    const char *cmdline = cfg->cmdline ? cfg->cmdline : "";
    size_t cmdline_len = strlen(cmdline) + 1;
    if (cmdline_len > FERRY_BOOT_CMDLINE_MAX) {
        g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_SPACE,
                    "the kernel command line is %zu bytes; at most %llu are supported",
                    cmdline_len - 1, FERRY_BOOT_CMDLINE_MAX - 1);
        return FALSE;
    }
    if (!ferry_guest_memory_write(mem, FERRY_BOOT_CMDLINE, cmdline, cmdline_len, error))
        return FALSE;

    uint64_t low_end = ferry_guest_memory_low_end(mem);
    if (initrd) {
        gsize initrd_size;
        const uint8_t *data = g_bytes_get_data(initrd, &initrd_size);
        uint64_t addr = ferry_x86_initrd_addr(initrd_size, image_end, low_end);
        if (!addr) {
            g_set_error(error, FERRY_BOOT_ERROR, FERRY_BOOT_ERROR_SPACE,
                        "the initrd (%" G_GSIZE_FORMAT " bytes) does not fit in guest memory "
                        "below 3 GiB; give the guest more memory",
                        initrd_size);
            return FALSE;
        }
        if (!ferry_guest_memory_write(mem, addr, data, initrd_size, error))
            return FALSE;
        FerryHvmModlistEntry mod = {.paddr = addr, .size = initrd_size};
        if (!ferry_guest_memory_write(mem, modlist_gpa, &mod, sizeof(mod), error))
            return FALSE;
        si.nr_modules = 1;
        si.modlist_paddr = modlist_gpa;
    }

    FerryE820Entry e820[FERRY_E820_MAX];
    unsigned n = ferry_e820_build(low_end, mem->total - low_end, e820);
    for (unsigned i = 0; i < n; i++) {
        FerryHvmMemmapEntry me = {.addr = e820[i].addr, .size = e820[i].size, .type = e820[i].type};
        if (!ferry_guest_memory_write(mem, memmap_gpa + i * sizeof(me), &me, sizeof(me), error))
            return FALSE;
    }
    si.memmap_paddr = memmap_gpa;
    si.memmap_entries = n;
    if (!ferry_guest_memory_write(mem, FERRY_BOOT_START_INFO, &si, sizeof(si), error))
        return FALSE;

    setup->format = FERRY_KERNEL_PVH;
    setup->entry = entry;
    setup->boot_info = FERRY_BOOT_START_INFO;
    return TRUE;
}

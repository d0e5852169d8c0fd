/* Unit tests: e820 and boot-parameter construction, bzImage and PVH loading (vmm/arch/x86). */
#include "arch/x86/boot.h"
#include "arch/x86/bootparams.h"
#include "arch/x86/e820.h"
#include "arch/x86/layout.h"

#include <elf.h>
#include <glib/gstdio.h>
#include <string.h>

static void test_e820(void)
{
    FerryE820Entry e[FERRY_E820_MAX];
    unsigned n = ferry_e820_build(256 * FERRY_MIB, 0, e);
    g_assert_cmpuint(n, ==, 3);
    g_assert_cmpuint(e[0].addr, ==, 0);
    g_assert_cmpuint(e[0].size, ==, FERRY_EBDA_START);
    g_assert_cmpuint(e[0].type, ==, FERRY_E820_RAM);
    g_assert_cmpuint(e[1].addr, ==, FERRY_ACPI_START);
    g_assert_cmpuint(e[1].type, ==, FERRY_E820_ACPI);
    g_assert_cmpuint(e[2].addr, ==, FERRY_HIMEM_START);
    g_assert_cmpuint(e[2].addr + e[2].size, ==, 256 * FERRY_MIB);

    /* 6 GiB: 3 GiB low, 3 GiB at 4 GiB, nothing in the hole. */
    n = ferry_e820_build(3 * FERRY_GIB, 3 * FERRY_GIB, e);
    g_assert_cmpuint(n, ==, 4);
    g_assert_cmpuint(e[2].addr + e[2].size, ==, 3 * FERRY_GIB);
    g_assert_cmpuint(e[3].addr, ==, 4 * FERRY_GIB);
    g_assert_cmpuint(e[3].size, ==, 3 * FERRY_GIB);
    uint64_t ram = 0;
    for (unsigned i = 0; i < n; i++) {
        if (e[i].type == FERRY_E820_RAM)
            ram += e[i].size;
        for (unsigned j = i + 1; j < n; j++)
            g_assert_true(e[i].addr + e[i].size <= e[j].addr); /* sorted, disjoint */
    }
    g_assert_cmpuint(ram, >, 6 * FERRY_GIB - FERRY_MIB);
}

static void test_memory_layout(void)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(4 * FERRY_GIB, &error);
    g_assert_no_error(error);
    g_assert_cmpuint(mem->nr_regions, ==, 2);
    g_assert_cmpuint(ferry_guest_memory_low_end(mem), ==, 3 * FERRY_GIB);
    g_assert_cmpuint(mem->regions[1].gpa, ==, 4 * FERRY_GIB);
    g_assert_cmpuint(mem->regions[1].size, ==, FERRY_GIB);
    g_assert_nonnull(ferry_guest_memory_hva(mem, 0, 4096));
    g_assert_null(ferry_guest_memory_hva(mem, 3 * FERRY_GIB - 2048, 4096)); /* runs into hole */
    g_assert_null(ferry_guest_memory_hva(mem, 3 * FERRY_GIB, 1));
    g_assert_nonnull(ferry_guest_memory_hva(mem, 5 * FERRY_GIB - 4096, 4096));
    g_assert_null(ferry_guest_memory_hva(mem, 5 * FERRY_GIB - 4096, 4097));

    /* A write above 4 GiB lands in the second half of the memfd. */
    const uint64_t v = 0x1122334455667788ULL;
    g_assert_true(ferry_guest_memory_write(mem, 4 * FERRY_GIB + 8, &v, 8, &error));
    g_assert_cmpmem(mem->base + 3 * FERRY_GIB + 8, 8, &v, 8);
    uint64_t back = 0;
    g_assert_true(ferry_guest_memory_read(mem, 4 * FERRY_GIB + 8, &back, 8, &error));
    g_assert_cmpuint(back, ==, v);
    g_assert_false(ferry_guest_memory_write(mem, 3 * FERRY_GIB - 4, &v, 8, &error));
    g_assert_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE);

    ferry_guest_memory_discard(mem);
    back = 1;
    g_assert_true(ferry_guest_memory_read(mem, 4 * FERRY_GIB + 8, &back, 8, NULL));
    g_assert_cmpuint(back, ==, 0);
}

static void test_memory_dirty(void)
{
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(5 * FERRY_GIB, NULL);
    const uint64_t words0 = (3 * FERRY_GIB / 4096 + 63) / 64;
    const uint64_t words1 = (2 * FERRY_GIB / 4096 + 63) / 64;
    g_autofree uint64_t *b0 = g_new0(uint64_t, words0);
    g_autofree uint64_t *b1 = g_new0(uint64_t, words1);

    /* ferry_guest_memory_write marks what it writes: 8 bytes straddling pages 1 and 2. */
    const uint64_t v = 42;
    g_assert_true(ferry_guest_memory_write(mem, 2 * 4096 - 4, &v, 8, NULL));
    /* A device write through an HVA, above 4 GiB, spanning 3 pages. */
    ferry_guest_memory_mark_dirty(mem, 4 * FERRY_GIB + 4096 + 100, 2 * 4096);
    /* Outside RAM: ignored, no crash. */
    ferry_guest_memory_mark_dirty(mem, 3 * FERRY_GIB + 10, 4096);
    ferry_guest_memory_mark_dirty(mem, G_MAXUINT64 - 10, 100);

    ferry_guest_memory_take_vmm_dirty(mem, 0, b0);
    ferry_guest_memory_take_vmm_dirty(mem, 1, b1);
    g_assert_cmphex(b0[0], ==, 0x6);
    for (uint64_t w = 1; w < words0; w++)
        g_assert_cmphex(b0[w], ==, 0);
    g_assert_cmphex(b1[0], ==, 0xe);
    /* Taking clears. */
    ferry_guest_memory_take_vmm_dirty(mem, 0, b0);
    g_assert_cmphex(b0[0], ==, 0);
}

static void test_memory_too_big(void)
{
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_guest_memory_new(1ULL << 50, &error));
    g_assert_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SIZE);
    g_assert_nonnull(strstr(error->message, "more than this host can give"));
}

/* ---- bzImage ---- */

static char *tmpdir;

static char *write_tmp(const char *name, const void *data, size_t len)
{
    char *path = g_build_filename(tmpdir, name, NULL);
    g_assert_true(g_file_set_contents(path, data, (gssize) len, NULL));
    return path;
}

/* A bzImage with 2 setup sectors and @payload_len bytes of protected-mode code. */
static GByteArray *fake_bzimage(uint16_t version, uint16_t xloadflags, size_t payload_len)
{
    GByteArray *img = g_byte_array_new();
    g_byte_array_set_size(img, 3 * 512 + payload_len);
    memset(img->data, 0, img->len);
    FerrySetupHeader *h = (FerrySetupHeader *) (img->data + FERRY_SETUP_HEADER_OFFSET);
    h->setup_sects = 2;
    h->boot_flag = FERRY_BOOT_FLAG;
    h->jump = 0x66eb; /* jmp over the header: header ends at 0x202 + 0x66 = 0x268 */
    h->header = FERRY_SETUP_MAGIC;
    h->version = version;
    h->loadflags = FERRY_LOADFLAGS_LOADED_HIGH;
    h->initrd_addr_max = 0x7fffffff;
    h->kernel_alignment = 0x200000;
    h->xloadflags = xloadflags;
    h->cmdline_size = 255;
    h->init_size = 0x400000;
    for (size_t i = 0; i < payload_len; i++)
        img->data[3 * 512 + i] = (uint8_t) (i * 7);
    return img;
}

static void test_bzimage(void)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(64 * FERRY_MIB, &error);
    g_autoptr(GByteArray) img = fake_bzimage(0x020f, FERRY_XLF_KERNEL_64, 8192);
    g_autofree char *kpath = write_tmp("bzImage", img->data, img->len);
    uint8_t initrd[10000];
    memset(initrd, 0x5a, sizeof(initrd));
    g_autofree char *ipath = write_tmp("initrd", initrd, sizeof(initrd));

    FerryBootConfig cfg = {.kernel_path = kpath, .initrd_path = ipath,
                           .cmdline = "console=ttyS0 ferry.dirty=8", .rsdp_gpa = 0xe0000};
    FerryBootSetup setup;
    g_assert_true(ferry_x86_load_kernel(mem, &cfg, &setup, &error));
    g_assert_no_error(error);
    g_assert_cmpint(setup.format, ==, FERRY_KERNEL_BZIMAGE);
    g_assert_cmpuint(setup.entry, ==, 0x100200);
    g_assert_cmpuint(setup.boot_info, ==, FERRY_BOOT_ZERO_PAGE);

    /* payload at 1 MiB */
    g_assert_cmpmem(mem->base + 0x100000, 8192, img->data + 3 * 512, 8192);

    const uint8_t *bp = mem->base + FERRY_BOOT_ZERO_PAGE;
    const FerrySetupHeader *h = (const FerrySetupHeader *) (bp + FERRY_SETUP_HEADER_OFFSET);
    g_assert_cmpuint(h->header, ==, FERRY_SETUP_MAGIC);
    g_assert_cmpuint(h->type_of_loader, ==, 0xff);
    g_assert_cmpuint(h->cmd_line_ptr, ==, FERRY_BOOT_CMDLINE);
    g_assert_cmpstr((const char *) mem->base + FERRY_BOOT_CMDLINE, ==, cfg.cmdline);
    g_assert_cmpuint(h->code32_start, ==, 0x100000);

    /* initrd: page-aligned, at the top of RAM, above the kernel's init_size */
    g_assert_cmpuint(h->ramdisk_size, ==, sizeof(initrd));
    g_assert_cmpuint(h->ramdisk_image % 4096, ==, 0);
    g_assert_cmpuint(h->ramdisk_image + h->ramdisk_size, <=, 64 * FERRY_MIB);
    g_assert_cmpuint(h->ramdisk_image, >=, 0x100000 + 0x400000);
    g_assert_cmpmem(mem->base + h->ramdisk_image, sizeof(initrd), initrd, sizeof(initrd));

    uint64_t rsdp;
    memcpy(&rsdp, bp + FERRY_BP_ACPI_RSDP_ADDR, 8);
    g_assert_cmpuint(rsdp, ==, 0xe0000);

    g_assert_cmpuint(bp[FERRY_BP_E820_ENTRIES], ==, 3);
    uint64_t addr, size;
    uint32_t type;
    const uint8_t *e = bp + FERRY_BP_E820_TABLE + 2 * 20;
    memcpy(&addr, e, 8);
    memcpy(&size, e + 8, 8);
    memcpy(&type, e + 16, 4);
    g_assert_cmpuint(addr, ==, 0x100000);
    g_assert_cmpuint(addr + size, ==, 64 * FERRY_MIB);
    g_assert_cmpuint(type, ==, 1);
}

static void expect_boot_error(FerryGuestMemory *mem, const char *kernel, const char *initrd,
                              const char *cmdline, int code, const char *words)
{
    g_autoptr(GError) error = NULL;
    FerryBootConfig cfg = {.kernel_path = kernel, .initrd_path = initrd, .cmdline = cmdline};
    FerryBootSetup setup;
    g_assert_false(ferry_x86_load_kernel(mem, &cfg, &setup, &error));
    g_assert_error(error, FERRY_BOOT_ERROR, code);
    if (!strstr(error->message, words))
        g_error("'%s' lacks '%s'", error->message, words);
}

static void test_bzimage_errors(void)
{
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(32 * FERRY_MIB, NULL);
    g_autoptr(GByteArray) old = fake_bzimage(0x020a, 0, 4096);
    g_autofree char *old_path = write_tmp("old", old->data, old->len);
    expect_boot_error(mem, old_path, NULL, "", FERRY_BOOT_ERROR_FORMAT, "64-bit");

    g_autoptr(GByteArray) ok = fake_bzimage(0x020f, FERRY_XLF_KERNEL_64, 4096);
    g_autofree char *trunc_path = write_tmp("trunc", ok->data, 3 * 512);
    expect_boot_error(mem, trunc_path, NULL, "", FERRY_BOOT_ERROR_FORMAT, "truncated");

    g_autofree char *ok_path = write_tmp("ok", ok->data, ok->len);
    g_autofree char *long_cmdline = g_strnfill(300, 'x');
    expect_boot_error(mem, ok_path, NULL, long_cmdline, FERRY_BOOT_ERROR_SPACE,
                      "at most 255");

    g_autofree uint8_t *big = g_malloc0(40 * FERRY_MIB);
    g_autofree char *big_path = write_tmp("big-initrd", big, 40 * FERRY_MIB);
    expect_boot_error(mem, ok_path, big_path, "", FERRY_BOOT_ERROR_SPACE, "does not fit");

    expect_boot_error(mem, "/nonexistent/bzImage", NULL, "", FERRY_BOOT_ERROR_FILE,
                      "/nonexistent/bzImage");
    g_autofree char *text = write_tmp("text", "hello\n", 6);
    expect_boot_error(mem, text, NULL, "", FERRY_BOOT_ERROR_FORMAT, "neither a bzImage");
    g_autofree char *empty = write_tmp("empty", "", 0);
    expect_boot_error(mem, empty, NULL, "", FERRY_BOOT_ERROR_FORMAT, "neither a bzImage");
}

/* ---- PVH ---- */

/* An ELF64 with one PT_LOAD at @paddr and, if @with_note, the PVH entry note. */
static GByteArray *fake_pvh(uint64_t paddr, gboolean with_note, uint32_t entry)
{
    const size_t code_off = 0x200, code_len = 64, note_off = 0x180;
    GByteArray *img = g_byte_array_new();
    g_byte_array_set_size(img, code_off + code_len);
    memset(img->data, 0, img->len);
    Elf64_Ehdr *eh = (Elf64_Ehdr *) img->data;
    memcpy(eh->e_ident, ELFMAG, SELFMAG);
    eh->e_ident[EI_CLASS] = ELFCLASS64;
    eh->e_ident[EI_DATA] = ELFDATA2LSB;
    eh->e_type = ET_EXEC;
    eh->e_machine = EM_X86_64;
    eh->e_phoff = sizeof(Elf64_Ehdr);
    eh->e_phentsize = sizeof(Elf64_Phdr);
    eh->e_phnum = with_note ? 2 : 1;
    Elf64_Phdr *ph = (Elf64_Phdr *) (img->data + eh->e_phoff);
    ph[0] = (Elf64_Phdr){.p_type = PT_LOAD, .p_offset = code_off, .p_paddr = paddr,
                         .p_filesz = code_len, .p_memsz = code_len + 4096};
    for (size_t i = 0; i < code_len; i++)
        img->data[code_off + i] = 0x90;
    if (with_note) {
        uint32_t note[5] = {4, 4, FERRY_XEN_ELFNOTE_PHYS32_ENTRY, 0, entry};
        memcpy(&note[3], "Xen", 4);
        memcpy(img->data + note_off, note, sizeof(note));
        ph[1] = (Elf64_Phdr){.p_type = PT_NOTE, .p_offset = note_off, .p_filesz = sizeof(note)};
    }
    return img;
}

static void test_pvh(void)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(6 * FERRY_GIB, &error);
    g_assert_no_error(error);
    g_autoptr(GByteArray) img = fake_pvh(0x100000, TRUE, 0x100010);
    g_autofree char *path = write_tmp("pvh.elf", img->data, img->len);
    uint8_t initrd[5000];
    memset(initrd, 0xa5, sizeof(initrd));
    g_autofree char *ipath = write_tmp("pvh-initrd", initrd, sizeof(initrd));
    FerryBootConfig cfg = {.kernel_path = path, .initrd_path = ipath, .cmdline = "ferry.quiet",
                           .rsdp_gpa = 0xe0000};
    FerryBootSetup setup;
    ferry_x86_load_kernel(mem, &cfg, &setup, &error);
    g_assert_no_error(error);
    g_assert_cmpint(setup.format, ==, FERRY_KERNEL_PVH);
    g_assert_cmpuint(setup.entry, ==, 0x100010);
    g_assert_cmpuint(mem->base[0x100000], ==, 0x90);

    FerryHvmStartInfo si;
    memcpy(&si, mem->base + setup.boot_info, sizeof(si));
    g_assert_cmpuint(si.magic, ==, FERRY_HVM_START_MAGIC);
    g_assert_cmpuint(si.version, ==, 1);
    g_assert_cmpuint(si.rsdp_paddr, ==, 0xe0000);
    g_assert_cmpstr((const char *) mem->base + si.cmdline_paddr, ==, "ferry.quiet");
    g_assert_cmpuint(si.nr_modules, ==, 1);
    FerryHvmModlistEntry mod;
    memcpy(&mod, mem->base + si.modlist_paddr, sizeof(mod));
    g_assert_cmpuint(mod.size, ==, sizeof(initrd));
    g_assert_cmpmem(ferry_guest_memory_hva(mem, mod.paddr, mod.size), mod.size, initrd,
                    sizeof(initrd));
    g_assert_cmpuint(si.memmap_entries, ==, 4);
    FerryHvmMemmapEntry last;
    memcpy(&last, mem->base + si.memmap_paddr + 3 * sizeof(last), sizeof(last));
    g_assert_cmpuint(last.addr, ==, 4 * FERRY_GIB);
    g_assert_cmpuint(last.size, ==, 3 * FERRY_GIB);
    g_assert_cmpuint(last.type, ==, 1);
}

static void test_pvh_errors(void)
{
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(32 * FERRY_MIB, NULL);
    g_autoptr(GByteArray) nonote = fake_pvh(0x100000, FALSE, 0);
    g_autofree char *p1 = write_tmp("nonote.elf", nonote->data, nonote->len);
    expect_boot_error(mem, p1, NULL, "", FERRY_BOOT_ERROR_FORMAT, "without a PVH entry note");

    g_autoptr(GByteArray) high = fake_pvh(64 * FERRY_MIB, TRUE, 0x100000);
    g_autofree char *p2 = write_tmp("high.elf", high->data, high->len);
    expect_boot_error(mem, p2, NULL, "", FERRY_BOOT_ERROR_SPACE, "does not fit");

    g_autoptr(GByteArray) low = fake_pvh(0x7000, TRUE, 0x7000);
    g_autofree char *p3 = write_tmp("low.elf", low->data, low->len);
    expect_boot_error(mem, p3, NULL, "", FERRY_BOOT_ERROR_FORMAT, "below 1 MiB");

    /* Program headers pointing past the end of the file. */
    g_autoptr(GByteArray) bad = fake_pvh(0x100000, TRUE, 0x100000);
    ((Elf64_Ehdr *) bad->data)->e_phoff = 0x10000;
    g_autofree char *p4 = write_tmp("bad.elf", bad->data, bad->len);
    expect_boot_error(mem, p4, NULL, "", FERRY_BOOT_ERROR_FORMAT, "malformed ELF");

    g_autoptr(GByteArray) seg = fake_pvh(0x100000, TRUE, 0x100000);
    ((Elf64_Phdr *) (seg->data + sizeof(Elf64_Ehdr)))[0].p_filesz = 1ULL << 40;
    g_autofree char *p5 = write_tmp("seg.elf", seg->data, seg->len);
    expect_boot_error(mem, p5, NULL, "", FERRY_BOOT_ERROR_FORMAT, "past the end");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("ferry-test-boot-XXXXXX", NULL);
    g_test_add_func("/boot/e820", test_e820);
    g_test_add_func("/boot/memory-layout", test_memory_layout);
    g_test_add_func("/boot/memory-too-big", test_memory_too_big);
    g_test_add_func("/boot/memory-dirty", test_memory_dirty);
    g_test_add_func("/boot/bzimage", test_bzimage);
    g_test_add_func("/boot/bzimage-errors", test_bzimage_errors);
    g_test_add_func("/boot/pvh", test_pvh);
    g_test_add_func("/boot/pvh-errors", test_pvh_errors);
    int r = g_test_run();
    GDir *dir = g_dir_open(tmpdir, 0, NULL);
    for (const char *name; dir && (name = g_dir_read_name(dir));) {
        g_autofree char *path = g_build_filename(tmpdir, name, NULL);
        g_unlink(path);
    }
    if (dir)
        g_dir_close(dir);
    g_rmdir(tmpdir);
    g_free(tmpdir);
    return r;
}

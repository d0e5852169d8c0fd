#include "memory.h"

#include "arch/x86/layout.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

G_DEFINE_QUARK(ferry-memory-error-quark, ferry_memory_error)

static void add_region(FerryGuestMemory *mem, uint64_t gpa, uint64_t size, uint64_t offset)
{
    FerryMemRegion *r = &mem->regions[mem->nr_regions];
    r->gpa = gpa;
    r->size = size;
    r->fd_offset = offset;
    r->hva = mem->base + offset;
    r->slot = mem->nr_regions;
    r->vmm_dirty = g_new0(uint64_t, (size / FERRY_PAGE_SIZE + 63) / 64);
    mem->nr_regions++;
}

FerryGuestMemory *ferry_guest_memory_new(uint64_t ram_bytes, GError **error)
{
    if (ram_bytes == 0 || ram_bytes % 4096) {
        g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SIZE,
                    "guest memory must be a positive multiple of 4 KiB, not %" G_GUINT64_FORMAT
                    " bytes",
                    ram_bytes);
        return NULL;
    }

    struct sysinfo si;
    if (sysinfo(&si) == 0) {
        uint64_t host = ((uint64_t) si.totalram + si.totalswap) * si.mem_unit;
        if (ram_bytes > host) {
            g_autofree char *want = g_format_size_full(ram_bytes, G_FORMAT_SIZE_IEC_UNITS);
            g_autofree char *have = g_format_size_full(host, G_FORMAT_SIZE_IEC_UNITS);
            g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SIZE,
                        "guest memory of %s is more than this host can give (%s of RAM and "
                        "swap in all); choose a smaller --memory",
                        want, have);
            return NULL;
        }
    }

    g_autoptr(FerryGuestMemory) mem = g_new0(FerryGuestMemory, 1);
    mem->memfd = memfd_create("ferry-guest-ram", MFD_CLOEXEC);
    if (mem->memfd < 0) {
        g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SYSTEM,
                    "cannot create guest memory: memfd_create: %s", g_strerror(errno));
        return NULL;
    }
    if (ftruncate(mem->memfd, (off_t) ram_bytes) < 0) {
        g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SIZE,
                    "cannot size guest memory to %" G_GUINT64_FORMAT " bytes: %s", ram_bytes,
                    g_strerror(errno));
        return NULL;
    }
    void *p = mmap(NULL, ram_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                   mem->memfd, 0);
    if (p == MAP_FAILED) {
        g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SIZE,
                    "cannot map %" G_GUINT64_FORMAT " bytes of guest memory: %s", ram_bytes,
                    g_strerror(errno));
        return NULL;
    }
    /* Transparent huge pages cut the cost of first-touch faults and TLB misses several-fold;
     * shmem gets them when the host allows it (transparent_hugepage/shmem_enabled "advise"
     * or "within_size"; docs/boot.md).  Without that, this advice changes nothing. */
    madvise(p, ram_bytes, MADV_HUGEPAGE);
    mem->base = p;
    mem->total = ram_bytes;

    uint64_t low = MIN(ram_bytes, FERRY_LOW_RAM_MAX);
    add_region(mem, 0, low, 0);
    if (ram_bytes > low)
        add_region(mem, FERRY_HIGH_RAM_START, ram_bytes - low, low);
    return g_steal_pointer(&mem);
}

gboolean ferry_guest_memory_register(FerryGuestMemory *mem, int vm_fd, GError **error)
{
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        struct kvm_userspace_memory_region kr = {
            .slot = r->slot,
            .flags = 0,
            .guest_phys_addr = r->gpa,
            .memory_size = r->size,
            .userspace_addr = (uint64_t) (uintptr_t) r->hva,
        };
        if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &kr) < 0) {
            g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SYSTEM,
                        "KVM_SET_USER_MEMORY_REGION for slot %u (GPA 0x%" G_GINT64_MODIFIER
                        "x, %" G_GUINT64_FORMAT " bytes): %s",
                        r->slot, r->gpa, r->size, g_strerror(errno));
            return FALSE;
        }
    }
    return TRUE;
}

static const FerryMemRegion *find_region(const FerryGuestMemory *mem, uint64_t gpa)
{
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        if (gpa - r->gpa < r->size)
            return r;
    }
    return NULL;
}

void *ferry_guest_memory_hva(const FerryGuestMemory *mem, uint64_t gpa, uint64_t len)
{
    const FerryMemRegion *r = find_region(mem, gpa);
    if (!r || len > r->size - (gpa - r->gpa))
        return NULL;
    return r->hva + (gpa - r->gpa);
}

/* Walks [@gpa, @gpa+@len) region by region, calling @fn on each piece. */
static gboolean for_each_piece(const FerryGuestMemory *mem, uint64_t gpa, uint64_t len,
                               void (*fn)(uint8_t *hva, uint64_t done, uint64_t n, void *ctx),
                               void *ctx, GError **error)
{
    uint64_t done = 0;
    while (done < len) {
        const FerryMemRegion *r = find_region(mem, gpa + done);
        if (!r) {
            g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE,
                        "guest-physical range 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                        "x is not all RAM (0x%" G_GINT64_MODIFIER "x is not)",
                        gpa, len, gpa + done);
            return FALSE;
        }
        uint64_t off = gpa + done - r->gpa;
        uint64_t n = MIN(len - done, r->size - off);
        fn(r->hva + off, done, n, ctx);
        done += n;
    }
    return TRUE;
}

static void copy_in(uint8_t *hva, uint64_t done, uint64_t n, void *ctx)
{
    memcpy(hva, (const uint8_t *) ctx + done, n);
}

static void set_dirty_bits(FerryMemRegion *r, uint64_t first_page, uint64_t last_page)
{
    for (uint64_t p = first_page; p <= last_page; p++)
        __atomic_fetch_or(&r->vmm_dirty[p / 64], 1ULL << (p % 64), __ATOMIC_RELAXED);
}

void ferry_guest_memory_mark_dirty(FerryGuestMemory *mem, uint64_t gpa, uint64_t len)
{
    if (len == 0)
        return;
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        FerryMemRegion *r = &mem->regions[i];
        uint64_t start = MAX(gpa, r->gpa);
        uint64_t end = MIN(gpa + len, r->gpa + r->size); /* exclusive */
        if (gpa + len < gpa)                           /* wrapped: clamp to the region */
            end = r->gpa + r->size;
        if (start >= end)
            continue;
        set_dirty_bits(r, (start - r->gpa) / FERRY_PAGE_SIZE, (end - 1 - r->gpa) / FERRY_PAGE_SIZE);
    }
}

void ferry_guest_memory_take_vmm_dirty(FerryGuestMemory *mem, unsigned index, uint64_t *out)
{
    FerryMemRegion *r = &mem->regions[index];
    uint64_t words = (r->size / FERRY_PAGE_SIZE + 63) / 64;
    for (uint64_t w = 0; w < words; w++)
        out[w] = __atomic_exchange_n(&r->vmm_dirty[w], 0, __ATOMIC_RELAXED);
}

static void copy_out(uint8_t *hva, uint64_t done, uint64_t n, void *ctx)
{
    memcpy((uint8_t *) ctx + done, hva, n);
}

gboolean ferry_guest_memory_write(FerryGuestMemory *mem, uint64_t gpa, const void *buf,
                                  uint64_t len, GError **error)
{
    if (!for_each_piece(mem, gpa, len, copy_in, (void *) buf, error))
        return FALSE;
    ferry_guest_memory_mark_dirty(mem, gpa, len);
    return TRUE;
}

gboolean ferry_guest_memory_read(const FerryGuestMemory *mem, uint64_t gpa, void *buf,
                                 uint64_t len, GError **error)
{
    return for_each_piece(mem, gpa, len, copy_out, buf, error);
}

void ferry_guest_memory_discard(FerryGuestMemory *mem)
{
    /* Punching the whole memfd frees the pages; the mapping then reads zeros. */
    if (fallocate(mem->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                  (off_t) mem->total) < 0)
        memset(mem->base, 0, mem->total);
}

uint64_t ferry_guest_memory_low_end(const FerryGuestMemory *mem)
{
    return mem->regions[0].size;
}

void ferry_guest_memory_free(FerryGuestMemory *mem)
{
    if (!mem)
        return;
    if (mem->base)
        munmap(mem->base, mem->total);
    if (mem->memfd >= 0)
        close(mem->memfd);
    for (unsigned i = 0; i < mem->nr_regions; i++)
        g_free(mem->regions[i].vmm_dirty);
    g_free(mem);
}

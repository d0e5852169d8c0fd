/*
 * Dirty-page tracking (dirty.h).
 *
 * Why no write is lost
 * --------------------
 * A page is sent correctly if, for every write to it, either the copy the engine sends reads
 * memory after the write, or the page is reported dirty again later (and sent again).  The
 * order of operations for a page is: its dirty bit is fetched (sync) → KVM's bit is cleared
 * and the page write-protected again (take_chunk, before it returns) → the engine copies it.
 *
 * - A guest write after the clear hits a write-protected page (or, with PML, a clean EPT
 *   entry): KVM records it in the slot's bitmap and the next KVM_GET_DIRTY_LOG reports it.
 *   KVM_CLEAR_DIRTY_LOG only clears the bits passed in *and* flushes the TLBs before it
 *   returns, so no vCPU keeps a writable translation past that point.
 * - A guest write before the clear also happened before the copy, which therefore reads it.
 * - A write between the clear and the copy is both copied and reported again: a duplicate,
 *   never a loss.  The opposite order (copy, then clear) would lose a write landing between
 *   the two; that is why take_chunk() clears before the caller copies.
 * - Bits KVM set after the last sync are not in the mask take_chunk() passes to
 *   KVM_CLEAR_DIRTY_LOG, so they stay in KVM's bitmap for the next sync.
 * - Without KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_GET_DIRTY_LOG itself clears the bits and
 *   re-protects the pages before returning, so "get" and "clear" are one step that still
 *   precedes the copy.
 * - VMM writes (device models) do not go through KVM.  ferry_guest_memory_write() stores the
 *   data and then sets the page's bit in the region's vmm_dirty bitmap (so must every in-place
 *   writer that calls ferry_guest_memory_mark_dirty(): mark *after* the data is written).
 *   sync() takes those bits with an atomic exchange: a bit taken was set after its data, so
 *   the later copy reads the data; a bit set after the exchange stays for the next sync.
 * - PML (Intel) buffers dirty GPAs per vCPU until the next VM exit; KVM_GET_DIRTY_LOG kicks
 *   the vCPUs to flush them, but a vCPU still in KVM_RUN may add entries later.  Such a write
 *   happened after the clear and is reported by a later sync; the final sync runs with every
 *   vCPU out of KVM_RUN (paused), when all buffers have been flushed.
 *
 * Concurrency: the pending bitmaps are only changed with atomic word operations (fetch_or in
 * sync, exchange in take_chunk), so sync() may run while take_chunk() hands out other (or
 * even the same) words: at worst a bit fetched by sync just before take_chunk cleared it in
 * KVM is reported once more.  The pending count is an atomic counter kept equal to the
 * number of set bits.
 */
#include "migration/dirty.h"

#include "util/log.h"

#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>

struct FerryDirtyLog {
    FerryGuestMemory *mem; /* borrowed */
    int vm_fd;             /* borrowed */
    gboolean manual;       /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled by us */
    uint64_t *pending_bits[FERRY_MAX_RAM_REGIONS]; /* per region, atomic words */
    uint64_t *scratch[FERRY_MAX_RAM_REGIONS];      /* sync's buffer, same size */
    uint64_t pending;                              /* atomic: set bits in pending_bits */
};

static uint64_t region_pages(const FerryMemRegion *r)
{
    return r->size / FERRY_PAGE_SIZE;
}

static uint64_t region_words(const FerryMemRegion *r)
{
    return (region_pages(r) + 63) / 64;
}

/* KVM_SET_USER_MEMORY_REGION for region @r again, with @flags (0 or KVM_MEM_LOG_DIRTY_PAGES). */
static gboolean set_slot_flags(int vm_fd, const FerryMemRegion *r, uint32_t flags, GError **error)
{
    struct kvm_userspace_memory_region kr = {
        .slot = r->slot,
        .flags = flags,
        .guest_phys_addr = r->gpa,
        .memory_size = r->size,
        .userspace_addr = (uint64_t) (uintptr_t) r->hva,
    };
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &kr) == 0)
        return TRUE;
    g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SYSTEM,
                "cannot turn dirty logging %s for memory slot %u (GPA 0x%" G_GINT64_MODIFIER
                "x, %" G_GUINT64_FORMAT " bytes): KVM_SET_USER_MEMORY_REGION: %s",
                flags ? "on" : "off", r->slot, r->gpa, r->size, g_strerror(errno));
    return FALSE;
}

/* Sets KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 to @flags (0 = off); FALSE if KVM refuses. */
static gboolean set_manual_protect(int vm_fd, uint64_t flags)
{
    struct kvm_enable_cap cap = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .args = {flags}};
    return ioctl(vm_fd, KVM_ENABLE_CAP, &cap) == 0;
}

/* ORs @bits (@words words) into @dst atomically; returns how many bits were newly set. */
static uint64_t merge_bits(uint64_t *dst, const uint64_t *bits, uint64_t words)
{
    uint64_t added = 0;
    for (uint64_t w = 0; w < words; w++) {
        if (!bits[w])
            continue;
        uint64_t old = __atomic_fetch_or(&dst[w], bits[w], __ATOMIC_RELAXED);
        added += (uint64_t) __builtin_popcountll(bits[w] & ~old);
    }
    return added;
}

static void free_log(FerryDirtyLog *log)
{
    for (unsigned i = 0; i < FERRY_MAX_RAM_REGIONS; i++) {
        g_free(log->pending_bits[i]);
        g_free(log->scratch[i]);
    }
    g_free(log);
}

FerryDirtyLog *ferry_dirty_log_start(FerryGuestMemory *mem, int vm_fd, GError **error)
{
    FerryDirtyLog *log = g_new0(FerryDirtyLog, 1);
    log->mem = mem;
    log->vm_fd = vm_fd;

    /* The capability's value is the set of flags KVM accepts (api.rst).  It must be enabled
     * before KVM_MEM_LOG_DIRTY_PAGES is set on a slot: KVM decides when the flag is set
     * whether to write-protect the slot (and whether to fill its bitmap). */
    int caps = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (caps > 0 && (caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
        uint64_t flags = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (caps & KVM_DIRTY_LOG_INITIALLY_SET);
        if (set_manual_protect(vm_fd, flags))
            log->manual = TRUE;
        else if (set_manual_protect(vm_fd, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
            log->manual = TRUE;
    }

    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        log->pending_bits[i] = g_new0(uint64_t, region_words(r));
        log->scratch[i] = g_new0(uint64_t, region_words(r));
        if (!set_slot_flags(vm_fd, r, KVM_MEM_LOG_DIRTY_PAGES, error)) {
            for (unsigned j = 0; j < i; j++)
                set_slot_flags(vm_fd, &mem->regions[j], 0, NULL);
            if (log->manual)
                set_manual_protect(vm_fd, 0);
            free_log(log);
            return NULL;
        }
    }

    /* Round 0 is all of RAM: every page pending, earlier VMM marks included in it. */
    uint64_t total = 0;
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        uint64_t pages = region_pages(r), words = region_words(r);
        ferry_guest_memory_take_vmm_dirty(mem, i, log->scratch[i]);
        memset(log->pending_bits[i], 0xff, words * sizeof(uint64_t));
        if (pages % 64)
            log->pending_bits[i][words - 1] = (1ULL << (pages % 64)) - 1;
        total += pages;
    }
    __atomic_store_n(&log->pending, total, __ATOMIC_RELEASE);
    return log;
}

gboolean ferry_dirty_log_sync(FerryDirtyLog *log, uint64_t *pending, GError **error)
{
    FerryGuestMemory *mem = log->mem;
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        uint64_t words = region_words(r);
        uint64_t *buf = log->scratch[i];

        struct kvm_dirty_log dl = {.slot = r->slot, .dirty_bitmap = buf};
        memset(buf, 0, words * sizeof(uint64_t));
        if (ioctl(log->vm_fd, KVM_GET_DIRTY_LOG, &dl) < 0) {
            g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SYSTEM,
                        "cannot read the dirty log of memory slot %u (GPA 0x%" G_GINT64_MODIFIER
                        "x, %" G_GUINT64_FORMAT " bytes): KVM_GET_DIRTY_LOG: %s",
                        r->slot, r->gpa, r->size, g_strerror(errno));
            return FALSE;
        }
        uint64_t added = merge_bits(log->pending_bits[i], buf, words);

        ferry_guest_memory_take_vmm_dirty(mem, i, buf);
        /* Pairs with the writer's store-then-mark: the copy after take_chunk reads the data. */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        added += merge_bits(log->pending_bits[i], buf, words);
        __atomic_fetch_add(&log->pending, added, __ATOMIC_RELAXED);
    }
    if (pending)
        *pending = ferry_dirty_log_pending(log);
    return TRUE;
}

gboolean ferry_dirty_log_take_chunk(FerryDirtyLog *log, unsigned region, uint64_t first_page,
                                    uint64_t npages, uint64_t *out, uint64_t *count, GError **error)
{
    FerryGuestMemory *mem = log->mem;
    if (region >= mem->nr_regions) {
        g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE,
                    "dirty log: no RAM region %u (there are %u)", region, mem->nr_regions);
        return FALSE;
    }
    const FerryMemRegion *r = &mem->regions[region];
    uint64_t pages = region_pages(r);
    if (first_page % 64 || npages == 0 || first_page >= pages || npages > pages - first_page ||
        (npages % 64 && first_page + npages != pages)) {
        g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE,
                    "dirty log: pages %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                    " of RAM region %u (%" G_GUINT64_FORMAT " pages) are not a valid chunk: "
                    "the start must be a multiple of 64 and the length a multiple of 64 or "
                    "reach the region's end",
                    first_page, npages, region, pages);
        return FALSE;
    }

    uint64_t words = (npages + 63) / 64;
    uint64_t *bits = log->pending_bits[region] + first_page / 64;
    uint64_t n = 0;
    for (uint64_t w = 0; w < words; w++) {
        out[w] = __atomic_exchange_n(&bits[w], 0, __ATOMIC_ACQUIRE);
        n += (uint64_t) __builtin_popcountll(out[w]);
    }

    if (log->manual && n) {
        struct kvm_clear_dirty_log cl = {
            .slot = r->slot,
            .num_pages = (uint32_t) npages,
            .first_page = first_page,
            .dirty_bitmap = out,
        };
        if (npages > UINT32_MAX || ioctl(log->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl) < 0) {
            int e = npages > UINT32_MAX ? EINVAL : errno;
            /* Nothing handed out: the bits go back (sync may have set some meanwhile). */
            __atomic_fetch_sub(&log->pending, n, __ATOMIC_RELAXED);
            __atomic_fetch_add(&log->pending, merge_bits(bits, out, words), __ATOMIC_RELAXED);
            g_set_error(error, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_SYSTEM,
                        "cannot re-protect pages %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                        " of memory slot %u: KVM_CLEAR_DIRTY_LOG: %s",
                        first_page, npages, r->slot, g_strerror(e));
            return FALSE;
        }
    }
    __atomic_fetch_sub(&log->pending, n, __ATOMIC_RELAXED);
    if (count)
        *count = n;
    return TRUE;
}

uint64_t ferry_dirty_log_pending(const FerryDirtyLog *log)
{
    return __atomic_load_n(&log->pending, __ATOMIC_RELAXED);
}

gboolean ferry_dirty_log_manual_protect(const FerryDirtyLog *log)
{
    return log->manual;
}

void ferry_dirty_log_stop(FerryDirtyLog *log)
{
    if (!log)
        return;
    for (unsigned i = 0; i < log->mem->nr_regions; i++) {
        g_autoptr(GError) error = NULL;
        if (!set_slot_flags(log->vm_fd, &log->mem->regions[i], 0, &error))
            ferry_log("%s; the guest runs on, slowed by the logging", error->message);
    }
    /* Back to KVM's default, so a later start begins from the same state. */
    if (log->manual && !set_manual_protect(log->vm_fd, 0))
        ferry_log("cannot switch off KVM's manual dirty-log protection: %s", g_strerror(errno));
    free_log(log);
}

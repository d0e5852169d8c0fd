/*
 * Dirty-page tracking for live migration: which 4 KiB pages of guest RAM changed since they
 * were last handed to the migration engine.
 *
 * Two sources are merged: KVM's dirty log of every memslot (writes by the vCPUs, and by KVM
 * itself, e.g. kvmclock pages), enabled by setting KVM_MEM_LOG_DIRTY_PAGES on each slot, and
 * the VMM-side bitmap of each region (FerryMemRegion.vmm_dirty: writes by device models,
 * memory.h).  Source of the KVM API: the kernel's Documentation/virt/kvm/api.rst, sections
 * KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG and KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.
 *
 * With KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (kernel 5.x and later) KVM_GET_DIRTY_LOG only reads
 * the log and pages are re-protected explicitly, 64-page chunk by chunk, by
 * ferry_dirty_log_take_chunk() just before they are copied.  Without it KVM_GET_DIRTY_LOG
 * reads, clears and re-protects the whole slot at once and take_chunk() has nothing to tell
 * KVM.  Both give the same guarantees (dirty.c, "Why no write is lost").
 *
 * Round 0: right after ferry_dirty_log_start() EVERY page of guest RAM is pending.  The
 * engine's first pass is simply take_chunk() over all of RAM, copying each chunk from the
 * memfd after the call; later rounds are sync() then take_chunk() over what is pending.  (With
 * KVM_DIRTY_LOG_INITIALLY_SET, which Ferry uses where KVM has it, KVM itself starts with every
 * bit set and only write-protects a chunk when take_chunk() clears it, so starting the log is
 * cheap even for a large guest; without it the log starts empty and this module sets every
 * page pending itself.  Either way a first pass that did not go through take_chunk() would be
 * sent a second time.)
 *
 * Units: pages are 4 KiB (FERRY_PAGE_SIZE) and numbered from the start of their region;
 * bitmaps hold bit (p % 64) of word (p / 64) for page p, as KVM's do.
 *
 * Threads: start, sync, pending and stop belong to one migration thread.  take_chunk() may be
 * called concurrently from several threads (and concurrently with sync()) as long as the
 * ranges are disjoint; 64-page alignment makes their bitmap words disjoint too.
 */
#pragma once

#include "memory.h"

#include <glib.h>
#include <stdint.h>

typedef struct FerryDirtyLog FerryDirtyLog;

/*
 * Turns dirty logging on for every region of @mem on @vm_fd (the KVM VM @mem was registered
 * on with ferry_guest_memory_register()).  Enables KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (with
 * KVM_DIRTY_LOG_INITIALLY_SET where KVM offers it) before setting KVM_MEM_LOG_DIRTY_PAGES on
 * the slots, as api.rst requires.  Clears the VMM-side bitmaps and makes every page pending
 * (round 0, above).  Pages written from now on are recorded.  @mem and @vm_fd are borrowed
 * and must outlive the log.  Errors: FERRY_MEMORY_ERROR_SYSTEM naming the slot (then logging
 * is off again).  Free with ferry_dirty_log_stop().
 */
FerryDirtyLog *ferry_dirty_log_start(FerryGuestMemory *mem, int vm_fd, GError **error);

/*
 * Fetches KVM's log of every slot (KVM_GET_DIRTY_LOG) and takes the VMM-side bitmaps
 * (ferry_guest_memory_take_vmm_dirty), adding both to the log's per-region bitmaps, where
 * bits accumulate until take_chunk() hands them out.  Sets @pending (nullable) to the number
 * of pages now pending in all regions.  Errors: FERRY_MEMORY_ERROR_SYSTEM naming the slot.
 */
gboolean ferry_dirty_log_sync(FerryDirtyLog *log, uint64_t *pending, GError **error);

/*
 * Hands out the pending bits of region @region, pages [@first_page, @first_page + @npages):
 * @first_page a multiple of 64, @npages > 0 and a multiple of 64 unless the range ends at the
 * region's end.  @out receives @npages bits (rounded up to whole words; bits past @npages are
 * 0) and the bits are cleared in the log.  Before returning, exactly those pages are
 * re-protected in KVM (KVM_CLEAR_DIRTY_LOG), so any write after this call shows in the next
 * sync(): the caller copies the pages afterwards.  Sets @count (nullable) to the number of
 * pages handed out.  Errors: FERRY_MEMORY_ERROR_RANGE (a bad range; nothing handed out),
 * FERRY_MEMORY_ERROR_SYSTEM (KVM refused to re-protect: the bits go back into the log and the
 * migration should fail).
 */
gboolean ferry_dirty_log_take_chunk(FerryDirtyLog *log, unsigned region, uint64_t first_page,
                                    uint64_t npages, uint64_t *out, uint64_t *count,
                                    GError **error);

/* Pages pending in all regions (set by start and sync, reduced by take_chunk). */
uint64_t ferry_dirty_log_pending(const FerryDirtyLog *log);

/* TRUE if KVM re-protects per chunk (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is in use). */
gboolean ferry_dirty_log_manual_protect(const FerryDirtyLog *log);

/*
 * Turns dirty logging off (the slots lose KVM_MEM_LOG_DIRTY_PAGES, manual protection is
 * switched off again) and frees @log.  Failures are logged, not returned: the guest keeps
 * running either way, only slower while KVM still logs.  NULL-safe.
 */
void ferry_dirty_log_stop(FerryDirtyLog *log);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryDirtyLog, ferry_dirty_log_stop)

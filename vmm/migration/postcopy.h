/*
 * The destination side of post-copy migration: guest RAM whose missing pages are fetched on
 * demand.  After the switch the guest runs before all of its RAM arrived; a page that is
 * touched while missing — by a vCPU through KVM, or by a device thread of the VMM — blocks
 * the toucher in the kernel until a receiving thread places the page's contents.
 *
 * Built on userfaultfd (Linux Documentation/admin-guide/mm/userfaultfd.rst): every RAM
 * region of the guest memory's single mapping is registered for missing-page faults; a fault
 * thread reads the fault messages and turns each newly missing page into a request (the
 * caller sends it to the source as a PAGE_REQUEST); receiving threads place pages with
 * ferry_postcopy_place() (UFFDIO_COPY / UFFDIO_ZEROPAGE), which wakes whoever waits.
 *
 * Sizes: GPAs and lengths are in bytes; pages are 4 KiB (FERRY_PAGE_SIZE).
 */
#pragma once

#include "memory.h"

#include <glib.h>
#include <stdint.h>

#define FERRY_POSTCOPY_ERROR (ferry_postcopy_error_quark())
GQuark ferry_postcopy_error_quark(void);

typedef enum {
    FERRY_POSTCOPY_ERROR_UNAVAILABLE, /* no userfaultfd, or one without shared-memory support */
    FERRY_POSTCOPY_ERROR_SYSTEM,      /* a userfaultfd ioctl, fallocate, eventfd... failed */
    FERRY_POSTCOPY_ERROR_RANGE,       /* a GPA that is not a page of guest RAM */
} FerryPostcopyError;

typedef struct FerryPostcopy FerryPostcopy;

/*
 * Called with page-aligned GPAs (bytes) of pages some thread (a vCPU, through KVM, or a
 * device thread of the VMM) faulted on while they were missing and that were not requested
 * before; @gpas holds @n >= 1 of them (at most 64), valid during the call only.  Called from
 * the fault thread, and from the thread calling ferry_postcopy_rerequest_waiting(); never
 * twice at once.  Must not block long (the fault thread serves every fault) and must not call
 * ferry_postcopy_rerequest_waiting() or ferry_postcopy_free().  Typically queues a
 * PAGE_REQUEST for the return path.
 */
typedef void (*FerryPostcopyRequestFn)(void *opaque, const uint64_t *gpas, unsigned n);

/*
 * Reserves a low file descriptor for the userfaultfd of a later post-copy; call it first
 * thing in main(), before KVM is opened.  When a process dies, the kernel closes its
 * descriptors in ascending order; if the userfaultfd came after KVM's, KVM's async
 * page-fault workers waiting on a missing page would block the VM's destruction for ever
 * (an unkillable process after kill -9 in post-copy).  Closed first, the userfaultfd wakes
 * them.  Idempotent; the reservation is used by the first ferry_postcopy_start().
 */
void ferry_postcopy_reserve_fd(void);

/*
 * Starts post-copy on @mem (borrowed; must outlive the FerryPostcopy):
 *  - registers every RAM region with a new userfaultfd for missing pages
 *    (UFFDIO_REGISTER_MODE_MISSING, with UFFD_FEATURE_MISSING_SHMEM: guest RAM is a memfd);
 *  - takes @present (nullable = nothing present): per region i, @present[i] (nullable = no
 *    page of that region) is a bitmap of region size / 4 KiB bits, bit p of word p / 64 set
 *    = page p already holds its final contents in the memfd (a hole there means zero).  It
 *    is copied;
 *  - punches out of the memfd (fallocate PUNCH_HOLE) every page that is not present but
 *    holds data (a stale pre-copy copy), so that touching it faults like any missing page;
 *  - starts the fault thread, which calls @request (with @opaque) for missing pages.
 * A present page with no data in the memfd (a hole: its final contents are zero) also
 * faults once registered; the fault thread maps a zero page for it (UFFDIO_ZEROPAGE) without
 * a request — the only fault it resolves itself; it never places data.
 * Errors: FERRY_POSTCOPY_ERROR_UNAVAILABLE when this kernel or process cannot use
 * userfaultfd (the message says why and what to change), _SYSTEM for failed calls (e.g. the
 * memory is already registered by another post-copy: EBUSY).  After a failure some stale
 * pages may already be punched out (they were stale anyway; the guest must not run).
 */
FerryPostcopy *ferry_postcopy_start(FerryGuestMemory *mem, uint64_t *const present[],
                                    FerryPostcopyRequestFn request, void *opaque, GError **error);

/*
 * Places the 4 KiB page at the page-aligned @gpa with the contents @data (4 KiB, not inside
 * guest RAM; NULL = a zero page), atomically (UFFDIO_COPY / UFFDIO_ZEROPAGE: no thread sees
 * a partial page) and wakes every thread waiting on it.  A page already present is skipped
 * (TRUE): its contents are not changed.  Thread-safe: several receiving threads may place
 * the same page at once.  Errors: FERRY_POSTCOPY_ERROR_RANGE (@gpa not a page of guest RAM),
 * _SYSTEM (the ioctl failed; the page stays missing).
 */
gboolean ferry_postcopy_place(FerryPostcopy *pc, uint64_t gpa, const void *data, GError **error);

/* Pages still missing (not yet placed nor present at start).  Any thread. */
uint64_t ferry_postcopy_missing(FerryPostcopy *pc);

/*
 * Appends to @ranges (GArray of FerryStreamRange, migration/stream.h) the missing pages as
 * maximal ranges within each region (bytes), in GPA order: for recovery, the destination
 * asks the source again for all it lacks.  A snapshot: pages placed meanwhile may be listed.
 */
void ferry_postcopy_missing_ranges(FerryPostcopy *pc, GArray *ranges);

/* Pages requested so far (each page counts once, re-requests not counted).  Any thread. */
uint64_t ferry_postcopy_requests(FerryPostcopy *pc);

/* Fault messages read so far (a page faulted on by several threads counts each time). */
uint64_t ferry_postcopy_faults(FerryPostcopy *pc);

/*
 * TRUE once every page is present.  The first TRUE unregisters the memory from userfaultfd:
 * it is ordinary shared memory again (a page punched later reads as zero).  Any thread.
 */
gboolean ferry_postcopy_complete(FerryPostcopy *pc);

/*
 * Calls the request function again for every page that was requested and is still missing,
 * i.e. every page some thread may be waiting on (after the connection that carried the
 * requests broke, they may be lost).  Runs in the caller's thread.
 */
void ferry_postcopy_rerequest_waiting(FerryPostcopy *pc);

/*
 * Stops the fault thread, unregisters the memory and frees @pc (NULL-safe).  A thread still
 * waiting on a missing page is woken by the unregistration (the kernel wakes pending faults
 * of a range it unregisters) and then sees the page as the memfd holds it: zero, since a
 * missing page is a hole.  So free never hangs, but a guest must not run on after a free
 * with missing pages.  No other call on @pc may run during or after it.
 */
void ferry_postcopy_free(FerryPostcopy *pc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryPostcopy, ferry_postcopy_free)

/*
 * Post-copy on the destination (postcopy.h): userfaultfd over the guest RAM memfd.
 *
 * Kernel interface facts relied on (Linux Documentation/admin-guide/mm/userfaultfd.rst,
 * "Creating a userfaultfd", "Initializing a userfaultfd", "Resolving Userfaults", "QEMU/KVM";
 * and the ioctl_userfaultfd(2) / UFFDIO_*(2const) man pages):
 *
 *  - Creating: userfaultfd(2), or /dev/userfaultfd + USERFAULTFD_IOC_NEW.  Without
 *    UFFD_USER_MODE_ONLY the userfaultfd also traps faults the *kernel* takes on the range;
 *    we need that (see KVM below, and syscalls such as read()/write() on guest buffers).  The
 *    syscall then needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd = 1; /dev/userfaultfd
 *    only needs access to the device node.
 *  - UFFDIO_API must be the first ioctl; it enables the requested features or fails.
 *    UFFD_FEATURE_MISSING_SHMEM is what allows MODE_MISSING registrations on shared memory
 *    (tmpfs, memfd_create, MAP_SHARED).
 *  - UFFDIO_REGISTER returns in uffdio_register.ioctls the ioctls usable on the range; we
 *    need UFFDIO_COPY and use UFFDIO_ZEROPAGE when offered (shmem offers it).
 *  - A MODE_MISSING fault on shmem happens when the page is not in the file's page cache (a
 *    hole).  A page that is in the page cache, or swapped out, does not fault.  Hence a
 *    missing page must be a hole, and stale pages are punched out.
 *  - UFFDIO_COPY / UFFDIO_ZEROPAGE are atomic (readers keep faulting until the page is
 *    complete) and by default wake the threads faulting on the range.  On shmem they fail
 *    with EEXIST when the page is already in the page cache (someone placed it first); they
 *    fail with EAGAIN while the address space is changing and should be retried.
 *  - A fault is delivered as a struct uffd_msg (UFFD_EVENT_PAGEFAULT, arg.pagefault.address,
 *    page-aligned unless UFFD_FEATURE_EXACT_ADDRESS) by read(2).  Several threads faulting on
 *    one page give several messages; a fault resolved before it was read gives none (read
 *    returns EAGAIN).  poll(2) on a userfaultfd opened without O_NONBLOCK reports POLLERR,
 *    so ours is non-blocking.
 *  - UFFDIO_UNREGISTER wakes the faults pending on the range it unregisters (they then take
 *    the ordinary fault path: a hole of the memfd reads as zero); closing the userfaultfd
 *    does the same for all of them.
 *  - khugepaged does not collapse a shmem range with holes into a huge page while a
 *    MODE_MISSING VMA maps it (it would fill the holes without a fault).  A hole punched in
 *    the middle of a huge page splits it; should the split fail, the kernel zeroes the range
 *    instead, which we detect (SEEK_DATA) and report.
 *  - Registration is not inherited by fork() without UFFD_FEATURE_EVENT_FORK: a child touching
 *    a missing page through the inherited MAP_SHARED mapping would fill it with zeros.  The
 *    VMM never forks.
 *
 * KVM: a vCPU's access to guest memory ends in the VMM's mapping (the memslots point at it):
 * KVM resolves a guest-physical page through get_user_pages on that HVA, and its own reads
 * and writes of guest memory (emulation, kvmclock, ...) are copy_{from,to}_user on it.  Both
 * fault into the userfaultfd like any access, so the vCPU thread sleeps in the kernel until
 * the page is placed; nothing KVM-specific is needed ("QEMU/KVM": not a line of KVM had to
 * change; async page faults and FOLL_NOWAIT work with userfaults).  Punching a page that KVM
 * had mapped is seen by KVM through its MMU notifier, so KVM never keeps a stale page either.
 */
#include "migration/postcopy.h"

#include "migration/stream.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE           FERRY_PAGE_SIZE
#define BATCH          64    /* fault messages read at once; GPAs per request call */
#define EAGAIN_RETRIES 10000 /* UFFDIO_COPY/ZEROPAGE retries while the mm is changing */
#define PUNCH_TRIES    3     /* a huge page that failed to split may split next time */

/* clang-format off */
G_DEFINE_QUARK(ferry-postcopy-error-quark, ferry_postcopy_error)
/* clang-format on */

/* The source of UFFDIO_COPY for a zero page where UFFDIO_ZEROPAGE is not offered. */
static const uint8_t zero_page[PAGE] __attribute__((aligned(4096)));

typedef struct {
    uint64_t gpa, size, pages;
    uint8_t *hva;
    uint64_t fd_offset;
    /* one bit per page, bit p of word p / 64; changed with atomic operations only */
    uint64_t *present;   /* holds its final contents */
    uint64_t *requested; /* a request went out (cleared never: dedup until rerequest) */
    gboolean registered;
} PcRegion;

struct FerryPostcopy {
    FerryGuestMemory *mem;
    int uffd;
    int stop_fd; /* eventfd: tells the fault thread to return */
    gboolean have_zeropage;
    FerryPostcopyRequestFn request;
    void *opaque;
    unsigned nr;
    PcRegion regions[FERRY_MAX_RAM_REGIONS];
    uint64_t missing;    /* atomic: pages not present */
    uint64_t requests;   /* atomic */
    uint64_t faults;     /* atomic */
    GMutex request_lock; /* one request call at a time */
    GMutex reg_lock;     /* guards registered/unregistering */
    GThread *thread;
};

static uint64_t words_of(uint64_t pages)
{
    return (pages + 63) / 64;
}

static PcRegion *region_of_gpa(FerryPostcopy *pc, uint64_t gpa)
{
    for (unsigned i = 0; i < pc->nr; i++) {
        PcRegion *r = &pc->regions[i];
        if (gpa - r->gpa < r->size)
            return r;
    }
    return NULL;
}

static PcRegion *region_of_hva(FerryPostcopy *pc, uint64_t hva)
{
    for (unsigned i = 0; i < pc->nr; i++) {
        PcRegion *r = &pc->regions[i];
        if (hva - (uint64_t) (uintptr_t) r->hva < r->size)
            return r;
    }
    return NULL;
}

static gboolean test_bit(uint64_t *map, uint64_t p)
{
    return (__atomic_load_n(&map[p / 64], __ATOMIC_ACQUIRE) >> (p % 64)) & 1;
}

/* Sets bit @p; returns whether it was set before. */
static gboolean set_bit(uint64_t *map, uint64_t p)
{
    uint64_t bit = 1ull << (p % 64);
    return (__atomic_fetch_or(&map[p / 64], bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

static void mark_present(FerryPostcopy *pc, PcRegion *r, uint64_t p)
{
    if (!set_bit(r->present, p))
        __atomic_fetch_sub(&pc->missing, 1, __ATOMIC_RELEASE);
}

/*
 * Fills the missing page at @hva with @data (NULL = zeros) and wakes its waiters.  Returns 0,
 * also when the page was already in the page cache (EEXIST: placed by someone else), or a
 * negative errno.
 */
static int fill_page(FerryPostcopy *pc, uint8_t *hva, const void *data)
{
    for (unsigned tries = 0;; tries++) {
        int rc, err;
        if (data || !pc->have_zeropage) {
            struct uffdio_copy c = {
                .dst = (uint64_t) (uintptr_t) hva,
                .src = (uint64_t) (uintptr_t) (data ? data : zero_page),
                .len = PAGE,
            };
            rc = ioctl(pc->uffd, UFFDIO_COPY, &c);
        } else {
            struct uffdio_zeropage z = {
                .range = {.start = (uint64_t) (uintptr_t) hva, .len = PAGE}};
            rc = ioctl(pc->uffd, UFFDIO_ZEROPAGE, &z);
        }
        if (rc == 0)
            return 0;
        err = errno;
        if (err == EEXIST) {
            /*
             * Whoever filled it woke the waiters of that moment (a fault re-checks the page
             * after queueing itself, so none is missed).  Waking again costs nothing and
             * covers a page that appeared another way.
             */
            struct uffdio_range wr = {.start = (uint64_t) (uintptr_t) hva, .len = PAGE};
            ioctl(pc->uffd, UFFDIO_WAKE, &wr);
            return 0;
        }
        if (err == EAGAIN && tries < EAGAIN_RETRIES) {
            sched_yield();
            continue;
        }
        return -err;
    }
}

gboolean ferry_postcopy_place(FerryPostcopy *pc, uint64_t gpa, const void *data, GError **error)
{
    PcRegion *r = region_of_gpa(pc, gpa);
    if (!r || gpa % PAGE) {
        g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_RANGE,
                    "cannot place a page at GPA 0x%" G_GINT64_MODIFIER
                    "x: not the start of a 4 KiB page of guest RAM",
                    gpa);
        return FALSE;
    }
    uint64_t p = (gpa - r->gpa) / PAGE;
    if (test_bit(r->present, p))
        return TRUE;
    int rc = fill_page(pc, r->hva + p * PAGE, data);
    if (rc < 0) {
        g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM,
                    "cannot place the guest page at GPA 0x%" G_GINT64_MODIFIER "x (%s): %s", gpa,
                    data || !pc->have_zeropage ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE",
                    g_strerror(-rc));
        return FALSE;
    }
    mark_present(pc, r, p);
    return TRUE;
}

uint64_t ferry_postcopy_missing(FerryPostcopy *pc)
{
    return __atomic_load_n(&pc->missing, __ATOMIC_ACQUIRE);
}

uint64_t ferry_postcopy_requests(FerryPostcopy *pc)
{
    return __atomic_load_n(&pc->requests, __ATOMIC_RELAXED);
}

uint64_t ferry_postcopy_faults(FerryPostcopy *pc)
{
    return __atomic_load_n(&pc->faults, __ATOMIC_RELAXED);
}

void ferry_postcopy_missing_ranges(FerryPostcopy *pc, GArray *ranges)
{
    for (unsigned i = 0; i < pc->nr; i++) {
        PcRegion *r = &pc->regions[i];
        uint64_t start = 0;
        gboolean open = FALSE;
        for (uint64_t p = 0; p < r->pages; p++) {
            uint64_t w = __atomic_load_n(&r->present[p / 64], __ATOMIC_ACQUIRE);
            if (p % 64 == 0 && p + 64 <= r->pages && (w == 0 || w == ~0ull)) {
                /* a whole word: 64 missing pages extend (or open) a range; 64 present close it */
                if (w == 0 && !open) {
                    start = p;
                    open = TRUE;
                } else if (w == ~0ull && open) {
                    FerryStreamRange rg = {r->gpa + start * PAGE, (p - start) * PAGE};
                    g_array_append_val(ranges, rg);
                    open = FALSE;
                }
                p += 63;
                continue;
            }
            gboolean missing = !((w >> (p % 64)) & 1);
            if (missing && !open) {
                start = p;
                open = TRUE;
            } else if (!missing && open) {
                FerryStreamRange rg = {r->gpa + start * PAGE, (p - start) * PAGE};
                g_array_append_val(ranges, rg);
                open = FALSE;
            }
        }
        if (open) {
            FerryStreamRange rg = {r->gpa + start * PAGE, (r->pages - start) * PAGE};
            g_array_append_val(ranges, rg);
        }
    }
}

/* Unregisters every region still registered (wakes their waiters).  reg_lock held. */
static void unregister_all(FerryPostcopy *pc)
{
    for (unsigned i = 0; i < pc->nr; i++) {
        PcRegion *r = &pc->regions[i];
        if (!r->registered)
            continue;
        struct uffdio_range range = {.start = (uint64_t) (uintptr_t) r->hva, .len = r->size};
        if (ioctl(pc->uffd, UFFDIO_UNREGISTER, &range) < 0)
            ferry_log("post-copy: UFFDIO_UNREGISTER of guest RAM at GPA 0x%" G_GINT64_MODIFIER
                      "x failed: %s",
                      r->gpa, g_strerror(errno));
        r->registered = FALSE;
    }
}

gboolean ferry_postcopy_complete(FerryPostcopy *pc)
{
    if (ferry_postcopy_missing(pc) != 0)
        return FALSE;
    g_mutex_lock(&pc->reg_lock);
    unregister_all(pc);
    g_mutex_unlock(&pc->reg_lock);
    return TRUE;
}

/* Calls the request function for @n GPAs (serialised with the other caller). */
static void send_requests(FerryPostcopy *pc, const uint64_t *gpas, unsigned n)
{
    if (n == 0)
        return;
    g_mutex_lock(&pc->request_lock);
    pc->request(pc->opaque, gpas, n);
    g_mutex_unlock(&pc->request_lock);
}

void ferry_postcopy_rerequest_waiting(FerryPostcopy *pc)
{
    uint64_t gpas[BATCH];
    unsigned n = 0;

    for (unsigned i = 0; i < pc->nr; i++) {
        PcRegion *r = &pc->regions[i];
        for (uint64_t w = 0; w < words_of(r->pages); w++) {
            uint64_t bits = __atomic_load_n(&r->requested[w], __ATOMIC_ACQUIRE) &
                            ~__atomic_load_n(&r->present[w], __ATOMIC_ACQUIRE);
            while (bits) {
                unsigned b = (unsigned) __builtin_ctzll(bits);
                bits &= bits - 1;
                gpas[n++] = r->gpa + (w * 64 + b) * PAGE;
                if (n == BATCH) {
                    send_requests(pc, gpas, n);
                    n = 0;
                }
            }
        }
    }
    send_requests(pc, gpas, n);
}

/*
 * One fault message: a missing page not requested yet becomes a request; a present page
 * that faults is a hole (final contents zero) and gets a zero page here.
 */
static void handle_fault(FerryPostcopy *pc, const struct uffd_msg *msg, uint64_t *gpas, unsigned *n)
{
    uint64_t hva = msg->arg.pagefault.address & ~(PAGE - 1);
    PcRegion *r = region_of_hva(pc, hva);

    __atomic_fetch_add(&pc->faults, 1, __ATOMIC_RELAXED);
    if (!r) {
        ferry_log("post-copy: fault at 0x%" G_GINT64_MODIFIER "x outside guest RAM ignored", hva);
        return;
    }
    uint64_t p = (hva - (uint64_t) (uintptr_t) r->hva) / PAGE;
    if (test_bit(r->present, p)) {
        int rc = fill_page(pc, r->hva + p * PAGE, NULL);
        if (rc < 0)
            ferry_log("post-copy: cannot map the zero page at GPA 0x%" G_GINT64_MODIFIER "x: %s",
                      (uint64_t) (r->gpa + p * PAGE), g_strerror(-rc));
        return;
    }
    if (set_bit(r->requested, p))
        return; /* asked for already: the page is on its way */
    __atomic_fetch_add(&pc->requests, 1, __ATOMIC_RELAXED);
    gpas[(*n)++] = r->gpa + p * PAGE;
}

static gpointer fault_thread(gpointer data)
{
    FerryPostcopy *pc = data;
    struct pollfd fds[2] = {{.fd = pc->uffd, .events = POLLIN},
                            {.fd = pc->stop_fd, .events = POLLIN}};
    nfds_t nfds = 2;

    for (;;) {
        /* the stop eventfd goes first when only it is watched */
        int rc = poll(nfds == 2 ? fds : &fds[1], nfds, -1);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            ferry_log("post-copy: poll on the userfaultfd failed: %s", g_strerror(errno));
            return NULL;
        }
        if (fds[1].revents)
            return NULL;
        if (nfds == 1)
            continue;
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            /* not expected with a non-blocking userfaultfd; faults could no longer be read */
            ferry_log("post-copy: the userfaultfd reports an error (revents 0x%x); page faults "
                      "are no longer served",
                      (unsigned) fds[0].revents);
            nfds = 1;
            continue;
        }
        struct uffd_msg msgs[BATCH];
        ssize_t got = read(pc->uffd, msgs, sizeof(msgs));
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue; /* resolved before we read it */
            ferry_log("post-copy: reading the userfaultfd failed: %s; page faults are no "
                      "longer served",
                      g_strerror(errno));
            nfds = 1;
            continue;
        }
        uint64_t gpas[BATCH];
        unsigned n = 0;
        for (size_t i = 0; i < (size_t) got / sizeof(msgs[0]); i++) {
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                handle_fault(pc, &msgs[i], gpas, &n);
        }
        send_requests(pc, gpas, n);
    }
}

static int reserved_fd = -1; /* ferry_postcopy_reserve_fd() */

void ferry_postcopy_reserve_fd(void)
{
    if (reserved_fd < 0)
        reserved_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Moves @fd onto the reserved low descriptor, if there is one (see postcopy.h). */
static int lower_fd(int fd)
{
    if (reserved_fd < 0 || fd < reserved_fd || dup3(fd, reserved_fd, O_CLOEXEC) < 0)
        return fd;
    close(fd);
    fd = reserved_fd;
    reserved_fd = -1;
    return fd;
}

/* Opens a userfaultfd that also traps kernel faults: the syscall, else /dev/userfaultfd. */
static int open_uffd(GError **error)
{
    int fd = (int) syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0)
        return lower_fd(fd);
    int sys_err = errno;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    int dev_err = errno;
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        dev_err = errno;
        close(dev);
        if (fd >= 0)
            return lower_fd(fd);
    }
    g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_UNAVAILABLE,
                "userfaultfd is not available: userfaultfd(2): %s; /dev/userfaultfd: %s "
                "(post-copy needs one that traps kernel faults too: run ferry-vmm as root or "
                "with CAP_SYS_PTRACE, set vm.unprivileged_userfaultfd=1, or give it access to "
                "/dev/userfaultfd)",
                g_strerror(sys_err), g_strerror(dev_err));
    return -1;
}

static gboolean punch(FerryPostcopy *pc, uint64_t off, uint64_t len, GError **error)
{
    for (unsigned tries = 0;; tries++) {
        if (fallocate(pc->mem->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) off,
                      (off_t) len) < 0) {
            g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM,
                        "cannot drop stale guest pages (memfd offset 0x%" G_GINT64_MODIFIER
                        "x, %" G_GUINT64_FORMAT " bytes): fallocate(PUNCH_HOLE): %s",
                        off, len, g_strerror(errno));
            return FALSE;
        }
        off_t data = lseek(pc->mem->memfd, (off_t) off, SEEK_DATA);
        if ((data < 0 && errno == ENXIO) || (data >= 0 && (uint64_t) data >= off + len))
            return TRUE;
        if (tries + 1 == PUNCH_TRIES) {
            g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM,
                        "stale guest pages at memfd offset 0x%" G_GINT64_MODIFIER
                        "x (%" G_GUINT64_FORMAT " bytes) are still there after %d hole "
                        "punches (a transparent huge page that cannot be split?); turn off "
                        "shmem huge pages (/sys/kernel/mm/transparent_hugepage/shmem_enabled) "
                        "for post-copy",
                        off, len, PUNCH_TRIES);
            return FALSE;
        }
    }
}

/* Punches every page of region @r that holds data but is not present. */
static gboolean drop_stale(FerryPostcopy *pc, PcRegion *r, GError **error)
{
    uint64_t off = r->fd_offset, end = r->fd_offset + r->size;

    while (off < end) {
        off_t data = lseek(pc->mem->memfd, (off_t) off, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            return TRUE; /* only holes from here */
        if (data < 0) {
            g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM,
                        "cannot find the data of guest RAM: lseek(SEEK_DATA): %s",
                        g_strerror(errno));
            return FALSE;
        }
        if ((uint64_t) data >= end)
            return TRUE;
        off_t hole = lseek(pc->mem->memfd, data, SEEK_HOLE);
        uint64_t stop = hole < 0 ? end : MIN((uint64_t) hole, end);
        /* pages [first, last) of the region hold data */
        uint64_t first = ((uint64_t) data - r->fd_offset) / PAGE;
        uint64_t last = (stop - r->fd_offset + PAGE - 1) / PAGE;
        for (uint64_t p = first; p < last;) {
            if (test_bit(r->present, p)) {
                p++;
                continue;
            }
            uint64_t q = p + 1;
            while (q < last && !test_bit(r->present, q))
                q++;
            if (!punch(pc, r->fd_offset + p * PAGE, (q - p) * PAGE, error))
                return FALSE;
            p = q;
        }
        off = MAX(stop, (uint64_t) data + PAGE);
    }
    return TRUE;
}

FerryPostcopy *ferry_postcopy_start(FerryGuestMemory *mem, uint64_t *const present[],
                                    FerryPostcopyRequestFn request, void *opaque, GError **error)
{
    g_autoptr(FerryPostcopy) pc = g_new0(FerryPostcopy, 1);
    pc->mem = mem;
    pc->uffd = -1;
    pc->stop_fd = -1;
    pc->request = request;
    pc->opaque = opaque;
    g_mutex_init(&pc->request_lock);
    g_mutex_init(&pc->reg_lock);

    pc->uffd = open_uffd(error);
    if (pc->uffd < 0)
        return NULL;
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_MISSING_SHMEM};
    if (ioctl(pc->uffd, UFFDIO_API, &api) < 0) {
        g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_UNAVAILABLE,
                    "this kernel's userfaultfd cannot serve shared memory such as the guest "
                    "RAM memfd (UFFDIO_API with UFFD_FEATURE_MISSING_SHMEM: %s; Linux 4.11 or "
                    "later needed)",
                    g_strerror(errno));
        return NULL;
    }

    /* Bitmaps first: once registered, a fault may come at any time. */
    pc->nr = mem->nr_regions;
    pc->have_zeropage = TRUE;
    for (unsigned i = 0; i < pc->nr; i++) {
        const FerryMemRegion *m = &mem->regions[i];
        PcRegion *r = &pc->regions[i];
        r->gpa = m->gpa;
        r->size = m->size;
        r->pages = m->size / PAGE;
        r->hva = m->hva;
        r->fd_offset = m->fd_offset;
        r->present = g_new0(uint64_t, words_of(r->pages));
        r->requested = g_new0(uint64_t, words_of(r->pages));
        uint64_t have = 0;
        if (present && present[i]) {
            memcpy(r->present, present[i], words_of(r->pages) * sizeof(uint64_t));
            if (r->pages % 64)
                r->present[r->pages / 64] &= (1ull << (r->pages % 64)) - 1;
            for (uint64_t w = 0; w < words_of(r->pages); w++)
                have += (uint64_t) __builtin_popcountll(r->present[w]);
        }
        pc->missing += r->pages - have;
    }

    /* Register before punching, so that no access between the two can refill a hole. */
    for (unsigned i = 0; i < pc->nr; i++) {
        PcRegion *r = &pc->regions[i];
        struct uffdio_register reg = {
            .range = {.start = (uint64_t) (uintptr_t) r->hva, .len = r->size},
            .mode = UFFDIO_REGISTER_MODE_MISSING,
        };
        if (ioctl(pc->uffd, UFFDIO_REGISTER, &reg) < 0) {
            int err = errno;
            g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM,
                        "cannot register guest RAM at GPA 0x%" G_GINT64_MODIFIER
                        "x (%" G_GUINT64_FORMAT " bytes) with userfaultfd: %s%s",
                        r->gpa, r->size, g_strerror(err),
                        err == EBUSY ? " (another userfaultfd has it: is a post-copy already "
                                       "running on this memory?)"
                                     : "");
            return NULL;
        }
        r->registered = TRUE;
        if (!(reg.ioctls & (1ull << _UFFDIO_COPY))) {
            g_set_error(
                error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_UNAVAILABLE,
                "userfaultfd offers no UFFDIO_COPY on guest RAM (ioctls 0x%" G_GINT64_MODIFIER
                "x): post-copy cannot place pages",
                (uint64_t) reg.ioctls);
            return NULL;
        }
        if (!(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE)))
            pc->have_zeropage = FALSE;
    }
    for (unsigned i = 0; i < pc->nr; i++)
        if (!drop_stale(pc, &pc->regions[i], error))
            return NULL;

    pc->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (pc->stop_fd < 0) {
        g_set_error(error, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM,
                    "cannot start the post-copy fault thread: eventfd: %s", g_strerror(errno));
        return NULL;
    }
    pc->thread = g_thread_try_new("postcopy-fault", fault_thread, pc, error);
    if (!pc->thread) {
        g_prefix_error(error, "cannot start the post-copy fault thread: ");
        return NULL;
    }
    return g_steal_pointer(&pc);
}

void ferry_postcopy_free(FerryPostcopy *pc)
{
    if (!pc)
        return;
    if (pc->thread) {
        uint64_t one = 1;
        if (write(pc->stop_fd, &one, sizeof(one)) != sizeof(one))
            ferry_log("post-copy: cannot stop the fault thread: %s", g_strerror(errno));
        g_thread_join(pc->thread);
    }
    g_mutex_lock(&pc->reg_lock);
    if (pc->uffd >= 0)
        unregister_all(pc);
    g_mutex_unlock(&pc->reg_lock);
    if (pc->uffd >= 0)
        close(pc->uffd);
    if (pc->stop_fd >= 0)
        close(pc->stop_fd);
    for (unsigned i = 0; i < pc->nr; i++) {
        g_free(pc->regions[i].present);
        g_free(pc->regions[i].requested);
    }
    g_mutex_clear(&pc->request_lock);
    g_mutex_clear(&pc->reg_lock);
    g_free(pc);
}

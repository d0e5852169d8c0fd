/*
 * Unit tests: post-copy on the destination (vmm/migration/postcopy.c) with a real
 * userfaultfd over a real guest RAM memfd.  A "source" thread answers the request callback by
 * placing the requested pages, as the receiving threads of a migration do; toucher threads
 * read missing pages (from user mode, and from the kernel through pwrite(2)) and must block
 * until their page is placed and then see its contents.  The last test has a KVM vCPU write
 * to missing pages (skipped without /dev/kvm).
 *
 * Needs a userfaultfd that traps kernel faults: root, CAP_SYS_PTRACE,
 * vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd; skipped otherwise.
 */
#include "arch/x86/layout.h"
#include "arch/x86/vcpu_setup.h"
#include "arch/x86/vcpu_state.h"
#include "kvm.h"
#include "memory.h"
#include "migration/postcopy.h"
#include "migration/stream.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE    FERRY_PAGE_SIZE
#define MiB     (1024ull * 1024)
#define REGION  (64 * MiB)
#define TOUCHED 512 /* pages at the start of each region the touchers read */

/* ---- page contents ---- */

/* What the source holds: zero for every 5th page, else a pattern naming the GPA. */
static gboolean source_is_zero(uint64_t gpa)
{
    return (gpa / PAGE) % 5 == 2;
}

static void source_page(uint64_t gpa, uint8_t *buf)
{
    if (source_is_zero(gpa)) {
        memset(buf, 0, PAGE);
        return;
    }
    for (unsigned i = 0; i < PAGE / 8; i++) {
        uint64_t v = gpa * 0x100000001b3ull + i + 1;
        memcpy(buf + 8 * i, &v, 8);
    }
}

/* What the destination already holds for a page present at start. */
static void present_page(uint64_t gpa, uint8_t *buf)
{
    for (unsigned i = 0; i < PAGE / 8; i++) {
        uint64_t v = ~(gpa + i);
        memcpy(buf + 8 * i, &v, 8);
    }
}

/* ---- guest memory ---- */

/*
 * 128 MiB of guest RAM split like layout.h's low and high RAM, only smaller: region 0 is
 * 64 MiB at GPA 0, region 1 the next 64 MiB of the memfd at GPA 4 GiB.
 */
static FerryGuestMemory *two_region_memory(void)
{
    g_autoptr(GError) err = NULL;
    FerryGuestMemory *mem = ferry_guest_memory_new(2 * REGION, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(mem->nr_regions, ==, 1);
    mem->regions[0].size = REGION;
    FerryMemRegion *r1 = &mem->regions[1];
    r1->gpa = 4096 * MiB;
    r1->size = REGION;
    r1->fd_offset = REGION;
    r1->hva = mem->base + REGION;
    r1->slot = 1;
    r1->vmm_dirty = g_new0(uint64_t, REGION / PAGE / 64);
    mem->nr_regions = 2;
    return mem;
}

static uint8_t *hva_of(FerryGuestMemory *mem, uint64_t gpa)
{
    uint8_t *p = ferry_guest_memory_hva(mem, gpa, PAGE);
    g_assert_nonnull(p);
    return p;
}

/* Whether the memfd holds data (a page in its page cache) at @gpa, without touching it. */
static gboolean has_data(FerryGuestMemory *mem, uint64_t gpa)
{
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        if (gpa - r->gpa < r->size) {
            off_t off = (off_t) (r->fd_offset + gpa - r->gpa);
            return lseek(mem->memfd, off, SEEK_DATA) == off;
        }
    }
    g_assert_not_reached();
}

/* ---- the source: answers requests by placing pages from another thread ---- */

typedef struct {
    FerryPostcopy *pc;
    GMutex lock;
    GCond cond;
    GArray *log;    /* uint64_t: every GPA requested, in order */
    GArray *queue;  /* uint64_t: still to place */
    gboolean serve; /* place requested pages (else only log them) */
    gboolean busy;  /* the thread is placing pages it took from the queue */
    gboolean stop;
    GThread *thread;
} Source;

static void request_cb(void *opaque, const uint64_t *gpas, unsigned n)
{
    Source *s = opaque;
    g_assert_cmpuint(n, >=, 1);
    g_assert_cmpuint(n, <=, 64);
    g_mutex_lock(&s->lock);
    g_array_append_vals(s->log, gpas, n);
    if (s->serve)
        g_array_append_vals(s->queue, gpas, n);
    g_cond_broadcast(&s->cond);
    g_mutex_unlock(&s->lock);
}

static void place_source_page(FerryPostcopy *pc, uint64_t gpa)
{
    g_autoptr(GError) err = NULL;
    uint8_t buf[PAGE];
    source_page(gpa, buf);
    g_assert_true(ferry_postcopy_place(pc, gpa, source_is_zero(gpa) ? NULL : buf, &err));
    g_assert_no_error(err);
}

static gpointer source_thread(gpointer data)
{
    Source *s = data;
    g_mutex_lock(&s->lock);
    for (;;) {
        while (!s->stop && s->queue->len == 0)
            g_cond_wait(&s->cond, &s->lock);
        if (s->stop)
            break;
        g_autoptr(GArray) todo = s->queue;
        s->queue = g_array_new(FALSE, FALSE, sizeof(uint64_t));
        s->busy = TRUE;
        FerryPostcopy *pc = s->pc;
        g_mutex_unlock(&s->lock);
        for (guint i = 0; i < todo->len; i++)
            place_source_page(pc, g_array_index(todo, uint64_t, i));
        g_mutex_lock(&s->lock);
        s->busy = FALSE;
        g_cond_broadcast(&s->cond);
    }
    g_mutex_unlock(&s->lock);
    return NULL;
}

static void source_init(Source *s, gboolean serve)
{
    memset(s, 0, sizeof(*s));
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    s->log = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    s->queue = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    s->serve = serve;
    if (serve)
        s->thread = g_thread_new("test-source", source_thread, s);
}

/*
 * Waits until the source thread placed everything queued so far.  A faulting thread resumes
 * as soon as its page is filled, a little before place() returns and counts the page.
 */
static void source_wait_idle(Source *s)
{
    g_mutex_lock(&s->lock);
    while (s->queue->len || s->busy)
        g_cond_wait(&s->cond, &s->lock);
    g_mutex_unlock(&s->lock);
}

/* Stops the source thread: before freeing the FerryPostcopy it places pages into. */
static void source_stop(Source *s)
{
    g_mutex_lock(&s->lock);
    s->stop = TRUE;
    g_cond_broadcast(&s->cond);
    g_mutex_unlock(&s->lock);
    if (s->thread)
        g_thread_join(s->thread);
    s->thread = NULL;
}

/* After the FerryPostcopy is freed (its fault thread calls request_cb). */
static void source_clear(Source *s)
{
    source_stop(s);
    g_array_unref(s->log);
    g_array_unref(s->queue);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->cond);
}

static void source_set_pc(Source *s, FerryPostcopy *pc)
{
    g_mutex_lock(&s->lock);
    s->pc = pc;
    g_mutex_unlock(&s->lock);
}

/* How many times @gpa was requested. */
static unsigned source_count(Source *s, uint64_t gpa)
{
    unsigned n = 0;
    g_mutex_lock(&s->lock);
    for (guint i = 0; i < s->log->len; i++)
        n += g_array_index(s->log, uint64_t, i) == gpa;
    g_mutex_unlock(&s->lock);
    return n;
}

/* Waits (no time limit: the test's timeout is the limit) until @gpa was requested. */
static void source_wait_for(Source *s, uint64_t gpa)
{
    g_mutex_lock(&s->lock);
    for (;;) {
        gboolean seen = FALSE;
        for (guint i = 0; i < s->log->len && !seen; i++)
            seen = g_array_index(s->log, uint64_t, i) == gpa;
        if (seen)
            break;
        g_cond_wait(&s->cond, &s->lock);
    }
    g_mutex_unlock(&s->lock);
}

static FerryPostcopy *start_or_skip(FerryGuestMemory *mem, uint64_t *const present[], Source *s)
{
    g_autoptr(GError) err = NULL;
    FerryPostcopy *pc = ferry_postcopy_start(mem, present, request_cb, s, &err);
    if (!pc && g_error_matches(err, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_UNAVAILABLE)) {
        g_test_skip(err->message);
        return NULL;
    }
    g_assert_no_error(err);
    source_set_pc(s, pc);
    return pc;
}

/* ---- touchers ---- */

typedef struct {
    FerryGuestMemory *mem;
    const uint64_t *gpas;
    const uint8_t *want; /* expected contents, PAGE per GPA */
    unsigned n, first;   /* reads gpas[(first + k) % n] */
    gboolean kernel;     /* through pwrite(2) from the page: the kernel faults, not us */
    int scratch;         /* memfd pwrite writes to */
    gint *bad;
} Toucher;

static gpointer toucher_thread(gpointer data)
{
    Toucher *t = data;
    uint8_t copy[PAGE];
    for (unsigned k = 0; k < t->n; k++) {
        unsigned i = (t->first + k) % t->n;
        const uint8_t *page = hva_of(t->mem, t->gpas[i]);
        if (t->kernel) {
            /* copy_from_user in the kernel faults on the missing page and waits too */
            g_assert_cmpint(pwrite(t->scratch, page, PAGE, 0), ==, PAGE);
            g_assert_cmpint(pread(t->scratch, copy, PAGE, 0), ==, PAGE);
            page = copy;
        }
        if (memcmp(page, t->want + (size_t) i * PAGE, PAGE) != 0)
            g_atomic_int_inc(t->bad);
    }
    return NULL;
}

static int cmp_u64(gconstpointer a, gconstpointer b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

/* ---- tests ---- */

typedef enum { MISSING, PRESENT, PRESENT_HOLE, STALE } PageKind;

/* The first TOUCHED pages of each region mix every kind; the rest is missing. */
static PageKind kind_of(uint64_t page_index)
{
    if (page_index >= TOUCHED)
        return MISSING;
    if (page_index % 6 == 3)
        return PRESENT_HOLE; /* present, never written: final contents zero */
    if (page_index % 3 == 0)
        return PRESENT;
    if (page_index % 3 == 1 && page_index < TOUCHED / 2)
        return STALE; /* written by pre-copy, changed on the source since */
    return MISSING;
}

static void final_page(uint64_t gpa, PageKind kind, uint8_t *buf)
{
    if (kind == PRESENT)
        present_page(gpa, buf);
    else if (kind == PRESENT_HOLE)
        memset(buf, 0, PAGE);
    else
        source_page(gpa, buf);
}

/*
 * The whole life of a post-copy: stale pages dropped; missing pages fetched on first touch
 * by user and kernel accesses of several threads, each requested once; present pages never
 * requested; the background push of the rest, racing from two threads; complete.
 */
static void test_fetch_on_demand(void)
{
    g_autoptr(FerryGuestMemory) mem = two_region_memory();
    g_autofree uint64_t *bm0 = g_new0(uint64_t, REGION / PAGE / 64);
    g_autofree uint64_t *bm1 = g_new0(uint64_t, REGION / PAGE / 64);
    uint64_t *present[2] = {bm0, bm1};
    uint64_t n_present = 0, n_stale = 0;
    uint8_t buf[PAGE];

    /* Pre-copy's result: present pages hold their contents, stale ones an old copy. */
    for (unsigned r = 0; r < 2; r++) {
        for (uint64_t p = 0; p < TOUCHED; p++) {
            uint64_t gpa = mem->regions[r].gpa + p * PAGE;
            PageKind k = kind_of(p);
            if (k == PRESENT || k == PRESENT_HOLE) {
                present[r][p / 64] |= 1ull << (p % 64);
                n_present++;
            }
            if (k == PRESENT) {
                present_page(gpa, buf);
                memcpy(hva_of(mem, gpa), buf, PAGE);
            } else if (k == STALE) {
                memset(hva_of(mem, gpa), 0xaa, PAGE);
                n_stale++;
            }
        }
    }
    g_assert_cmpuint(n_stale, >, 0);

    Source src;
    source_init(&src, TRUE);
    g_autoptr(FerryPostcopy) pc = start_or_skip(mem, present, &src);
    if (!pc) {
        source_clear(&src);
        return;
    }
    const uint64_t total = 2 * REGION / PAGE;
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==, total - n_present);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, 0);
    g_assert_false(ferry_postcopy_complete(pc));

    /* Stale pages are holes now (so touching them faults); present ones kept their data. */
    for (unsigned r = 0; r < 2; r++) {
        for (uint64_t p = 0; p < TOUCHED; p++) {
            uint64_t gpa = mem->regions[r].gpa + p * PAGE;
            PageKind k = kind_of(p);
            g_assert_cmpint(has_data(mem, gpa), ==, k == PRESENT);
        }
    }

    /* The touched pages and what each must read. */
    g_autoptr(GArray) gpas = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_autoptr(GByteArray) want = g_byte_array_new();
    for (unsigned r = 0; r < 2; r++) {
        for (uint64_t p = 0; p < TOUCHED; p++) {
            uint64_t gpa = mem->regions[r].gpa + p * PAGE;
            g_array_append_val(gpas, gpa);
            final_page(gpa, kind_of(p), buf);
            g_byte_array_append(want, buf, PAGE);
        }
    }
    /* Four user-mode readers starting at different places, one reader through the kernel. */
    gint bad = 0;
    int scratch = memfd_create("test-postcopy-scratch", MFD_CLOEXEC);
    g_assert_cmpint(scratch, >=, 0);
    Toucher t[5];
    GThread *threads[5];
    for (unsigned i = 0; i < 5; i++) {
        t[i] = (Toucher){.mem = mem,
                         .gpas = (const uint64_t *) (void *) gpas->data,
                         .want = want->data,
                         .n = gpas->len,
                         .first = i * 97,
                         .kernel = i == 4,
                         .scratch = scratch,
                         .bad = &bad};
        threads[i] = g_thread_new("toucher", toucher_thread, &t[i]);
    }
    for (unsigned i = 0; i < 5; i++)
        g_thread_join(threads[i]);
    close(scratch);
    g_assert_cmpint(bad, ==, 0);
    source_wait_idle(&src);

    /* Exactly the touched missing pages were requested, each once. */
    g_mutex_lock(&src.lock);
    g_autoptr(GArray) log = g_array_copy(src.log);
    g_mutex_unlock(&src.lock);
    g_array_sort(log, cmp_u64);
    g_autoptr(GArray) expect = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    for (unsigned r = 0; r < 2; r++) {
        for (uint64_t p = 0; p < TOUCHED; p++) {
            PageKind k = kind_of(p);
            uint64_t gpa = mem->regions[r].gpa + p * PAGE;
            if (k == MISSING || k == STALE)
                g_array_append_val(expect, gpa);
        }
    }
    g_assert_cmpuint(log->len, ==, expect->len);
    g_assert_cmpmem(log->data, log->len * 8, expect->data, expect->len * 8);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, expect->len);
    g_assert_cmpuint(ferry_postcopy_faults(pc), >=, expect->len);
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==, total - n_present - expect->len);

    /* The missing ranges are exactly the pages nobody placed yet, as maximal ranges. */
    g_autoptr(GArray) ranges = g_array_new(FALSE, FALSE, sizeof(FerryStreamRange));
    ferry_postcopy_missing_ranges(pc, ranges);
    uint64_t listed = 0;
    for (guint i = 0; i < ranges->len; i++) {
        const FerryStreamRange *rg = &g_array_index(ranges, FerryStreamRange, i);
        g_assert_cmpuint(rg->gpa % PAGE, ==, 0);
        g_assert_cmpuint(rg->bytes % PAGE, ==, 0);
        g_assert_cmpuint(rg->bytes, >, 0);
        if (i > 0) {
            const FerryStreamRange *prev = &g_array_index(ranges, FerryStreamRange, i - 1);
            g_assert_cmpuint(prev->gpa + prev->bytes, <, rg->gpa); /* sorted, not adjacent */
        }
        for (uint64_t gpa = rg->gpa; gpa < rg->gpa + rg->bytes; gpa += PAGE) {
            uint64_t p = (gpa >= 4096 * MiB ? gpa - 4096 * MiB : gpa) / PAGE;
            g_assert_true(gpa < REGION || (gpa >= 4096 * MiB && gpa < 4096 * MiB + REGION));
            g_assert_cmpint(kind_of(p), ==, MISSING); /* touched pages were all placed */
            g_assert_cmpuint(p, >=, TOUCHED);
        }
        listed += rg->bytes / PAGE;
    }
    g_assert_cmpuint(listed, ==, ferry_postcopy_missing(pc));
    g_assert_cmpuint(ranges->len, ==, 2); /* pages TOUCHED.. of each region */

    /* The background push: two threads place every missing page, racing on each. */
    g_mutex_lock(&src.lock);
    for (unsigned round = 0; round < 2; round++) {
        for (guint i = 0; i < ranges->len; i++) {
            const FerryStreamRange *rg = &g_array_index(ranges, FerryStreamRange, i);
            for (uint64_t gpa = rg->gpa; gpa < rg->gpa + rg->bytes; gpa += PAGE)
                g_array_append_val(src.queue, gpa);
        }
    }
    g_cond_broadcast(&src.cond);
    g_mutex_unlock(&src.lock);
    for (guint i = 0; i < ranges->len; i++) {
        const FerryStreamRange *rg = &g_array_index(ranges, FerryStreamRange, i);
        for (uint64_t gpa = rg->gpa + rg->bytes; gpa > rg->gpa; gpa -= PAGE)
            place_source_page(pc, gpa - PAGE);
    }
    source_wait_idle(&src); /* its copies were skipped or met EEXIST */
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==, 0);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, expect->len); /* placing asks nothing */

    /* A page placed again keeps its first contents; so does a present page. */
    memset(buf, 0x55, PAGE);
    uint64_t again[] = {g_array_index(expect, uint64_t, 0), 3 * PAGE, 4096 * MiB + 600 * PAGE};
    for (unsigned i = 0; i < G_N_ELEMENTS(again); i++)
        g_assert_true(ferry_postcopy_place(pc, again[i], buf, NULL));
    g_assert_true(ferry_postcopy_place(pc, again[1], NULL, NULL));

    g_assert_true(ferry_postcopy_complete(pc));
    g_assert_true(ferry_postcopy_complete(pc));

    /* Every page of both regions holds its final contents. */
    uint8_t want_page[PAGE];
    for (unsigned r = 0; r < 2; r++) {
        for (uint64_t p = 0; p < REGION / PAGE; p++) {
            uint64_t gpa = mem->regions[r].gpa + p * PAGE;
            final_page(gpa, kind_of(p), want_page);
            if (memcmp(hva_of(mem, gpa), want_page, PAGE) != 0)
                g_error("page at GPA 0x%" G_GINT64_MODIFIER "x has the wrong contents", gpa);
        }
    }

    /* Unregistered: a page punched now reads as zero at once, and nothing is requested. */
    uint64_t faults = ferry_postcopy_faults(pc);
    g_assert_cmpint(
        fallocate(mem->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) (7 * PAGE), PAGE),
        ==, 0);
    g_assert_cmpuint(*(volatile uint64_t *) hva_of(mem, 7 * PAGE), ==, 0);
    g_assert_cmpuint(ferry_postcopy_faults(pc), ==, faults);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, expect->len);

    source_stop(&src);
    g_clear_pointer(&pc, ferry_postcopy_free);
    source_clear(&src);
}

typedef struct {
    volatile const uint64_t *addr;
    uint64_t value;
} Reader;

static gpointer reader_thread(gpointer data)
{
    Reader *r = data;
    r->value = *r->addr;
    return NULL;
}

/* Waits (no time limit: the test's timeout is the limit) until @n fault messages were read. */
static void wait_faults(FerryPostcopy *pc, uint64_t n)
{
    while (ferry_postcopy_faults(pc) < n)
        g_usleep(1000);
}

/* Several threads on one page: one request; rerequest asks again only for waited-on pages. */
static void test_dedup_and_rerequest(void)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(REGION, &err);
    g_assert_no_error(err);
    Source src;
    source_init(&src, FALSE); /* the test places by hand */
    g_autoptr(FerryPostcopy) pc = start_or_skip(mem, NULL, &src);
    if (!pc) {
        source_clear(&src);
        return;
    }
    const uint64_t x = 0x5000, y = 0x9000;
    uint8_t buf[PAGE];

    /* Y: requested, placed, done. */
    Reader ry = {(volatile const uint64_t *) hva_of(mem, y), 0};
    GThread *ty = g_thread_new("reader", reader_thread, &ry);
    source_wait_for(&src, y);
    place_source_page(pc, y);
    g_thread_join(ty);
    source_page(y, buf);
    g_assert_cmpmem(&ry.value, 8, buf, 8);
    uint64_t faults_before = ferry_postcopy_faults(pc);

    /* X: four threads wait on it; all four faults are read before anyone places X. */
    Reader rx[4];
    GThread *tx[4];
    for (unsigned i = 0; i < 4; i++) {
        rx[i] = (Reader){(volatile const uint64_t *) (hva_of(mem, x) + 8 * i), 0};
        tx[i] = g_thread_new("reader", reader_thread, &rx[i]);
    }
    wait_faults(pc, faults_before + 4);
    g_assert_cmpuint(source_count(&src, x), ==, 1);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, 2);

    /* After a (pretend) reconnection: X again, not Y (present), and not counted anew. */
    ferry_postcopy_rerequest_waiting(pc);
    g_assert_cmpuint(source_count(&src, x), ==, 2);
    g_assert_cmpuint(source_count(&src, y), ==, 1);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, 2);

    place_source_page(pc, x);
    source_page(x, buf);
    for (unsigned i = 0; i < 4; i++) {
        g_thread_join(tx[i]);
        g_assert_cmpmem(&rx[i].value, 8, buf + 8 * i, 8);
    }
    ferry_postcopy_rerequest_waiting(pc);
    g_assert_cmpuint(source_count(&src, x), ==, 2);
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==, REGION / PAGE - 2);
    g_assert_false(ferry_postcopy_complete(pc));

    g_clear_pointer(&pc, ferry_postcopy_free);
    source_clear(&src);
}

/*
 * Freeing while a thread waits on a missing page: the unregistration wakes it, and it reads
 * the page as the memfd holds it — zero, since missing pages are holes (even a stale one).
 */
static void test_free_while_waiting(void)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(REGION, &err);
    g_assert_no_error(err);
    const uint64_t w = 0x3000;
    memset(hva_of(mem, w), 0xaa, PAGE); /* stale */
    Source src;
    source_init(&src, FALSE);
    FerryPostcopy *pc = start_or_skip(mem, NULL, &src);
    if (!pc) {
        source_clear(&src);
        return;
    }
    Reader r = {(volatile const uint64_t *) hva_of(mem, w), 0xdead};
    GThread *t = g_thread_new("reader", reader_thread, &r);
    source_wait_for(&src, w);
    ferry_postcopy_free(pc);
    g_thread_join(t);
    g_assert_cmphex(r.value, ==, 0);
    source_clear(&src);
}

static void test_edges(void)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(REGION, &err);
    g_assert_no_error(err);
    g_autofree uint64_t *all = g_new(uint64_t, REGION / PAGE / 64);
    memset(all, 0xff, REGION / PAGE / 64 * sizeof(uint64_t));
    uint64_t *present[1] = {all};
    memset(hva_of(mem, 0x4000), 0x11, PAGE);

    /* Everything present: nothing missing, complete at once, place changes nothing. */
    Source src;
    source_init(&src, FALSE);
    g_autoptr(FerryPostcopy) pc = start_or_skip(mem, present, &src);
    if (!pc) {
        source_clear(&src);
        return;
    }
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==, 0);
    g_autoptr(GArray) ranges = g_array_new(FALSE, FALSE, sizeof(FerryStreamRange));
    ferry_postcopy_missing_ranges(pc, ranges);
    g_assert_cmpuint(ranges->len, ==, 0);
    g_assert_true(ferry_postcopy_place(pc, 0x4000, NULL, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(hva_of(mem, 0x4000)[100], ==, 0x11);

    /* Bad GPAs. */
    static const uint64_t bad[] = {0x4010, REGION, 4096 * MiB, ~0ull & ~(PAGE - 1)};
    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_false(ferry_postcopy_place(pc, bad[i], NULL, &err));
        g_assert_error(err, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_RANGE);
        g_assert_nonnull(strstr(err->message, "not the start of a 4 KiB page of guest RAM"));
        g_clear_error(&err);
    }

    /* A second post-copy on the same memory is refused, and says why. */
    g_assert_null(ferry_postcopy_start(mem, NULL, request_cb, &src, &err));
    g_assert_error(err, FERRY_POSTCOPY_ERROR, FERRY_POSTCOPY_ERROR_SYSTEM);
    g_assert_nonnull(strstr(err->message, "is a post-copy already running"));
    g_clear_error(&err);
    /* ... and the failed attempt left the first one working: a hole that is present (zero)
     * faults, and the fault thread maps a zero page for it without a request. */
    g_assert_cmpuint(*(volatile uint64_t *) hva_of(mem, 0x8000), ==, 0);
    g_assert_cmpuint(ferry_postcopy_faults(pc), ==, 1);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, 0);

    g_assert_true(ferry_postcopy_complete(pc));
    g_clear_pointer(&pc, ferry_postcopy_free);
    source_clear(&src);

    /* After free the memory is ordinary again: a new post-copy may start. */
    source_init(&src, FALSE);
    pc = start_or_skip(mem, NULL, &src);
    g_assert_nonnull(pc);
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==, REGION / PAGE);
    g_clear_pointer(&pc, ferry_postcopy_free);
    source_clear(&src);
}

/* ---- KVM: a vCPU writing to missing pages ---- */

#define CODE_GPA  0x1000ULL
#define TABLE_GPA 0x2000ULL
#define PML4_GPA  0x10000ULL /* then the PDPT and one page directory: 1 GiB mapped */

/* Stores rsi to each GPA of the list at rsi (rcx entries), then `out 0x10, al`. */
static const uint8_t write_list[] = {
    0x48, 0x8b, 0x3e,       /* 1: mov rdi, [rsi] */
    0x48, 0x89, 0x37,       /*    mov [rdi], rsi */
    0x48, 0x83, 0xc6, 0x08, /*    add rsi, 8 */
    0x48, 0xff, 0xc9,       /*    dec rcx */
    0x75, 0xf1,             /*    jnz 1b */
    0xe6, 0x10,             /*    out 0x10, al */
};

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, gboolean code)
{
    *s = (struct kvm_segment){.base = 0,
                              .limit = 0xffffffff,
                              .selector = sel,
                              .type = type,
                              .present = 1,
                              .s = 1,
                              .db = code ? 0 : 1,
                              .l = code ? 1 : 0,
                              .g = 1};
}

static void test_kvm_vcpu_faults(void)
{
    if (access("/dev/kvm", F_OK) != 0) {
        g_test_skip("/dev/kvm is absent");
        return;
    }
    g_autoptr(GError) err = NULL;
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(REGION, &err);
    g_assert_no_error(err);
    g_autoptr(FerryKvm) kvm = ferry_kvm_open("/dev/kvm", &err);
    g_assert_no_error(err);
    g_assert_true(ferry_kvm_create_vm(kvm, FERRY_KVM_TSS, FERRY_KVM_IDENTITY_MAP, &err));
    g_assert_true(ferry_guest_memory_register(mem, kvm->vm_fd, &err));
    int vcpu = ioctl(kvm->vm_fd, KVM_CREATE_VCPU, 0UL);
    g_assert_cmpint(vcpu, >=, 0);
    struct kvm_run *run =
        mmap(NULL, kvm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    g_assert_true(run != MAP_FAILED);
    g_assert_true(ferry_x86_vcpu_set_cpuid(kvm, vcpu, 0, 1, &err));
    g_assert_true(ferry_x86_vcpu_set_msrs(kvm, vcpu, &err));
    g_assert_true(ferry_x86_vcpu_set_lint(vcpu, &err));

    /* Present: code, the list, identity page tables for 1 GiB (2 MiB pages, A/D preset). */
    g_autofree uint64_t *bm = g_new0(uint64_t, REGION / PAGE / 64);
    uint64_t *present[1] = {bm};
    uint64_t *pml4 = (uint64_t *) hva_of(mem, PML4_GPA);
    uint64_t *pdpt = (uint64_t *) hva_of(mem, PML4_GPA + PAGE);
    uint64_t *pd = (uint64_t *) hva_of(mem, PML4_GPA + 2 * PAGE);
    pml4[0] = (PML4_GPA + PAGE) | 0x23;
    pdpt[0] = (PML4_GPA + 2 * PAGE) | 0x23;
    for (unsigned j = 0; j < 512; j++)
        pd[j] = ((uint64_t) j << 21) | 0xe3;
    memcpy(hva_of(mem, CODE_GPA), write_list, sizeof(write_list));
    /* targets: missing with data, missing and zero at the source, stale, a present hole */
    const uint64_t data_gpa = 0x100000, zero_gpa = 0x101000, stale_gpa = 0x103000;
    const uint64_t hole_gpa = 0x104000;
    g_assert_false(source_is_zero(data_gpa));
    g_assert_true(source_is_zero(zero_gpa));
    g_assert_false(source_is_zero(stale_gpa));
    memset(hva_of(mem, stale_gpa), 0xaa, PAGE);
    const uint64_t targets[] = {data_gpa, zero_gpa, stale_gpa, hole_gpa};
    memcpy(hva_of(mem, TABLE_GPA), targets, sizeof(targets));
    const uint64_t present_gpas[] = {CODE_GPA,        TABLE_GPA,           PML4_GPA,
                                     PML4_GPA + PAGE, PML4_GPA + 2 * PAGE, hole_gpa};
    for (unsigned i = 0; i < G_N_ELEMENTS(present_gpas); i++) {
        uint64_t p = present_gpas[i] / PAGE;
        bm[p / 64] |= 1ull << (p % 64);
    }

    Source src;
    source_init(&src, TRUE);
    g_autoptr(FerryPostcopy) pc = start_or_skip(mem, present, &src);
    if (!pc) {
        source_clear(&src);
        munmap(run, kvm->vcpu_mmap_size);
        close(vcpu);
        return;
    }

    struct kvm_sregs s;
    g_assert_cmpint(ioctl(vcpu, KVM_GET_SREGS, &s), ==, 0);
    seg(&s.cs, 0x8, 11, TRUE);
    seg(&s.ds, 0x10, 3, FALSE);
    s.es = s.fs = s.gs = s.ss = s.ds;
    s.cr0 = 0x80000031; /* PG, NE, ET, PE */
    s.cr3 = PML4_GPA;
    s.cr4 = 0x20;   /* PAE */
    s.efer = 0x500; /* LMA, LME */
    g_assert_cmpint(ioctl(vcpu, KVM_SET_SREGS, &s), ==, 0);
    struct kvm_regs regs = {
        .rip = CODE_GPA, .rflags = 0x2, .rsi = TABLE_GPA, .rcx = G_N_ELEMENTS(targets)};
    g_assert_cmpint(ioctl(vcpu, KVM_SET_REGS, &regs), ==, 0);

    /* KVM_RUN blocks in the kernel on each missing page until the source thread placed it. */
    int rc;
    do {
        rc = ioctl(vcpu, KVM_RUN, 0);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    g_assert_cmpint(rc, ==, 0);
    g_assert_cmpuint(run->exit_reason, ==, KVM_EXIT_IO);
    g_assert_cmpuint(run->io.port, ==, 0x10);
    g_assert_true(ferry_x86_vcpu_complete_pending_io(vcpu, run, &err));

    /* Each target: the guest's store over the placed contents, never over a stale copy. */
    for (unsigned i = 0; i < G_N_ELEMENTS(targets); i++) {
        uint8_t want[PAGE];
        if (targets[i] == hole_gpa)
            memset(want, 0, PAGE);
        else
            source_page(targets[i], want);
        uint64_t store = TABLE_GPA + 8 * i;
        memcpy(want, &store, 8);
        g_assert_cmpmem(hva_of(mem, targets[i]), PAGE, want, PAGE);
    }
    g_assert_cmpuint(source_count(&src, data_gpa), ==, 1);
    g_assert_cmpuint(source_count(&src, zero_gpa), ==, 1);
    g_assert_cmpuint(source_count(&src, stale_gpa), ==, 1);
    g_assert_cmpuint(source_count(&src, hole_gpa), ==, 0);
    g_assert_cmpuint(ferry_postcopy_requests(pc), ==, 3);
    source_wait_idle(&src);
    g_assert_cmpuint(ferry_postcopy_missing(pc), ==,
                     REGION / PAGE - G_N_ELEMENTS(present_gpas) - 3);

    source_stop(&src);
    g_clear_pointer(&pc, ferry_postcopy_free);
    source_clear(&src);
    munmap(run, kvm->vcpu_mmap_size);
    close(vcpu);
    g_clear_pointer(&kvm, ferry_kvm_free); /* before the RAM it maps */
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/postcopy/fetch-on-demand", test_fetch_on_demand);
    g_test_add_func("/postcopy/dedup-and-rerequest", test_dedup_and_rerequest);
    g_test_add_func("/postcopy/free-while-waiting", test_free_while_waiting);
    g_test_add_func("/postcopy/edges", test_edges);
    g_test_add_func("/postcopy/kvm-vcpu-faults", test_kvm_vcpu_faults);
    return g_test_run();
}

/*
 * Unit tests: dirty-page tracking (vmm/migration/dirty.c) against a real KVM VM whose vCPU
 * runs a small 64-bit program writing chosen pages, below and above the 4 GiB boundary, plus
 * device-style writes through ferry_guest_memory_write/mark_dirty.  Skipped without /dev/kvm.
 *
 * Guest RAM is 3 GiB + 64 MiB + 40 pages, so region 1 (at 4 GiB) exists and ends in a chunk
 * shorter than 64 pages; the memfd is sparse, so only the pages touched cost memory.
 */
#include "arch/x86/layout.h"
#include "arch/x86/vcpu_setup.h"
#include "arch/x86/vcpu_state.h"
#include "kvm.h"
#include "memory.h"
#include "migration/dirty.h"
#include "vcpu.h"

#include <errno.h>
#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define TAIL_PAGES  40 /* region 1 ends with a chunk shorter than 64 pages */
#define RAM_BYTES   (3 * FERRY_GIB + 64 * FERRY_MIB + TAIL_PAGES * FERRY_PAGE_SIZE)
#define PAGE        FERRY_PAGE_SIZE
#define CODE_GPA    0x1000ULL  /* the write-list program */
#define LOOP_GPA    0x1800ULL  /* the endless increment loop */
#define TABLE_GPA   0x2000ULL  /* lists of GPAs, 8 bytes each; 0x2000..0x9fff */
#define PML4_GPA    0x10000ULL /* then the PDPT and 8 page directories: 8 GiB mapped */
#define CHUNK_PAGES 16384ULL   /* 64 MiB */

/* Runs the list at rsi (rcx entries): stores rsi to each GPA, then `out 0x10, al`. */
static const uint8_t write_list[] = {
    0x48, 0x8b, 0x3e,       /* 1: mov rdi, [rsi] */
    0x48, 0x89, 0x37,       /*    mov [rdi], rsi */
    0x48, 0x83, 0xc6, 0x08, /*    add rsi, 8 */
    0x48, 0xff, 0xc9,       /*    dec rcx */
    0x75, 0xf1,             /*    jnz 1b */
    0xe6, 0x10,             /*    out 0x10, al */
};

/* Increments the first qword of each GPA of the list at rbx (rdx entries), forever. */
static const uint8_t inc_loop[] = {
    0x48, 0x89, 0xde,       /* 0: mov rsi, rbx */
    0x48, 0x89, 0xd1,       /*    mov rcx, rdx */
    0x48, 0x8b, 0x3e,       /* 1: mov rdi, [rsi] */
    0x48, 0xff, 0x07,       /*    inc qword [rdi] */
    0x48, 0x83, 0xc6, 0x08, /*    add rsi, 8 */
    0x48, 0xff, 0xc9,       /*    dec rcx */
    0x75, 0xf1,             /*    jnz 1b */
    0xeb, 0xe9,             /*    jmp 0b */
};

typedef struct {
    FerryKvm *kvm;
    FerryGuestMemory *mem;
    int vcpu_fd;
    struct kvm_run *run;
    uint64_t table_next; /* next free GPA in the table area */
} Fixture;

static void fixture_free(Fixture *f)
{
    if (!f)
        return;
    if (f->run)
        munmap(f->run, f->kvm->vcpu_mmap_size);
    if (f->vcpu_fd >= 0)
        close(f->vcpu_fd);
    ferry_kvm_free(f->kvm); /* before the RAM it maps */
    ferry_guest_memory_free(f->mem);
    g_free(f);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Fixture, fixture_free)

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, gboolean code)
{
    *s = (struct kvm_segment){.base = 0,
                              .limit = 0xffffffff,
                              .selector = sel,
                              .type = type,
                              .present = 1,
                              .dpl = 0,
                              .db = code ? 0 : 1,
                              .s = 1,
                              .l = code ? 1 : 0,
                              .g = 1};
}

/* Identity page tables for the first 8 GiB with 2 MiB pages, accessed/dirty bits preset so
 * the CPU's page walks never write them (they would show in the dirty log). */
static void build_page_tables(Fixture *f)
{
    uint64_t *pml4 = ferry_guest_memory_hva(f->mem, PML4_GPA, PAGE);
    uint64_t *pdpt = ferry_guest_memory_hva(f->mem, PML4_GPA + PAGE, PAGE);
    pml4[0] = (PML4_GPA + PAGE) | 0x23; /* present, writable, accessed */
    for (unsigned i = 0; i < 8; i++) {
        uint64_t pd_gpa = PML4_GPA + (2 + i) * PAGE;
        uint64_t *pd = ferry_guest_memory_hva(f->mem, pd_gpa, PAGE);
        pdpt[i] = pd_gpa | 0x23;
        for (unsigned j = 0; j < 512; j++)
            pd[j] = ((uint64_t) i << 30 | (uint64_t) j << 21) | 0xe3; /* + PS, dirty */
    }
}

/* A VM with the RAM of RAM_BYTES registered and one vCPU in 64-bit mode; NULL = skipped. */
static Fixture *fixture_new(void)
{
    if (access("/dev/kvm", F_OK) != 0) {
        g_test_skip("/dev/kvm is absent");
        return NULL;
    }
    g_autoptr(GError) err = NULL;
    g_autoptr(Fixture) f = g_new0(Fixture, 1);
    f->vcpu_fd = -1;
    f->kvm = ferry_kvm_open("/dev/kvm", &err);
    g_assert_no_error(err);
    g_assert_true(ferry_kvm_create_vm(f->kvm, FERRY_KVM_TSS, FERRY_KVM_IDENTITY_MAP, &err));
    f->mem = ferry_guest_memory_new(RAM_BYTES, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(f->mem->nr_regions, ==, 2);
    g_assert_true(ferry_guest_memory_register(f->mem, f->kvm->vm_fd, &err));

    f->vcpu_fd = ioctl(f->kvm->vm_fd, KVM_CREATE_VCPU, 0UL);
    g_assert_cmpint(f->vcpu_fd, >=, 0);
    f->run = mmap(NULL, f->kvm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, f->vcpu_fd, 0);
    g_assert_true(f->run != MAP_FAILED);
    g_assert_true(ferry_x86_vcpu_set_cpuid(f->kvm, f->vcpu_fd, 0, 1, &err));
    g_assert_true(ferry_x86_vcpu_set_msrs(f->kvm, f->vcpu_fd, &err));
    g_assert_true(ferry_x86_vcpu_set_lint(f->vcpu_fd, &err));

    /* All guest code and data is in place before any log starts. */
    build_page_tables(f);
    memcpy(ferry_guest_memory_hva(f->mem, CODE_GPA, sizeof(write_list)), write_list,
           sizeof(write_list));
    memcpy(ferry_guest_memory_hva(f->mem, LOOP_GPA, sizeof(inc_loop)), inc_loop, sizeof(inc_loop));
    f->table_next = TABLE_GPA;

    struct kvm_sregs s;
    g_assert_cmpint(ioctl(f->vcpu_fd, KVM_GET_SREGS, &s), ==, 0);
    seg(&s.cs, 0x8, 11, TRUE);
    seg(&s.ds, 0x10, 3, FALSE);
    s.es = s.fs = s.gs = s.ss = s.ds;
    s.cr0 = 0x80000031; /* PG, NE, ET, PE */
    s.cr3 = PML4_GPA;
    s.cr4 = 0x20;   /* PAE */
    s.efer = 0x500; /* LMA, LME */
    g_assert_cmpint(ioctl(f->vcpu_fd, KVM_SET_SREGS, &s), ==, 0);
    return g_steal_pointer(&f);
}

/* Puts @n GPAs into the table area; returns the list's GPA. */
static uint64_t put_list(Fixture *f, const uint64_t *gpas, unsigned n)
{
    uint64_t at = f->table_next;
    g_assert_cmpuint(at + 8 * n, <=, 0xa000);
    memcpy(ferry_guest_memory_hva(f->mem, at, 8 * n), gpas, 8 * n);
    f->table_next += 8 * n;
    return at;
}

static void set_regs(Fixture *f, uint64_t rip, uint64_t rsi, uint64_t rcx, uint64_t rbx,
                     uint64_t rdx)
{
    struct kvm_regs r = {.rip = rip, .rflags = 0x2, .rsi = rsi, .rcx = rcx, .rbx = rbx, .rdx = rdx};
    g_assert_cmpint(ioctl(f->vcpu_fd, KVM_SET_REGS, &r), ==, 0);
}

/* Makes the guest store to each page of @gpas (a list prepared with put_list). */
static void guest_writes(Fixture *f, uint64_t list, unsigned n)
{
    g_autoptr(GError) err = NULL;
    set_regs(f, CODE_GPA, list, n, 0, 0);
    int rc;
    do {
        rc = ioctl(f->vcpu_fd, KVM_RUN, 0);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    g_assert_cmpint(rc, ==, 0);
    if (f->run->exit_reason != KVM_EXIT_IO) {
        struct kvm_regs r;
        ioctl(f->vcpu_fd, KVM_GET_REGS, &r);
        g_error("guest stopped with exit %u at RIP 0x%llx", f->run->exit_reason,
                (unsigned long long) r.rip);
    }
    g_assert_cmpuint(f->run->io.port, ==, 0x10);
    g_assert_true(ferry_x86_vcpu_complete_pending_io(f->vcpu_fd, f->run, &err));
    g_assert_no_error(err);
    /* The program really ran: each page holds the list address of its entry. */
    for (unsigned i = 0; i < n; i++) {
        uint64_t gpa, v;
        memcpy(&gpa, ferry_guest_memory_hva(f->mem, list + 8 * i, 8), 8);
        memcpy(&v, ferry_guest_memory_hva(f->mem, gpa, 8), 8);
        g_assert_cmphex(v, ==, list + 8 * i);
    }
}

/* (region, page) of @gpa. */
static void locate(Fixture *f, uint64_t gpa, unsigned *region, uint64_t *page)
{
    for (unsigned i = 0; i < f->mem->nr_regions; i++) {
        const FerryMemRegion *r = &f->mem->regions[i];
        if (gpa - r->gpa < r->size) {
            *region = i;
            *page = (gpa - r->gpa) / PAGE;
            return;
        }
    }
    g_assert_not_reached();
}

static uint64_t region_pages(Fixture *f, unsigned i)
{
    return f->mem->regions[i].size / PAGE;
}

/* Takes every chunk of every region; returns the GPAs of the pages handed out, sorted. */
static GArray *take_all(Fixture *f, FerryDirtyLog *log)
{
    g_autoptr(GError) err = NULL;
    GArray *gpas = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_autofree uint64_t *out = g_new(uint64_t, CHUNK_PAGES / 64);
    for (unsigned i = 0; i < f->mem->nr_regions; i++) {
        uint64_t pages = region_pages(f, i);
        for (uint64_t p = 0; p < pages; p += CHUNK_PAGES) {
            uint64_t n = MIN(CHUNK_PAGES, pages - p), count = 0, seen = 0;
            g_assert_true(ferry_dirty_log_take_chunk(log, i, p, n, out, &count, &err));
            g_assert_no_error(err);
            for (uint64_t k = 0; k < n; k++) {
                if (out[k / 64] >> (k % 64) & 1) {
                    uint64_t gpa = f->mem->regions[i].gpa + (p + k) * PAGE;
                    if (gpas->len < 1024) /* round 0 hands out everything: keep a sample */
                        g_array_append_val(gpas, gpa);
                    seen++;
                }
            }
            g_assert_cmpuint(seen, ==, count);
        }
    }
    return gpas;
}

static int cmp_u64(gconstpointer a, gconstpointer b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

/* Asserts that @got (GPAs handed out) is exactly the pages of @want. */
static void assert_pages(GArray *got, const uint64_t *want, unsigned n)
{
    g_autofree uint64_t *w = g_memdup2(want, n * sizeof(uint64_t));
    for (unsigned i = 0; i < n; i++)
        w[i] &= ~(PAGE - 1);
    qsort(w, n, sizeof(uint64_t), cmp_u64);
    unsigned m = 0; /* distinct */
    for (unsigned i = 0; i < n; i++)
        if (m == 0 || w[m - 1] != w[i])
            w[m++] = w[i];
    for (guint i = 0; i < got->len; i++)
        g_test_message("dirty page 0x%" G_GINT64_MODIFIER "x", g_array_index(got, uint64_t, i));
    g_assert_cmpuint(got->len, ==, m);
    for (unsigned i = 0; i < m; i++)
        g_assert_cmphex(g_array_index(got, uint64_t, i), ==, w[i]);
}

/* Starts a log and drains round 0 (every page), checking it is every page. */
static FerryDirtyLog *start_drained(Fixture *f)
{
    g_autoptr(GError) err = NULL;
    FerryDirtyLog *log = ferry_dirty_log_start(f->mem, f->kvm->vm_fd, &err);
    g_assert_no_error(err);
    g_assert_nonnull(log);
    g_assert_cmpuint(ferry_dirty_log_pending(log), ==, RAM_BYTES / PAGE);
    g_autoptr(GArray) all = take_all(f, log);
    g_assert_cmpuint(ferry_dirty_log_pending(log), ==, 0);
    /* Nothing was written since: KVM's bits were cleared with the chunks. */
    uint64_t pending = 1;
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(pending, ==, 0);
    return log;
}

static const uint64_t targets[] = {
    0x5000,               /* low, first chunk */
    0x40000000 + 0x7000,  /* 1 GiB */
    0x40000000 + 0x7008,  /* same page again */
    0x40000000 + 0x8000,  /* its neighbour */
    3 * FERRY_GIB - PAGE, /* last page of region 0 */
    FERRY_HIGH_RAM_START, /* first page of region 1 */
    FERRY_HIGH_RAM_START + 0x123000,
    FERRY_HIGH_RAM_START + 64 * FERRY_MIB + (TAIL_PAGES - 1) * PAGE, /* last page of RAM */
};

static void test_guest_writes(void)
{
    g_autoptr(Fixture) f = fixture_new();
    if (!f)
        return;
    g_autoptr(GError) err = NULL;
    uint64_t list = put_list(f, targets, G_N_ELEMENTS(targets));
    g_autoptr(FerryDirtyLog) log = start_drained(f);
    g_test_message("manual protect: %s", ferry_dirty_log_manual_protect(log) ? "yes" : "no");

    guest_writes(f, list, G_N_ELEMENTS(targets));
    uint64_t pending = 0;
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 7);
    /* Syncing again adds nothing (manual protect: KVM still has the bits; same pages). */
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 7);
    g_autoptr(GArray) got = take_all(f, log);
    assert_pages(got, targets, G_N_ELEMENTS(targets));
    g_assert_cmpuint(ferry_dirty_log_pending(log), ==, 0);

    /* take_chunk cleared KVM's bits: nothing comes back without a write ... */
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 0);
    /* ... and re-protected the pages: the same writes are seen again. */
    guest_writes(f, list, G_N_ELEMENTS(targets));
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 7);
    g_autoptr(GArray) again = take_all(f, log);
    assert_pages(again, targets, G_N_ELEMENTS(targets));
}

/*
 * A chunk hands out only its own bits, and only those synced: a page written after the sync
 * stays in KVM's log for the next one, even in the chunk just taken.
 */
static void test_chunks(void)
{
    g_autoptr(Fixture) f = fixture_new();
    if (!f)
        return;
    g_autoptr(GError) err = NULL;
    const uint64_t a = 0x100000, b = 0x101000, c = 0x200000 + CHUNK_PAGES * PAGE;
    uint64_t first[] = {a, c};
    uint64_t l1 = put_list(f, first, 2), l2 = put_list(f, &b, 1);
    g_autoptr(FerryDirtyLog) log = start_drained(f);

    guest_writes(f, l1, 2);
    uint64_t pending = 0, count = 0;
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 2);
    guest_writes(f, l2, 1); /* b: same chunk as a, not synced */

    unsigned region;
    uint64_t pa, pb, pc;
    locate(f, a, &region, &pa);
    locate(f, b, &region, &pb);
    locate(f, c, &region, &pc);
    uint64_t first_page = pa / CHUNK_PAGES * CHUNK_PAGES;
    g_assert_cmpuint(pc / CHUNK_PAGES * CHUNK_PAGES, !=, first_page);
    g_autofree uint64_t *out = g_new(uint64_t, CHUNK_PAGES / 64);
    g_assert_true(ferry_dirty_log_take_chunk(log, 0, first_page, CHUNK_PAGES, out, &count, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(count, ==, 1);
    g_assert_true(out[(pa - first_page) / 64] >> ((pa - first_page) % 64) & 1);
    g_assert_false(out[(pb - first_page) / 64] >> ((pb - first_page) % 64) & 1);
    g_assert_cmpuint(ferry_dirty_log_pending(log), ==, 1); /* c */

    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 2); /* c, and b from KVM */
    g_autoptr(GArray) got = take_all(f, log);
    uint64_t want[] = {b, c};
    assert_pages(got, want, 2);

    /* Smaller chunks: 64 pages, and the tail of fewer than 64 pages at the region's end. */
    uint64_t rp = region_pages(f, 1);
    g_assert_cmpuint(rp % 64, ==, TAIL_PAGES);
    g_assert_true(ferry_dirty_log_take_chunk(log, 1, 0, 64, out, &count, &err));
    g_assert_cmpuint(count, ==, 0);
    uint64_t last = FERRY_HIGH_RAM_START + (rp - 1) * PAGE;
    g_assert_true(ferry_guest_memory_write(f->mem, last, &last, 8, &err));
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_cmpuint(pending, ==, 1);
    g_assert_true(
        ferry_dirty_log_take_chunk(log, 1, rp - TAIL_PAGES, TAIL_PAGES, out, &count, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(count, ==, 1);
    g_assert_cmphex(out[0], ==, 1ULL << (TAIL_PAGES - 1));

    /* Invalid chunks are refused and hand out nothing. */
    g_assert_false(ferry_dirty_log_take_chunk(log, 0, 32, 64, out, &count, &err));
    g_assert_error(err, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE);
    g_clear_error(&err);
    g_assert_false(ferry_dirty_log_take_chunk(log, 0, 0, 100, out, &count, &err));
    g_assert_error(err, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE);
    g_clear_error(&err);
    g_assert_false(ferry_dirty_log_take_chunk(log, 1, rp - TAIL_PAGES, 64, out, &count, &err));
    g_assert_error(err, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE);
    g_clear_error(&err);
    g_assert_false(ferry_dirty_log_take_chunk(log, 2, 0, 64, out, &count, &err));
    g_assert_error(err, FERRY_MEMORY_ERROR, FERRY_MEMORY_ERROR_RANGE);
    g_clear_error(&err);
}

/* VMM-side writes are merged with KVM's log; marks from before start are round 0's. */
static void test_vmm_marks(void)
{
    g_autoptr(Fixture) f = fixture_new();
    if (!f)
        return;
    g_autoptr(GError) err = NULL;
    uint64_t guest[] = {0x300000, FERRY_HIGH_RAM_START + 0x5000};
    uint64_t list = put_list(f, guest, 2);
    ferry_guest_memory_mark_dirty(f->mem, 0x777000, PAGE); /* before start: round 0 */
    g_autoptr(FerryDirtyLog) log = start_drained(f);

    ferry_guest_memory_mark_dirty(f->mem, 0x400ff0, 0x20); /* straddles two pages */
    uint64_t v = 42;
    g_assert_true(ferry_guest_memory_write(f->mem, FERRY_HIGH_RAM_START + 0x9000, &v, 8, &err));
    g_assert_true(ferry_guest_memory_write(f->mem, 0x300008, &v, 8, &err)); /* a guest page */
    guest_writes(f, list, 2);
    uint64_t pending = 0;
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(pending, ==, 5);
    g_autoptr(GArray) got = take_all(f, log);
    uint64_t want[] = {0x300000, 0x400000, 0x401000, FERRY_HIGH_RAM_START + 0x5000,
                       FERRY_HIGH_RAM_START + 0x9000};
    assert_pages(got, want, G_N_ELEMENTS(want));
    /* The VMM bitmaps were taken. */
    g_autofree uint64_t *bits = g_new0(uint64_t, region_pages(f, 0) / 64);
    ferry_guest_memory_take_vmm_dirty(f->mem, 0, bits);
    for (uint64_t w = 0; w < region_pages(f, 0) / 64; w++)
        g_assert_cmphex(bits[w], ==, 0);
}

/* stop turns KVM's logging off (the slots have no log any more); start works again. */
static void test_stop(void)
{
    g_autoptr(Fixture) f = fixture_new();
    if (!f)
        return;
    g_autoptr(GError) err = NULL;
    uint64_t list = put_list(f, targets, G_N_ELEMENTS(targets));
    FerryDirtyLog *log = start_drained(f);
    ferry_dirty_log_stop(log);
    ferry_dirty_log_stop(NULL);

    g_autofree uint64_t *buf = g_new0(uint64_t, region_pages(f, 0) / 64);
    struct kvm_dirty_log dl = {.slot = 0, .dirty_bitmap = buf};
    g_assert_cmpint(ioctl(f->kvm->vm_fd, KVM_GET_DIRTY_LOG, &dl), <, 0);
    g_assert_cmpint(errno, ==, ENOENT);
    guest_writes(f, list, G_N_ELEMENTS(targets)); /* the guest runs on */

    g_autoptr(FerryDirtyLog) again = start_drained(f);
    guest_writes(f, list, G_N_ELEMENTS(targets));
    uint64_t pending = 0;
    g_assert_true(ferry_dirty_log_sync(again, &pending, &err));
    g_assert_cmpuint(pending, ==, 7);
}

/* ---- no lost writes: a vCPU and a device write while rounds copy, several takers ---- */

#define HOT_PAGES 24
#define VMM_PAGES 8

typedef struct {
    Fixture *f;
    gint stop;
    pthread_t tid;
    gint tid_valid;
} Runner;

static gpointer vcpu_runner(gpointer data)
{
    Runner *r = data;
    r->tid = pthread_self();
    g_atomic_int_set(&r->tid_valid, 1);
    while (!g_atomic_int_get(&r->stop)) {
        int rc = ioctl(r->f->vcpu_fd, KVM_RUN, 0);
        if (rc < 0 && (errno == EINTR || errno == EAGAIN)) {
            r->f->run->immediate_exit = 0;
            continue;
        }
        g_error("the increment loop left KVM_RUN: rc %d, exit %u", rc, r->f->run->exit_reason);
    }
    return NULL;
}

typedef struct {
    Fixture *f;
    gint stop;
    uint64_t gpas[VMM_PAGES];
} Writer;

static gpointer vmm_writer(gpointer data)
{
    Writer *w = data;
    for (uint64_t n = 1; !g_atomic_int_get(&w->stop); n++) {
        uint64_t buf[64];
        for (unsigned k = 0; k < 64; k++)
            buf[k] = n * 64 + k;
        g_assert_true(ferry_guest_memory_write(w->f->mem, w->gpas[n % VMM_PAGES] + 256, buf,
                                               sizeof(buf), NULL));
    }
    return NULL;
}

typedef struct {
    Fixture *f;
    FerryDirtyLog *log;
    uint8_t *dest;       /* the "destination": a copy of every watched page */
    GHashTable *watched; /* GPA → index in dest + 1 */
    unsigned parity;     /* this taker's chunks: index % 2 == parity */
    gboolean round0;
    uint64_t copied;
} Taker;

static gpointer take_and_copy(gpointer data)
{
    Taker *t = data;
    g_autoptr(GError) err = NULL;
    g_autofree uint64_t *out = g_new(uint64_t, CHUNK_PAGES / 64);
    unsigned index = 0;
    for (unsigned i = 0; i < t->f->mem->nr_regions; i++) {
        const FerryMemRegion *r = &t->f->mem->regions[i];
        uint64_t pages = r->size / PAGE;
        for (uint64_t p = 0; p < pages; p += CHUNK_PAGES, index++) {
            if (index % 2 != t->parity)
                continue;
            uint64_t n = MIN(CHUNK_PAGES, pages - p), count;
            g_assert_true(ferry_dirty_log_take_chunk(t->log, i, p, n, out, &count, &err));
            for (uint64_t k = 0; k < n && count; k++) {
                if (!(out[k / 64] >> (k % 64) & 1))
                    continue;
                count--;
                uint64_t gpa = r->gpa + (p + k) * PAGE;
                gpointer slot = g_hash_table_lookup(t->watched, &gpa);
                if (!slot) {
                    /* Only round 0 may hand out pages nobody wrote. */
                    if (!t->round0)
                        g_error("unexpected dirty page 0x%" G_GINT64_MODIFIER "x", gpa);
                    continue;
                }
                memcpy(t->dest + (GPOINTER_TO_SIZE(slot) - 1) * PAGE, r->hva + (p + k) * PAGE,
                       PAGE);
                t->copied++;
            }
        }
    }
    return NULL;
}

static void copy_round(Fixture *f, FerryDirtyLog *log, uint8_t *dest, GHashTable *watched,
                       gboolean round0)
{
    Taker t[2];
    GThread *th[2];
    for (unsigned i = 0; i < 2; i++) {
        t[i] = (Taker){
            .f = f, .log = log, .dest = dest, .watched = watched, .parity = i, .round0 = round0};
        th[i] = g_thread_new("taker", take_and_copy, &t[i]);
    }
    for (unsigned i = 0; i < 2; i++)
        g_thread_join(th[i]);
    g_test_message("round%s: %" G_GUINT64_FORMAT " watched pages copied", round0 ? " 0" : "",
                   t[0].copied + t[1].copied);
}

static void test_no_lost_writes(void)
{
    g_autoptr(Fixture) f = fixture_new();
    if (!f)
        return;
    g_autoptr(GError) err = NULL;

    /* Hot pages for the guest (spread over both regions and many chunks), others for the
     * device; the page-table, code and table pages are read only. */
    uint64_t hot[HOT_PAGES];
    for (unsigned i = 0; i < HOT_PAGES; i++)
        hot[i] = i % 3 == 2 ? FERRY_HIGH_RAM_START + i * 0x2a3000ULL : 0x100000 + i * 0x7654000ULL;
    uint64_t list = put_list(f, hot, HOT_PAGES);
    Writer w = {.f = f};
    for (unsigned i = 0; i < VMM_PAGES; i++)
        w.gpas[i] = i % 2 ? FERRY_HIGH_RAM_START + 0x3000000 + i * PAGE : 0x9000000 + i * PAGE;

    g_autoptr(GHashTable) watched =
        g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    uint64_t all[HOT_PAGES + VMM_PAGES];
    for (unsigned i = 0; i < HOT_PAGES + VMM_PAGES; i++) {
        all[i] = i < HOT_PAGES ? hot[i] : w.gpas[i - HOT_PAGES];
        g_hash_table_insert(watched, g_memdup2(&all[i], 8), GSIZE_TO_POINTER(i + 1));
    }
    g_autofree uint8_t *dest = g_malloc0((HOT_PAGES + VMM_PAGES) * PAGE);

    set_regs(f, LOOP_GPA, 0, 0, list, HOT_PAGES);
    ferry_vcpu_install_kick_handler();
    Runner r = {.f = f};
    GThread *vcpu = g_thread_new("vcpu", vcpu_runner, &r);
    GThread *dev = g_thread_new("writer", vmm_writer, &w);

    g_autoptr(FerryDirtyLog) log = ferry_dirty_log_start(f->mem, f->kvm->vm_fd, &err);
    g_assert_no_error(err);
    copy_round(f, log, dest, watched, TRUE);
    for (unsigned round = 1; round <= 6; round++) {
        uint64_t pending;
        g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
        g_assert_no_error(err);
        g_test_message("round %u: %" G_GUINT64_FORMAT " pages pending", round, pending);
        copy_round(f, log, dest, watched, FALSE);
    }

    /* The guest has been running (this waits rather than assume it ran during the rounds). */
    uint64_t *first_hot = ferry_guest_memory_hva(f->mem, hot[0], 8);
    while (__atomic_load_n(first_hot, __ATOMIC_RELAXED) < 1000)
        g_usleep(1000);

    /* Stop-and-copy: the writers stop, one more sync and copy. */
    g_atomic_int_set(&w.stop, 1);
    g_thread_join(dev);
    g_atomic_int_set(&r.stop, 1);
    while (!g_atomic_int_get(&r.tid_valid))
        g_usleep(1000);
    f->run->immediate_exit = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    pthread_kill(r.tid, SIGRTMIN); /* the kick signal's handler is installed above */
    g_thread_join(vcpu);
    uint64_t pending;
    g_assert_true(ferry_dirty_log_sync(log, &pending, &err));
    copy_round(f, log, dest, watched, FALSE);

    /* Every watched page at the destination equals the source. */
    uint64_t increments = 0;
    for (unsigned i = 0; i < HOT_PAGES + VMM_PAGES; i++) {
        const uint8_t *src = ferry_guest_memory_hva(f->mem, all[i], PAGE);
        g_assert_cmpmem(dest + i * PAGE, PAGE, src, PAGE);
        if (i < HOT_PAGES) {
            uint64_t v;
            memcpy(&v, src, 8);
            increments += v;
        }
    }
    g_test_message("the guest made %" G_GUINT64_FORMAT " increments", increments);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/dirty-log/guest-writes", test_guest_writes);
    g_test_add_func("/dirty-log/chunks", test_chunks);
    g_test_add_func("/dirty-log/vmm-marks", test_vmm_marks);
    g_test_add_func("/dirty-log/stop", test_stop);
    g_test_add_func("/dirty-log/no-lost-writes", test_no_lost_writes);
    return g_test_run();
}

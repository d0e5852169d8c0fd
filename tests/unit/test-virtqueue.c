/* Unit tests: split virtqueues (vmm/virtio/virtqueue.c), including misprogrammed queues. */
#include "virtio/virtqueue.h"

#include <string.h>

#define MEM_SIZE (16ULL << 20)
#define QSIZE 8
#define DESC_GPA 0x10000ULL
#define AVAIL_GPA 0x11000ULL
#define USED_GPA 0x12000ULL
#define BUF_GPA 0x100000ULL

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

typedef struct {
    FerryGuestMemory *mem;
    FerryVirtqueue vq;
    uint16_t avail_idx;
} Fixture;

static void put_desc(Fixture *f, uint64_t table, unsigned i, uint64_t addr, uint32_t len,
                     uint16_t flags, uint16_t next)
{
    uint8_t *d = f->mem->base + table + 16 * i;
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

static void offer(Fixture *f, uint16_t head)
{
    uint8_t *avail = f->mem->base + AVAIL_GPA;
    memcpy(avail + 4 + 2 * (f->avail_idx % QSIZE), &head, 2);
    f->avail_idx++;
    memcpy(avail + 2, &f->avail_idx, 2);
}

static void setup(Fixture *f, gconstpointer data)
{
    f->mem = ferry_guest_memory_new(MEM_SIZE, NULL);
    g_assert_nonnull(f->mem);
    f->avail_idx = 0;
    ferry_virtq_init(&f->vq, f->mem);
    g_assert_true(ferry_virtq_enable(&f->vq, QSIZE, DESC_GPA, AVAIL_GPA, USED_GPA,
                                     GPOINTER_TO_INT(data), NULL));
}

static void teardown(Fixture *f, gconstpointer data)
{
    ferry_guest_memory_free(f->mem);
}

static uint16_t used_idx(Fixture *f)
{
    uint16_t v;
    memcpy(&v, f->mem->base + USED_GPA + 2, 2);
    return v;
}

static void test_chain(Fixture *f, gconstpointer data)
{
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, NULL), ==, 0); /* empty */

    put_desc(f, DESC_GPA, 3, BUF_GPA, 16, F_NEXT, 5);
    put_desc(f, DESC_GPA, 5, BUF_GPA + 0x1000, 100, F_NEXT, 1);
    put_desc(f, DESC_GPA, 1, BUF_GPA + 0x3000, 0x2000, F_WRITE, 0);
    offer(f, 3);
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, &error), ==, 1);
    g_assert_no_error(error);
    g_assert_cmpuint(e->head, ==, 3);
    g_assert_cmpuint(e->nr_out, ==, 2);
    g_assert_cmpuint(e->nr_in, ==, 1);
    g_assert_cmpuint(e->out_bytes, ==, 116);
    g_assert_cmpuint(e->in_bytes, ==, 0x2000);
    g_assert_true(e->iov[0].iov_base == f->mem->base + BUF_GPA);
    g_assert_true(e->iov[2].iov_base == f->mem->base + BUF_GPA + 0x3000);
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, NULL), ==, 0);

    /* Push 0x1001 bytes written: used ring entry, index, and dirty pages 0x103 and 0x104. */
    uint64_t words = (MEM_SIZE / 4096 + 63) / 64;
    g_autofree uint64_t *bits = g_new0(uint64_t, words);
    ferry_guest_memory_take_vmm_dirty(f->mem, 0, bits);
    ferry_virtq_push(&f->vq, e, 0x1001);
    g_assert_cmpuint(used_idx(f), ==, 1);
    uint32_t id, len;
    memcpy(&id, f->mem->base + USED_GPA + 4, 4);
    memcpy(&len, f->mem->base + USED_GPA + 8, 4);
    g_assert_cmpuint(id, ==, 3);
    g_assert_cmpuint(len, ==, 0x1001);
    ferry_guest_memory_take_vmm_dirty(f->mem, 0, bits);
    unsigned p0 = (unsigned) ((BUF_GPA + 0x3000) / 4096);
    g_assert_true(bits[p0 / 64] & (1ULL << (p0 % 64)));
    g_assert_true(bits[(p0 + 1) / 64] & (1ULL << ((p0 + 1) % 64)));
    g_assert_false(bits[(p0 + 2) / 64] & (1ULL << ((p0 + 2) % 64)));
    unsigned pu = (unsigned) (USED_GPA / 4096);
    g_assert_true(bits[pu / 64] & (1ULL << (pu % 64)));
    g_free(e);
}

static void test_indirect(Fixture *f, gconstpointer data)
{
    const uint64_t table = 0x20000;
    put_desc(f, table, 0, BUF_GPA, 512, F_NEXT, 2);
    put_desc(f, table, 2, BUF_GPA + 512, 512, F_NEXT | F_WRITE, 1);
    put_desc(f, table, 1, BUF_GPA + 1024, 1, F_WRITE, 0);
    put_desc(f, DESC_GPA, 0, table, 3 * 16, F_INDIRECT, 0);
    offer(f, 0);
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, NULL), ==, 1);
    g_assert_cmpuint(e->nr_out, ==, 1);
    g_assert_cmpuint(e->nr_in, ==, 2);
    g_assert_cmpuint(e->in_bytes, ==, 513);
    g_free(e);
}

/* Offers a chain built by @build and expects the queue to break with @words in the error. */
static void expect_broken(Fixture *f, uint16_t head, const char *words)
{
    offer(f, head);
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, &error), ==, -1);
    g_assert_error(error, FERRY_VIRTQ_ERROR, FERRY_VIRTQ_ERROR_BROKEN);
    if (!strstr(error->message, words))
        g_error("'%s' lacks '%s'", error->message, words);
    g_assert_true(f->vq.broken);
    /* Stays broken until reset; nothing was pushed. */
    g_autoptr(GError) again = NULL;
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, &again), ==, -1);
    g_assert_cmpuint(used_idx(f), ==, 0);
    g_free(e);
}

static void test_bad_head(Fixture *f, gconstpointer data)
{
    expect_broken(f, QSIZE, "head descriptor 8");
}

static void test_bad_next(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, BUF_GPA, 8, F_NEXT, 200);
    expect_broken(f, 0, "next descriptor 200");
}

static void test_loop(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, BUF_GPA, 8, F_NEXT, 1);
    put_desc(f, DESC_GPA, 1, BUF_GPA, 8, F_NEXT, 0);
    expect_broken(f, 0, "loops");
}

static void test_self_loop_zero_len(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 4, BUF_GPA, 0, F_NEXT, 4);
    expect_broken(f, 4, "loops");
}

static void test_avail_jump(Fixture *f, gconstpointer data)
{
    uint16_t idx = QSIZE + 1;
    memcpy(f->mem->base + AVAIL_GPA + 2, &idx, 2);
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, &error), ==, -1);
    g_assert_nonnull(strstr(error->message, "moved by 9"));
    g_free(e);
}

static void test_outside_ram(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, MEM_SIZE - 8, 16, 0, 0); /* runs past the end of RAM */
    expect_broken(f, 0, "not in guest RAM");
}

static void test_wrapping_buffer(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, G_MAXUINT64 - 4, 64, F_WRITE, 0);
    expect_broken(f, 0, "not in guest RAM");
}

static void test_read_after_write(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, BUF_GPA, 8, F_WRITE | F_NEXT, 1);
    put_desc(f, DESC_GPA, 1, BUF_GPA, 8, 0, 0);
    expect_broken(f, 0, "readable descriptor follows a writable");
}

static void test_nested_indirect(Fixture *f, gconstpointer data)
{
    put_desc(f, 0x20000, 0, 0x21000, 16, F_INDIRECT, 0);
    put_desc(f, DESC_GPA, 0, 0x20000, 16, F_INDIRECT, 0);
    expect_broken(f, 0, "indirect table points to another");
}

static void test_indirect_next(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, 0x20000, 16, F_INDIRECT | F_NEXT, 1);
    expect_broken(f, 0, "indirect descriptor has NEXT");
}

static void test_indirect_len(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, 0x20000, 20, F_INDIRECT, 0);
    expect_broken(f, 0, "length 20");
}

static void test_indirect_outside(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, 0xf0000000ULL, 64, F_INDIRECT, 0);
    expect_broken(f, 0, "indirect table");
}

static void test_indirect_loop(Fixture *f, gconstpointer data)
{
    put_desc(f, 0x20000, 0, BUF_GPA, 8, F_NEXT, 1);
    put_desc(f, 0x20000, 1, BUF_GPA, 8, F_NEXT, 0);
    put_desc(f, DESC_GPA, 0, 0x20000, 32, F_INDIRECT, 0);
    expect_broken(f, 0, "loops");
}

static void test_reset_clears_broken(Fixture *f, gconstpointer data)
{
    put_desc(f, DESC_GPA, 0, BUF_GPA, 8, F_NEXT, 100);
    expect_broken(f, 0, "next descriptor");
    ferry_virtq_reset(&f->vq);
    g_assert_false(f->vq.broken);
    g_assert_false(f->vq.enabled);
}

static void test_enable_errors(void)
{
    g_autoptr(FerryGuestMemory) mem = ferry_guest_memory_new(MEM_SIZE, NULL);
    FerryVirtqueue vq;
    ferry_virtq_init(&vq, mem);
    static const struct {
        uint16_t size;
        uint64_t desc, avail, used;
        const char *words;
    } cases[] = {
        {0, DESC_GPA, AVAIL_GPA, USED_GPA, "power of 2"},
        {6, DESC_GPA, AVAIL_GPA, USED_GPA, "power of 2"},
        {8, DESC_GPA + 8, AVAIL_GPA, USED_GPA, "aligned"},
        {8, DESC_GPA, AVAIL_GPA + 1, USED_GPA, "aligned"},
        {8, DESC_GPA, AVAIL_GPA, USED_GPA + 2, "aligned"},
        {8, MEM_SIZE - 64, AVAIL_GPA, USED_GPA, "not in guest RAM"},
        {4096, DESC_GPA, AVAIL_GPA, MEM_SIZE - 4096, "not in guest RAM"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        g_assert_false(ferry_virtq_enable(&vq, cases[i].size, cases[i].desc, cases[i].avail,
                                          cases[i].used, FALSE, &error));
        g_assert_nonnull(strstr(error->message, cases[i].words));
        g_assert_false(vq.enabled);
    }
}

static void test_notify_flags(Fixture *f, gconstpointer data)
{
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    put_desc(f, DESC_GPA, 0, BUF_GPA, 8, F_WRITE, 0);
    offer(f, 0);
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, NULL), ==, 1);
    ferry_virtq_push(&f->vq, e, 8);
    g_assert_true(ferry_virtq_should_notify(&f->vq));
    uint16_t no_interrupt = 1;
    memcpy(f->mem->base + AVAIL_GPA, &no_interrupt, 2);
    g_assert_false(ferry_virtq_should_notify(&f->vq));
    g_free(e);
}

static void test_notify_event_idx(Fixture *f, gconstpointer data)
{
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    uint8_t *used_event = f->mem->base + AVAIL_GPA + 4 + 2 * QSIZE;
    uint16_t ue = 2; /* driver: interrupt me when used idx passes 2 */
    memcpy(used_event, &ue, 2);
    gboolean expect[] = {TRUE /* first: nothing signalled yet */, FALSE, TRUE, FALSE};
    for (unsigned i = 0; i < 4; i++) {
        put_desc(f, DESC_GPA, i, BUF_GPA, 8, F_WRITE, 0);
        offer(f, (uint16_t) i);
        g_assert_cmpint(ferry_virtq_pop(&f->vq, e, NULL), ==, 1);
        /* avail_event follows what we took */
        uint16_t ae;
        memcpy(&ae, f->mem->base + USED_GPA + 4 + 8 * QSIZE, 2);
        g_assert_cmpuint(ae, ==, i + 1);
        ferry_virtq_push(&f->vq, e, 8);
        g_assert_cmpint(ferry_virtq_should_notify(&f->vq), ==, expect[i]);
    }
    g_free(e);
}

static void test_state(Fixture *f, gconstpointer data)
{
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    put_desc(f, DESC_GPA, 0, BUF_GPA, 8, F_WRITE, 0);
    offer(f, 0);
    g_assert_cmpint(ferry_virtq_pop(&f->vq, e, NULL), ==, 1);
    ferry_virtq_push(&f->vq, e, 8);
    g_autoptr(GByteArray) buf = g_byte_array_new();
    FerryStateWriter w = {buf};
    ferry_virtq_save(&f->vq, &w);

    FerryVirtqueue copy;
    ferry_virtq_init(&copy, f->mem);
    FerryStateReader r;
    ferry_state_reader_init(&r, buf->data, buf->len, "queue");
    g_assert_true(ferry_virtq_load(&copy, &r, NULL));
    g_assert_true(ferry_state_reader_finish(&r, NULL));
    g_assert_cmpuint(copy.last_avail, ==, 1);
    g_assert_cmpuint(copy.used_idx, ==, 1);
    g_assert_true(copy.enabled);
    g_assert_true(copy.used == f->vq.used);

    for (guint cut = 0; cut < buf->len; cut++) {
        g_autoptr(GError) error = NULL;
        ferry_state_reader_init(&r, buf->data, cut, "queue");
        g_assert_false(ferry_virtq_load(&copy, &r, &error));
        g_assert_nonnull(error);
    }
    /* A saved ring address outside RAM is refused. */
    uint64_t bad = MEM_SIZE;
    memcpy(buf->data + 4, &bad, 8);
    g_autoptr(GError) error = NULL;
    ferry_state_reader_init(&r, buf->data, buf->len, "queue");
    g_assert_false(ferry_virtq_load(&copy, &r, &error));
    g_assert_error(error, FERRY_VIRTQ_ERROR, FERRY_VIRTQ_ERROR_BROKEN);
    g_free(e);
}

/* Random rings and descriptors: pop either yields buffers inside RAM or breaks cleanly. */
static void test_random_garbage(Fixture *f, gconstpointer data)
{
    GRand *rng = g_rand_new_with_seed(1234);
    FerryVirtqElement *e = g_new0(FerryVirtqElement, 1);
    unsigned ok = 0, broken = 0;
    for (unsigned iter = 0; iter < 20000; iter++) {
        ferry_virtq_reset(&f->vq);
        g_assert_true(ferry_virtq_enable(&f->vq, QSIZE, DESC_GPA, AVAIL_GPA, USED_GPA,
                                         iter & 1, NULL));
        for (unsigned i = 0; i < QSIZE; i++) {
            uint64_t addr = g_rand_boolean(rng) ? (uint64_t) g_rand_int_range(rng, 0, MEM_SIZE)
                                                : ((uint64_t) g_rand_int(rng) << 32 |
                                                   g_rand_int(rng));
            uint16_t flags = (uint16_t) g_rand_int_range(rng, 0, 8);
            if (flags & F_INDIRECT)
                addr = 0x20000;
            put_desc(f, DESC_GPA, i, addr, (uint32_t) g_rand_int_range(rng, 0, 0x3000), flags,
                     (uint16_t) g_rand_int_range(rng, 0, QSIZE + 2));
            put_desc(f, 0x20000, i, addr, (uint32_t) g_rand_int_range(rng, 0, 64), flags,
                     (uint16_t) g_rand_int_range(rng, 0, QSIZE + 2));
        }
        uint16_t idx = (uint16_t) g_rand_int_range(rng, 0, 3 * QSIZE);
        memcpy(f->mem->base + AVAIL_GPA + 2, &idx, 2);
        for (unsigned i = 0; i < QSIZE; i++) {
            uint16_t head = (uint16_t) g_rand_int_range(rng, 0, QSIZE + 1);
            memcpy(f->mem->base + AVAIL_GPA + 4 + 2 * i, &head, 2);
        }
        for (;;) {
            g_autoptr(GError) error = NULL;
            int r = ferry_virtq_pop(&f->vq, e, &error);
            if (r <= 0) {
                broken += r < 0;
                break;
            }
            ok++;
            for (unsigned s = 0; s < e->nr_out + e->nr_in; s++) {
                const uint8_t *p = e->iov[s].iov_base;
                g_assert_true(p >= f->mem->base && p + e->iov[s].iov_len <= f->mem->base + MEM_SIZE);
            }
            ferry_virtq_push(&f->vq, e, (uint32_t) e->in_bytes);
        }
    }
    g_assert_cmpuint(ok, >, 0);
    g_assert_cmpuint(broken, >, 0);
    g_free(e);
    g_rand_free(rng);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(path, fn, event_idx) \
    g_test_add("/virtqueue/" path, Fixture, GINT_TO_POINTER(event_idx), setup, fn, teardown)
    ADD("chain", test_chain, 0);
    ADD("indirect", test_indirect, 0);
    ADD("bad-head", test_bad_head, 0);
    ADD("bad-next", test_bad_next, 0);
    ADD("loop", test_loop, 0);
    ADD("self-loop-zero-len", test_self_loop_zero_len, 0);
    ADD("avail-jump", test_avail_jump, 0);
    ADD("outside-ram", test_outside_ram, 0);
    ADD("wrapping-buffer", test_wrapping_buffer, 0);
    ADD("read-after-write", test_read_after_write, 0);
    ADD("nested-indirect", test_nested_indirect, 0);
    ADD("indirect-next", test_indirect_next, 0);
    ADD("indirect-len", test_indirect_len, 0);
    ADD("indirect-outside", test_indirect_outside, 0);
    ADD("indirect-loop", test_indirect_loop, 0);
    ADD("reset-clears-broken", test_reset_clears_broken, 0);
    ADD("notify-flags", test_notify_flags, 0);
    ADD("notify-event-idx", test_notify_event_idx, 1);
    ADD("state", test_state, 0);
    ADD("random-garbage", test_random_garbage, 0);
#undef ADD
    g_test_add_func("/virtqueue/enable-errors", test_enable_errors);
    return g_test_run();
}

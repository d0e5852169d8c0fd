/*
 * Unit tests: the virtio-rng and virtio-console device models (vmm/virtio/rng.c,
 * vmm/virtio/console.c), driven through their ops with guest memory and split rings built
 * here.  Console input comes through a real socket chardev on the default main context,
 * iterated by the test.
 *
 * The transport's entry points the devices call (virtio.h) are replaced by the test doubles
 * of virtio-double.c, which count notifications and record a broken device.
 */
#include "virtio-double.h"
#include "virtio/console.h"
#include "virtio/rng.h"

#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MEM_SIZE (4ULL << 20)
#define QSIZE    64
#define RING_GPA 0x10000ULL /* queue q: desc at +q*0x4000, avail +0x1000, used +0x2000 */
#define BUF_GPA  0x100000ULL

#define F_NEXT  1
#define F_WRITE 2

/* ---- fixture: one device, its queues, a bump allocator for buffers ---- */

typedef struct {
    FerryGuestMemory *mem;
    FerryVirtioDev *dev;
    uint16_t avail_idx[2], next_desc[2], used_seen[2];
    uint64_t next_buf;
    char *dir;
} Fixture;

static uint64_t desc_gpa(unsigned q)
{
    return RING_GPA + q * 0x4000ULL;
}

static uint8_t *hva(Fixture *f, uint64_t gpa)
{
    return f->mem->base + gpa;
}

static void plug(Fixture *f, FerryVirtioDev *dev)
{
    f->mem = ferry_guest_memory_new(MEM_SIZE, NULL);
    g_assert_nonnull(f->mem);
    f->next_buf = BUF_GPA;
    f->dev = dev;
    g_mutex_init(&dev->lock);
    dev->mem = f->mem;
    g_autoptr(GError) error = NULL;
    if (dev->ops->realize)
        g_assert_true(dev->ops->realize(dev, &error));
    for (unsigned q = 0; q < dev->nr_queues; q++) {
        ferry_virtq_init(&dev->vqs[q], f->mem);
        g_assert_cmpuint(dev->queue_max_size[q], >=, QSIZE);
        uint64_t d = desc_gpa(q);
        g_assert_true(
            ferry_virtq_enable(&dev->vqs[q], QSIZE, d, d + 0x1000, d + 0x2000, FALSE, &error));
        g_assert_no_error(error);
    }
    dev->features = 1ULL << 32;
    if (dev->ops->activate) {
        g_mutex_lock(&dev->lock);
        g_assert_true(dev->ops->activate(dev, &error));
        g_mutex_unlock(&dev->lock);
    }
}

static void fixture_clear(Fixture *f)
{
    if (f->dev) {
        g_mutex_lock(&f->dev->lock);
        f->dev->ops->reset(f->dev);
        g_mutex_unlock(&f->dev->lock);
        g_mutex_clear(&f->dev->lock);
        f->dev->ops->free(f->dev);
    }
    while (g_main_context_iteration(NULL, FALSE))
        ;
    if (f->mem)
        ferry_guest_memory_free(f->mem);
    if (f->dir)
        g_rmdir(f->dir);
    g_free(f->dir);
    virtio_double_reset();
    
}

static uint64_t alloc_buf(Fixture *f, uint64_t len)
{
    uint64_t gpa = f->next_buf;
    f->next_buf += (len + 4095) & ~4095ULL;
    g_assert_cmpuint(f->next_buf, <=, MEM_SIZE);
    return gpa;
}

/* Offers a one-descriptor buffer on queue @q; returns its head. */
static uint16_t offer(Fixture *f, unsigned q, uint64_t gpa, uint32_t len, uint16_t flags)
{
    uint16_t head = f->next_desc[q]++ % QSIZE;
    uint8_t *d = hva(f, desc_gpa(q) + 16 * head);
    memcpy(d, &gpa, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memset(d + 14, 0, 2);
    uint8_t *avail = hva(f, desc_gpa(q) + 0x1000);
    memcpy(avail + 4 + 2 * (f->avail_idx[q] % QSIZE), &head, 2);
    f->avail_idx[q]++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(avail + 2, &f->avail_idx[q], 2);
    return head;
}

static void kick(Fixture *f, unsigned q)
{
    g_mutex_lock(&f->dev->lock);
    f->dev->ops->queue_notify(f->dev, q);
    g_mutex_unlock(&f->dev->lock);
}

static uint16_t used_idx(Fixture *f, unsigned q)
{
    uint16_t v;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(&v, hva(f, desc_gpa(q) + 0x2002), 2);
    return v;
}

/* The next used entry of queue @q (which must exist): head and length. */
static void take_used(Fixture *f, unsigned q, uint16_t *head, uint32_t *len)
{
    g_assert_cmpuint(used_idx(f, q), !=, f->used_seen[q]);
    const uint8_t *e = hva(f, desc_gpa(q) + 0x2004 + 8 * (f->used_seen[q] % QSIZE));
    uint32_t id;
    memcpy(&id, e, 4);
    memcpy(len, e + 4, 4);
    *head = (uint16_t) id;
    f->used_seen[q]++;
}

/* ---- virtio-rng ---- */

static void test_rng_fill(void)
{
    Fixture f = {0};
    g_autoptr(GError) error = NULL;
    plug(&f, ferry_virtio_rng_new(&error));
    g_assert_no_error(error);
    g_assert_cmpuint(f.dev->ops->device_id, ==, VIRTIO_ID_RNG);
    g_assert_cmpuint(f.dev->ops->get_features(f.dev), ==, 0);
    g_assert_cmpuint(f.dev->config_size, ==, 0);

    uint32_t sizes[] = {4096, 1, 100000};
    uint64_t gpa[3];
    uint16_t heads[3];
    for (unsigned i = 0; i < 3; i++) {
        gpa[i] = alloc_buf(&f, sizes[i]);
        heads[i] = offer(&f, 0, gpa[i], sizes[i], F_WRITE);
    }
    kick(&f, 0);
    g_assert_cmpuint(used_idx(&f, 0), ==, 3);
    g_assert_cmpint(virtio_double_total, ==, 1);
    for (unsigned i = 0; i < 3; i++) {
        uint16_t head;
        uint32_t len;
        take_used(&f, 0, &head, &len);
        g_assert_cmpuint(head, ==, heads[i]);
        g_assert_cmpuint(len, ==, MIN(sizes[i], FERRY_VIRTIO_RNG_MAX_REQUEST));
    }
    /* 4 KiB of random bytes: about half the bits set, and beyond the cap nothing written. */
    unsigned ones = 0;
    for (unsigned i = 0; i < 4096; i++)
        ones += __builtin_popcount(hva(&f, gpa[0])[i]);
    g_assert_cmpuint(ones, >, 4096 * 8 * 45 / 100);
    g_assert_cmpuint(ones, <, 4096 * 8 * 55 / 100);
    for (unsigned i = FERRY_VIRTIO_RNG_MAX_REQUEST; i < 100000; i++)
        g_assert_cmpuint(hva(&f, gpa[2])[i], ==, 0);
    g_assert_null(virtio_double_broken_why);
    fixture_clear(&f);
}

static void test_rng_readable_buffer(void)
{
    Fixture f = {0};
    plug(&f, ferry_virtio_rng_new(NULL));
    offer(&f, 0, alloc_buf(&f, 64), 64, 0);
    kick(&f, 0);
    g_assert_nonnull(virtio_double_broken_why);
    g_assert_cmpuint(used_idx(&f, 0), ==, 0);
    fixture_clear(&f);
}

/* ---- virtio-console ---- */

static FerryVirtioDev *console_new(Fixture *f, FerryChardevSpec *spec)
{
    g_autoptr(GError) error = NULL;
    FerryVirtioDev *dev = ferry_virtio_console_new(spec, &error);
    g_assert_no_error(error);
    g_assert_nonnull(dev);
    return dev;
}

static void test_console_config(void)
{
    Fixture f = {0};
    FerryChardevSpec spec = {.kind = FERRY_CHARDEV_OFF};
    plug(&f, console_new(&f, &spec));
    FerryVirtioDev *dev = f.dev;
    g_assert_cmpuint(dev->ops->device_id, ==, VIRTIO_ID_CONSOLE);
    g_assert_cmpuint(dev->nr_queues, ==, 2);
    uint64_t feat = dev->ops->get_features(dev);
    g_assert_cmpuint(feat & 1, ==, 1); /* F_SIZE */
    g_assert_cmpuint(feat & 2, ==, 0); /* never MULTIPORT */
    g_assert_cmpuint(dev->config_size, ==, 12);
    uint8_t cfg[4];
    dev->ops->read_config(dev, 0, cfg, 4);
    g_assert_cmpuint(cfg[0] | cfg[1] << 8, ==, 80);
    g_assert_cmpuint(cfg[2] | cfg[3] << 8, ==, 25);
    fixture_clear(&f);
}

static void test_console_output(void)
{
    Fixture f = {0};
    f.dir = g_dir_make_tmp("ferry-vcon-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(f.dir, "out.txt", NULL);
    FerryChardevSpec spec = {.kind = FERRY_CHARDEV_FILE, .path = path};
    plug(&f, console_new(&f, &spec));

    const char *parts[] = {"hello ", "virtio ", "console\n"};
    for (unsigned i = 0; i < 3; i++) {
        uint64_t gpa = alloc_buf(&f, 64);
        memcpy(hva(&f, gpa), parts[i], strlen(parts[i]));
        offer(&f, 1, gpa, (uint32_t) strlen(parts[i]), 0);
    }
    kick(&f, 1);
    g_assert_cmpuint(used_idx(&f, 1), ==, 3);
    for (unsigned i = 0; i < 3; i++) {
        uint16_t head;
        uint32_t len;
        take_used(&f, 1, &head, &len);
        g_assert_cmpuint(len, ==, 0);
    }
    /* emerg_wr (offset 8) writes one byte. */
    uint8_t bang[4] = {'!', 0, 0, 0};
    g_mutex_lock(&f.dev->lock);
    f.dev->ops->write_config(f.dev, 8, bang, 4);
    g_mutex_unlock(&f.dev->lock);

    g_autofree char *text = NULL;
    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    g_assert_cmpstr(text, ==, "hello virtio console\n!");
    fixture_clear(&f);
    unlink(path);
}

/* Connects to the console socket and waits until the chardev has accepted the client. */
static int connect_client(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    g_strlcpy(addr.sun_path, path, sizeof(addr.sun_path));
    g_assert_cmpint(connect(fd, (struct sockaddr *) &addr, sizeof(addr)), ==, 0);
    for (int i = 0; i < 20; i++)
        g_main_context_iteration(NULL, FALSE);
    return fd;
}

/* Runs the main context until queue 0's used index reaches @idx (10 s at most). */
static void pump_until(Fixture *f, uint16_t idx)
{
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (used_idx(f, 0) != idx) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_main_context_iteration(NULL, FALSE);
        g_usleep(200);
    }
}

/* Collects the bytes of every used receive buffer not yet seen (head i = gpa[i]). */
static void collect(Fixture *f, const uint64_t *gpa, GString *out)
{
    while (f->used_seen[0] != used_idx(f, 0)) {
        uint16_t head;
        uint32_t len;
        take_used(f, 0, &head, &len);
        g_string_append_len(out, (const char *) hva(f, gpa[head]), len);
    }
}

static void test_console_input_flow(void)
{
    Fixture f = {0};
    f.dir = g_dir_make_tmp("ferry-vcon-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(f.dir, "con.sock", NULL);
    FerryChardevSpec spec = {.kind = FERRY_CHARDEV_SOCKET, .path = path};
    plug(&f, console_new(&f, &spec));
    int fd = connect_client(path);

    uint64_t gpa[QSIZE];
    for (unsigned i = 0; i < 2; i++)
        gpa[i] = alloc_buf(&f, 4), offer(&f, 0, gpa[i], 4, F_WRITE);
    kick(&f, 0);

    const char *msg = "hello world! more than fits";
    g_assert_cmpint(write(fd, msg, strlen(msg)), ==, (ssize_t) strlen(msg));
    pump_until(&f, 2);
    g_autoptr(GString) got = g_string_new(NULL);
    collect(&f, gpa, got);
    g_assert_cmpstr(got->str, ==, "hello wo");
    /* No buffers: the rest waits in the socket, nothing is dropped. */
    for (int i = 0; i < 50; i++) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(1000);
    }
    g_assert_cmpuint(used_idx(&f, 0), ==, 2);

    /* New buffers and the driver's notification start input again. */
    for (unsigned i = 2; i < 8; i++)
        gpa[i] = alloc_buf(&f, 4), offer(&f, 0, gpa[i], 4, F_WRITE);
    kick(&f, 0);
    pump_until(&f, 2 + 5); /* 19 more bytes: 4+4+4+4+3 */
    collect(&f, gpa, got);
    g_assert_cmpstr(got->str, ==, msg);
    g_assert_cmpint(virtio_double_total, >=, 1);
    g_assert_null(virtio_double_broken_why);
    close(fd);
    fixture_clear(&f);
}

/*
 * A receive buffer held across a pause goes back to the queue: a client that hangs up
 * makes the device take a buffer (room) and then get no bytes; after pause and resume the
 * next input lands in that same buffer.  Input sent while paused is delivered at resume.
 */
static void test_console_pause_returns_buffer(void)
{
    Fixture f = {0};
    f.dir = g_dir_make_tmp("ferry-vcon-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(f.dir, "con.sock", NULL);
    FerryChardevSpec spec = {.kind = FERRY_CHARDEV_SOCKET, .path = path};
    plug(&f, console_new(&f, &spec));

    uint64_t gpa[QSIZE];
    gpa[0] = alloc_buf(&f, 16);
    uint16_t head = offer(&f, 0, gpa[0], 16, F_WRITE);
    kick(&f, 0);

    int fd = connect_client(path);
    close(fd); /* HUP: room() takes the buffer, read() returns 0 */
    for (int i = 0; i < 20; i++)
        g_main_context_iteration(NULL, FALSE);
    g_assert_cmpuint(f.dev->vqs[0].last_avail, ==, 1);

    g_mutex_lock(&f.dev->lock);
    f.dev->paused = TRUE;
    f.dev->ops->pause(f.dev);
    g_mutex_unlock(&f.dev->lock);
    g_assert_cmpuint(f.dev->vqs[0].last_avail, ==, 0); /* back on the queue */
    g_assert_cmpuint(used_idx(&f, 0), ==, 0);

    fd = connect_client(path);
    g_assert_cmpint(write(fd, "abc", 3), ==, 3);
    for (int i = 0; i < 50; i++) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(1000);
    }
    g_assert_cmpuint(used_idx(&f, 0), ==, 0); /* paused: guest memory untouched */

    g_mutex_lock(&f.dev->lock);
    f.dev->paused = FALSE;
    f.dev->ops->resume(f.dev);
    f.dev->ops->queue_notify(f.dev, 0); /* the transport kicks every queue at resume */
    g_mutex_unlock(&f.dev->lock);
    pump_until(&f, 1);
    uint16_t h;
    uint32_t len;
    take_used(&f, 0, &h, &len);
    g_assert_cmpuint(h, ==, head);
    g_assert_cmpuint(len, ==, 3);
    g_assert_cmpmem(hva(&f, gpa[0]), 3, "abc", 3);
    close(fd);
    fixture_clear(&f);
}

static void test_console_save_load(void)
{
    Fixture f = {0};
    FerryChardevSpec spec = {.kind = FERRY_CHARDEV_OFF};
    plug(&f, console_new(&f, &spec));
    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter w = {blob};
    g_mutex_lock(&f.dev->lock);
    f.dev->ops->save(f.dev, &w);
    g_mutex_unlock(&f.dev->lock);
    g_assert_cmpuint(blob->len, ==, 5); /* active, no pending input */
    g_assert_cmpuint(blob->data[0], ==, 1);

    FerryStateReader r;
    g_autoptr(GError) error = NULL;
    ferry_state_reader_init(&r, blob->data, blob->len, "test");
    g_assert_true(f.dev->ops->load(f.dev, 1, &r, &error));
    g_assert_no_error(error);
    g_assert_true(ferry_state_reader_finish(&r, &error));

    /* Truncated pending bytes, and a length beyond the bound, are errors. */
    uint8_t bad1[] = {1, 4, 0, 0, 0, 'a'};
    ferry_state_reader_init(&r, bad1, sizeof(bad1), "test");
    g_assert_false(f.dev->ops->load(f.dev, 1, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED);
    g_clear_error(&error);
    uint8_t bad2[] = {1, 0, 0, 2, 0};
    ferry_state_reader_init(&r, bad2, sizeof(bad2), "test");
    g_assert_false(f.dev->ops->load(f.dev, 1, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);
    fixture_clear(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/virtio-rng/fill", test_rng_fill);
    g_test_add_func("/virtio-rng/readable-buffer", test_rng_readable_buffer);
    g_test_add_func("/virtio-console/config", test_console_config);
    g_test_add_func("/virtio-console/output", test_console_output);
    g_test_add_func("/virtio-console/input-flow", test_console_input_flow);
    g_test_add_func("/virtio-console/pause-returns-buffer", test_console_pause_returns_buffer);
    g_test_add_func("/virtio-console/save-load", test_console_save_load);
    return g_test_run();
}

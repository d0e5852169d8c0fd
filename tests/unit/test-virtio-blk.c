/*
 * Unit tests: the virtio-blk device model (vmm/virtio/blk.c), driven through its ops with
 * guest memory and a split ring built here, on a real I/O thread and io_uring.
 *
 * The transport's entry points the device calls (virtio.h) are replaced by the test
 * doubles of virtio-double.c, which count notifications and record a broken device.
 */
#include "virtio-double.h"
#include "virtio/blk.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MEM_SIZE  (32ULL << 20)
#define QSIZE     256
#define DESC_GPA  0x10000ULL
#define AVAIL_GPA 0x11000ULL
#define USED_GPA  0x12000ULL
#define BUF_GPA   0x100000ULL /* data buffers from here */
#define STAT_GPA  0xF000ULL   /* status bytes, one per descriptor head */

#define DISK_SECTORS 8192 /* 4 MiB images */

#define F_NEXT  1
#define F_WRITE 2

#define T_IN           0
#define T_OUT          1
#define T_FLUSH        4
#define T_GET_ID       8
#define T_DISCARD      11
#define T_WRITE_ZEROES 13

#define S_OK     0
#define S_IOERR  1
#define S_UNSUPP 2

#define FEAT_FLUSH        (1ULL << 9)
#define FEAT_RO           (1ULL << 5)
#define FEAT_DISCARD      (1ULL << 13)
#define FEAT_WRITE_ZEROES (1ULL << 14)

/* ---- fixture ---- */

typedef struct {
    char *dir;
    char *path;
    FerryGuestMemory *mem;
    FerryVirtioDev *dev;
    uint16_t avail_idx;
    uint16_t next_desc;
    uint64_t next_buf;
} Fixture;

static char *make_image(const char *dir, const char *name, uint64_t size)
{
    char *path = g_build_filename(dir, name, NULL);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, (off_t) size), ==, 0);
    close(fd);
    return path;
}

static void fixture_dir(Fixture *f)
{
    f->dir = g_dir_make_tmp("ferry-blk-XXXXXX", NULL);
    g_assert_nonnull(f->dir);
    g_assert_cmpint(chmod(f->dir, 0755), ==, 0);
}

static void fixture_clear(Fixture *f)
{
    if (f->dev) {
        FerryIoThread *io = f->dev->io;
        g_mutex_lock(&f->dev->lock);
        f->dev->ops->reset(f->dev);
        g_mutex_unlock(&f->dev->lock);
        if (io)
            ferry_iothread_free(io);
        f->dev->io = NULL;
        g_mutex_clear(&f->dev->lock);
        f->dev->ops->free(f->dev);
    }
    if (f->mem)
        ferry_guest_memory_free(f->mem);
    if (f->path)
        unlink(f->path);
    if (f->dir)
        g_rmdir(f->dir);
    g_free(f->path);
    g_free(f->dir);
    virtio_double_reset();
}

/* Wires @dev as the transport would: memory, I/O thread, realize, queue, features, activate. */
static void plug(Fixture *f, FerryVirtioDev *dev, uint64_t features)
{
    f->dev = dev;
    g_mutex_init(&dev->lock);
    dev->mem = f->mem;
    dev->id = NULL;
    g_autoptr(GError) error = NULL;
    dev->io = ferry_iothread_new("io-test-blk", &error);
    g_assert_no_error(error);
    g_assert_true(dev->ops->realize(dev, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(dev->queue_max_size[0], ==, QSIZE);
    ferry_virtq_init(&dev->vqs[0], f->mem);
    g_assert_true(
        ferry_virtq_enable(&dev->vqs[0], QSIZE, DESC_GPA, AVAIL_GPA, USED_GPA, FALSE, &error));
    g_assert_no_error(error);
    dev->features = features & (dev->ops->get_features(dev) | (1ULL << 32));
    g_assert_null(dev->ops->activate); /* nothing to start: queue_notify does it all */
}

static void setup_disk(Fixture *f, gboolean readonly, const char *serial, uint64_t features,
                       const char *dir)
{
    if (!dir) {
        fixture_dir(f);
        dir = f->dir;
    }
    f->path = make_image(dir, "disk.img", DISK_SECTORS * 512ULL);
    f->mem = ferry_guest_memory_new(MEM_SIZE, NULL);
    g_assert_nonnull(f->mem);
    f->avail_idx = f->next_desc = 0;
    f->next_buf = BUF_GPA;
    FerryDiskSpec spec = {.path = f->path, .readonly = readonly, .serial = (char *) serial};
    g_autoptr(GError) error = NULL;
    FerryVirtioDev *dev = ferry_virtio_blk_new(&spec, &error);
    g_assert_no_error(error);
    g_assert_nonnull(dev);
    plug(f, dev, features);
}

static void put_desc(Fixture *f, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    uint8_t *d = f->mem->base + DESC_GPA + 16 * i;
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

static uint64_t alloc_buf(Fixture *f, uint64_t len)
{
    uint64_t gpa = f->next_buf;
    f->next_buf += (len + 4095) & ~4095ULL;
    g_assert_cmpuint(f->next_buf, <=, MEM_SIZE);
    return gpa;
}

static uint8_t *hva(Fixture *f, uint64_t gpa)
{
    return f->mem->base + gpa;
}

typedef struct {
    uint16_t head;
    uint64_t hdr_gpa;
    uint64_t data_gpa; /* 0 if none */
    uint32_t data_len;
} Req;

/*
 * Builds a request chain: 16-byte header (readable), @data_len bytes of data (readable for
 * OUT-like requests, writable with @data_in), 1-byte status (writable).  Not yet offered.
 */
static Req build(Fixture *f, uint32_t type, uint64_t sector, uint32_t data_len, gboolean data_in)
{
    Req r = {.head = f->next_desc, .data_len = data_len};
    unsigned d0 = f->next_desc, d1 = (d0 + 1) % QSIZE, d2 = (d0 + 2) % QSIZE;
    f->next_desc = (d0 + 3) % QSIZE;
    r.hdr_gpa = alloc_buf(f, 16);
    uint8_t *h = hva(f, r.hdr_gpa);
    uint32_t reserved = 0;
    memcpy(h, &type, 4);
    memcpy(h + 4, &reserved, 4);
    memcpy(h + 8, &sector, 8);
    uint64_t st = STAT_GPA + r.head;
    *hva(f, st) = 0xee;
    if (data_len) {
        r.data_gpa = alloc_buf(f, data_len);
        put_desc(f, d0, r.hdr_gpa, 16, F_NEXT, d1);
        put_desc(f, d1, r.data_gpa, data_len, F_NEXT | (data_in ? F_WRITE : 0), d2);
        put_desc(f, d2, st, 1, F_WRITE, 0);
    } else {
        put_desc(f, d0, r.hdr_gpa, 16, F_NEXT, d1);
        put_desc(f, d1, st, 1, F_WRITE, 0);
        f->next_desc = (d0 + 2) % QSIZE;
    }
    return r;
}

static void offer(Fixture *f, uint16_t head)
{
    uint8_t *avail = hva(f, AVAIL_GPA);
    memcpy(avail + 4 + 2 * (f->avail_idx % QSIZE), &head, 2);
    f->avail_idx++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(avail + 2, &f->avail_idx, 2);
}

/* The driver's notification, as the transport delivers it (lock held). */
static void kick(Fixture *f)
{
    g_mutex_lock(&f->dev->lock);
    f->dev->ops->queue_notify(f->dev, 0);
    g_mutex_unlock(&f->dev->lock);
}

static uint16_t used_idx(Fixture *f)
{
    uint16_t v;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(&v, hva(f, USED_GPA + 2), 2);
    return v;
}

/* Waits (up to 10 s) until the used index reaches @idx. */
static void wait_used(Fixture *f, uint16_t idx)
{
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (used_idx(f) != idx) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_usleep(500);
    }
    g_mutex_lock(&f->dev->lock); /* the completion handler has returned */
    g_mutex_unlock(&f->dev->lock);
}

/* Used-ring entry for head @head: its length (asserts it is there). */
static uint32_t used_len(Fixture *f, uint16_t head)
{
    uint16_t n = used_idx(f);
    for (uint16_t i = 0; i < n && i < QSIZE; i++) {
        uint32_t id, len;
        memcpy(&id, hva(f, USED_GPA + 4 + 8 * i), 4);
        memcpy(&len, hva(f, USED_GPA + 8 + 8 * i), 4);
        if (id == head)
            return len;
    }
    g_assert_not_reached();
}

static uint8_t status_of(Fixture *f, Req r)
{
    return *hva(f, STAT_GPA + r.head);
}

/* Offers one request, kicks, waits for it; returns its status. */
static uint8_t run(Fixture *f, Req r)
{
    uint16_t before = used_idx(f);
    offer(f, r.head);
    kick(f);
    wait_used(f, before + 1);
    return status_of(f, r);
}

static void fill_pattern(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t) (i * 7 + seed * 13 + (i >> 9));
}

static void file_read(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pread(fd, buf, len, (off_t) off), ==, (ssize_t) len);
    close(fd);
}

static void file_write(const char *path, uint64_t off, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pwrite(fd, buf, len, (off_t) off), ==, (ssize_t) len);
    close(fd);
}

static gboolean all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return FALSE;
    return TRUE;
}

static gboolean page_dirty(uint64_t gpa, const uint64_t *bits)
{
    uint64_t page = gpa / 4096;
    return (bits[page / 64] >> (page % 64)) & 1;
}

/* ---- open errors ---- */

static void expect_open_error(const char *path, gboolean readonly, GIOErrorEnum code,
                              const char *words)
{
    FerryDiskSpec spec = {.path = (char *) path, .readonly = readonly};
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_virtio_blk_new(&spec, &error));
    g_assert_error(error, G_IO_ERROR, (gint) code);
    if (!strstr(error->message, words))
        g_error("message '%s' lacks '%s'", error->message, words);
    g_assert_nonnull(strstr(error->message, path));
}

static void test_open_errors(void)
{
    Fixture f = {0};
    fixture_dir(&f);
    g_autofree char *missing = g_build_filename(f.dir, "missing.img", NULL);
    expect_open_error(missing, FALSE, G_IO_ERROR_NOT_FOUND, "truncate -s SIZE");
    expect_open_error(missing, TRUE, G_IO_ERROR_NOT_FOUND, "qemu-img create -f raw");

    g_autofree char *odd = make_image(f.dir, "odd.img", 1000);
    expect_open_error(odd, FALSE, G_IO_ERROR_INVALID_DATA, "not a multiple of 512");
    expect_open_error(odd, TRUE, G_IO_ERROR_INVALID_DATA, "truncate -s 1024");
    g_autofree char *empty = make_image(f.dir, "empty.img", 0);
    expect_open_error(empty, FALSE, G_IO_ERROR_INVALID_DATA, "empty");
    expect_open_error(f.dir, FALSE, G_IO_ERROR_NOT_REGULAR_FILE, "directory");
    expect_open_error("/dev/null", TRUE, G_IO_ERROR_NOT_REGULAR_FILE, "character device");

    unlink(odd);
    unlink(empty);
    fixture_clear(&f);
}

/* As an unprivileged user (root ignores file modes): permission denied, read-only file. */
static void check_permissions_child(const char *ro, const char *none)
{
    if (geteuid() == 0 && setresuid(65534, 65534, 65534) != 0)
        _exit(3);
    expect_open_error(ro, FALSE, G_IO_ERROR_READ_ONLY, "readonly=on");
    expect_open_error(none, TRUE, G_IO_ERROR_PERMISSION_DENIED, "permission denied");
    expect_open_error(none, FALSE, G_IO_ERROR_PERMISSION_DENIED, "permission denied");
    FerryDiskSpec spec = {.path = (char *) ro, .readonly = TRUE};
    g_autoptr(GError) error = NULL;
    FerryVirtioDev *dev = ferry_virtio_blk_new(&spec, &error);
    g_assert_no_error(error);
    g_assert_cmpuint(ferry_virtio_blk_capacity(dev), ==, 8);
    dev->ops->free(dev);
}

static void test_open_permissions(void)
{
    Fixture f = {0};
    fixture_dir(&f);
    g_autofree char *ro = make_image(f.dir, "ro.img", 4096);
    g_autofree char *none = make_image(f.dir, "none.img", 4096);
    g_assert_cmpint(chmod(ro, 0444), ==, 0);
    g_assert_cmpint(chmod(none, 0), ==, 0);
    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        check_permissions_child(ro, none);
        _exit(0);
    }
    int status;
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), ==, 0);
    unlink(ro);
    unlink(none);
    fixture_clear(&f);
}

static void test_locking(void)
{
    Fixture f = {0};
    fixture_dir(&f);
    f.path = make_image(f.dir, "disk.img", 1 << 20);
    g_autoptr(GError) error = NULL;
    FerryDiskSpec rw = {.path = f.path}, ro = {.path = f.path, .readonly = TRUE};

    FerryVirtioDev *a = ferry_virtio_blk_new(&rw, &error);
    g_assert_no_error(error);
    expect_open_error(f.path, FALSE, G_IO_ERROR_BUSY, "in use");
    expect_open_error(f.path, TRUE, G_IO_ERROR_BUSY, "readonly=on");
    a->ops->free(a); /* releases the lock */

    FerryVirtioDev *b = ferry_virtio_blk_new(&ro, &error);
    g_assert_no_error(error);
    FerryVirtioDev *c = ferry_virtio_blk_new(&ro, &error); /* readers share */
    g_assert_no_error(error);
    expect_open_error(f.path, FALSE, G_IO_ERROR_BUSY, "in use");
    b->ops->free(b);
    c->ops->free(c);
    a = ferry_virtio_blk_new(&rw, &error);
    g_assert_no_error(error);
    a->ops->free(a);
    fixture_clear(&f);
}

/* ---- features and configuration ---- */

static uint64_t cfg(FerryVirtioDev *dev, uint32_t off, uint32_t len)
{
    uint8_t b[8] = {0};
    dev->ops->read_config(dev, off, b, len);
    uint64_t v = 0;
    for (uint32_t i = 0; i < len; i++)
        v |= (uint64_t) b[i] << (8 * i);
    return v;
}

static void test_config(void)
{
    Fixture f = {0};
    fixture_dir(&f);
    f.path = make_image(f.dir, "disk.img", 3 << 20);
    g_autoptr(GError) error = NULL;
    FerryDiskSpec rw = {.path = f.path};
    FerryVirtioDev *dev = ferry_virtio_blk_new(&rw, &error);
    g_assert_no_error(error);
    g_assert_cmpuint(dev->ops->device_id, ==, VIRTIO_ID_BLOCK);
    g_assert_cmpuint(dev->nr_queues, ==, 1);
    g_assert_cmpuint(dev->config_size, >=, 60);
    uint64_t feat = dev->ops->get_features(dev);
    g_assert_true(feat & FEAT_FLUSH);
    g_assert_true(feat & FEAT_DISCARD);
    g_assert_true(feat & FEAT_WRITE_ZEROES);
    g_assert_false(feat & FEAT_RO);
    /* capacity (two 4-byte halves, as a driver reads it), blk_size, discard limits */
    g_assert_cmpuint(cfg(dev, 0, 4) | cfg(dev, 4, 4) << 32, ==, 6144);
    g_assert_cmpuint(cfg(dev, 0, 8), ==, 6144);
    g_assert_cmpuint(cfg(dev, 20, 4), ==, 512);
    g_assert_cmpuint(cfg(dev, 12, 4), >=, 1);
    g_assert_cmpuint(cfg(dev, 36, 4), >=, 1);
    g_assert_cmpuint(cfg(dev, 40, 4), >=, 1);
    g_assert_cmpuint(cfg(dev, 48, 4), >=, 1);
    g_assert_cmpuint(cfg(dev, 52, 4), >=, 1);
    g_assert_cmpuint(cfg(dev, 56, 1), ==, 1);
    dev->ops->free(dev);

    FerryDiskSpec ro = {.path = f.path, .readonly = TRUE};
    dev = ferry_virtio_blk_new(&ro, &error);
    g_assert_no_error(error);
    feat = dev->ops->get_features(dev);
    g_assert_true(feat & FEAT_RO);
    g_assert_true(feat & FEAT_FLUSH);
    g_assert_false(feat & (FEAT_DISCARD | FEAT_WRITE_ZEROES));
    dev->ops->free(dev);
    fixture_clear(&f);
}

/* ---- requests ---- */

static const uint64_t all_features = FEAT_FLUSH | FEAT_DISCARD | FEAT_WRITE_ZEROES;

static void test_write_read(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, NULL);

    /* OUT: 64 KiB at sector 8 lands in the image. */
    Req w = build(&f, T_OUT, 8, 65536, FALSE);
    fill_pattern(hva(&f, w.data_gpa), 65536, 1);
    g_assert_cmpuint(run(&f, w), ==, S_OK);
    g_assert_cmpuint(used_len(&f, w.head), ==, 1);
    g_autofree uint8_t *buf = g_malloc(65536);
    file_read(f.path, 8 * 512, buf, 65536);
    g_assert_cmpmem(buf, 65536, hva(&f, w.data_gpa), 65536);
    g_assert_cmpint(g_atomic_int_get(&virtio_double_total), >=, 1);

    /* IN: data split over two writable descriptors, header and status separate. */
    fill_pattern(buf, 8192, 2);
    file_write(f.path, 100 * 512, buf, 8192);
    uint64_t words = (MEM_SIZE / 4096 + 63) / 64;
    g_autofree uint64_t *bits = g_new0(uint64_t, words);
    ferry_guest_memory_take_vmm_dirty(f.mem, 0, bits);
    Req r = build(&f, T_IN, 100, 8192, TRUE);
    uint16_t d1 = (r.head + 1) % QSIZE, d2 = (r.head + 2) % QSIZE, d3 = f.next_desc;
    f.next_desc = (d3 + 1) % QSIZE;
    uint64_t second = alloc_buf(&f, 4096);
    put_desc(&f, d1, r.data_gpa, 4096, F_NEXT | F_WRITE, d3);
    put_desc(&f, d3, second, 4096, F_NEXT | F_WRITE, d2);
    memset(hva(&f, r.data_gpa), 0, 4096);
    memset(hva(&f, second), 0, 4096);
    g_assert_cmpuint(run(&f, r), ==, S_OK);
    g_assert_cmpuint(used_len(&f, r.head), ==, 8193);
    g_assert_cmpmem(hva(&f, r.data_gpa), 4096, buf, 4096);
    g_assert_cmpmem(hva(&f, second), 4096, buf + 4096, 4096);
    ferry_guest_memory_take_vmm_dirty(f.mem, 0, bits);
    g_assert_true(page_dirty(r.data_gpa, bits));
    g_assert_true(page_dirty(second, bits));
    g_assert_true(page_dirty(STAT_GPA, bits));

    /* The last sector. */
    Req w2 = build(&f, T_OUT, DISK_SECTORS - 1, 512, FALSE);
    fill_pattern(hva(&f, w2.data_gpa), 512, 3);
    g_assert_cmpuint(run(&f, w2), ==, S_OK);
    file_read(f.path, (DISK_SECTORS - 1) * 512ULL, buf, 512);
    g_assert_cmpmem(buf, 512, hva(&f, w2.data_gpa), 512);

    /* FLUSH */
    g_assert_cmpuint(run(&f, build(&f, T_FLUSH, 0, 0, FALSE)), ==, S_OK);
    g_assert_null(virtio_double_broken_why);
    fixture_clear(&f);
}

/* Header and data in one readable descriptor, data and status in one writable one. */
static void test_framing(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, NULL);
    uint64_t out = alloc_buf(&f, 16 + 1024);
    uint32_t type = T_OUT;
    uint64_t sector = 40;
    memset(hva(&f, out), 0, 16);
    memcpy(hva(&f, out), &type, 4);
    memcpy(hva(&f, out + 8), &sector, 8);
    fill_pattern(hva(&f, out + 16), 1024, 4);
    uint64_t st = alloc_buf(&f, 1);
    put_desc(&f, 0, out, 16 + 1024, F_NEXT, 1);
    put_desc(&f, 1, st, 1, F_WRITE, 0);
    offer(&f, 0);
    kick(&f);
    wait_used(&f, 1);
    g_assert_cmpuint(*hva(&f, st), ==, S_OK);

    uint64_t hdr = alloc_buf(&f, 16), in = alloc_buf(&f, 1025);
    type = T_IN;
    memcpy(hva(&f, hdr), &type, 4);
    memcpy(hva(&f, hdr + 8), &sector, 8);
    put_desc(&f, 2, hdr, 16, F_NEXT, 3);
    put_desc(&f, 3, in, 1025, F_WRITE, 0);
    offer(&f, 2);
    kick(&f);
    wait_used(&f, 2);
    g_assert_cmpuint(*hva(&f, in + 1024), ==, S_OK);
    g_assert_cmpmem(hva(&f, in), 1024, hva(&f, out + 16), 1024);
    g_assert_cmpuint(used_len(&f, 2), ==, 1025);
    fixture_clear(&f);
}

static void test_errors(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, NULL);
    /* Beyond the capacity, partly or wholly. */
    g_assert_cmpuint(run(&f, build(&f, T_IN, DISK_SECTORS - 1, 1024, TRUE)), ==, S_IOERR);
    g_assert_cmpuint(run(&f, build(&f, T_OUT, DISK_SECTORS, 512, FALSE)), ==, S_IOERR);
    g_assert_cmpuint(run(&f, build(&f, T_IN, UINT64_MAX, 512, TRUE)), ==, S_IOERR);
    /* Not whole sectors. */
    g_assert_cmpuint(run(&f, build(&f, T_OUT, 0, 100, FALSE)), ==, S_IOERR);
    /* Unknown and unimplemented types. */
    g_assert_cmpuint(run(&f, build(&f, 99, 0, 0, FALSE)), ==, S_UNSUPP);
    g_assert_cmpuint(run(&f, build(&f, 14 /* SECURE_ERASE */, 0, 16, FALSE)), ==, S_UNSUPP);
    g_assert_cmpuint(run(&f, build(&f, 10 /* GET_LIFETIME */, 0, 16, TRUE)), ==, S_UNSUPP);
    g_assert_null(virtio_double_broken_why);

    /* The image shrank under the device: end of file inside the capacity. */
    g_assert_cmpint(truncate(f.path, 4096), ==, 0);
    g_assert_cmpuint(run(&f, build(&f, T_IN, 100, 4096, TRUE)), ==, S_IOERR);
    fixture_clear(&f);
}

static void test_get_id(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, "ferry-disk-1", all_features, NULL);
    Req r = build(&f, T_GET_ID, 0, 20, TRUE);
    memset(hva(&f, r.data_gpa), 0xaa, 20);
    g_assert_cmpuint(run(&f, r), ==, S_OK);
    g_assert_cmpuint(used_len(&f, r.head), ==, 21);
    char expect[20] = "ferry-disk-1";
    g_assert_cmpmem(hva(&f, r.data_gpa), 20, expect, 20);
    fixture_clear(&f);

    Fixture g = {0};
    setup_disk(&g, FALSE, "abcdefghijklmnopqrst", all_features, NULL); /* exactly 20 */
    r = build(&g, T_GET_ID, 0, 20, TRUE);
    g_assert_cmpuint(run(&g, r), ==, S_OK);
    g_assert_cmpmem(hva(&g, r.data_gpa), 20, "abcdefghijklmnopqrst", 20);
    fixture_clear(&g);

    Fixture h = {0};
    setup_disk(&h, FALSE, NULL, all_features, NULL);
    r = build(&h, T_GET_ID, 0, 20, TRUE);
    memset(hva(&h, r.data_gpa), 0xaa, 20);
    g_assert_cmpuint(run(&h, r), ==, S_OK);
    g_assert_true(all_zero(hva(&h, r.data_gpa), 20));
    fixture_clear(&h);
}

static void test_readonly(void)
{
    Fixture f = {0};
    setup_disk(&f, TRUE, NULL, all_features | FEAT_RO, NULL);
    uint8_t pat[512];
    fill_pattern(pat, sizeof(pat), 5);
    file_write(f.path, 0, pat, sizeof(pat));
    g_assert_true(f.dev->features & FEAT_RO);

    Req r = build(&f, T_IN, 0, 512, TRUE);
    g_assert_cmpuint(run(&f, r), ==, S_OK);
    g_assert_cmpmem(hva(&f, r.data_gpa), 512, pat, 512);
    Req w = build(&f, T_OUT, 0, 512, FALSE);
    memset(hva(&f, w.data_gpa), 0x55, 512);
    g_assert_cmpuint(run(&f, w), ==, S_IOERR);
    uint8_t seg[16] = {0};
    seg[8] = 8;
    Req d = build(&f, T_DISCARD, 0, 16, FALSE);
    memcpy(hva(&f, d.data_gpa), seg, 16);
    g_assert_cmpuint(run(&f, d), ==, S_IOERR);
    Req z = build(&f, T_WRITE_ZEROES, 0, 16, FALSE);
    memcpy(hva(&f, z.data_gpa), seg, 16);
    g_assert_cmpuint(run(&f, z), ==, S_IOERR);
    g_assert_cmpuint(run(&f, build(&f, T_FLUSH, 0, 0, FALSE)), ==, S_OK);
    uint8_t now[512];
    file_read(f.path, 0, now, sizeof(now));
    g_assert_cmpmem(now, 512, pat, 512);
    fixture_clear(&f);
}

static Req build_dwz(Fixture *f, uint32_t type, unsigned n, const uint64_t *sector,
                     const uint32_t *count, const uint32_t *flags)
{
    Req r = build(f, type, 0, 16 * n, FALSE);
    for (unsigned i = 0; i < n; i++) {
        uint8_t *s = hva(f, r.data_gpa + 16 * i);
        memcpy(s, &sector[i], 8);
        memcpy(s + 8, &count[i], 4);
        memcpy(s + 12, &flags[i], 4);
    }
    return r;
}

static void check_discard_zeroes(const char *dir)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, dir);
    g_autofree uint8_t *pat = g_malloc(DISK_SECTORS * 512ULL);
    fill_pattern(pat, DISK_SECTORS * 512ULL, 6);
    file_write(f.path, 0, pat, DISK_SECTORS * 512ULL);
    g_autofree uint8_t *buf = g_malloc(DISK_SECTORS * 512ULL);

    /* WRITE_ZEROES: two segments, one with UNMAP. */
    uint64_t sec[2] = {16, 1000};
    uint32_t cnt[2] = {24, 3}, fl[2] = {0, 1};
    g_assert_cmpuint(run(&f, build_dwz(&f, T_WRITE_ZEROES, 2, sec, cnt, fl)), ==, S_OK);
    file_read(f.path, 0, buf, DISK_SECTORS * 512ULL);
    g_assert_true(all_zero(buf + 16 * 512, 24 * 512));
    g_assert_true(all_zero(buf + 1000 * 512, 3 * 512));
    g_assert_cmpmem(buf, 16 * 512, pat, 16 * 512);
    g_assert_cmpmem(buf + 40 * 512, 960 * 512, pat + 40 * 512, 960 * 512);
    g_assert_cmpmem(buf + 1003 * 512, 512, pat + 1003 * 512, 512);

    /* DISCARD: deallocated (reads back as zeroes with hole punching); size unchanged. */
    uint64_t dsec[1] = {2048};
    uint32_t dcnt[1] = {2048}, dfl[1] = {0};
    g_assert_cmpuint(run(&f, build_dwz(&f, T_DISCARD, 1, dsec, dcnt, dfl)), ==, S_OK);
    struct stat st;
    g_assert_cmpint(stat(f.path, &st), ==, 0);
    g_assert_cmpint(st.st_size, ==, DISK_SECTORS * 512LL);

    /* UNMAP on a discard, unknown flags: UNSUPP.  Beyond capacity: IOERR. */
    dfl[0] = 1;
    g_assert_cmpuint(run(&f, build_dwz(&f, T_DISCARD, 1, dsec, dcnt, dfl)), ==, S_UNSUPP);
    dfl[0] = 4;
    g_assert_cmpuint(run(&f, build_dwz(&f, T_WRITE_ZEROES, 1, dsec, dcnt, dfl)), ==, S_UNSUPP);
    dfl[0] = 0;
    dsec[0] = DISK_SECTORS - 1;
    g_assert_cmpuint(run(&f, build_dwz(&f, T_WRITE_ZEROES, 1, dsec, dcnt, dfl)), ==, S_IOERR);
    /* A payload that is not whole segments. */
    g_assert_cmpuint(run(&f, build(&f, T_DISCARD, 0, 12, FALSE)), ==, S_IOERR);
    g_assert_null(virtio_double_broken_why);
    fixture_clear(&f);
}

static void test_discard_zeroes(void)
{
    check_discard_zeroes(NULL);
}

/* tmpfs has no FALLOC_FL_ZERO_RANGE: write zeroes falls back. */
static void test_discard_zeroes_tmpfs(void)
{
    if (!g_file_test("/dev/shm", G_FILE_TEST_IS_DIR)) {
        g_test_skip("no /dev/shm");
        return;
    }
    g_autofree char *dir = g_build_filename("/dev/shm", "ferry-blk-test-XXXXXX", NULL);
    g_assert_nonnull(g_mkdtemp(dir));
    check_discard_zeroes(dir);
    g_rmdir(dir);
}

/* Without FLUSH negotiated the device is writethrough; requests still complete. */
static void test_writethrough(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, FEAT_DISCARD | FEAT_WRITE_ZEROES, NULL);
    g_assert_false(f.dev->features & FEAT_FLUSH);
    Req w = build(&f, T_OUT, 0, 4096, FALSE);
    fill_pattern(hva(&f, w.data_gpa), 4096, 7);
    g_assert_cmpuint(run(&f, w), ==, S_OK);
    uint8_t buf[4096];
    file_read(f.path, 0, buf, sizeof(buf));
    g_assert_cmpmem(buf, 4096, hva(&f, w.data_gpa), 4096);
    uint64_t sec[1] = {0};
    uint32_t cnt[1] = {8}, fl[1] = {0};
    g_assert_cmpuint(run(&f, build_dwz(&f, T_WRITE_ZEROES, 1, sec, cnt, fl)), ==, S_OK);
    file_read(f.path, 0, buf, sizeof(buf));
    g_assert_true(all_zero(buf, sizeof(buf)));
    /* FLUSH was not negotiated: a driver may still send it; it completes. */
    g_assert_cmpuint(run(&f, build(&f, T_FLUSH, 0, 0, FALSE)), ==, S_OK);
    fixture_clear(&f);
}

/* Many requests in one batch (the queue's worth), then read everything back. */
static void test_many_in_flight(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, NULL);
    const unsigned n = 85; /* 3 descriptors each: 255 of 256 */
    Req reqs[85];
    for (unsigned i = 0; i < n; i++) {
        reqs[i] = build(&f, T_OUT, 8 * (uint64_t) i * 3, 4096, FALSE);
        fill_pattern(hva(&f, reqs[i].data_gpa), 4096, 100 + i);
        offer(&f, reqs[i].head);
    }
    kick(&f);
    wait_used(&f, n);
    for (unsigned i = 0; i < n; i++)
        g_assert_cmpuint(status_of(&f, reqs[i]), ==, S_OK);
    f.next_buf = BUF_GPA;
    for (unsigned i = 0; i < n; i++) {
        reqs[i] = build(&f, T_IN, 8 * (uint64_t) i * 3, 4096, TRUE);
        offer(&f, reqs[i].head);
    }
    kick(&f);
    wait_used(&f, 2 * n);
    uint8_t expect[4096];
    for (unsigned i = 0; i < n; i++) {
        g_assert_cmpuint(status_of(&f, reqs[i]), ==, S_OK);
        fill_pattern(expect, sizeof(expect), 100 + i);
        g_assert_cmpmem(hva(&f, reqs[i].data_gpa), 4096, expect, 4096);
    }
    fixture_clear(&f);
}

/* pause() returns with every request completed; reset() drops them without a trace. */
static void test_pause_reset(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, NULL);
    const unsigned n = 64;
    g_mutex_lock(&f.dev->lock); /* the I/O thread cannot reap: pause must */
    for (unsigned i = 0; i < n; i++)
        offer(&f, build(&f, T_IN, 64 * (uint64_t) i, 32768, TRUE).head);
    f.dev->ops->queue_notify(f.dev, 0);
    f.dev->paused = TRUE;
    f.dev->ops->pause(f.dev);
    g_assert_cmpuint(used_idx(&f), ==, n);
    int notes = g_atomic_int_get(&virtio_double_total);
    g_assert_cmpint(notes, >=, 1);
    g_mutex_unlock(&f.dev->lock);
    g_usleep(20000);
    g_assert_cmpuint(used_idx(&f), ==, n);
    g_assert_cmpint(g_atomic_int_get(&virtio_double_total), ==, notes);
    f.dev->paused = FALSE;

    /* Save / load: same disk accepted; a disk of another size or mode refused. */
    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter w = {blob};
    f.dev->ops->save(f.dev, &w);
    FerryStateReader r;
    g_autoptr(GError) error = NULL;
    ferry_state_reader_init(&r, blob->data, blob->len, "virtio-blk");
    g_assert_true(f.dev->ops->load(f.dev, f.dev->ops->state_version, &r, &error));
    g_assert_no_error(error);
    g_assert_true(ferry_state_reader_finish(&r, &error));

    g_autofree char *other = make_image(f.dir, "other.img", 1 << 20);
    FerryDiskSpec spec = {.path = other};
    FerryVirtioDev *o = ferry_virtio_blk_new(&spec, &error);
    g_assert_no_error(error);
    ferry_state_reader_init(&r, blob->data, blob->len, "virtio-blk");
    g_assert_false(o->ops->load(o, o->ops->state_version, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, "same disk"));
    g_clear_error(&error);
    o->ops->free(o);
    g_assert_cmpint(truncate(other, DISK_SECTORS * 512LL), ==, 0);
    spec.readonly = TRUE;
    o = ferry_virtio_blk_new(&spec, &error);
    g_assert_no_error(error);
    ferry_state_reader_init(&r, blob->data, blob->len, "virtio-blk");
    g_assert_false(o->ops->load(o, o->ops->state_version, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, "readonly"));
    g_clear_error(&error);
    ferry_state_reader_init(&r, blob->data, 3, "virtio-blk");
    g_assert_false(o->ops->load(o, o->ops->state_version, &r, &error));
    g_assert_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_TRUNCATED);
    o->ops->free(o);
    unlink(other);

    /* Reset with requests in flight: nothing is pushed, the status bytes stay untouched. */
    g_mutex_lock(&f.dev->lock);
    Req reqs[32];
    for (unsigned i = 0; i < 32; i++) {
        reqs[i] = build(&f, T_IN, 64 * (uint64_t) i, 32768, TRUE);
        offer(&f, reqs[i].head);
    }
    f.dev->ops->queue_notify(f.dev, 0);
    f.dev->ops->reset(f.dev);
    g_mutex_unlock(&f.dev->lock);
    g_usleep(20000);
    g_assert_cmpuint(used_idx(&f), ==, n);
    for (unsigned i = 0; i < 32; i++)
        g_assert_cmpuint(status_of(&f, reqs[i]), ==, 0xee);
    /* After reset the device works again on a fresh queue. */
    ferry_virtq_reset(&f.dev->vqs[0]);
    memset(hva(&f, AVAIL_GPA), 0, 4096);
    memset(hva(&f, USED_GPA), 0, 4096);
    f.avail_idx = 0;
    g_assert_true(
        ferry_virtq_enable(&f.dev->vqs[0], QSIZE, DESC_GPA, AVAIL_GPA, USED_GPA, FALSE, NULL));
    g_assert_cmpuint(run(&f, build(&f, T_FLUSH, 0, 0, FALSE)), ==, S_OK);
    fixture_clear(&f);
}

/* Requests the driver must not send: the device is marked broken, nothing is pushed. */
static void test_broken(void)
{
    Fixture f = {0};
    setup_disk(&f, FALSE, NULL, all_features, NULL);
    /* Header of 8 bytes. */
    uint64_t hdr = alloc_buf(&f, 16), st = alloc_buf(&f, 1);
    put_desc(&f, 0, hdr, 8, F_NEXT, 1);
    put_desc(&f, 1, st, 1, F_WRITE, 0);
    offer(&f, 0);
    kick(&f);
    g_assert_nonnull(virtio_double_broken_why);
    g_assert_nonnull(strstr(virtio_double_broken_why, "header"));
    g_assert_cmpuint(used_idx(&f), ==, 0);
    fixture_clear(&f);

    Fixture g = {0};
    setup_disk(&g, FALSE, NULL, all_features, NULL);
    hdr = alloc_buf(&g, 16 + 512);
    memset(hva(&g, hdr), 0, 16);
    put_desc(&g, 0, hdr, 16 + 512, 0, 0); /* an OUT without a status byte */
    offer(&g, 0);
    kick(&g);
    g_assert_nonnull(virtio_double_broken_why);
    g_assert_nonnull(strstr(virtio_double_broken_why, "status"));
    g_assert_cmpuint(used_idx(&g), ==, 0);
    /* A broken device takes nothing more from its queue. */
    offer(&g, build(&g, T_FLUSH, 0, 0, FALSE).head);
    kick(&g);
    g_usleep(20000);
    g_assert_cmpuint(used_idx(&g), ==, 0);
    fixture_clear(&g);
}

/* Two disks, each its own device and I/O thread, busy at the same time. */
static void test_two_disks(void)
{
    Fixture a = {0}, b = {0};
    setup_disk(&a, FALSE, NULL, all_features, NULL);
    setup_disk(&b, FALSE, NULL, all_features, NULL);
    Req ra[20], rb[20];
    for (unsigned i = 0; i < 20; i++) {
        ra[i] = build(&a, T_OUT, 16 * (uint64_t) i, 8192, FALSE);
        fill_pattern(hva(&a, ra[i].data_gpa), 8192, 200 + i);
        offer(&a, ra[i].head);
        rb[i] = build(&b, T_OUT, 16 * (uint64_t) i, 8192, FALSE);
        fill_pattern(hva(&b, rb[i].data_gpa), 8192, 300 + i);
        offer(&b, rb[i].head);
    }
    kick(&a);
    kick(&b);
    wait_used(&a, 20);
    wait_used(&b, 20);
    uint8_t buf[8192], expect[8192];
    for (unsigned i = 0; i < 20; i++) {
        file_read(a.path, 16 * 512ULL * i, buf, sizeof(buf));
        fill_pattern(expect, sizeof(expect), 200 + i);
        g_assert_cmpmem(buf, sizeof(buf), expect, sizeof(expect));
        file_read(b.path, 16 * 512ULL * i, buf, sizeof(buf));
        fill_pattern(expect, sizeof(expect), 300 + i);
        g_assert_cmpmem(buf, sizeof(buf), expect, sizeof(expect));
    }
    fixture_clear(&a);
    fixture_clear(&b);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/virtio-blk/open-errors", test_open_errors);
    g_test_add_func("/virtio-blk/open-permissions", test_open_permissions);
    g_test_add_func("/virtio-blk/locking", test_locking);
    g_test_add_func("/virtio-blk/config", test_config);
    g_test_add_func("/virtio-blk/write-read", test_write_read);
    g_test_add_func("/virtio-blk/framing", test_framing);
    g_test_add_func("/virtio-blk/errors", test_errors);
    g_test_add_func("/virtio-blk/get-id", test_get_id);
    g_test_add_func("/virtio-blk/readonly", test_readonly);
    g_test_add_func("/virtio-blk/discard-write-zeroes", test_discard_zeroes);
    g_test_add_func("/virtio-blk/discard-write-zeroes-tmpfs", test_discard_zeroes_tmpfs);
    g_test_add_func("/virtio-blk/writethrough", test_writethrough);
    g_test_add_func("/virtio-blk/many-in-flight", test_many_in_flight);
    g_test_add_func("/virtio-blk/pause-reset-state", test_pause_reset);
    g_test_add_func("/virtio-blk/broken", test_broken);
    g_test_add_func("/virtio-blk/two-disks", test_two_disks);
    return g_test_run();
}

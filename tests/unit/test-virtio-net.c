/*
 * Unit tests: the virtio-net device model (vmm/virtio/net.c) driven through its ops, with
 * split rings built here in guest memory, a real I/O thread and a real TAP interface in a
 * network namespace of the test's own.  The host side of the TAP is an AF_PACKET socket
 * bound to it: what it sends the device receives, and what the device transmits it reads.
 * Needs root (CAP_NET_ADMIN) and /dev/net/tun; skipped otherwise.
 *
 * The transport's entry points the device calls (virtio.h) are the test doubles of virtio-double.c.
 */
#include "virtio-double.h"
#include "virtio/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MEM_SIZE  (16ULL << 20)
#define QSIZE     256
#define BUF_GPA   0x100000ULL
#define HDR       12
#define ETHERTYPE 0x88b5 /* IEEE local experimental */
#define IFNAME    "fvnet0"

#define F_NEXT  1
#define F_WRITE 2

/* ---- driver side ---- */

typedef struct {
    uint64_t desc, avail, used;
    uint16_t avail_idx, used_seen, next_desc;
} Ring;

typedef struct {
    FerryGuestMemory *mem;
    FerryVirtioDev *dev;
    Ring rx, tx;
    uint64_t next_buf;
    int pkt; /* AF_PACKET socket on the TAP */
} Fixture;

static uint8_t *hva(Fixture *f, uint64_t gpa)
{
    return f->mem->base + gpa;
}

static uint64_t alloc_buf(Fixture *f, uint64_t len)
{
    uint64_t gpa = f->next_buf;
    f->next_buf += (len + 63) & ~63ULL;
    g_assert_cmpuint(f->next_buf, <=, MEM_SIZE);
    return gpa;
}

static void put_desc(Fixture *f, Ring *r, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    uint8_t *d = hva(f, r->desc + 16 * i);
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

/* Makes a chain of @n buffers (@gpa[i], @len[i]) available; returns its head. */
static uint16_t offer(Fixture *f, Ring *r, unsigned n, const uint64_t *gpa, const uint32_t *len,
                      gboolean writable)
{
    uint16_t head = r->next_desc;
    for (unsigned i = 0; i < n; i++) {
        uint16_t idx = (uint16_t) ((r->next_desc + i) % QSIZE);
        uint16_t flags = (writable ? F_WRITE : 0) | (i + 1 < n ? F_NEXT : 0);
        put_desc(f, r, idx, gpa[i], len[i], flags, (uint16_t) ((idx + 1) % QSIZE));
    }
    r->next_desc = (uint16_t) ((r->next_desc + n) % QSIZE);
    uint8_t *avail = hva(f, r->avail);
    memcpy(avail + 4 + 2 * (r->avail_idx % QSIZE), &head, 2);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    r->avail_idx++;
    __atomic_store_n((uint16_t *) (avail + 2), r->avail_idx, __ATOMIC_RELEASE);
    return head;
}

static uint16_t used_idx(Fixture *f, Ring *r)
{
    return __atomic_load_n((uint16_t *) hva(f, r->used + 2), __ATOMIC_ACQUIRE);
}

/* Takes the next used entry (asserting one is there). */
static void take_used(Fixture *f, Ring *r, uint16_t *id, uint32_t *len)
{
    g_assert_cmpuint(used_idx(f, r), !=, r->used_seen);
    const uint8_t *e = hva(f, r->used + 4 + 8 * (r->used_seen % QSIZE));
    uint32_t v;
    memcpy(&v, e, 4);
    *id = (uint16_t) v;
    memcpy(len, e + 4, 4);
    r->used_seen++;
}

/* Waits up to 2 s for @count used entries beyond those taken. */
static gboolean wait_used(Fixture *f, Ring *r, unsigned count)
{
    for (int i = 0; i < 2000; i++) {
        if ((uint16_t) (used_idx(f, r) - r->used_seen) >= count)
            return TRUE;
        g_usleep(1000);
    }
    return FALSE;
}

static void notify(Fixture *f, unsigned q)
{
    g_mutex_lock(&f->dev->lock);
    f->dev->ops->queue_notify(f->dev, q);
    g_mutex_unlock(&f->dev->lock);
}

/* Ethernet frame of @len bytes: broadcast, our ethertype, then bytes (i * 7 + @seed). */
static void make_frame(uint8_t *frame, size_t len, unsigned seed)
{
    memset(frame, 0xff, 6);
    memcpy(frame + 6, "\x02\x00\x00\x00\x00\x01", 6);
    frame[12] = ETHERTYPE >> 8;
    frame[13] = ETHERTYPE & 0xff;
    for (size_t i = 14; i < len; i++)
        frame[i] = (uint8_t) (i * 7 + seed);
}

static void host_send(Fixture *f, size_t len, unsigned seed)
{
    uint8_t frame[2048];
    make_frame(frame, len, seed);
    g_assert_cmpint(send(f->pkt, frame, len, 0), ==, (ssize_t) len);
}

/* Receives the next frame with our ethertype within 2 s; returns its length. */
static ssize_t host_recv(Fixture *f, uint8_t *buf, size_t size)
{
    for (;;) {
        struct pollfd p = {.fd = f->pkt, .events = POLLIN};
        if (poll(&p, 1, 2000) != 1)
            return -1;
        ssize_t n = recv(f->pkt, buf, size, 0);
        g_assert_cmpint(n, >=, 0);
        if (n >= 14 && buf[12] == (ETHERTYPE >> 8) && buf[13] == (ETHERTYPE & 0xff))
            return n;
    }
}

/* Receives the next frame of EtherType @type within @timeout_ms; returns its length or -1. */
static ssize_t host_recv_type(Fixture *f, uint16_t type, uint8_t *buf, size_t size,
                              int timeout_ms)
{
    for (;;) {
        struct pollfd p = {.fd = f->pkt, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) != 1)
            return -1;
        ssize_t n = recv(f->pkt, buf, size, 0);
        g_assert_cmpint(n, >=, 0);
        if (n >= 14 && buf[12] == (type >> 8) && buf[13] == (type & 0xff))
            return n;
    }
}

static gboolean setup(Fixture *f, uint64_t features)
{
    memset(f, 0, sizeof(*f));
    if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
        g_test_skip("needs root and /dev/net/tun");
        return FALSE;
    }
    if (unshare(CLONE_NEWNET) != 0) {
        g_test_skip("cannot create a network namespace");
        return FALSE;
    }
    /* Keep IPv6 autoconfiguration from sending frames of its own on the TAP. */
    int fd = open("/proc/sys/net/ipv6/conf/default/disable_ipv6", O_WRONLY);
    if (fd >= 0) {
        g_assert_cmpint(write(fd, "1", 1), ==, 1);
        close(fd);
    }

    f->mem = ferry_guest_memory_new(MEM_SIZE, NULL);
    g_assert_nonnull(f->mem);
    f->next_buf = BUF_GPA;
    f->rx = (Ring){.desc = 0x10000, .avail = 0x11000, .used = 0x12000};
    f->tx = (Ring){.desc = 0x20000, .avail = 0x21000, .used = 0x22000};

    g_autoptr(GError) error = NULL;
    FerryNetSpec spec = {.tap = (char *) IFNAME, .fd = -1, .slot = FERRY_PCI_SLOT_AUTO};
    FerryVirtioDev *dev = ferry_virtio_net_new(&spec, 0, &error);
    g_assert_no_error(error);
    f->dev = dev;
    g_mutex_init(&dev->lock);
    dev->mem = f->mem;
    dev->io = ferry_iothread_new("io-test-net", &error);
    g_assert_no_error(error);
    g_assert_true(dev->ops->realize(dev, &error));
    for (unsigned q = 0; q < 2; q++) {
        Ring *r = q == 0 ? &f->rx : &f->tx;
        ferry_virtq_init(&dev->vqs[q], f->mem);
        g_assert_true(
            ferry_virtq_enable(&dev->vqs[q], QSIZE, r->desc, r->avail, r->used, FALSE, &error));
    }
    dev->features = features & dev->ops->get_features(dev);
    g_assert_cmphex(dev->features, ==, features);

    f->pkt = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    g_assert_cmpint(f->pkt, >=, 0);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET,
                              .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = (int) if_nametoindex(IFNAME)};
    g_assert_cmpint(sll.sll_ifindex, >, 0);
    g_assert_no_errno(bind(f->pkt, (struct sockaddr *) &sll, sizeof(sll)));

    g_mutex_lock(&dev->lock);
    gboolean ok = dev->ops->activate(dev, &error);
    g_mutex_unlock(&dev->lock);
    g_assert_no_error(error);
    g_assert_true(ok);
    return TRUE;
}

static void teardown(Fixture *f)
{
    if (f->dev) {
        g_mutex_lock(&f->dev->lock);
        f->dev->ops->reset(f->dev);
        g_mutex_unlock(&f->dev->lock);
        ferry_iothread_free(f->dev->io);
        f->dev->io = NULL;
        g_mutex_clear(&f->dev->lock);
        f->dev->ops->free(f->dev);
    }
    if (f->pkt > 0)
        close(f->pkt);
    if (f->mem)
        ferry_guest_memory_free(f->mem);
    virtio_double_reset();
}

static FerryVirtioNetStats stats(Fixture *f)
{
    FerryVirtioNetStats s;
    ferry_virtio_net_get_stats(f->dev, &s);
    return s;
}

/* Posts @n receive buffers of @size bytes, each one descriptor. */
static void post_rx(Fixture *f, unsigned n, uint32_t size, uint64_t *gpas)
{
    for (unsigned i = 0; i < n; i++) {
        uint64_t gpa = alloc_buf(f, size);
        memset(hva(f, gpa), 0xee, size);
        offer(f, &f->rx, 1, &gpa, &size, TRUE);
        if (gpas)
            gpas[i] = gpa;
    }
}

/* ---- tests ---- */

static void test_tx(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    uint8_t frame[1200], got[2048];

    /* Locked: the deferred work activate scheduled must not take the frames one by one. */
    g_mutex_lock(&f.dev->lock);

    /* Header and frame in one buffer. */
    make_frame(frame, 100, 1);
    uint64_t a = alloc_buf(&f, HDR + 100);
    memset(hva(&f, a), 0, HDR);
    memcpy(hva(&f, a + HDR), frame, 100);
    uint32_t la = HDR + 100;
    uint16_t h1 = offer(&f, &f.tx, 1, &a, &la, FALSE);

    /* Header and frame split over three descriptors. */
    make_frame(frame, 1200, 2);
    uint64_t parts[3] = {alloc_buf(&f, HDR), alloc_buf(&f, 500), alloc_buf(&f, 700)};
    uint32_t lens[3] = {HDR, 500, 700};
    memset(hva(&f, parts[0]), 0, HDR);
    memcpy(hva(&f, parts[1]), frame, 500);
    memcpy(hva(&f, parts[2]), frame + 500, 700);
    uint16_t h2 = offer(&f, &f.tx, 3, parts, lens, FALSE);

    /* Shorter than the header: dropped, but returned. */
    uint64_t s = alloc_buf(&f, 8);
    uint32_t ls = 8;
    uint16_t h3 = offer(&f, &f.tx, 1, &s, &ls, FALSE);

    f.dev->ops->queue_notify(f.dev, 1);
    g_mutex_unlock(&f.dev->lock);
    g_assert_cmpint(g_atomic_int_get(&virtio_double_notifications[1]), ==, 1); /* one per batch */
    uint16_t id;
    uint32_t len;
    uint16_t heads[3] = {h1, h2, h3};
    for (int i = 0; i < 3; i++) {
        take_used(&f, &f.tx, &id, &len);
        g_assert_cmpuint(id, ==, heads[i]);
        g_assert_cmpuint(len, ==, 0);
    }

    g_assert_cmpint(host_recv(&f, got, sizeof(got)), ==, 100);
    make_frame(frame, 100, 1);
    g_assert_cmpmem(got, 100, frame, 100);
    g_assert_cmpint(host_recv(&f, got, sizeof(got)), ==, 1200);
    make_frame(frame, 1200, 2);
    g_assert_cmpmem(got, 1200, frame, 1200);

    FerryVirtioNetStats st = stats(&f);
    g_assert_cmpuint(st.tx_frames, ==, 2);
    g_assert_cmpuint(st.tx_dropped, ==, 1);
    g_assert_null(virtio_double_broken_why);
    teardown(&f);
}

/* Posts a 60-byte frame (with its header) on the transmitq. */
static void post_tx(Fixture *f, unsigned seed)
{
    uint32_t len = HDR + 60;
    uint64_t gpa = alloc_buf(f, len);
    memset(hva(f, gpa), 0, HDR);
    make_frame(hva(f, gpa + HDR), 60, seed);
    offer(f, &f->tx, 1, &gpa, &len, FALSE);
}

/*
 * More than one wakeup's budget (256 frames): the rest is sent later without another
 * notification from the driver.
 */
static void test_tx_budget(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    /*
     * Hold the lock so that the I/O thread's deferred work (also the one activate
     * scheduled) cannot take the frames before the notification, nor run before the next
     * frames are posted.
     */
    g_mutex_lock(&f.dev->lock);
    for (unsigned i = 0; i < QSIZE; i++)
        post_tx(&f, i);
    f.dev->ops->queue_notify(f.dev, 1);
    g_assert_cmpuint(used_idx(&f, &f.tx), ==, QSIZE);
    f.tx.used_seen = QSIZE;
    for (unsigned i = 0; i < 10; i++)
        post_tx(&f, 1000 + i);
    g_mutex_unlock(&f.dev->lock);
    g_assert_true(wait_used(&f, &f.tx, 10));
    g_assert_cmpuint(stats(&f).tx_frames, ==, QSIZE + 10);
    g_assert_cmpint(g_atomic_int_get(&virtio_double_notifications[1]), ==, 2);
    teardown(&f);
}

static void check_rx_frame(Fixture *f, const uint8_t *buf, size_t len, unsigned seed,
                           uint16_t num_buffers)
{
    uint8_t frame[2048];
    make_frame(frame, len, seed);
    g_assert_cmpuint(buf[0], ==, 0); /* flags: no GUEST_CSUM */
    g_assert_cmpuint(buf[1], ==, 0); /* gso_type NONE */
    g_assert_cmpuint(buf[10] | buf[11] << 8, ==, num_buffers);
    g_assert_cmpmem(buf + HDR, len, frame, len);
}

static void test_rx_single(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    uint64_t gpas[4];
    post_rx(&f, 4, 2048, gpas);
    notify(&f, 0);
    static const size_t sizes[3] = {60, 1000, 1514};
    for (unsigned i = 0; i < 3; i++)
        host_send(&f, sizes[i], 10 + i);
    g_assert_true(wait_used(&f, &f.rx, 3));
    for (unsigned i = 0; i < 3; i++) {
        uint16_t id;
        uint32_t len;
        take_used(&f, &f.rx, &id, &len);
        g_assert_cmpuint(id, ==, i);
        g_assert_cmpuint(len, ==, HDR + sizes[i]);
        check_rx_frame(&f, hva(&f, gpas[i]), sizes[i], 10 + i, 1);
    }
    g_assert_cmpuint(stats(&f).rx_frames, ==, 3);
    g_assert_cmpint(g_atomic_int_get(&virtio_double_notifications[0]), >=, 1);
    teardown(&f);
}

/* Buffers smaller than the largest frame: a frame that does not fit is dropped. */
static void test_rx_small_buffers(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    uint64_t gpas[2];
    post_rx(&f, 2, 200, gpas);
    notify(&f, 0);
    host_send(&f, 100, 1);
    g_assert_true(wait_used(&f, &f.rx, 1));
    host_send(&f, 500, 2); /* does not fit in 200 bytes */
    host_send(&f, 80, 3);
    g_assert_true(wait_used(&f, &f.rx, 2));
    uint16_t id;
    uint32_t len;
    take_used(&f, &f.rx, &id, &len);
    g_assert_cmpuint(len, ==, HDR + 100);
    check_rx_frame(&f, hva(&f, gpas[0]), 100, 1, 1);
    take_used(&f, &f.rx, &id, &len);
    g_assert_cmpuint(id, ==, 1); /* the second buffer, kept for the third frame */
    g_assert_cmpuint(len, ==, HDR + 80);
    check_rx_frame(&f, hva(&f, gpas[1]), 80, 3, 1);
    FerryVirtioNetStats st = stats(&f);
    g_assert_cmpuint(st.rx_frames, ==, 2);
    g_assert_cmpuint(st.rx_dropped, ==, 1);
    teardown(&f);
}

/* A receive buffer too small for the header is returned unused; the next one is used. */
static void test_rx_tiny_buffer(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    uint64_t gpas[2];
    post_rx(&f, 1, 8, gpas);
    post_rx(&f, 1, 2048, gpas + 1);
    notify(&f, 0);
    host_send(&f, 90, 8);
    g_assert_true(wait_used(&f, &f.rx, 2));
    uint16_t id;
    uint32_t len;
    take_used(&f, &f.rx, &id, &len);
    g_assert_cmpuint(id, ==, 0);
    g_assert_cmpuint(len, ==, 0);
    take_used(&f, &f.rx, &id, &len);
    g_assert_cmpuint(id, ==, 1);
    g_assert_cmpuint(len, ==, HDR + 90);
    check_rx_frame(&f, hva(&f, gpas[1]), 90, 8, 1);
    g_assert_cmpuint(stats(&f).rx_dropped, ==, 1);
    g_assert_null(virtio_double_broken_why);
    teardown(&f);
}

/* MRG_RXBUF: a frame spread over several buffers, num_buffers in the first header. */
static void test_rx_merged(void)
{
    Fixture f;
    if (!setup(&f, 1ULL << VIRTIO_NET_F_MRG_RXBUF))
        return;
    uint64_t gpas[8];
    post_rx(&f, 8, 256, gpas);
    notify(&f, 0);
    host_send(&f, 1000, 5); /* 1012 bytes with the header: 4 buffers */
    g_assert_true(wait_used(&f, &f.rx, 4));
    uint8_t all[2048];
    size_t off = 0;
    for (unsigned i = 0; i < 4; i++) {
        uint16_t id;
        uint32_t len;
        take_used(&f, &f.rx, &id, &len);
        g_assert_cmpuint(id, ==, i);
        g_assert_cmpuint(len, ==, i < 3 ? 256 : 1012 - 3 * 256);
        memcpy(all + off, hva(&f, gpas[id]), len);
        off += len;
    }
    check_rx_frame(&f, all, 1000, 5, 4);
    /* A small one next takes one buffer. */
    host_send(&f, 64, 6);
    g_assert_true(wait_used(&f, &f.rx, 1));
    uint16_t id;
    uint32_t len;
    take_used(&f, &f.rx, &id, &len);
    g_assert_cmpuint(id, ==, 4);
    g_assert_cmpuint(len, ==, HDR + 64);
    check_rx_frame(&f, hva(&f, gpas[4]), 64, 6, 1);
    teardown(&f);
}

/*
 * No receive buffers: frames wait (in the TAP, or in the device when merged buffers ran
 * short) until the driver adds buffers and notifies.
 */
static void rx_waits(uint64_t features)
{
    Fixture f;
    if (!setup(&f, features))
        return;
    gboolean merged = features != 0;
    uint64_t gpas[4];
    if (merged) {
        post_rx(&f, 2, 256, gpas); /* too few for the frame below */
        notify(&f, 0);
    }
    host_send(&f, 600, 7);
    g_usleep(200 * 1000);
    g_assert_cmpuint(used_idx(&f, &f.rx), ==, 0);
    if (merged) {
        post_rx(&f, 2, 256, gpas + 2);
    } else {
        post_rx(&f, 1, 2048, gpas);
    }
    notify(&f, 0);
    unsigned nbufs = merged ? 3 : 1;
    g_assert_true(wait_used(&f, &f.rx, nbufs));
    uint8_t all[2048];
    size_t off = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        uint16_t id;
        uint32_t len;
        take_used(&f, &f.rx, &id, &len);
        g_assert_cmpuint(id, ==, i);
        memcpy(all + off, hva(&f, gpas[id]), len);
        off += len;
    }
    g_assert_cmpuint(off, ==, HDR + 600);
    check_rx_frame(&f, all, 600, 7, (uint16_t) nbufs);
    g_assert_cmpuint(stats(&f).rx_dropped, ==, 0);
    teardown(&f);
}

static void test_rx_waits_single(void)
{
    rx_waits(0);
}

static void test_rx_waits_merged(void)
{
    rx_waits(1ULL << VIRTIO_NET_F_MRG_RXBUF);
}

/* Paused: nothing is received; after resume the waiting frame arrives. */
static void test_pause(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    uint64_t gpa;
    post_rx(&f, 1, 2048, &gpa);
    notify(&f, 0);
    g_mutex_lock(&f.dev->lock);
    f.dev->paused = TRUE;
    f.dev->ops->pause(f.dev);
    g_mutex_unlock(&f.dev->lock);
    host_send(&f, 300, 9);
    g_usleep(200 * 1000);
    g_assert_cmpuint(used_idx(&f, &f.rx), ==, 0);
    g_mutex_lock(&f.dev->lock);
    f.dev->paused = FALSE;
    f.dev->ops->resume(f.dev);
    g_mutex_unlock(&f.dev->lock);
    g_assert_true(wait_used(&f, &f.rx, 1));
    uint16_t id;
    uint32_t len;
    take_used(&f, &f.rx, &id, &len);
    g_assert_cmpuint(len, ==, HDR + 300);
    check_rx_frame(&f, hva(&f, gpa), 300, 9, 1);
    teardown(&f);
}

/*
 * Sends a UDP datagram from the host stack to 10.88.0.2 through the TAP (address and a
 * static neighbour set up here), so that the frame can carry a partial checksum.
 */
static void host_udp(Fixture *f, size_t payload)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(s, >=, 0);
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, IFNAME, sizeof(ifr.ifr_name));
    struct sockaddr_in *sin = (struct sockaddr_in *) &ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(0x0a580001); /* 10.88.0.1 */
    g_assert_no_errno(ioctl(s, SIOCSIFADDR, &ifr));
    sin->sin_addr.s_addr = htonl(0xffffff00);
    g_assert_no_errno(ioctl(s, SIOCSIFNETMASK, &ifr));
    struct arpreq arp = {0};
    struct sockaddr_in *pa = (struct sockaddr_in *) &arp.arp_pa;
    pa->sin_family = AF_INET;
    pa->sin_addr.s_addr = htonl(0x0a580002);
    arp.arp_ha.sa_family = ARPHRD_ETHER;
    memcpy(arp.arp_ha.sa_data, "\x52\x54\x00\x12\x34\x56", 6);
    arp.arp_flags = ATF_COM | ATF_PERM;
    g_strlcpy(arp.arp_dev, IFNAME, sizeof(arp.arp_dev));
    g_assert_no_errno(ioctl(s, SIOCSARP, &arp));
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
    to.sin_addr.s_addr = htonl(0x0a580002);
    uint8_t data[1400];
    memset(data, 0x5a, sizeof(data));
    g_assert_cmpint(sendto(s, data, payload, 0, (struct sockaddr *) &to, sizeof(to)), ==,
                    (ssize_t) payload);
    close(s);
}

/* Ones' complement sum of @len bytes (big-endian 16-bit words). */
static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t) (p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (uint32_t) p[len - 1] << 8;
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t) sum;
}

/*
 * The offloads follow the driver's features (TUNSETOFFLOAD at activate): with GUEST_CSUM the
 * frame comes with NEEDS_CSUM and a partial checksum (5.1.6.4); without it, fully
 * checksummed with flags 0.
 */
static void guest_csum(gboolean negotiated)
{
    Fixture f;
    if (!setup(&f, negotiated ? 1ULL << VIRTIO_NET_F_GUEST_CSUM : 0))
        return;
    uint64_t gpa;
    post_rx(&f, 1, 2048, &gpa);
    notify(&f, 0);
    host_udp(&f, 100);
    g_assert_true(wait_used(&f, &f.rx, 1));
    uint16_t id;
    uint32_t len;
    take_used(&f, &f.rx, &id, &len);
    const uint8_t *b = hva(&f, gpa);
    const uint8_t *ip = b + HDR + 14;
    g_assert_cmpuint(len, ==, HDR + 14 + 20 + 8 + 100);
    g_assert_cmpuint(b[HDR + 12] << 8 | b[HDR + 13], ==, 0x0800);
    g_assert_cmpuint(ip[9], ==, 17); /* UDP */
    g_assert_cmpuint(b[10] | b[11] << 8, ==, 1);
    uint16_t csum_start = (uint16_t) (b[6] | b[7] << 8),
             csum_offset = (uint16_t) (b[8] | b[9] << 8);
    /* The UDP checksum over the pseudo header and the datagram. */
    uint32_t sum = csum_add(0, ip + 12, 8) + 17 + 108;
    sum = csum_add(sum, ip + 20, 108);
    if (negotiated) {
        g_assert_cmpuint(b[0], ==, 1); /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
        g_assert_cmpuint(csum_start, ==, 14 + 20);
        g_assert_cmpuint(csum_offset, ==, 6);
        /* Partial: the field holds the folded pseudo-header sum, not the final value. */
        g_assert_cmpuint(csum_fold(sum), !=, 0xffff);
    } else {
        g_assert_cmpuint(b[0], ==, 0);
        g_assert_cmpuint(csum_fold(sum), ==, 0xffff); /* complete and correct */
    }
    teardown(&f);
}

static void test_guest_csum_on(void)
{
    guest_csum(TRUE);
}

static void test_guest_csum_off(void)
{
    guest_csum(FALSE);
}

/* After a migration: 5 RARP frames in the guest's name, read on the host side of the TAP. */
static void test_announce(void)
{
    Fixture f;
    if (!setup(&f, 0))
        return;
    uint8_t mac[6], frame[2048], want[FERRY_VIRTIO_NET_RARP_LEN];
    f.dev->ops->read_config(f.dev, 0, mac, 6);
    ferry_virtio_net_rarp_frame(mac, want);

    ferry_virtio_net_announce(f.dev);
    ferry_virtio_net_announce(f.dev); /* restarts the series: still 5 frames */
    gint64 last = g_get_monotonic_time();
    for (unsigned i = 0; i < 5; i++) {
        ssize_t n = host_recv_type(&f, 0x8035, frame, sizeof(frame), 2000);
        gint64 now = g_get_monotonic_time();
        g_test_message("announce frame %u after %.1f ms", i + 1, (double) (now - last) / 1000);
        last = now;
        g_assert_cmpint(n, ==, 60); /* no header: the TAP took the all-zero one off */
        /* RFC 903 over Ethernet, field by field. */
        static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
        static const uint8_t arp_fixed[8] = {0, 1, 0x08, 0x00, 6, 4, 0, 3};
        g_assert_cmpmem(frame, 6, bcast, 6);
        g_assert_cmpmem(frame + 6, 6, mac, 6);
        g_assert_cmpmem(frame + 14, 8, arp_fixed, 8); /* htype, ptype, hlen, plen, opcode 3 */
        g_assert_cmpmem(frame + 22, 6, mac, 6);       /* sender hardware address */
        g_assert_cmpmem(frame + 32, 6, mac, 6);       /* target hardware address */
        for (unsigned k = 28; k < 60; k++)             /* addresses 0.0.0.0, padding */
            if (k < 32 || k >= 38)
                g_assert_cmpuint(frame[k], ==, 0);
        g_assert_cmpmem(frame, 60, want, 60);
    }
    g_assert_cmpint(host_recv_type(&f, 0x8035, frame, sizeof(frame), 1000), ==, -1);
    g_assert_cmpuint(stats(&f).tx_frames, ==, 0); /* not counted as the guest's traffic */

    /* Freed with a series under way: the timer goes with the device. */
    ferry_virtio_net_announce(f.dev);
    teardown(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/virtio-net/tx", test_tx);
    g_test_add_func("/virtio-net/tx-budget", test_tx_budget);
    g_test_add_func("/virtio-net/rx-single", test_rx_single);
    g_test_add_func("/virtio-net/rx-small-buffers", test_rx_small_buffers);
    g_test_add_func("/virtio-net/rx-tiny-buffer", test_rx_tiny_buffer);
    g_test_add_func("/virtio-net/rx-merged", test_rx_merged);
    g_test_add_func("/virtio-net/rx-waits-single", test_rx_waits_single);
    g_test_add_func("/virtio-net/rx-waits-merged", test_rx_waits_merged);
    g_test_add_func("/virtio-net/pause", test_pause);
    g_test_add_func("/virtio-net/guest-csum-on", test_guest_csum_on);
    g_test_add_func("/virtio-net/guest-csum-off", test_guest_csum_off);
    g_test_add_func("/virtio-net/announce", test_announce);
    return g_test_run();
}

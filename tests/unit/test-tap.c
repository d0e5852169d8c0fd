/*
 * Unit tests: the TAP back end (vmm/net/tap.c) and virtio-net's construction
 * (vmm/virtio/net.c).  Descriptor hand-over errors need nothing special; the tests that
 * create interfaces run as root in a network namespace of their own (unshare), and are
 * skipped elsewhere.
 */
#include "net/tap.h"
#include "virtio/net.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static void assert_message(const GError *error, const char *part)
{
    g_assert_nonnull(error);
    if (!strstr(error->message, part))
        g_error("message '%s' lacks '%s'", error->message, part);
}

static void test_adopt_bad_fd(void)
{
    /* A descriptor number that is not open. */
    int fds[2];
    g_assert_no_errno(pipe(fds));
    close(fds[1]);
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_tap_adopt_fd(fds[1], 0, &error));
    assert_message(error, "is not an open file descriptor");
    g_clear_error(&error);

    /* An open descriptor that is not /dev/net/tun. */
    g_assert_null(ferry_tap_adopt_fd(fds[0], 0, &error));
    assert_message(error, "is not a TUN/TAP descriptor");
    g_clear_error(&error);
    /* ... and it is still ours (not closed on error). */
    g_assert_cmpint(fcntl(fds[0], F_GETFD), >=, 0);
    close(fds[0]);

    /* Through the device constructor: the option is named. */
    FerryNetSpec spec = {.fd = fds[1], .slot = FERRY_PCI_SLOT_AUTO};
    g_assert_null(ferry_virtio_net_new(&spec, 0, &error));
    assert_message(error, "--net: ");
    assert_message(error, "is not an open file descriptor");
}

static void test_adopt_unattached(void)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        g_test_skip("no /dev/net/tun");
        return;
    }
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_tap_adopt_fd(fd, 0, &error));
    assert_message(error, "not attached to an interface");
    close(fd);
}

static void test_bad_name(void)
{
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_tap_open("a-name-that-is-too-long", 0, &error));
    assert_message(error, "not a valid interface name");
    g_clear_error(&error);
    g_assert_null(ferry_tap_open("", 0, &error));
    assert_message(error, "not a valid interface name");
    /* The --net parser refuses it before that. */
    FerryNetSpec spec;
    g_clear_error(&error);
    g_assert_false(ferry_net_spec_parse("tap=a-name-that-is-too-long", &spec, &error));
    assert_message(error, "not a valid interface name");
}

static void test_default_mac(void)
{
    uint8_t a[6], b[6], c[6], d[6];
    ferry_virtio_net_default_mac(1234, 0, a);
    ferry_virtio_net_default_mac(1234, 1, b);
    ferry_virtio_net_default_mac(1235, 0, c);
    ferry_virtio_net_default_mac(1234, 0, d);
    g_assert_cmpmem(a, 3, "\x52\x54\x00", 3);
    g_assert_false(a[0] & 1); /* unicast */
    g_assert_true(a[0] & 2);  /* locally administered */
    g_assert_cmpmem(a, 6, d, 6);
    g_assert_true(memcmp(a, b, 6) != 0);
    g_assert_true(memcmp(a, c, 6) != 0);
    g_assert_true(memcmp(b, c, 6) != 0);
    /* Injective below pid 2^19 and index 32: spot-check the corners. */
    uint8_t e[6], f[6];
    ferry_virtio_net_default_mac((1u << 19) - 1, 31, e);
    ferry_virtio_net_default_mac(0, 31, f);
    g_assert_cmpmem(e + 3, 3, "\xff\xff\xff", 3);
    g_assert_cmpmem(f + 3, 3, "\x00\x00\x1f", 3);
}

/* Root in a fresh network namespace, or skip. */
static gboolean own_netns(void)
{
    if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0) {
        g_test_skip("needs root and /dev/net/tun");
        return FALSE;
    }
    if (unshare(CLONE_NEWNET) != 0) {
        g_test_skip("cannot create a network namespace");
        return FALSE;
    }
    return TRUE;
}

static int if_flags(const char *name)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(s, >=, 0);
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name));
    int r = ioctl(s, SIOCGIFFLAGS, &ifr);
    close(s);
    return r == 0 ? ifr.ifr_flags : -1;
}

/* Opens @name on /dev/net/tun with @flags; returns the fd or -1 with errno. */
static int raw_tun(const char *name, short flags)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name));
    ifr.ifr_flags = flags;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static void test_create_and_remove(void)
{
    if (!own_netns())
        return;
    g_autoptr(GError) error = NULL;
    FerryTap *tap = ferry_tap_open("ftest0", 1400, &error);
    g_assert_no_error(error);
    g_assert_nonnull(tap);
    g_assert_true(tap->created);
    g_assert_cmpstr(tap->name, ==, "ftest0");
    g_assert_cmpuint(tap->mtu, ==, 1400);
    g_assert_true(if_flags("ftest0") & IFF_UP);
    g_assert_true(fcntl(tap->fd, F_GETFL) & O_NONBLOCK);
    int hdr = 0;
    g_assert_no_errno(ioctl(tap->fd, TUNGETVNETHDRSZ, &hdr));
    g_assert_cmpint(hdr, ==, 12);
    /* Every Linux since 2.6.27 takes checksum and TSO offloads. */
    g_assert_true(tap->offloads & FERRY_TAP_OFFLOAD_CSUM);
    g_assert_true(tap->offloads & FERRY_TAP_OFFLOAD_TSO4);
    g_assert_true(ferry_tap_set_offload(tap, tap->offloads, &error));
    g_assert_true(ferry_tap_set_offload(tap, 0, &error));
    g_assert_no_error(error);

    /* A second user of the same interface is refused. */
    g_assert_null(ferry_tap_open("ftest0", 0, &error));
    assert_message(error, "in use by another process");
    g_clear_error(&error);

    /* Nothing is read from an idle TAP: the descriptor does not block. */
    char buf[64];
    g_assert_cmpint(read(tap->fd, buf, sizeof(buf)), ==, -1);
    g_assert_cmpint(errno, ==, EAGAIN);

    ferry_tap_close(tap);
    g_assert_cmpuint(if_nametoindex("ftest0"), ==, 0); /* we created it: gone */
}

static void test_existing_interfaces(void)
{
    if (!own_netns())
        return;
    g_autoptr(GError) error = NULL;

    /* A persistent TAP made beforehand (as by ip tuntap add) is used and left in place. */
    int fd = raw_tun("fpersist", IFF_TAP | IFF_NO_PI);
    g_assert_cmpint(fd, >=, 0);
    g_assert_no_errno(ioctl(fd, TUNSETPERSIST, 1));
    close(fd);
    FerryTap *tap = ferry_tap_open("fpersist", 0, &error);
    g_assert_no_error(error);
    g_assert_false(tap->created);
    g_assert_cmpuint(tap->mtu, ==, 1500);
    ferry_tap_close(tap);
    g_assert_cmpuint(if_nametoindex("fpersist"), !=, 0);

    /* A TUN (IP) interface of that name is not a TAP. */
    fd = raw_tun("ftun", IFF_TUN | IFF_NO_PI);
    g_assert_cmpint(fd, >=, 0);
    g_assert_no_errno(ioctl(fd, TUNSETPERSIST, 1));
    close(fd);
    g_assert_null(ferry_tap_open("ftun", 0, &error));
    assert_message(error, "not a single-queue TAP");
    g_clear_error(&error);
    /* Nor is the loopback interface. */
    g_assert_null(ferry_tap_open("lo", 0, &error));
    assert_message(error, "not a single-queue TAP");
    g_clear_error(&error);

    /* Handed-over descriptors: a TUN, a TAP without the virtio header, then a good one. */
    fd = raw_tun("ftun", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR);
    g_assert_cmpint(fd, >=, 0);
    g_assert_null(ferry_tap_adopt_fd(fd, 0, &error));
    assert_message(error, "a TUN (IP) interface, not a TAP");
    g_clear_error(&error);
    close(fd);

    fd = raw_tun("fhand", IFF_TAP | IFF_NO_PI);
    g_assert_cmpint(fd, >=, 0);
    g_assert_null(ferry_tap_adopt_fd(fd, 0, &error));
    assert_message(error, "IFF_VNET_HDR");
    g_clear_error(&error);
    close(fd);

    fd = raw_tun("fhand", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    g_assert_cmpint(fd, >=, 0);
    tap = ferry_tap_adopt_fd(fd, 9000, &error);
    g_assert_no_error(error);
    g_assert_cmpint(tap->fd, ==, fd);
    g_assert_cmpstr(tap->name, ==, "fhand");
    g_assert_false(tap->created);
    g_assert_cmpuint(tap->mtu, ==, 9000);
    ferry_tap_close(tap);

    /* An MTU the kernel refuses is reported with the value. */
    g_assert_null(ferry_tap_open("fbig", 65535, &error));
    assert_message(error, "refused MTU 65535");
}

/* The device model's construction on a real TAP: features and configuration space. */
static void test_device_config(void)
{
    if (!own_netns())
        return;
    g_autoptr(GError) error = NULL;
    FerryNetSpec spec = {
        .tap = (char *) "fnet0", .fd = -1, .mtu = 1400, .slot = FERRY_PCI_SLOT_AUTO};
    FerryVirtioDev *dev = ferry_virtio_net_new(&spec, 3, &error);
    g_assert_no_error(error);
    g_assert_cmpstr(ferry_virtio_net_ifname(dev), ==, "fnet0");
    g_assert_cmpuint(dev->nr_queues, ==, 2);
    g_assert_cmpuint(dev->queue_max_size[0], ==, 256);
    g_assert_cmpuint(dev->queue_max_size[1], ==, 256);
    g_assert_cmpuint(dev->ops->device_id, ==, VIRTIO_ID_NET);
    uint64_t f = dev->ops->get_features(dev);
    g_assert_true(f & (1ULL << VIRTIO_NET_F_MAC));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_MTU));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_STATUS));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_MRG_RXBUF));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_CSUM));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_GUEST_CSUM));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_HOST_TSO4));
    g_assert_true(f & (1ULL << VIRTIO_NET_F_GUEST_TSO4));

    uint8_t cfg[FERRY_VIRTIO_NET_CONFIG_SIZE], mac[6];
    for (uint32_t off = 0; off < sizeof(cfg); off += 2)
        dev->ops->read_config(dev, off, cfg + off, 2);
    ferry_virtio_net_default_mac((unsigned) getpid(), 3, mac);
    g_assert_cmpmem(cfg, 6, mac, 6);
    g_assert_cmpuint(cfg[6] | cfg[7] << 8, ==, VIRTIO_NET_S_LINK_UP);
    g_assert_cmpuint(cfg[8] | cfg[9] << 8, ==, 1);
    g_assert_cmpuint(cfg[10] | cfg[11] << 8, ==, 1400);

    /* Save and load round trip; a MAC given on the command line is replaced by the saved. */
    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter w = {blob};
    dev->ops->save(dev, &w);
    dev->ops->free(dev);

    spec.has_mac = TRUE;
    memcpy(spec.mac, "\x52\x54\x00\xaa\xbb\xcc", 6);
    dev = ferry_virtio_net_new(&spec, 0, &error);
    g_assert_no_error(error);
    dev->ops->read_config(dev, 0, cfg, 4);
    g_assert_cmpmem(cfg, 4, "\x52\x54\x00\xaa", 4);
    FerryStateReader r;
    ferry_state_reader_init(&r, blob->data, blob->len, "virtio-net");
    g_assert_true(dev->ops->load(dev, dev->ops->state_version, &r, &error));
    g_assert_no_error(error);
    g_assert_true(ferry_state_reader_finish(&r, &error));
    dev->ops->read_config(dev, 0, cfg, 4);
    dev->ops->read_config(dev, 4, cfg + 4, 2);
    g_assert_cmpmem(cfg, 6, mac, 6);
    dev->ops->free(dev);

    /* A destination whose NIC has another MTU refuses the state, and stays unchanged. */
    spec.mtu = 1300;
    dev = ferry_virtio_net_new(&spec, 0, &error);
    g_assert_no_error(error);
    ferry_state_reader_init(&r, blob->data, blob->len, "virtio-net");
    g_assert_false(dev->ops->load(dev, dev->ops->state_version, &r, &error));
    assert_message(error, "MTU 1400");
    dev->ops->read_config(dev, 0, cfg, 4);
    g_assert_cmpmem(cfg, 4, "\x52\x54\x00\xaa", 4);
    dev->ops->free(dev);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/tap/adopt-bad-fd", test_adopt_bad_fd);
    g_test_add_func("/tap/adopt-unattached", test_adopt_unattached);
    g_test_add_func("/tap/bad-name", test_bad_name);
    g_test_add_func("/virtio-net/default-mac", test_default_mac);
    g_test_add_func("/tap/create-and-remove", test_create_and_remove);
    g_test_add_func("/tap/existing-interfaces", test_existing_interfaces);
    g_test_add_func("/virtio-net/config-and-state", test_device_config);
    return g_test_run();
}

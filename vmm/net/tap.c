#include "net/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define TUN_PATH "/dev/net/tun"

G_STATIC_ASSERT(FERRY_TAP_OFFLOAD_CSUM == TUN_F_CSUM);
G_STATIC_ASSERT(FERRY_TAP_OFFLOAD_TSO4 == TUN_F_TSO4);
G_STATIC_ASSERT(FERRY_TAP_OFFLOAD_TSO6 == TUN_F_TSO6);
G_STATIC_ASSERT(FERRY_TAP_OFFLOAD_UFO == TUN_F_UFO);

static gboolean tap_error(GError **error, int err, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean tap_error(GError **error, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, G_IO_ERROR, err ? g_io_error_from_errno(err) : G_IO_ERROR_FAILED,
                        msg);
    return FALSE;
}

/* A datagram socket for the SIOC[GS]IF* interface ioctls (any family reaches dev_ioctl). */
static int ctl_socket(GError **error)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        tap_error(error, errno, "cannot open a socket to configure TAP interfaces: %s",
                  g_strerror(errno));
    return s;
}

static gboolean bring_up(const char *name, GError **error)
{
    int s = ctl_socket(error);
    if (s < 0)
        return FALSE;
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name));
    gboolean ok = ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
    if (ok) {
        ifr.ifr_flags |= IFF_UP;
        ok = ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
    }
    int err = errno;
    close(s);
    if (!ok)
        return tap_error(error, err, "cannot bring TAP interface %s up: %s", name, g_strerror(err));
    return TRUE;
}

/* Sets the MTU (@mtu != 0), then reads it back into @tap->mtu. */
static gboolean setup_mtu(FerryTap *tap, unsigned mtu, GError **error)
{
    int s = ctl_socket(error);
    if (s < 0)
        return FALSE;
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, tap->name, sizeof(ifr.ifr_name));
    if (mtu) {
        ifr.ifr_mtu = (int) mtu;
        if (ioctl(s, SIOCSIFMTU, &ifr) < 0) {
            int err = errno;
            close(s);
            if (err == EPERM)
                return tap_error(error, err,
                                 "setting the MTU of TAP interface %s needs CAP_NET_ADMIN: run "
                                 "as root, or set it beforehand (ip link set %s mtu %u) and "
                                 "leave out mtu=",
                                 tap->name, tap->name, mtu);
            return tap_error(error, err, "the kernel refused MTU %u for TAP interface %s: %s", mtu,
                             tap->name, g_strerror(err));
        }
    }
    memset(&ifr, 0, sizeof(ifr));
    g_strlcpy(ifr.ifr_name, tap->name, sizeof(ifr.ifr_name));
    /* A handed-over TAP may live in another network namespace: assume Ethernet's 1500. */
    tap->mtu = ioctl(s, SIOCGIFMTU, &ifr) == 0 && ifr.ifr_mtu > 0 ? (unsigned) ifr.ifr_mtu
                                                                  : (mtu ? mtu : 1500);
    close(s);
    return TRUE;
}

/* Adds each offload to those accepted so far; the kernel takes the others only with CSUM. */
static unsigned probe_offloads(int fd)
{
    static const unsigned steps[] = {
        FERRY_TAP_OFFLOAD_CSUM,
        FERRY_TAP_OFFLOAD_TSO4,
        FERRY_TAP_OFFLOAD_TSO6,
        FERRY_TAP_OFFLOAD_UFO,
    };
    unsigned ok = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(steps); i++) {
        unsigned want = ok | steps[i] | FERRY_TAP_OFFLOAD_CSUM;
        if (i > 0 && !(ok & FERRY_TAP_OFFLOAD_CSUM))
            break;
        if (ioctl(fd, TUNSETOFFLOAD, (unsigned long) want) == 0)
            ok = want;
    }
    /* Until the guest's features are known, it gets plain, checksummed frames. */
    ioctl(fd, TUNSETOFFLOAD, 0UL);
    return ok;
}

/* Common set-up once @tap->fd is attached to interface @tap->name. */
static gboolean finish_open(FerryTap *tap, unsigned mtu, GError **error)
{
    int hdr = FERRY_TAP_VNET_HDR_LEN;
    if (ioctl(tap->fd, TUNSETVNETHDRSZ, &hdr) < 0)
        return tap_error(error, errno, "TAP interface %s: cannot set a %d-byte virtio header: %s",
                         tap->name, hdr, g_strerror(errno));
#if G_BYTE_ORDER == G_BIG_ENDIAN
    /* Virtio 1.x headers are little-endian (section 5.1.6). */
    int le = 1;
    if (ioctl(tap->fd, TUNSETVNETLE, &le) < 0)
        return tap_error(error, errno, "TAP interface %s: cannot use little-endian headers: %s",
                         tap->name, g_strerror(errno));
#endif
    int fl = fcntl(tap->fd, F_GETFL);
    if (fl < 0 || fcntl(tap->fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return tap_error(error, errno, "TAP interface %s: cannot make it non-blocking: %s",
                         tap->name, g_strerror(errno));
    if (!setup_mtu(tap, mtu, error))
        return FALSE;
    tap->offloads = probe_offloads(tap->fd);
    return TRUE;
}

static FerryTap *tap_new(void)
{
    FerryTap *tap = g_new0(FerryTap, 1);
    tap->fd = -1;
    return tap;
}

FerryTap *ferry_tap_open(const char *name, unsigned mtu, GError **error)
{
    if (!name || !*name || strlen(name) >= IFNAMSIZ) {
        tap_error(error, EINVAL, "'%s' is not a valid interface name (1 to %d characters)",
                  name ? name : "", IFNAMSIZ - 1);
        return NULL;
    }
    g_autoptr(FerryTap) tap = tap_new();
    tap->fd = open(TUN_PATH, O_RDWR | O_CLOEXEC);
    if (tap->fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENODEV || err == ENXIO)
            tap_error(error, err,
                      "cannot open %s for TAP interface %s: %s; load the tun module "
                      "(modprobe tun)",
                      TUN_PATH, name, g_strerror(err));
        else
            tap_error(error, err, "cannot open %s for TAP interface %s: %s", TUN_PATH, name,
                      g_strerror(err));
        return NULL;
    }

    /*
     * First ask for a new interface only (IFF_TUN_EXCL fails with EBUSY when the name
     * exists), so we know whether we created it; then attach to the existing one.
     */
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL;
    if (ioctl(tap->fd, TUNSETIFF, &ifr) == 0) {
        tap->created = TRUE;
    } else if (errno == EBUSY) {
        memset(&ifr, 0, sizeof(ifr));
        g_strlcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name));
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if (ioctl(tap->fd, TUNSETIFF, &ifr) < 0) {
            int err = errno;
            if (err == EBUSY)
                tap_error(error, err,
                          "TAP interface %s is in use by another process (a TAP has one user "
                          "at a time); pick another name",
                          name);
            else if (err == EPERM)
                tap_error(error, err,
                          "TAP interface %s belongs to another user or group: run as root, or "
                          "recreate it with 'ip tuntap add dev %s mode tap user USER'",
                          name, name);
            else if (err == EINVAL)
                tap_error(error, err,
                          "interface %s exists but is not a single-queue TAP device (a TUN, a "
                          "multi_queue TAP or another kind of interface); pick another name",
                          name);
            else
                tap_error(error, err, "cannot attach to TAP interface %s: %s", name,
                          g_strerror(err));
            return NULL;
        }
    } else {
        int err = errno;
        if (err == EPERM)
            tap_error(error, err,
                      "creating TAP interface %s needs CAP_NET_ADMIN: run as root, or create "
                      "it beforehand with 'ip tuntap add dev %s mode tap user USER'",
                      name, name);
        else
            tap_error(error, err, "cannot create TAP interface %s: %s", name, g_strerror(err));
        return NULL;
    }
    g_strlcpy(tap->name, ifr.ifr_name, sizeof(tap->name));

    if (!finish_open(tap, mtu, error))
        return NULL;
    if (tap->created && !bring_up(tap->name, error))
        return NULL;
    return g_steal_pointer(&tap);
}

FerryTap *ferry_tap_adopt_fd(int fd, unsigned mtu, GError **error)
{
    if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
        tap_error(error, EBADF,
                  "fd=%d is not an open file descriptor; hand the TAP descriptor over open "
                  "(without close-on-exec) when starting ferry-vmm",
                  fd);
        return NULL;
    }
    struct ifreq ifr = {0};
    if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
        int err = errno;
        if (err == EBADFD)
            tap_error(error, err,
                      "fd=%d is a %s descriptor not attached to an interface (TUNSETIFF was "
                      "not done)",
                      fd, TUN_PATH);
        else
            tap_error(error, err, "fd=%d is not a TUN/TAP descriptor (%s)", fd, g_strerror(err));
        return NULL;
    }
    char name[IFNAMSIZ];
    g_strlcpy(name, ifr.ifr_name, sizeof(name));
    if (!(ifr.ifr_flags & IFF_TAP)) {
        tap_error(error, EINVAL, "fd=%d is attached to %s, a TUN (IP) interface, not a TAP", fd,
                  name);
        return NULL;
    }
    if (!(ifr.ifr_flags & IFF_NO_PI) || !(ifr.ifr_flags & IFF_VNET_HDR)) {
        tap_error(error, EINVAL,
                  "fd=%d (TAP interface %s) was opened without %s; open it with IFF_TAP | "
                  "IFF_NO_PI | IFF_VNET_HDR",
                  fd, name, !(ifr.ifr_flags & IFF_VNET_HDR) ? "IFF_VNET_HDR" : "IFF_NO_PI");
        return NULL;
    }
    g_autoptr(FerryTap) tap = tap_new();
    g_strlcpy(tap->name, name, sizeof(tap->name));
    tap->fd = fd;
    if (!finish_open(tap, mtu, error)) {
        tap->fd = -1; /* still the caller's */
        return NULL;
    }
    return g_steal_pointer(&tap);
}

gboolean ferry_tap_set_offload(FerryTap *tap, unsigned offloads, GError **error)
{
    offloads &= tap->offloads;
    if (!(offloads & FERRY_TAP_OFFLOAD_CSUM))
        offloads = 0; /* segmentation offloads need partial checksums */
    if (ioctl(tap->fd, TUNSETOFFLOAD, (unsigned long) offloads) < 0)
        return tap_error(error, errno, "TAP interface %s: cannot set offloads 0x%x: %s", tap->name,
                         offloads, g_strerror(errno));
    return TRUE;
}

void ferry_tap_close(FerryTap *tap)
{
    if (!tap)
        return;
    if (tap->fd >= 0)
        close(tap->fd);
    g_free(tap);
}

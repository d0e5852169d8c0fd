/*
 * TAP back end for virtio-net: a Linux TUN/TAP interface in TAP mode (Ethernet frames)
 * with IFF_NO_PI and IFF_VNET_HDR, so every frame read or written carries the 12-byte
 * virtio 1.x header (struct virtio_net_hdr_v1, virtio 1.2 section 5.1.6) in front of it.
 *
 * The interface is either opened by name (TUNSETIFF on /dev/net/tun; created when it does
 * not exist, and then brought up and removed again when the fd is closed) or handed over
 * as an open file descriptor that is already attached to a TAP interface.  The descriptor
 * is non-blocking.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

/* Offload bits for ferry_tap_set_offload (the kernel's TUN_F_*, section 5.1.6.2 terms). */
#define FERRY_TAP_OFFLOAD_CSUM 0x01 /* the reader accepts partial checksums */
#define FERRY_TAP_OFFLOAD_TSO4 0x02 /* ... TCP/IPv4 segmentation offload (needs CSUM) */
#define FERRY_TAP_OFFLOAD_TSO6 0x04 /* ... TCP/IPv6 segmentation offload (needs CSUM) */
#define FERRY_TAP_OFFLOAD_UFO  0x10 /* ... UDP fragmentation offload (needs CSUM) */

#define FERRY_TAP_VNET_HDR_LEN 12 /* struct virtio_net_hdr_v1, with num_buffers */

typedef struct {
    int fd;            /* non-blocking, owned */
    char name[16];     /* interface name (IFNAMSIZ) */
    gboolean created;  /* we created it: it disappears when @fd is closed */
    unsigned mtu;      /* bytes: the interface's MTU after open */
    unsigned offloads; /* FERRY_TAP_OFFLOAD_* bits the kernel accepts (probed) */
} FerryTap;

/*
 * Opens TAP interface @name (at most 15 bytes), creating it when missing.  @mtu (bytes,
 * 0 = keep the interface's) is set with SIOCSIFMTU.  Errors name the interface and what
 * to do: no /dev/net/tun (load the tun module), EPERM (needs CAP_NET_ADMIN), EBUSY (in use
 * by another process), or an existing interface that is not a single-queue TAP.
 */
FerryTap *ferry_tap_open(const char *name, unsigned mtu, GError **error);

/*
 * Adopts @fd, an open /dev/net/tun descriptor attached (TUNSETIFF) to a TAP interface with
 * IFF_NO_PI and IFF_VNET_HDR.  On success the FerryTap owns @fd; on error the caller still
 * does.  @mtu as for ferry_tap_open.
 */
FerryTap *ferry_tap_adopt_fd(int fd, unsigned mtu, GError **error);

/*
 * Tells the kernel which offloads the reader of the TAP (the guest) accepts, @offloads a
 * subset of @tap->offloads (TUNSETOFFLOAD).  Frames read afterwards respect it.
 */
gboolean ferry_tap_set_offload(FerryTap *tap, unsigned offloads, GError **error);

/* Closes the descriptor (removing an interface we created) and frees @tap. */
void ferry_tap_close(FerryTap *tap);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTap, ferry_tap_close)

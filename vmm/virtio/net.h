/*
 * virtio-net, the network device (virtio 1.2 section 5.1), on a TAP back end (net/tap.h).
 *
 * Queues (5.1.2): 0 = receiveq, 1 = transmitq, FERRY_VIRTIO_NET_QUEUE_SIZE entries each; no
 * control queue, no multiqueue.  Frames pass between the rings and the TAP with their
 * 12-byte struct virtio_net_hdr_v1 (5.1.6) unchanged, which the TAP understands as well
 * (IFF_VNET_HDR); on receive the device sets num_buffers, and clears flags when the driver
 * did not negotiate VIRTIO_NET_F_GUEST_CSUM (5.1.6.4.1).
 */
#pragma once

#include "virtio/virtio.h"
#include "vm_config.h"

#include <stdint.h>

#define FERRY_VIRTIO_NET_QUEUE_SIZE  256
#define FERRY_VIRTIO_NET_CONFIG_SIZE 12 /* mac, status, max_virtqueue_pairs, mtu (5.1.4) */

/* Feature bits (section 5.1.3). */
#define VIRTIO_NET_F_CSUM       0
#define VIRTIO_NET_F_GUEST_CSUM 1
#define VIRTIO_NET_F_MTU        3
#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_GUEST_TSO4 7
#define VIRTIO_NET_F_GUEST_TSO6 8
#define VIRTIO_NET_F_GUEST_UFO  10
#define VIRTIO_NET_F_HOST_TSO4  11
#define VIRTIO_NET_F_HOST_TSO6  12
#define VIRTIO_NET_F_HOST_UFO   14
#define VIRTIO_NET_F_MRG_RXBUF  15
#define VIRTIO_NET_F_STATUS     16

#define VIRTIO_NET_S_LINK_UP 1 /* status field (5.1.4) */

/* Frame counters, for diagnostics. */
typedef struct {
    uint64_t tx_frames;  /* written to the TAP */
    uint64_t tx_dropped; /* short/failed writes, buffers shorter than the header */
    uint64_t rx_frames;  /* delivered to the driver */
    uint64_t rx_dropped; /* too big for the driver's buffers or runts; also rx buffers too
                            short for the header, returned unused (read errors: logged) */
} FerryVirtioNetStats;

/*
 * Creates the device model for NIC number @index of the VM (0-based, in command-line
 * order) from @spec: opens the TAP interface by name (creating it if missing) or adopts the
 * handed-over fd (on success the device owns it, on error the caller still does), sets the
 * MTU when @spec->mtu is given, and probes the offloads the kernel's TAP accepts.  Without
 * @spec->has_mac the MAC is ferry_virtio_net_default_mac(getpid(), @index).  Hand the
 * result to ferry_virtio_pci_new(), which takes ownership.  Errors are the TAP's
 * (net/tap.h), prefixed with the option.
 */
FerryVirtioDev *ferry_virtio_net_new(const FerryNetSpec *spec, unsigned index, GError **error);

/*
 * The default MAC address 52:54:00:xx:xx:xx for NIC @index of the process @pid: the low
 * 24 bits are (pid mod 2^19) * 32 + index mod 32, so NICs of one VM, and VMs whose process
 * ids differ below 2^19, get distinct addresses.  Unicast, locally administered.
 */
void ferry_virtio_net_default_mac(unsigned pid, unsigned index, uint8_t mac[6]);

/* Copies the counters of @dev (a virtio-net device); takes the device's lock. */
void ferry_virtio_net_get_stats(FerryVirtioDev *dev, FerryVirtioNetStats *stats);

/* The TAP interface's name ("ftap0"), for messages.  Borrowed, valid for the device's life. */
const char *ferry_virtio_net_ifname(FerryVirtioDev *dev);

/*
 * Announces the guest's new location after a migration: writes 5 RARP frames in its name to
 * the TAP (so every bridge and switch on the way learns the MAC's new port), each 50, 150,
 * 250, 350 and 450 ms after the one before (the first 50 ms after the call; the last at
 * 1.25 s).  Each is ferry_virtio_net_rarp_frame() behind an all-zero virtio-net header.  The
 * timers run on the device's I/O thread (the context realize took; before realize, GLib's
 * default context); a new call restarts the series, freeing the device cancels it.  Works
 * whatever the driver's state: the guest is not involved.  Any thread; takes the device's
 * lock.
 */
void ferry_virtio_net_announce(FerryVirtioDev *dev);

#define FERRY_VIRTIO_NET_RARP_LEN 60 /* bytes: Ethernet header + RARP packet + padding */

/*
 * The announce frame for @mac: Ethernet broadcast from @mac, EtherType 0x8035, and an RFC 903
 * RARP "request reverse" (opcode 3) whose sender and target hardware addresses are @mac and
 * protocol addresses 0.0.0.0, zero-padded to the 60-byte Ethernet minimum.
 */
void ferry_virtio_net_rarp_frame(const uint8_t mac[6], uint8_t frame[FERRY_VIRTIO_NET_RARP_LEN]);

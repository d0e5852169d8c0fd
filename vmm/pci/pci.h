/*
 * PCI: the host bridge (configuration mechanism #1 at ports 0xCF8/0xCFC, one bus), the
 * type 0 configuration header of each function, BAR allocation and decoding.
 *
 * Sources: PCI Local Bus Specification 3.0, sections 3.2.2.3.2 (configuration mechanism
 * #1) and 6.1-6.2 (configuration header, BARs), 6.7 (capability list).
 *
 * BARs: the VMM assigns every memory BAR at creation — 32-bit BARs in the 32-bit hole
 * window, 64-bit BARs in the window above RAM (layout.h) — so guests that do not assign
 * resources (a test kernel, Linux with pci=noassign) find them ready, with memory decoding
 * on, as firmware leaves them.  A guest may move a
 * BAR or turn decoding off; the host bridge claims both windows on the MMIO bus once and
 * decodes accesses itself against the BARs' current addresses (under a read-write lock), so
 * the MMIO bus table never changes while vCPUs run.  Devices hear of moves through
 * bar_remap (to move their ioeventfds).
 *
 * Threading: configuration and BAR accesses come from vCPU threads.  Configuration space is
 * protected by the host bridge's lock; BAR accesses are passed to the device's handler
 * without it (devices lock themselves).
 */
#pragma once

#include "devices/bus.h"
#include "util/state.h"

#include <glib.h>
#include <stdint.h>

#define FERRY_PCI_CONFIG_ADDRESS 0xcf8
#define FERRY_PCI_CONFIG_DATA    0xcfc
#define FERRY_PCI_SLOTS          32
#define FERRY_PCI_CONFIG_SIZE    256 /* conventional configuration space, bytes */
#define FERRY_PCI_NUM_BARS       6

/* Configuration header offsets (PCI 3.0 section 6.1). */
#define PCI_VENDOR_ID        0x00
#define PCI_DEVICE_ID        0x02
#define PCI_COMMAND          0x04
#define PCI_STATUS           0x06
#define PCI_REVISION_ID      0x08
#define PCI_CLASS_PROG       0x09
#define PCI_HEADER_TYPE      0x0e
#define PCI_BASE_ADDRESS_0   0x10
#define PCI_SUBSYSTEM_VENDOR_ID 0x2c
#define PCI_SUBSYSTEM_ID     0x2e
#define PCI_CAPABILITY_LIST  0x34
#define PCI_INTERRUPT_LINE   0x3c
#define PCI_INTERRUPT_PIN    0x3d

#define PCI_COMMAND_IO            0x1
#define PCI_COMMAND_MEMORY        0x2
#define PCI_COMMAND_MASTER        0x4
#define PCI_COMMAND_INTX_DISABLE  0x400
#define PCI_STATUS_CAP_LIST       0x10

#define PCI_BASE_ADDRESS_MEM_TYPE_64 0x04
#define PCI_BASE_ADDRESS_MEM_PREFETCH 0x08

#define PCI_CAP_ID_MSIX   0x11
#define PCI_CAP_ID_VNDR   0x09

typedef struct FerryPciHost FerryPciHost;
typedef struct FerryPciDevice FerryPciDevice;

typedef struct {
    /*
     * Access to BAR @bar at @offset (< the BAR's size) of @len bytes (1, 2, 4, 8), from a
     * vCPU thread; the data is little-endian as on the bus.
     */
    void (*bar_access)(FerryPciDevice *dev, unsigned bar, uint64_t offset, uint8_t *data,
                       uint32_t len, gboolean is_write);
    /*
     * BAR @bar now decodes at @addr (@enabled) or not at all (!@enabled): the guest moved
     * it or toggled memory decoding.  Called with the host's configuration lock held, from
     * a vCPU thread (or the main thread on reset/load).  May be NULL.
     */
    void (*bar_remap)(FerryPciDevice *dev, unsigned bar, uint64_t addr, gboolean enabled);
    /*
     * A configuration write at @offset (@len bytes) was applied (after masking).  For
     * capabilities with side effects (MSI-X enable).  Lock held.  May be NULL.
     */
    void (*config_written)(FerryPciDevice *dev, uint32_t offset, uint32_t len);
} FerryPciDeviceOps;

typedef struct {
    uint64_t size;     /* bytes, power of two >= 4096; 0 = BAR unused */
    gboolean is_64;    /* takes this BAR and the next */
    uint64_t addr;     /* current address the guest sees (config space is the truth) */
    gboolean mapped;   /* decoding at addr (memory enabled, valid addr) */
} FerryPciBar;

/*
 * One PCI function.  Device models embed it and fill @ops and the header through the
 * helpers below before ferry_pci_host_add().
 */
struct FerryPciDevice {
    const FerryPciDeviceOps *ops;
    FerryPciHost *host;   /* set by add */
    unsigned slot;        /* device number on bus 0 */
    const char *name;     /* borrowed, for messages */
    uint8_t config[FERRY_PCI_CONFIG_SIZE];
    uint8_t wmask[FERRY_PCI_CONFIG_SIZE]; /* bits the guest may write */
    uint8_t next_cap;     /* offset where the next capability goes */
    uint8_t *last_cap_next; /* the "next" byte of the last capability added */
    FerryPciBar bars[FERRY_PCI_NUM_BARS];
};

/* Sets up a type 0 header: IDs, class code (24 bits), revision; no capabilities yet. */
void ferry_pci_device_init(FerryPciDevice *dev, const FerryPciDeviceOps *ops, const char *name,
                           uint16_t vendor, uint16_t device, uint32_t class_code,
                           uint8_t revision, uint16_t subsys_vendor, uint16_t subsys_id);

/* Declares memory BAR @bar of @size bytes (power of two, >= 4 KiB); 64-bit uses bar+1 too. */
void ferry_pci_device_add_bar(FerryPciDevice *dev, unsigned bar, uint64_t size, gboolean is_64);

/*
 * Appends a capability of @len bytes (including the 2-byte header) with ID @cap_id, its
 * body copied from @body (bytes 2..len-1) and writable bits @wmask (same layout, may be
 * NULL = read-only).  Returns its offset in configuration space.
 */
uint8_t ferry_pci_device_add_cap(FerryPciDevice *dev, uint8_t cap_id, const uint8_t *body,
                                 const uint8_t *wmask, uint8_t len);

/* Little-endian accessors for configuration space (caller holds the lock, or single-threaded). */
static inline uint16_t ferry_pci_get_word(const FerryPciDevice *d, unsigned off)
{
    return (uint16_t) (d->config[off] | d->config[off + 1] << 8);
}
static inline uint32_t ferry_pci_get_long(const FerryPciDevice *d, unsigned off)
{
    return (uint32_t) d->config[off] | (uint32_t) d->config[off + 1] << 8 |
           (uint32_t) d->config[off + 2] << 16 | (uint32_t) d->config[off + 3] << 24;
}
static inline void ferry_pci_set_word(FerryPciDevice *d, unsigned off, uint16_t v)
{
    d->config[off] = v & 0xff;
    d->config[off + 1] = v >> 8;
}
static inline void ferry_pci_set_long(FerryPciDevice *d, unsigned off, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        d->config[off + i] = (v >> (8 * i)) & 0xff;
}

/*
 * Creates the host bridge (device 00:00.0, class 0x060000) and claims ports
 * 0xCF8-0xCFF on @pio and the BAR windows [@mmio32_base, +@mmio32_size) and
 * [@mmio64_base, +@mmio64_size) on @mmio.
 */
FerryPciHost *ferry_pci_host_new(FerryBus *pio, FerryBus *mmio, uint64_t mmio32_base,
                                 uint64_t mmio32_size, uint64_t mmio64_base,
                                 uint64_t mmio64_size, GError **error);

/*
 * Puts @dev in @slot (1..31), or the lowest free slot for FERRY_PCI_SLOT_AUTO (-1), and
 * assigns its BARs.  Errors: slot taken, no free slot, BAR window exhausted.
 */
gboolean ferry_pci_host_add(FerryPciHost *host, FerryPciDevice *dev, int slot, GError **error);

/* Machine reset: every function's command register and BARs return to power-on values. */
void ferry_pci_host_reset(FerryPciHost *host);

/*
 * Saves / loads the configuration space of every function (by slot) and the
 * CONFIG_ADDRESS latch; load re-maps BARs.  Load fails without changes if the slots do not
 * hold the same kind of devices.
 */
void ferry_pci_host_save(FerryPciHost *host, FerryStateWriter *w);
gboolean ferry_pci_host_load(FerryPciHost *host, FerryStateReader *r, GError **error);

/* The windows, for the ACPI tables (_CRS of the root bridge). */
void ferry_pci_host_windows(const FerryPciHost *host, uint64_t *mmio32_base,
                            uint64_t *mmio32_size, uint64_t *mmio64_base,
                            uint64_t *mmio64_size);

void ferry_pci_host_free(FerryPciHost *host);

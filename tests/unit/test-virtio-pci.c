/*
 * The virtio-pci transport's state codec (vmm/virtio/pci.c: transport registers, queues,
 * MSI-X table and the device's section): a device programmed as a driver would, saved, and
 * loaded back whole, truncated at every length, with every bit of the blob flipped, and with
 * the device type changed.  Needs /dev/kvm (MSI-X vectors are KVM irqfds); skips without.
 */
#include "arch/x86/layout.h"
#include "devices/device.h"
#include "irq_routing.h"
#include "kvm.h"
#include "pci/pci.h"
#include "virtio/pci.h"
#include "virtio/rng.h"

#include <linux/kvm.h>
#include <string.h>
#include <unistd.h>

#define RAM_SIZE (16ULL << 20)

typedef struct {
    FerryKvm *kvm;
    FerryGuestMemory *mem;
    FerryIrqRouting *routing;
    FerryBus pio, mmio;
    FerryPciHost *host;
    FerryDevice *dev; /* the virtio-rng function in slot 1 */
} Fixture;

static uint32_t cfg_read(Fixture *f, unsigned reg)
{
    uint32_t addr = 0x80000000u | 1u << 11 | reg;
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &addr, 4, TRUE);
    uint32_t v = 0;
    ferry_bus_dispatch(&f->pio, 0xcfc, (uint8_t *) &v, 4, FALSE);
    return v;
}

static void cfg_write16(Fixture *f, unsigned reg, uint16_t v)
{
    uint32_t addr = 0x80000000u | 1u << 11 | (reg & ~3u);
    ferry_bus_dispatch(&f->pio, 0xcf8, (uint8_t *) &addr, 4, TRUE);
    ferry_bus_dispatch(&f->pio, 0xcfc + (reg & 3), (uint8_t *) &v, 2, TRUE);
}

static uint64_t bar_addr(Fixture *f, unsigned bar)
{
    uint64_t lo = cfg_read(f, 0x10 + 4 * bar) & ~0xfu;
    if (cfg_read(f, 0x10 + 4 * bar) & 4)
        lo |= (uint64_t) cfg_read(f, 0x14 + 4 * bar) << 32;
    return lo;
}

static void mmio_write(Fixture *f, uint64_t addr, uint64_t v, unsigned len)
{
    ferry_bus_dispatch(&f->mmio, addr, (uint8_t *) &v, len, TRUE);
}

static uint64_t mmio_read(Fixture *f, uint64_t addr, unsigned len)
{
    uint64_t v = 0;
    ferry_bus_dispatch(&f->mmio, addr, (uint8_t *) &v, len, FALSE);
    return v;
}

/* Drives the device as a virtio 1.x driver does (3.1.1), MSI-X included. */
static void program_device(Fixture *f)
{
    uint64_t common = bar_addr(f, 2), msix = bar_addr(f, 0);
    mmio_write(f, common + 0x14, 0, 1);                 /* reset */
    mmio_write(f, common + 0x14, 1 | 2, 1);             /* ACKNOWLEDGE | DRIVER */
    mmio_write(f, common + 0x08, 1, 4);                 /* driver features, high word */
    mmio_write(f, common + 0x0c, 1, 4);                 /* VERSION_1 (bit 32) */
    mmio_write(f, common + 0x08, 0, 4);
    mmio_write(f, common + 0x0c, 1u << 29, 4);          /* EVENT_IDX */
    mmio_write(f, common + 0x14, 1 | 2 | 8, 1);         /* FEATURES_OK */
    g_assert_cmpuint(mmio_read(f, common + 0x14, 1), ==, 1 | 2 | 8);
    /* MSI-X: entry 1 for queue 0, enabled */
    uint8_t cap = (uint8_t) cfg_read(f, 0x34);
    while (cap && (cfg_read(f, cap) & 0xff) != 0x11)
        cap = (uint8_t) (cfg_read(f, cap) >> 8);
    g_assert_cmpuint(cap, !=, 0);
    mmio_write(f, msix + 16, 0xfee00000, 4);
    mmio_write(f, msix + 16 + 8, 0x41, 4);
    mmio_write(f, msix + 16 + 12, 0, 4);                /* unmasked */
    cfg_write16(f, cap + 2, 0x8000);                    /* MSI-X enable */
    mmio_write(f, common + 0x16, 0, 2);                 /* queue_select 0 */
    mmio_write(f, common + 0x18, 16, 2);                /* queue_size */
    mmio_write(f, common + 0x1a, 1, 2);                 /* queue_msix_vector */
    mmio_write(f, common + 0x20, 0x10000, 8);           /* desc */
    mmio_write(f, common + 0x28, 0x11000, 8);           /* driver (avail) */
    mmio_write(f, common + 0x30, 0x12000, 8);           /* device (used) */
    mmio_write(f, common + 0x1c, 1, 2);                 /* queue_enable */
    mmio_write(f, common + 0x14, 1 | 2 | 8 | 4, 1);     /* DRIVER_OK */
    g_assert_cmpuint(mmio_read(f, common + 0x1a, 2), ==, 1);
}

static void fixture_setup(Fixture *f, gconstpointer data)
{
    memset(f, 0, sizeof(*f));
    if (access("/dev/kvm", R_OK | W_OK) != 0)
        return;
    g_autoptr(GError) err = NULL;
    f->kvm = ferry_kvm_open("/dev/kvm", &err);
    g_assert_no_error(err);
    g_assert_true(ferry_kvm_create_vm(f->kvm, FERRY_KVM_TSS, FERRY_KVM_IDENTITY_MAP, &err));
    f->mem = ferry_guest_memory_new(RAM_SIZE, &err);
    g_assert_no_error(err);
    g_assert_true(ferry_guest_memory_register(f->mem, f->kvm->vm_fd, &err));
    f->routing = ferry_irq_routing_new(f->kvm->vm_fd, 1024, &err);
    g_assert_no_error(err);
    ferry_bus_init(&f->pio, "pio");
    ferry_bus_init(&f->mmio, "mmio");
    f->host = ferry_pci_host_new(&f->pio, &f->mmio, FERRY_PCI_MMIO32_BASE,
                                 FERRY_PCI_MMIO32_SIZE, 0x100000000ULL, 1ULL << 30, &err);
    g_assert_no_error(err);
    FerryVirtioDev *rng = ferry_virtio_rng_new(&err);
    g_assert_no_error(err);
    FerryVirtioPci *vp = ferry_virtio_pci_new(rng, "rng0", f->host, 1, f->mem, f->kvm->vm_fd,
                                              f->routing, &err);
    g_assert_no_error(err);
    f->dev = ferry_virtio_pci_device(vp);
    program_device(f);
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    if (!f->kvm)
        return;
    ferry_device_free(f->dev);
    ferry_pci_host_free(f->host);
    ferry_irq_routing_free(f->routing);
    ferry_bus_clear(&f->pio);
    ferry_bus_clear(&f->mmio);
    ferry_guest_memory_free(f->mem);
    ferry_kvm_free(f->kvm);
}

static gboolean skipped(Fixture *f)
{
    if (!f->kvm)
        g_test_skip("/dev/kvm is absent");
    return !f->kvm;
}

static gboolean same_bytes(GBytes *a, GBytes *b)
{
    return g_bytes_equal(a, b);
}

static void test_round_trip(Fixture *f, gconstpointer data)
{
    if (skipped(f))
        return;
    g_autoptr(GBytes) saved = ferry_device_save(f->dev);
    ferry_device_reset(f->dev);
    uint64_t common = bar_addr(f, 2);
    g_assert_cmpuint(mmio_read(f, common + 0x14, 1), ==, 0);
    g_autoptr(GError) err = NULL;
    g_assert_true(ferry_device_load(f->dev, saved, &err));
    g_assert_no_error(err);
    /* the driver's view is back: status, queue registers, vector */
    g_assert_cmpuint(mmio_read(f, common + 0x14, 1), ==, 1 | 2 | 8 | 4);
    g_assert_cmpuint(mmio_read(f, common + 0x18, 2), ==, 16);
    g_assert_cmpuint(mmio_read(f, common + 0x1c, 2), ==, 1);
    g_assert_cmphex(mmio_read(f, common + 0x28, 8), ==, 0x11000);
    g_assert_cmpuint(mmio_read(f, common + 0x1a, 2), ==, 1);
    g_assert_cmphex(mmio_read(f, bar_addr(f, 0) + 16 + 8, 4), ==, 0x41);
    g_autoptr(GBytes) again = ferry_device_save(f->dev);
    g_assert_true(same_bytes(saved, again));
}

/* Every prefix of the blob is refused and leaves the device as it was. */
static void test_truncated(Fixture *f, gconstpointer data)
{
    if (skipped(f))
        return;
    g_autoptr(GBytes) saved = ferry_device_save(f->dev);
    gsize len;
    const uint8_t *p = g_bytes_get_data(saved, &len);
    for (gsize n = 0; n < len; n++) {
        g_autoptr(GBytes) cut = g_bytes_new(p, n);
        g_autoptr(GError) err = NULL;
        g_assert_false(ferry_device_load(f->dev, cut, &err));
        g_assert_nonnull(err);
        g_autoptr(GBytes) now = ferry_device_save(f->dev);
        g_assert_true(same_bytes(saved, now));
    }
    /* trailing garbage too */
    g_autoptr(GByteArray) longer = g_byte_array_new();
    g_byte_array_append(longer, p, (guint) len);
    g_byte_array_append(longer, (const guint8 *) "x", 1);
    g_autoptr(GBytes) l = g_bytes_new(longer->data, longer->len);
    g_autoptr(GError) err = NULL;
    g_assert_false(ferry_device_load(f->dev, l, &err));
}

/*
 * Every single-bit flip: either refused with an error and nothing changed, or accepted as a
 * state the device can hold (values are not checksummed here; the stream's CRC is).
 */
static void test_bit_flips(Fixture *f, gconstpointer data)
{
    if (skipped(f))
        return;
    g_autoptr(GBytes) saved = ferry_device_save(f->dev);
    gsize len;
    const uint8_t *p = g_bytes_get_data(saved, &len);
    g_autofree uint8_t *copy = g_memdup2(p, len);
    unsigned refused = 0;
    for (gsize bit = 0; bit < len * 8; bit++) {
        copy[bit / 8] ^= (uint8_t) (1u << (bit % 8));
        g_autoptr(GBytes) flipped = g_bytes_new(copy, len);
        g_autoptr(GError) err = NULL;
        if (!ferry_device_load(f->dev, flipped, &err)) {
            g_assert_nonnull(err);
            refused++;
            g_autoptr(GBytes) now = ferry_device_save(f->dev);
            g_assert_true(same_bytes(saved, now));
        } else {
            /* accepted: the device still saves, and the original loads back */
            g_autoptr(GBytes) now = ferry_device_save(f->dev);
            g_assert_nonnull(now);
            g_autoptr(GError) e2 = NULL;
            g_assert_true(ferry_device_load(f->dev, saved, &e2));
        }
        copy[bit / 8] ^= (uint8_t) (1u << (bit % 8));
    }
    g_test_message("%u of %zu bit flips refused", refused, len * 8);
    g_assert_cmpuint(refused, >, 0);
}

/* The header says which device type and how many queues: another device's state is refused. */
static void test_other_device(Fixture *f, gconstpointer data)
{
    if (skipped(f))
        return;
    g_autoptr(GBytes) saved = ferry_device_save(f->dev);
    gsize len;
    const uint8_t *p = g_bytes_get_data(saved, &len);
    g_autofree uint8_t *copy = g_memdup2(p, len);
    copy[1] = 2; /* device type: virtio-blk */
    g_autoptr(GBytes) b = g_bytes_new(copy, len);
    g_autoptr(GError) err = NULL;
    g_assert_false(ferry_device_load(f->dev, b, &err));
    g_assert_nonnull(strstr(err->message, "type 2"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
    ADD("/virtio-pci/round-trip", test_round_trip);
    ADD("/virtio-pci/truncated", test_truncated);
    ADD("/virtio-pci/bit-flips", test_bit_flips);
    ADD("/virtio-pci/other-device", test_other_device);
    return g_test_run();
}

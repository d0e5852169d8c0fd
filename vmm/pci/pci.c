#include "pci/pci.h"

#include "util/log.h"
#include "vm_config.h"

#include <gio/gio.h>
#include <string.h>

/*
 * The host bridge's own function (00:00.0).  Red Hat's generic host bridge ID
 * (1b36:0008), which guests treat as a plain host bridge.
 */
#define HOST_BRIDGE_VENDOR 0x1b36
#define HOST_BRIDGE_DEVICE 0x0008
#define PCI_CLASS_HOST_BRIDGE 0x060000

#define CONFIG_ADDRESS_ENABLE 0x80000000u

typedef struct {
    FerryPciDevice *dev; /* borrowed: the device model owns itself */
    uint8_t reset_config[FERRY_PCI_CONFIG_SIZE];
} PciSlot;

typedef struct {
    uint64_t base, size, next;
} BarWindow;

struct FerryPciHost {
    /*
     * Writers: configuration accesses (they may move BARs).  Readers: BAR accesses.  Both
     * come from vCPU threads; configuration accesses are rare after boot.
     */
    GRWLock lock;
    uint32_t config_address; /* the CONFIG_ADDRESS latch (port 0xCF8) */
    PciSlot slots[FERRY_PCI_SLOTS];
    FerryPciDevice bridge;
    BarWindow mmio32, mmio64;
};

/* ---- a function's configuration header -------------------------------------------- */

void ferry_pci_device_init(FerryPciDevice *dev, const FerryPciDeviceOps *ops, const char *name,
                           uint16_t vendor, uint16_t device, uint32_t class_code,
                           uint8_t revision, uint16_t subsys_vendor, uint16_t subsys_id)
{
    memset(dev, 0, sizeof(*dev));
    dev->ops = ops;
    dev->name = name;
    ferry_pci_set_word(dev, PCI_VENDOR_ID, vendor);
    ferry_pci_set_word(dev, PCI_DEVICE_ID, device);
    dev->config[PCI_REVISION_ID] = revision;
    dev->config[PCI_CLASS_PROG] = class_code & 0xff;
    dev->config[PCI_CLASS_PROG + 1] = (class_code >> 8) & 0xff;
    dev->config[PCI_CLASS_PROG + 2] = (class_code >> 16) & 0xff;
    dev->config[PCI_HEADER_TYPE] = 0; /* type 0, single function */
    ferry_pci_set_word(dev, PCI_SUBSYSTEM_VENDOR_ID, subsys_vendor);
    ferry_pci_set_word(dev, PCI_SUBSYSTEM_ID, subsys_id);
    /* Command: I/O, memory, bus master, INTx disable may be written (section 6.2.2). */
    dev->wmask[PCI_COMMAND] = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    dev->wmask[PCI_COMMAND + 1] = PCI_COMMAND_INTX_DISABLE >> 8;
    /* Interrupt line is a scratch register for the OS; no INTx pin is declared. */
    dev->wmask[PCI_INTERRUPT_LINE] = 0xff;
    dev->next_cap = 0x40;
}

void ferry_pci_device_add_bar(FerryPciDevice *dev, unsigned bar, uint64_t size, gboolean is_64)
{
    g_assert(bar + (is_64 ? 1 : 0) < FERRY_PCI_NUM_BARS);
    g_assert(size >= 4096 && (size & (size - 1)) == 0);
    g_assert(is_64 || size <= (1ULL << 31));
    dev->bars[bar].size = size;
    dev->bars[bar].is_64 = is_64;
    unsigned off = PCI_BASE_ADDRESS_0 + 4 * bar;
    ferry_pci_set_long(dev, off, is_64 ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0);
    /* Sizing (section 6.2.5.1): only the address bits above the size are writable. */
    uint64_t mask = ~(size - 1);
    uint32_t lo = (uint32_t) mask & 0xfffffff0u;
    for (int i = 0; i < 4; i++)
        dev->wmask[off + i] = (lo >> (8 * i)) & 0xff;
    if (is_64)
        memset(&dev->wmask[off + 4], 0xff, 4);
}

uint8_t ferry_pci_device_add_cap(FerryPciDevice *dev, uint8_t cap_id, const uint8_t *body,
                                 const uint8_t *wmask, uint8_t len)
{
    uint8_t off = dev->next_cap;
    g_assert(len >= 2 && (unsigned) off + len <= FERRY_PCI_CONFIG_SIZE);
    dev->config[off] = cap_id;
    dev->config[off + 1] = 0;
    if (len > 2)
        memcpy(&dev->config[off + 2], body + 2, len - 2);
    if (wmask && len > 2)
        memcpy(&dev->wmask[off + 2], wmask + 2, len - 2);
    if (dev->last_cap_next)
        *dev->last_cap_next = off;
    else
        dev->config[PCI_CAPABILITY_LIST] = off;
    dev->last_cap_next = &dev->config[off + 1];
    ferry_pci_set_word(dev, PCI_STATUS, ferry_pci_get_word(dev, PCI_STATUS) | PCI_STATUS_CAP_LIST);
    dev->next_cap = (uint8_t) ((off + len + 3) & ~3);
    return off;
}

/* The address BAR @i decodes at according to configuration space, 0 if none. */
static uint64_t bar_address(const FerryPciDevice *dev, unsigned i)
{
    unsigned off = PCI_BASE_ADDRESS_0 + 4 * i;
    uint64_t addr = ferry_pci_get_long(dev, off) & 0xfffffff0u;
    if (dev->bars[i].is_64)
        addr |= (uint64_t) ferry_pci_get_long(dev, off + 4) << 32;
    return addr;
}

/*
 * Brings each BAR's decoding in line with configuration space: memory decoding on, and an
 * address that is not 0 and not the all-ones sizing pattern.  Write lock held.
 */
static void update_bars(FerryPciDevice *dev)
{
    gboolean mem_on = ferry_pci_get_word(dev, PCI_COMMAND) & PCI_COMMAND_MEMORY;
    for (unsigned i = 0; i < FERRY_PCI_NUM_BARS; i++) {
        FerryPciBar *b = &dev->bars[i];
        if (!b->size)
            continue;
        uint64_t addr = bar_address(dev, i);
        uint64_t limit = b->is_64 ? G_MAXUINT64 : 0xffffffffULL;
        gboolean sizing = addr == (~(b->size - 1) & limit & ~0xfULL);
        gboolean on = mem_on && addr != 0 && !sizing && addr <= limit - b->size + 1;
        if (on == b->mapped && (!on || addr == b->addr))
            continue;
        b->addr = addr;
        b->mapped = on;
        if (dev->ops->bar_remap)
            dev->ops->bar_remap(dev, i, addr, on);
    }
}

static void config_read(FerryPciDevice *dev, unsigned off, uint8_t *data, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        data[i] = off + i < FERRY_PCI_CONFIG_SIZE ? dev->config[off + i] : 0;
}

static void config_write(FerryPciDevice *dev, unsigned off, const uint8_t *data, uint32_t len)
{
    gboolean touches_bars = FALSE;
    for (uint32_t i = 0; i < len && off + i < FERRY_PCI_CONFIG_SIZE; i++) {
        unsigned o = off + i;
        dev->config[o] = (uint8_t) ((dev->config[o] & ~dev->wmask[o]) | (data[i] & dev->wmask[o]));
        if (o == PCI_COMMAND || (o >= PCI_BASE_ADDRESS_0 && o < PCI_BASE_ADDRESS_0 + 24))
            touches_bars = TRUE;
    }
    if (touches_bars)
        update_bars(dev);
    if (dev->ops->config_written)
        dev->ops->config_written(dev, off, len);
}

/* ---- configuration mechanism #1 ---------------------------------------------------- */

/* The function CONFIG_ADDRESS selects, or NULL (bus != 0, function != 0, empty slot). */
static FerryPciDevice *selected(FerryPciHost *host, unsigned *reg)
{
    uint32_t a = host->config_address;
    if (!(a & CONFIG_ADDRESS_ENABLE))
        return NULL;
    unsigned bus = (a >> 16) & 0xff, slot = (a >> 11) & 0x1f, fn = (a >> 8) & 0x7;
    *reg = a & 0xfc;
    if (bus != 0 || fn != 0)
        return NULL;
    return host->slots[slot].dev;
}

static void config_port_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                               gboolean is_write)
{
    FerryPciHost *host = opaque;
    g_rw_lock_writer_lock(&host->lock);
    if (offset < 4) {
        /* CONFIG_ADDRESS: only full 32-bit accesses reach it (section 3.2.2.3.2) */
        if (offset == 0 && len == 4) {
            if (is_write)
                host->config_address = (uint32_t) data[0] | (uint32_t) data[1] << 8 |
                                       (uint32_t) data[2] << 16 | (uint32_t) data[3] << 24;
            else
                for (int i = 0; i < 4; i++)
                    data[i] = (host->config_address >> (8 * i)) & 0xff;
        } else if (!is_write) {
            memset(data, 0xff, len);
        }
    } else {
        unsigned reg;
        FerryPciDevice *dev = selected(host, &reg);
        unsigned off = reg + (unsigned) (offset - 4);
        if (!dev) {
            if (!is_write)
                memset(data, 0xff, len);
        } else if (is_write) {
            config_write(dev, off, data, len);
        } else {
            config_read(dev, off, data, len);
        }
    }
    g_rw_lock_writer_unlock(&host->lock);
}

/* ---- BAR decoding ------------------------------------------------------------------ */

static void decode_access(FerryPciHost *host, uint64_t addr, uint8_t *data, uint32_t len,
                          gboolean is_write)
{
    g_rw_lock_reader_lock(&host->lock);
    for (unsigned s = 0; s < FERRY_PCI_SLOTS; s++) {
        FerryPciDevice *dev = host->slots[s].dev;
        if (!dev)
            continue;
        for (unsigned i = 0; i < FERRY_PCI_NUM_BARS; i++) {
            FerryPciBar *b = &dev->bars[i];
            if (b->mapped && addr >= b->addr && addr + len <= b->addr + b->size) {
                FerryPciBar bar = *b;
                g_rw_lock_reader_unlock(&host->lock);
                dev->ops->bar_access(dev, i, addr - bar.addr, data, len, is_write);
                return;
            }
        }
    }
    g_rw_lock_reader_unlock(&host->lock);
    if (!is_write)
        memset(data, 0xff, len);
}

static void mmio32_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                          gboolean is_write)
{
    FerryPciHost *host = opaque;
    decode_access(host, host->mmio32.base + offset, data, len, is_write);
}

static void mmio64_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                          gboolean is_write)
{
    FerryPciHost *host = opaque;
    decode_access(host, host->mmio64.base + offset, data, len, is_write);
}

/* ---- the host ---------------------------------------------------------------------- */

static const FerryPciDeviceOps bridge_ops = {0};

FerryPciHost *ferry_pci_host_new(FerryBus *pio, FerryBus *mmio, uint64_t mmio32_base,
                                 uint64_t mmio32_size, uint64_t mmio64_base,
                                 uint64_t mmio64_size, GError **error)
{
    FerryPciHost *host = g_new0(FerryPciHost, 1);
    g_rw_lock_init(&host->lock);
    host->mmio32 = (BarWindow){mmio32_base, mmio32_size, mmio32_base};
    host->mmio64 = (BarWindow){mmio64_base, mmio64_size, mmio64_base};
    ferry_pci_device_init(&host->bridge, &bridge_ops, "host bridge", HOST_BRIDGE_VENDOR,
                          HOST_BRIDGE_DEVICE, PCI_CLASS_HOST_BRIDGE, 0, 0, 0);
    host->bridge.host = host;
    host->slots[0].dev = &host->bridge;
    memcpy(host->slots[0].reset_config, host->bridge.config, FERRY_PCI_CONFIG_SIZE);

    if (!ferry_bus_register(pio, FERRY_PCI_CONFIG_ADDRESS, 8, config_port_access, host,
                            "pci-config", error) ||
        (mmio32_size && !ferry_bus_register(mmio, mmio32_base, mmio32_size, mmio32_access,
                                            host, "pci-mmio32", error)) ||
        (mmio64_size && !ferry_bus_register(mmio, mmio64_base, mmio64_size, mmio64_access,
                                            host, "pci-mmio64", error))) {
        ferry_pci_host_free(host);
        return NULL;
    }
    return host;
}

static gboolean allocate(BarWindow *w, uint64_t size, uint64_t *addr)
{
    uint64_t a = (w->next + size - 1) & ~(size - 1);
    if (a < w->next || a + size > w->base + w->size || a + size < a)
        return FALSE;
    *addr = a;
    w->next = a + size;
    return TRUE;
}

gboolean ferry_pci_host_add(FerryPciHost *host, FerryPciDevice *dev, int slot, GError **error)
{
    if (slot == FERRY_PCI_SLOT_AUTO) {
        for (int s = 1; s < FERRY_PCI_SLOTS && slot < 0; s++)
            if (!host->slots[s].dev)
                slot = s;
        if (slot < 0) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                        "no free PCI slot for %s: bus 0 has 31 slots", dev->name);
            return FALSE;
        }
    } else if (slot < 1 || slot >= FERRY_PCI_SLOTS) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "PCI slot %d for %s is out of range (1-31)", slot, dev->name);
        return FALSE;
    } else if (host->slots[slot].dev) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                    "PCI slot %d for %s is already taken by %s", slot, dev->name,
                    host->slots[slot].dev->name);
        return FALSE;
    }
    /* Assign BARs, largest first would pack better; devices have few small BARs. */
    for (unsigned i = 0; i < FERRY_PCI_NUM_BARS; i++) {
        FerryPciBar *b = &dev->bars[i];
        if (!b->size)
            continue;
        uint64_t addr;
        BarWindow *w = b->is_64 && host->mmio64.size ? &host->mmio64 : &host->mmio32;
        if (!allocate(w, b->size, &addr) && !(b->is_64 && allocate(&host->mmio32, b->size, &addr))) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                        "no room for BAR %u (%" G_GUINT64_FORMAT " KiB) of %s in the PCI "
                        "memory windows",
                        i, b->size >> 10, dev->name);
            return FALSE;
        }
        unsigned off = PCI_BASE_ADDRESS_0 + 4 * i;
        ferry_pci_set_long(dev, off, (uint32_t) addr | (b->is_64 ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0));
        if (b->is_64)
            ferry_pci_set_long(dev, off + 4, (uint32_t) (addr >> 32));
    }
    /* Like firmware would: decoding on, so the assigned BARs work from power-on. */
    ferry_pci_set_word(dev, PCI_COMMAND, ferry_pci_get_word(dev, PCI_COMMAND) | PCI_COMMAND_MEMORY);
    dev->host = host;
    dev->slot = (unsigned) slot;
    g_rw_lock_writer_lock(&host->lock);
    update_bars(dev);
    host->slots[slot].dev = dev;
    g_rw_lock_writer_unlock(&host->lock);
    memcpy(host->slots[slot].reset_config, dev->config, FERRY_PCI_CONFIG_SIZE);
    return TRUE;
}

void ferry_pci_host_reset(FerryPciHost *host)
{
    g_rw_lock_writer_lock(&host->lock);
    host->config_address = 0;
    for (unsigned s = 0; s < FERRY_PCI_SLOTS; s++) {
        FerryPciDevice *dev = host->slots[s].dev;
        if (!dev)
            continue;
        memcpy(dev->config, host->slots[s].reset_config, FERRY_PCI_CONFIG_SIZE);
        update_bars(dev);
        if (dev->ops->config_written)
            dev->ops->config_written(dev, 0, FERRY_PCI_CONFIG_SIZE);
    }
    g_rw_lock_writer_unlock(&host->lock);
}

#define PCI_STATE_VERSION 1

void ferry_pci_host_save(FerryPciHost *host, FerryStateWriter *w)
{
    g_rw_lock_reader_lock(&host->lock);
    ferry_state_put_u8(w, PCI_STATE_VERSION);
    ferry_state_put_u32(w, host->config_address);
    uint32_t present = 0;
    for (unsigned s = 0; s < FERRY_PCI_SLOTS; s++)
        if (host->slots[s].dev)
            present |= 1u << s;
    ferry_state_put_u32(w, present);
    for (unsigned s = 0; s < FERRY_PCI_SLOTS; s++)
        if (host->slots[s].dev)
            ferry_state_put_bytes(w, host->slots[s].dev->config, FERRY_PCI_CONFIG_SIZE);
    g_rw_lock_reader_unlock(&host->lock);
}

gboolean ferry_pci_host_load(FerryPciHost *host, FerryStateReader *r, GError **error)
{
    uint8_t version;
    uint32_t address, present;
    if (!ferry_state_get_version(r, PCI_STATE_VERSION, &version, error) ||
        !ferry_state_get_u32(r, &address, error) || !ferry_state_get_u32(r, &present, error))
        return FALSE;
    g_autofree uint8_t *configs = g_malloc(FERRY_PCI_SLOTS * FERRY_PCI_CONFIG_SIZE);
    for (unsigned s = 0; s < FERRY_PCI_SLOTS; s++) {
        FerryPciDevice *dev = host->slots[s].dev;
        gboolean saved = (present >> s) & 1;
        if (saved != (dev != NULL)) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                        "PCI slot %u is %s in the saved state but %s here", s,
                        saved ? "used" : "empty", dev ? "used" : "empty");
            return FALSE;
        }
        if (!saved)
            continue;
        uint8_t *c = configs + s * FERRY_PCI_CONFIG_SIZE;
        if (!ferry_state_get_bytes(r, c, FERRY_PCI_CONFIG_SIZE, error))
            return FALSE;
        /* Same kind of function: vendor, device, class and capability layout. */
        if (memcmp(c, dev->config, 4) != 0 || memcmp(c + 9, dev->config + 9, 3) != 0 ||
            c[PCI_CAPABILITY_LIST] != dev->config[PCI_CAPABILITY_LIST]) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                        "PCI slot %u holds a different device in the saved state (%02x%02x:"
                        "%02x%02x) than here (%s)",
                        s, c[1], c[0], c[3], c[2], dev->name);
            return FALSE;
        }
    }
    g_rw_lock_writer_lock(&host->lock);
    host->config_address = address;
    for (unsigned s = 0; s < FERRY_PCI_SLOTS; s++) {
        FerryPciDevice *dev = host->slots[s].dev;
        if (!dev)
            continue;
        /* Read-only bits keep this build's values; writable ones come from the state. */
        const uint8_t *c = configs + s * FERRY_PCI_CONFIG_SIZE;
        for (unsigned o = 0; o < FERRY_PCI_CONFIG_SIZE; o++)
            dev->config[o] = (uint8_t) ((dev->config[o] & ~dev->wmask[o]) | (c[o] & dev->wmask[o]));
        update_bars(dev);
        if (dev->ops->config_written)
            dev->ops->config_written(dev, 0, FERRY_PCI_CONFIG_SIZE);
    }
    g_rw_lock_writer_unlock(&host->lock);
    return TRUE;
}

void ferry_pci_host_windows(const FerryPciHost *host, uint64_t *mmio32_base,
                            uint64_t *mmio32_size, uint64_t *mmio64_base,
                            uint64_t *mmio64_size)
{
    *mmio32_base = host->mmio32.base;
    *mmio32_size = host->mmio32.size;
    *mmio64_base = host->mmio64.base;
    *mmio64_size = host->mmio64.size;
}

void ferry_pci_host_free(FerryPciHost *host)
{
    if (!host)
        return;
    g_rw_lock_clear(&host->lock);
    g_free(host);
}

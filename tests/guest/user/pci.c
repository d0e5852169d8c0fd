/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * PCI bus 0 enumeration at CPL3 (config space through SYS_PCI_CFG, PCI Local
 * Bus 3.0 chapter 6), virtio PCI capabilities (virtio 1.2, 4.1.4) and the MSI-X
 * capability (PCI 3.0, 6.8.2). Prints one line per function:
 *   ferry-guest: pci 00:<slot>.<fn> <vendor>:<device> <what>
 *
 * BARs are used where the firmware or VMM put them. An unassigned memory BAR (0)
 * gets an address from a window in the 32-bit hole above RAM.
 */
#include "kernel/layout.h"
#include "lib/x86.h"
#include "user/ulib.h"
#include "user/virtio.h"

struct vdev g_vdevs[MAX_VDEVS];
u32 g_nvdevs;

static u64 bar_window, bar_window_end;

u32 pci_cfg_read(u8 bus, u8 devfn, u8 reg, u32 width)
{
    return (u32)usys(SYS_PCI_CFG, (long)PCI_CFG_OP(bus, devfn, reg, width, 0), 0);
}

void pci_cfg_write(u8 bus, u8 devfn, u8 reg, u32 width, u32 val)
{
    usys(SYS_PCI_CFG, (long)PCI_CFG_OP(bus, devfn, reg, width, 1), val);
}

/* Window for unassigned BARs: from the first 256 MiB boundary above RAM below
 * 4 GiB (at least 0xC0000000) up to 0xFE000000 (IOAPIC, LAPIC, firmware). */
static void window_init(void)
{
    const struct boot_info *bi = &g_shared.boot;
    u64 top = 0;

    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        if (e->addr < 4 * GiB)
            top = MAX(top, MIN(e->addr + e->size, 4 * GiB));
    }
    bar_window = MAX(ALIGN_UP(top, 256 * MiB), 0xc0000000ull);
    bar_window_end = 0xfe000000ull;
}

/* Reads (and if needed assigns) the memory BARs of a function. */
static void read_bars(struct vdev *d, u8 hdr_type)
{
    u32 nbars = (hdr_type & 0x7f) == 0 ? 6 : 2;

    for (u32 i = 0; i < nbars; i++) {
        u8 reg = (u8)(0x10 + 4 * i);
        u32 lo = pci_cfg_read(d->bus, d->devfn, reg, 4);
        if (lo & 1)
            continue;                       /* I/O BAR: not used */
        bool is64 = ((lo >> 1) & 3) == 2;
        u64 addr = lo & ~0xfull;
        if (is64)
            addr |= (u64)pci_cfg_read(d->bus, d->devfn, reg + 4, 4) << 32;
        if (!addr) {
            /* PCI 3.0, 6.2.5.1: size by writing all ones (decode off meanwhile). */
            u16 cmd = (u16)pci_cfg_read(d->bus, d->devfn, 0x04, 2);
            pci_cfg_write(d->bus, d->devfn, 0x04, 2, cmd & ~2u);
            pci_cfg_write(d->bus, d->devfn, reg, 4, 0xffffffffu);
            u32 m = pci_cfg_read(d->bus, d->devfn, reg, 4) & ~0xfu;
            u64 size = m ? (u64)(~m + 1u) & 0xffffffffull : 0;
            if (is64) {
                pci_cfg_write(d->bus, d->devfn, reg + 4, 4, 0xffffffffu);
                u32 mh = pci_cfg_read(d->bus, d->devfn, reg + 4, 4);
                if (!m && mh)
                    size = ~(((u64)mh << 32)) + 1;
            }
            if (size && ALIGN_UP(bar_window, size) + size <= bar_window_end) {
                addr = ALIGN_UP(bar_window, size);
                bar_window = addr + size;
                if (!g_opt.quiet)
                    uprintf("ferry-guest: pci 00:%02x.%u bar %u unassigned, set to 0x%llx "
                            "(0x%llx bytes)\n", d->devfn >> 3, d->devfn & 7, i, addr, size);
            }
            pci_cfg_write(d->bus, d->devfn, reg, 4, (u32)addr | (lo & 0xf));
            if (is64)
                pci_cfg_write(d->bus, d->devfn, reg + 4, 4, (u32)(addr >> 32));
            pci_cfg_write(d->bus, d->devfn, 0x04, 2, cmd);
        }
        d->bar[i] = addr;
        if (is64)
            i++;
    }
}

static volatile u8 *map_region(struct vdev *d, u8 bar, u32 off, u32 len)
{
    if (bar > 5 || !d->bar[bar] || !len)
        return NULL;
    u64 a = d->bar[bar] + off;
    if (usys(SYS_MAP_MMIO, (long)a, len) != 0) {
        uprintf("ferry-guest: cannot map bar %u at 0x%llx\n", bar, a);
        return NULL;
    }
    return (volatile u8 *)a;
}

/* 4.1.4 Virtio Structure PCI Capabilities; PCI 3.0 6.7 capability list. */
static void read_caps(struct vdev *d)
{
    if (!(pci_cfg_read(d->bus, d->devfn, 0x06, 2) & 0x10))
        return;                             /* no capability list */
    u8 p = (u8)(pci_cfg_read(d->bus, d->devfn, 0x34, 1) & 0xfc);
    for (u32 guard = 0; p && guard < 48; guard++) {
        u32 w0 = pci_cfg_read(d->bus, d->devfn, p, 4);
        u8 id = w0 & 0xff, next = (w0 >> 8) & 0xfc;
        if (id == 0x09 && d->type) {        /* vendor specific: virtio_pci_cap */
            u8 cfg_type = (w0 >> 24) & 0xff;
            u32 w1 = pci_cfg_read(d->bus, d->devfn, p + 4, 4);
            u8 bar = w1 & 0xff;
            u32 off = pci_cfg_read(d->bus, d->devfn, p + 8, 4);
            u32 len = pci_cfg_read(d->bus, d->devfn, p + 12, 4);
            /* The first capability of each type is the preferred one (4.1.4.1). */
            switch (cfg_type) {
            case 1:                         /* VIRTIO_PCI_CAP_COMMON_CFG */
                if (!d->common)
                    d->common = map_region(d, bar, off, len);
                break;
            case 2:                         /* VIRTIO_PCI_CAP_NOTIFY_CFG, 4.1.4.4 */
                if (!d->notify_base && map_region(d, bar, off, len)) {
                    d->notify_base = d->bar[bar] + off;
                    d->notify_mult = pci_cfg_read(d->bus, d->devfn, p + 16, 4);
                }
                break;
            case 3:                         /* VIRTIO_PCI_CAP_ISR_CFG */
                if (!d->isr)
                    d->isr = map_region(d, bar, off, len);
                break;
            case 4:                         /* VIRTIO_PCI_CAP_DEVICE_CFG */
                if (!d->devcfg)
                    d->devcfg = map_region(d, bar, off, len);
                break;
            default:
                break;                      /* PCI cfg access, shared memory, ... */
            }
        } else if (id == 0x11) {            /* MSI-X, PCI 3.0 6.8.2 */
            d->msix_cap = p;
            d->msix_size = (u16)(((w0 >> 16) & 0x7ff) + 1);
            u32 tbl = pci_cfg_read(d->bus, d->devfn, p + 4, 4);
            d->msix_table = (volatile u32 *)map_region(d, tbl & 7, tbl & ~7u,
                                                       d->msix_size * 16u);
        }
        p = next;
    }
}

static const char *class_name(u32 cls)
{
    switch (cls >> 8) {
    case 0x0600: return "host bridge";
    case 0x0601: return "isa bridge";
    case 0x0604: return "pci bridge";
    case 0x0680: return "bridge";
    case 0x0101: return "ide";
    case 0x0300: return "vga";
    case 0x0200: return "ethernet";
    default: return "device";
    }
}

static void probe(u8 bus, u8 devfn, u16 vendor, u16 device, u8 hdr_type)
{
    u32 cls = pci_cfg_read(bus, devfn, 0x08, 4) >> 8;
    u32 type = 0;

    if (vendor == 0x1af4 && device >= 0x1000 && device <= 0x107f) {
        if (device >= 0x1040)
            type = device - 0x1040u;        /* 4.1.2.1: modern ID */
        else                                /* transitional: subsystem device ID */
            type = pci_cfg_read(bus, devfn, 0x2e, 2);
    }
    struct vdev tmp = { .bus = bus, .devfn = devfn, .vendor = vendor, .device = device,
                        .type = type };
    struct vdev *d = &tmp;
    if (type && g_nvdevs < MAX_VDEVS)
        d = &g_vdevs[g_nvdevs];
    *d = tmp;
    const char *what = class_name(cls);
    if (type) {
        read_bars(d, hdr_type);
        read_caps(d);
        bool modern = d->common && d->notify_base && d->isr;
        what = type == VIRTIO_ID_BLK ? (modern ? "virtio-blk" : "virtio-blk (no modern caps)") :
               type == VIRTIO_ID_NET ? (modern ? "virtio-net" : "virtio-net (no modern caps)") :
               type == VIRTIO_ID_RNG ? (modern ? "virtio-rng" : "virtio-rng (no modern caps)") :
               type == VIRTIO_ID_CONSOLE ? (modern ? "virtio-console" :
                                            "virtio-console (no modern caps)") :
               "virtio (other type)";
        if (!g_opt.quiet)
            uprintf("ferry-guest: pci 00:%02x.%u %04x:%04x %s, msix %u, common 0x%llx "
                    "notify 0x%llx mult %u\n", devfn >> 3, devfn & 7, vendor, device, what,
                    d->msix_size, (u64)d->common, d->notify_base, d->notify_mult);
        if (d != &tmp && modern && (type == VIRTIO_ID_BLK || type == VIRTIO_ID_NET ||
                                    type == VIRTIO_ID_RNG || type == VIRTIO_ID_CONSOLE))
            g_nvdevs++;
        return;
    }
    if (!g_opt.quiet)
        uprintf("ferry-guest: pci 00:%02x.%u %04x:%04x %s (class 0x%06x)\n", devfn >> 3,
                devfn & 7, vendor, device, what, cls);
}

void pci_scan(void)
{
    window_init();
    for (u32 slot = 0; slot < 32; slot++) {
        for (u32 fn = 0; fn < 8; fn++) {
            u8 devfn = (u8)(slot << 3 | fn);
            u32 id = pci_cfg_read(0, devfn, 0x00, 4);
            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) {
                if (fn == 0)
                    break;
                continue;
            }
            u8 hdr = (u8)pci_cfg_read(0, devfn, 0x0e, 1);
            probe(0, devfn, id & 0xffff, id >> 16, hdr);
            if (fn == 0 && !(hdr & 0x80))
                break;                      /* single-function device */
        }
    }
}

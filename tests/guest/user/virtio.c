/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Virtio 1.2 over PCI (4.1) with split virtqueues (2.7), at CPL3.
 *
 * Interrupts: every queue gets its own MSI-X vector (4.1.5.1.2), the messages go
 * to the BSP's local APIC, and the kernel handler only counts them
 * (g_shared.msi_count). The drivers poll the used rings. With VIRTIO_F_EVENT_IDX
 * the driver asks for an interrupt every `irq_batch` completions through
 * used_event (2.7.10) and notifies the device only when avail_event says so
 * (2.7.7.2); without it, VIRTQ_AVAIL_F_NO_INTERRUPT is set when irq_batch > 1 and
 * VIRTQ_USED_F_NO_NOTIFY is honoured.
 */
#include "kernel/layout.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "user/ulib.h"
#include "user/virtio.h"

/* 4.1.4.3 struct virtio_pci_common_cfg */
#define CC_DFSELECT     0x00
#define CC_DF           0x04
#define CC_GFSELECT     0x08
#define CC_GF           0x0c
#define CC_MSIX         0x10
#define CC_NUMQ         0x12
#define CC_STATUS       0x14
#define CC_CFGGEN       0x15
#define CC_Q_SELECT     0x16
#define CC_Q_SIZE       0x18
#define CC_Q_MSIX       0x1a
#define CC_Q_ENABLE     0x1c
#define CC_Q_NOFF       0x1e
#define CC_Q_DESCLO     0x20
#define CC_Q_DESCHI     0x24
#define CC_Q_AVAILLO    0x28
#define CC_Q_AVAILHI    0x2c
#define CC_Q_USEDLO     0x30
#define CC_Q_USEDHI     0x34

#define VIRTIO_MSI_NO_VECTOR 0xffff

static u32 next_vec;                /* next free MSI vector (offset from VEC_MSI_BASE) */

static inline void w8(struct vdev *d, u32 o, u8 v) { *(volatile u8 *)(d->common + o) = v; }
static inline void w16(struct vdev *d, u32 o, u16 v) { *(volatile u16 *)(d->common + o) = v; }
static inline void w32(struct vdev *d, u32 o, u32 v) { *(volatile u32 *)(d->common + o) = v; }
static inline u8 r8(struct vdev *d, u32 o) { return *(volatile u8 *)(d->common + o); }
static inline u16 r16(struct vdev *d, u32 o) { return *(volatile u16 *)(d->common + o); }
static inline u32 r32(struct vdev *d, u32 o) { return *(volatile u32 *)(d->common + o); }

void *dma_alloc(u64 size, u64 align)
{
    const struct boot_info *bi = &g_shared.boot;
    u64 p = ALIGN_UP(g_shared.free_base, align);

    for (u32 i = 0; i < bi->e820_count; i++) {
        const struct e820_entry *e = &bi->e820[i];
        if (e->type == E820_RAM && p >= e->addr && p + size <= e->addr + e->size) {
            g_shared.free_base = ALIGN_UP(p + size, 4096);
            return memset((void *)p, 0, size);
        }
    }
    return NULL;
}

/* Writes MSI-X table entry `entry` for CPU vector VEC_MSI_BASE + vec: fixed delivery,
 * edge, physical destination = the BSP (Intel SDM vol. 3A, 11.11 "Message
 * Signalled Interrupts"). */
static void msix_entry(struct vdev *d, u32 entry, u32 vec)
{
    volatile u32 *e = d->msix_table + entry * 4;
    e[0] = 0xfee00000u | (g_shared.cpu[0].apic_id << 12);
    e[1] = 0;
    e[2] = VEC_MSI_BASE + vec;
    e[3] = 0;                           /* unmasked */
}

/* Allocates a vector and programs table entry `entry`; returns the entry or NO_VECTOR. */
static u16 msix_alloc(struct vdev *d, u32 entry)
{
    if (!d->msix_table || entry >= d->msix_size || next_vec >= VEC_MSI_COUNT)
        return VIRTIO_MSI_NO_VECTOR;
    if (!d->msix_nvec)
        d->msix_first_vec = next_vec;
    msix_entry(d, entry, next_vec++);
    d->msix_nvec++;
    return (u16)entry;
}

bool virtio_negotiate(struct vdev *d, u64 wanted)
{
    /* Memory space on before the BARs are touched: a VMM without firmware may leave
     * it off (PCI 3.0 6.2.2); bus master, INTx disable. */
    u16 cmd = (u16)pci_cfg_read(d->bus, d->devfn, 0x04, 2);
    pci_cfg_write(d->bus, d->devfn, 0x04, 2, cmd | 0x0406);    /* mem, bus master, INTx dis */

    /* 3.1.1 Driver Requirements: Device Initialization. 1: reset and wait for 0
     * (4.1.4.3.2). */
    w8(d, CC_STATUS, 0);
    for (u32 i = 0; r8(d, CC_STATUS) != 0 && i < 1000000; i++)
        cpu_relax();
    w8(d, CC_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);                            /* 2 */
    w8(d, CC_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);     /* 3 */

    w32(d, CC_DFSELECT, 0);                                                 /* 4 */
    u64 f = r32(d, CC_DF);
    w32(d, CC_DFSELECT, 1);
    f |= (u64)r32(d, CC_DF) << 32;
    d->offered = f;
    if (!(f & (1ull << VIRTIO_F_VERSION_1))) {
        uprintf("ferry-guest: virtio 00:%02x.%u does not offer VIRTIO_F_VERSION_1\n",
                d->devfn >> 3, d->devfn & 7);
        w8(d, CC_STATUS, VIRTIO_STATUS_FAILED);
        return false;
    }
    d->features = f & (wanted | (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_EVENT_IDX) |
                       (1ull << VIRTIO_F_ACCESS_PLATFORM));
    w32(d, CC_GFSELECT, 0);
    w32(d, CC_GF, (u32)d->features);
    w32(d, CC_GFSELECT, 1);
    w32(d, CC_GF, (u32)(d->features >> 32));
    u8 st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    w8(d, CC_STATUS, st);                                                   /* 5 */
    if (!(r8(d, CC_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {                  /* 6 */
        uprintf("ferry-guest: virtio 00:%02x.%u refused features 0x%llx\n",
                d->devfn >> 3, d->devfn & 7, d->features);
        w8(d, CC_STATUS, VIRTIO_STATUS_FAILED);
        return false;
    }

    /* MSI-X on (function masked while the table is written). */
    if (d->msix_cap && d->msix_table) {
        u16 mc = (u16)pci_cfg_read(d->bus, d->devfn, d->msix_cap + 2, 2);
        pci_cfg_write(d->bus, d->devfn, d->msix_cap + 2, 2, mc | 0xc000);
        /* 4.1.5.1.2: configuration change vector = table entry 0 */
        u16 v = msix_alloc(d, 0);
        w16(d, CC_MSIX, v);
        if (r16(d, CC_MSIX) != v)
            uprintf("ferry-guest: virtio 00:%02x.%u: config msix vector refused\n",
                    d->devfn >> 3, d->devfn & 7);
        pci_cfg_write(d->bus, d->devfn, d->msix_cap + 2, 2, (mc | 0x8000) & ~0x4000);
    }
    return true;
}

bool virtio_setup_queue(struct vdev *d, u32 q, u16 max_size)
{
    struct virtq *vq = &d->vq[q];

    w16(d, CC_Q_SELECT, (u16)q);                /* 4.1.5.1.3 Virtqueue Configuration */
    u16 size = r16(d, CC_Q_SIZE);
    if (!size)
        return false;
    u16 s = 1;
    while ((u32)s * 2 <= MIN(size, max_size))
        s *= 2;
    size = s;
    w16(d, CC_Q_SIZE, size);

    memset(vq, 0, sizeof(*vq));
    vq->index = (u16)q;
    vq->size = size;
    vq->event_idx = d->features & (1ull << VIRTIO_F_EVENT_IDX);
    vq->desc = dma_alloc(16ull * size, 4096);                               /* 2.7 */
    vq->avail = dma_alloc(6 + 2ull * size, 4096);
    vq->used = dma_alloc(6 + 8ull * size, 4096);
    vq->cookie = dma_alloc(sizeof(void *) * size, 64);
    if (!vq->desc || !vq->avail || !vq->used || !vq->cookie)
        return false;
    vq->used_event = &vq->avail->ring[size];
    vq->avail_event = (volatile u16 *)&vq->used->ring[size];
    for (u16 i = 0; i < size; i++)
        vq->desc[i].next = (u16)(i + 1);
    vq->nfree = size;
    vq->irq_batch = 1;

    w32(d, CC_Q_DESCLO, (u32)(u64)vq->desc);
    w32(d, CC_Q_DESCHI, (u32)((u64)vq->desc >> 32));
    w32(d, CC_Q_AVAILLO, (u32)(u64)vq->avail);
    w32(d, CC_Q_AVAILHI, (u32)((u64)vq->avail >> 32));
    w32(d, CC_Q_USEDLO, (u32)(u64)vq->used);
    w32(d, CC_Q_USEDHI, (u32)((u64)vq->used >> 32));

    u16 v = msix_alloc(d, q + 1);
    w16(d, CC_Q_MSIX, v);
    vq->msix_vector = r16(d, CC_Q_MSIX);
    if (vq->msix_vector != v)
        uprintf("ferry-guest: virtio 00:%02x.%u: queue %u msix vector refused\n",
                d->devfn >> 3, d->devfn & 7, q);
    vq->notify = (volatile u16 *)(d->notify_base + (u64)r16(d, CC_Q_NOFF) * d->notify_mult);
    w16(d, CC_Q_ENABLE, 1);
    if (q + 1 > d->nvq)
        d->nvq = q + 1;
    return true;
}

void virtio_driver_ok(struct vdev *d)
{
    w8(d, CC_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
       VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);                /* 8 */
}

u64 virtio_irqs(const struct vdev *d)
{
    u64 n = 0;
    for (u32 i = 0; i < d->msix_nvec; i++)
        n += READ_ONCE(g_shared.msi_count[d->msix_first_vec + i]);
    return n;
}

static void set_irq_request(struct virtq *vq)
{
    if (vq->event_idx)
        *vq->used_event = (u16)(vq->last_used + vq->irq_batch - 1);
    else
        vq->avail->flags = vq->irq_batch > 1 ? VQ_AVAIL_F_NO_INTERRUPT : 0;
}

bool vq_add(struct virtq *vq, const u64 *addr, const u32 *len, const bool *wr, u32 n,
            void *cookie)
{
    if (n == 0 || vq->nfree < n)
        return false;
    u16 head = vq->free_head, i = head, last = head;
    for (u32 k = 0; k < n; k++) {
        struct vq_desc *dd = &vq->desc[i];
        dd->addr = addr[k];
        dd->len = len[k];
        dd->flags = (u16)((wr[k] ? VQ_DESC_F_WRITE : 0) | (k + 1 < n ? VQ_DESC_F_NEXT : 0));
        last = i;
        i = dd->next;
    }
    (void)last;
    vq->free_head = i;
    vq->nfree = (u16)(vq->nfree - n);
    vq->cookie[head] = cookie;
    set_irq_request(vq);
    /* 2.7.13: ring entry, then (write barrier) idx. x86 keeps stores in order. */
    vq->avail->ring[vq->avail_shadow % vq->size] = head;
    barrier();
    vq->avail_shadow++;
    WRITE_ONCE(vq->avail->idx, vq->avail_shadow);
    return true;
}

void vq_kick(struct virtq *vq)
{
    if (vq->kicked_at == vq->avail_shadow)
        return;
    /* 2.7.13.4 / 2.7.10: full barrier between publishing idx and reading the
     * device's suppression state. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    bool need;
    if (vq->event_idx) {
        u16 ev = READ_ONCE(*vq->avail_event), nw = vq->avail_shadow, old = vq->kicked_at;
        need = (u16)(nw - ev - 1) < (u16)(nw - old);    /* vring_need_event */
    } else {
        need = !(READ_ONCE(vq->used->flags) & VQ_USED_F_NO_NOTIFY);
    }
    vq->kicked_at = vq->avail_shadow;
    if (need) {
        *vq->notify = vq->index;            /* 4.1.5.2: without NOTIFICATION_DATA */
        vq->kicks++;
    }
}

void *vq_get(struct virtq *vq, u32 *len)
{
    if (READ_ONCE(vq->used->idx) == vq->last_used)
        return NULL;
    barrier();                              /* x86: loads are not reordered */
    struct vq_used_elem *e = &vq->used->ring[vq->last_used % vq->size];
    u16 head = (u16)e->id;
    if (len)
        *len = e->len;
    vq->last_used++;
    void *cookie = vq->cookie[head];
    u16 i = head, n = 1;
    while (vq->desc[i].flags & VQ_DESC_F_NEXT) {
        i = vq->desc[i].next;
        n++;
    }
    vq->desc[i].next = vq->free_head;
    vq->free_head = head;
    vq->nfree = (u16)(vq->nfree + n);
    set_irq_request(vq);
    return cookie;
}

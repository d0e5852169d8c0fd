/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * PCI enumeration and the virtio 1.2 PCI transport, driven from CPL3.
 *
 * Config space goes through SYS_PCI_CFG (ports 0xCF8/0xCFC at CPL0); BARs are
 * mapped uncached and user-accessible (SYS_MAP_MMIO), so common config, notify,
 * device config and the MSI-X table are plain CPL3 memory accesses. Rings and
 * buffers come from free RAM (identity mapped, user-accessible).
 *
 * Spec references are to "Virtual I/O Device (VIRTIO) Version 1.2".
 */
#ifndef FERRY_GUEST_VIRTIO_H
#define FERRY_GUEST_VIRTIO_H

#include "lib/types.h"

/* 2.7.5 The Virtqueue Descriptor Table */
struct vq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
#define VQ_DESC_F_NEXT      1
#define VQ_DESC_F_WRITE     2
#define VQ_DESC_F_INDIRECT  4

/* 2.7.6 The Virtqueue Available Ring: flags, idx, ring[size], used_event */
struct vq_avail {
    u16 flags;
    u16 idx;
    u16 ring[];
};
#define VQ_AVAIL_F_NO_INTERRUPT 1

/* 2.7.8 The Virtqueue Used Ring: flags, idx, ring[size], avail_event */
struct vq_used_elem {
    u32 id;
    u32 len;
};
struct vq_used {
    u16 flags;
    u16 idx;
    struct vq_used_elem ring[];
};
#define VQ_USED_F_NO_NOTIFY 1

struct virtq {
    u16 index;                  /* queue number */
    u16 size;
    u16 free_head, nfree;       /* free descriptor list */
    u16 last_used;              /* next used ring entry to consume */
    u16 avail_shadow;           /* our avail idx */
    u16 kicked_at;              /* avail idx at the last notification */
    u16 irq_batch;              /* EVENT_IDX: interrupt after this many completions */
    bool event_idx;
    struct vq_desc *desc;
    struct vq_avail *avail;
    struct vq_used *used;
    volatile u16 *used_event;   /* avail->ring[size] */
    volatile u16 *avail_event;  /* used->ring[size] */
    volatile u16 *notify;       /* notify address of this queue */
    u32 msix_vector;            /* 0xffff: none */
    u64 kicks;
    void **cookie;              /* per head descriptor */
};

/* Feature bits (6 Reserved Feature Bits, 5.1.3, 5.2.3) */
#define VIRTIO_F_INDIRECT_DESC  28
#define VIRTIO_F_EVENT_IDX      29
#define VIRTIO_F_VERSION_1      32
#define VIRTIO_F_ACCESS_PLATFORM 33

/* 2.1 Device Status Field */
#define VIRTIO_STATUS_ACKNOWLEDGE   1
#define VIRTIO_STATUS_DRIVER        2
#define VIRTIO_STATUS_DRIVER_OK     4
#define VIRTIO_STATUS_FEATURES_OK   8
#define VIRTIO_STATUS_NEEDS_RESET   64
#define VIRTIO_STATUS_FAILED        128

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG   4

#define VIRTIO_MAX_QUEUES 4

struct vdev {
    u8 bus, devfn;
    u16 vendor, device;
    u32 type;                   /* VIRTIO_ID_* */
    u64 bar[6];                 /* addresses (0: none) */
    volatile u8 *common;        /* 4.1.4.3 */
    volatile u8 *isr;
    volatile u8 *devcfg;
    u64 notify_base;
    u32 notify_mult;
    u16 msix_cap;               /* config space offset, 0 if none */
    u16 msix_size;
    volatile u32 *msix_table;
    u32 msix_first_vec;         /* first CPU vector - VEC_MSI_BASE */
    u32 msix_nvec;
    u64 features;               /* negotiated */
    u64 offered;
    struct virtq vq[VIRTIO_MAX_QUEUES];
    u32 nvq;
};

#define MAX_VDEVS 8
extern struct vdev g_vdevs[MAX_VDEVS];
extern u32 g_nvdevs;

/* pci.c */
void pci_scan(void);                    /* fills g_vdevs; prints pci lines */
u32 pci_cfg_read(u8 bus, u8 devfn, u8 reg, u32 width);
void pci_cfg_write(u8 bus, u8 devfn, u8 reg, u32 width, u32 val);

/* virtio.c */
/* 3.1.1 up to FEATURES_OK with the features the driver accepts (VERSION_1 is
 * required and added); false (device marked FAILED) if refused. */
bool virtio_negotiate(struct vdev *d, u64 wanted);
/* Sets up queue `q` with at most `max_size` entries and an MSI-X vector. */
bool virtio_setup_queue(struct vdev *d, u32 q, u16 max_size);
void virtio_driver_ok(struct vdev *d);
u64 virtio_irqs(const struct vdev *d);

/* Allocation of DMA memory from free RAM (CPU 0 before READY); zeroed. */
void *dma_alloc(u64 size, u64 align);

/* Adds a chain of n buffers (addr, len, device-writable flag) and publishes it;
 * returns false if there are not enough free descriptors. No notification. */
bool vq_add(struct virtq *vq, const u64 *addr, const u32 *len, const bool *wr, u32 n,
            void *cookie);
/* Notifies the device if needed (2.7.10 / 2.7.7 with EVENT_IDX). */
void vq_kick(struct virtq *vq);
/* Takes one used element: returns its cookie (and the written length) or NULL. */
void *vq_get(struct virtq *vq, u32 *len);
static inline u16 vq_free(const struct virtq *vq) { return vq->nfree; }

/* io.c */
void io_init(void);                     /* CPU 0, before READY */
bool io_active(void);
void io_poll(u64 now);                  /* CPU 0, from its workload loop */

/* blk.c / net.c */
bool blk_init(struct vdev *d);
void blk_poll(u64 now);
bool blk_active(void);
bool net_init(struct vdev *d);
void net_poll(u64 now);
bool net_active(void);

/* rng.c / vcon.c */
bool rng_init(struct vdev *d);
void rng_poll(u64 now);
bool rng_active(void);
bool vcon_init(struct vdev *d);
void vcon_poll(u64 now);
bool vcon_active(void);

#endif

#include "virtio/pci.h"

#include "devices/device.h"
#include "pci/msix.h"
#include "util/log.h"

#include <errno.h>
#include <glib-unix.h>
#include <gio/gio.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Section 4.1.2: vendor 0x1AF4, device 0x1040 + type, revision >= 1 for modern-only. */
#define VIRTIO_PCI_VENDOR      0x1af4
#define VIRTIO_PCI_DEVICE_BASE 0x1040
#define VIRTIO_PCI_REVISION    1
#define VIRTIO_PCI_SUBSYS_ID   0x1100

/* Section 4.1.4: capability types. */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG    3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

#define VIRTIO_MSI_NO_VECTOR 0xffff

/* BAR layout (see pci.h). */
#define MSIX_BAR          0
#define MSIX_BAR_SIZE     0x2000
#define MSIX_TABLE_OFFSET 0x0
#define MSIX_PBA_OFFSET   0x1000
#define REGS_BAR          2
#define REGS_BAR_SIZE     0x4000
#define COMMON_OFFSET     0x0000
#define COMMON_SIZE       0x38
#define ISR_OFFSET        0x1000
#define DEVICE_OFFSET     0x2000
#define DEVICE_MAX_SIZE   0x1000
#define NOTIFY_OFFSET     0x3000
#define NOTIFY_MULTIPLIER 4

/* Common configuration registers (section 4.1.4.3, struct virtio_pci_common_cfg). */
enum {
    CC_DEVICE_FEATURE_SELECT = 0x00,
    CC_DEVICE_FEATURE = 0x04,
    CC_DRIVER_FEATURE_SELECT = 0x08,
    CC_DRIVER_FEATURE = 0x0c,
    CC_CONFIG_MSIX_VECTOR = 0x10,
    CC_NUM_QUEUES = 0x12,
    CC_DEVICE_STATUS = 0x14,
    CC_CONFIG_GENERATION = 0x15,
    CC_QUEUE_SELECT = 0x16,
    CC_QUEUE_SIZE = 0x18,
    CC_QUEUE_MSIX_VECTOR = 0x1a,
    CC_QUEUE_ENABLE = 0x1c,
    CC_QUEUE_NOTIFY_OFF = 0x1e,
    CC_QUEUE_DESC = 0x20,
    CC_QUEUE_DRIVER = 0x28,
    CC_QUEUE_DEVICE = 0x30,
};

#define ISR_QUEUE  0x1
#define ISR_CONFIG 0x2

/* The transport's view of one queue: what the driver programmed. */
typedef struct {
    uint16_t size;
    uint16_t msix_vector;
    gboolean enabled;
    uint64_t desc, driver, device;
} QueueRegs;

/* Transport state that save/load carries (under vdev->lock). */
typedef struct {
    uint8_t status;
    uint8_t config_generation;
    uint32_t device_feature_select, driver_feature_select;
    uint64_t driver_features;
    uint16_t msix_config;
    uint16_t queue_select;
    QueueRegs queues[FERRY_VIRTIO_MAX_QUEUES];
    gboolean broken;
} TransportRegs;

struct FerryVirtioPci {
    FerryDevice dev; /* first: the generic device interface */
    FerryPciDevice pci;
    FerryVirtioDev *vdev;
    FerryMsix msix;
    int vm_fd;
    gboolean ioeventfd_any_length;

    TransportRegs regs; /* under vdev->lock */
    gint isr;           /* atomic: section 4.1.4.5 */
    uint64_t offered;   /* device features incl. the transport's */

    /* Queue notification eventfds, one per queue, read on the I/O thread. */
    int notify_fd[FERRY_VIRTIO_MAX_QUEUES];
    GSource *notify_src[FERRY_VIRTIO_MAX_QUEUES];
    uint64_t notify_gpa;  /* where the notify region is registered with KVM, 0 = not */
};

static FerryVirtioPci *of_vdev(FerryVirtioDev *vdev)
{
    return vdev->transport;
}

static uint64_t ld_le(const uint8_t *p, uint32_t len)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < len; i++)
        v |= (uint64_t) p[i] << (8 * i);
    return v;
}

static void st_le(uint8_t *p, uint64_t v, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        p[i] = (uint8_t) (v >> (8 * i));
}

/* ---- interrupts (called by devices, lock held) ------------------------------------- */

void ferry_virtio_notify_queue(FerryVirtioDev *vdev, unsigned index)
{
    FerryVirtioPci *vp = of_vdev(vdev);
    if (!ferry_virtq_should_notify(&vdev->vqs[index]))
        return;
    g_atomic_int_or(&vp->isr, ISR_QUEUE);
    uint16_t vector = vp->regs.queues[index].msix_vector;
    if (vector != VIRTIO_MSI_NO_VECTOR)
        ferry_msix_notify(&vp->msix, vector);
}

void ferry_virtio_notify_config(FerryVirtioDev *vdev)
{
    FerryVirtioPci *vp = of_vdev(vdev);
    vp->regs.config_generation++;
    g_atomic_int_or(&vp->isr, ISR_CONFIG);
    if (vp->regs.msix_config != VIRTIO_MSI_NO_VECTOR)
        ferry_msix_notify(&vp->msix, vp->regs.msix_config);
}

void ferry_virtio_set_broken(FerryVirtioDev *vdev, const char *why)
{
    FerryVirtioPci *vp = of_vdev(vdev);
    if (vp->regs.broken)
        return;
    ferry_log("%s: %s; the device needs a reset by its driver", vdev->id, why);
    vp->regs.broken = TRUE;
    vp->regs.status |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
    if (vp->regs.status & VIRTIO_STATUS_DRIVER_OK)
        ferry_virtio_notify_config(vdev);
}

gboolean ferry_virtio_is_broken(const FerryVirtioDev *vdev)
{
    const FerryVirtioPci *vp = vdev->transport;
    return vp->regs.broken;
}

/* ---- queue notifications (I/O thread) ---------------------------------------------- */

static gboolean queue_ready(FerryVirtioPci *vp, unsigned q)
{
    return (vp->regs.status & VIRTIO_STATUS_DRIVER_OK) && !vp->regs.broken &&
           vp->regs.queues[q].enabled;
}

/* Lock held: hands queue @q to the device unless paused (resume looks at every queue). */
static void kick_queue(FerryVirtioPci *vp, unsigned q)
{
    FerryVirtioDev *vdev = vp->vdev;
    if (queue_ready(vp, q) && !vdev->paused)
        vdev->ops->queue_notify(vdev, q);
}

static gboolean notify_ready(gint fd, GIOCondition cond, gpointer data)
{
    FerryVirtioPci *vp = data;
    unsigned q;
    for (q = 0; q < vp->vdev->nr_queues; q++)
        if (vp->notify_fd[q] == fd)
            break;
    uint64_t count;
    if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN && errno != EINTR)
        ferry_log("%s: reading queue %u's notifier: %s", vp->vdev->id, q, g_strerror(errno));
    g_mutex_lock(&vp->vdev->lock);
    kick_queue(vp, q);
    g_mutex_unlock(&vp->vdev->lock);
    return G_SOURCE_CONTINUE;
}

/* Any thread: has every queue looked at on the I/O thread (after DRIVER_OK or resume). */
static void kick_all_later(FerryVirtioPci *vp)
{
    uint64_t one = 1;
    for (unsigned q = 0; q < vp->vdev->nr_queues; q++)
        if (write(vp->notify_fd[q], &one, sizeof(one)) < 0 && errno != EAGAIN)
            ferry_log("%s: cannot kick queue %u: %s", vp->vdev->id, q, g_strerror(errno));
}

/* Registers (or with @assign FALSE, removes) the notify region's ioeventfds at @gpa. */
static void set_ioeventfds(FerryVirtioPci *vp, uint64_t gpa, gboolean assign)
{
    for (unsigned q = 0; q < vp->vdev->nr_queues; q++) {
        struct kvm_ioeventfd ev = {
            .addr = gpa + NOTIFY_OFFSET + q * NOTIFY_MULTIPLIER,
            .len = vp->ioeventfd_any_length ? 0 : 2,
            .fd = vp->notify_fd[q],
            .flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
        };
        if (ioctl(vp->vm_fd, KVM_IOEVENTFD, &ev) < 0 && assign) {
            /* Still correct: notify writes then exit to bar_access, which kicks the queue. */
            ferry_log("%s: KVM_IOEVENTFD for queue %u failed (%s); notifications are emulated",
                      vp->vdev->id, q, g_strerror(errno));
        }
    }
}

/* ---- common configuration (vCPU threads, lock held) -------------------------------- */

/* The registers after a reset (section 2.4); the configuration generation moves on. */
static void init_regs(FerryVirtioPci *vp)
{
    uint8_t generation = vp->regs.config_generation;
    memset(&vp->regs, 0, sizeof(vp->regs));
    vp->regs.config_generation = generation + 1;
    vp->regs.msix_config = VIRTIO_MSI_NO_VECTOR;
    for (unsigned q = 0; q < vp->vdev->nr_queues; q++) {
        vp->regs.queues[q].size = vp->vdev->queue_max_size[q];
        vp->regs.queues[q].msix_vector = VIRTIO_MSI_NO_VECTOR;
    }
    g_atomic_int_set(&vp->isr, 0);
}

static void reset_transport(FerryVirtioPci *vp)
{
    FerryVirtioDev *vdev = vp->vdev;
    vdev->ops->reset(vdev);
    for (unsigned q = 0; q < vdev->nr_queues; q++)
        ferry_virtq_reset(&vdev->vqs[q]);
    vdev->features = 0;
    init_regs(vp);
}

static void write_status(FerryVirtioPci *vp, uint8_t status)
{
    FerryVirtioDev *vdev = vp->vdev;
    if (status == 0) {
        reset_transport(vp);
        return;
    }
    uint8_t old = vp->regs.status;
    /* Section 2.2.2 / 3.1.1: FEATURES_OK only for an acceptable subset of the offer. */
    if ((status & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
        uint64_t f = vp->regs.driver_features;
        if ((f & ~vp->offered) || !(f & (1ULL << VIRTIO_F_VERSION_1)))
            status &= ~VIRTIO_STATUS_FEATURES_OK;
        else
            vdev->features = f;
    }
    vp->regs.status = (uint8_t) (status | (old & VIRTIO_STATUS_DEVICE_NEEDS_RESET));
    if ((status & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK) &&
        !vp->regs.broken) {
        if (!(vp->regs.status & VIRTIO_STATUS_FEATURES_OK)) {
            ferry_virtio_set_broken(vdev, "the driver set DRIVER_OK without FEATURES_OK");
            return;
        }
        g_autoptr(GError) error = NULL;
        if (vdev->ops->activate && !vdev->ops->activate(vdev, &error)) {
            g_autofree char *msg = g_strdup_printf("cannot start: %s", error->message);
            ferry_virtio_set_broken(vdev, msg);
            return;
        }
        kick_all_later(vp); /* buffers made available before DRIVER_OK */
    }
}

static void enable_queue(FerryVirtioPci *vp, unsigned q)
{
    FerryVirtioDev *vdev = vp->vdev;
    QueueRegs *qr = &vp->regs.queues[q];
    if (qr->enabled)
        return;
    g_autoptr(GError) error = NULL;
    if (qr->size > vdev->queue_max_size[q]) {
        g_autofree char *msg = g_strdup_printf("queue %u size %u exceeds the maximum %u", q,
                                               qr->size, vdev->queue_max_size[q]);
        ferry_virtio_set_broken(vdev, msg);
        return;
    }
    if (!ferry_virtq_enable(&vdev->vqs[q], qr->size, qr->desc, qr->driver, qr->device,
                            (vp->regs.driver_features >> VIRTIO_F_EVENT_IDX) & 1, &error)) {
        g_autofree char *msg = g_strdup_printf("queue %u: %s", q, error->message);
        ferry_virtio_set_broken(vdev, msg);
        return;
    }
    qr->enabled = TRUE;
}

static void common_read(FerryVirtioPci *vp, uint32_t off, uint8_t *data, uint32_t len)
{
    FerryVirtioDev *vdev = vp->vdev;
    uint8_t r[COMMON_SIZE] = {0};
    TransportRegs *t = &vp->regs;
    unsigned qs = t->queue_select;
    const QueueRegs *qr = qs < vdev->nr_queues ? &t->queues[qs] : NULL;
    st_le(r + CC_DEVICE_FEATURE_SELECT, t->device_feature_select, 4);
    if (t->device_feature_select < 2)
        st_le(r + CC_DEVICE_FEATURE, vp->offered >> (32 * t->device_feature_select), 4);
    st_le(r + CC_DRIVER_FEATURE_SELECT, t->driver_feature_select, 4);
    if (t->driver_feature_select < 2)
        st_le(r + CC_DRIVER_FEATURE, t->driver_features >> (32 * t->driver_feature_select), 4);
    st_le(r + CC_CONFIG_MSIX_VECTOR, t->msix_config, 2);
    st_le(r + CC_NUM_QUEUES, vdev->nr_queues, 2);
    r[CC_DEVICE_STATUS] = t->status;
    r[CC_CONFIG_GENERATION] = t->config_generation;
    st_le(r + CC_QUEUE_SELECT, qs, 2);
    if (qr) {
        st_le(r + CC_QUEUE_SIZE, qr->size, 2);
        st_le(r + CC_QUEUE_MSIX_VECTOR, qr->msix_vector, 2);
        st_le(r + CC_QUEUE_ENABLE, qr->enabled, 2);
        st_le(r + CC_QUEUE_NOTIFY_OFF, qs, 2);
        st_le(r + CC_QUEUE_DESC, qr->desc, 8);
        st_le(r + CC_QUEUE_DRIVER, qr->driver, 8);
        st_le(r + CC_QUEUE_DEVICE, qr->device, 8);
    }
    memcpy(data, r + off, len);
}

/* A vector the driver may use, else NO_VECTOR (section 4.1.5.1.2: it reads back). */
static uint16_t checked_vector(FerryVirtioPci *vp, uint64_t v)
{
    return v < vp->msix.nr_vectors ? (uint16_t) v : VIRTIO_MSI_NO_VECTOR;
}

static void common_write(FerryVirtioPci *vp, uint32_t off, const uint8_t *data, uint32_t len)
{
    FerryVirtioDev *vdev = vp->vdev;
    TransportRegs *t = &vp->regs;
    uint64_t v = ld_le(data, len);
    unsigned qs = t->queue_select;
    QueueRegs *qr = qs < vdev->nr_queues ? &t->queues[qs] : NULL;
    /* Queue registers may change only while the queue is disabled (section 4.1.4.3.2). */
    gboolean queue_writable = qr && !qr->enabled;

    switch (off) {
    case CC_DEVICE_FEATURE_SELECT:
        t->device_feature_select = (uint32_t) v;
        return;
    case CC_DRIVER_FEATURE_SELECT:
        t->driver_feature_select = (uint32_t) v;
        return;
    case CC_DRIVER_FEATURE:
        if (t->driver_feature_select < 2 && !(t->status & VIRTIO_STATUS_FEATURES_OK)) {
            unsigned shift = 32 * t->driver_feature_select;
            t->driver_features = (t->driver_features & ~(0xffffffffULL << shift)) |
                                 ((v & 0xffffffffULL) << shift);
        }
        return;
    case CC_CONFIG_MSIX_VECTOR:
        t->msix_config = checked_vector(vp, v);
        return;
    case CC_DEVICE_STATUS:
        write_status(vp, (uint8_t) v);
        return;
    case CC_QUEUE_SELECT:
        t->queue_select = (uint16_t) v;
        return;
    case CC_QUEUE_SIZE:
        if (queue_writable)
            qr->size = (uint16_t) v;
        return;
    case CC_QUEUE_MSIX_VECTOR:
        if (qr)
            qr->msix_vector = checked_vector(vp, v);
        return;
    case CC_QUEUE_ENABLE:
        if (qr && v == 1)
            enable_queue(vp, qs);
        return;
    }
    /* The 64-bit ring addresses, written whole or as two 32-bit halves. */
    if (off >= CC_QUEUE_DESC && off < COMMON_SIZE && queue_writable) {
        uint64_t *field = off < CC_QUEUE_DRIVER   ? &qr->desc
                          : off < CC_QUEUE_DEVICE ? &qr->driver
                                                  : &qr->device;
        unsigned shift = 8 * ((off - CC_QUEUE_DESC) % 8);
        uint64_t mask = (len == 8 ? ~0ULL : ((1ULL << (8 * len)) - 1)) << shift;
        *field = (*field & ~mask) | ((v << shift) & mask);
    }
}

/* ---- PCI device ops ---------------------------------------------------------------- */

static void bar_access(FerryPciDevice *pci, unsigned bar, uint64_t offset, uint8_t *data,
                       uint32_t len, gboolean is_write)
{
    FerryVirtioPci *vp = G_STRUCT_MEMBER_P(pci, -G_STRUCT_OFFSET(FerryVirtioPci, pci));
    FerryVirtioDev *vdev = vp->vdev;
    if (bar == MSIX_BAR) {
        if (!ferry_msix_bar_access(&vp->msix, offset, data, len, is_write) && !is_write)
            memset(data, 0, len);
        return;
    }
    if (!is_write)
        memset(data, 0, len);
    if (offset >= NOTIFY_OFFSET) {
        /* Only reached when the ioeventfd could not be set up. */
        uint64_t q = (offset - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER;
        uint64_t one = 1;
        if (is_write && q < vdev->nr_queues && write(vp->notify_fd[q], &one, 8) < 0)
            ferry_log("%s: cannot kick queue %u: %s", vdev->id, (unsigned) q, g_strerror(errno));
        return;
    }
    if (offset >= ISR_OFFSET && offset < DEVICE_OFFSET) {
        if (!is_write && offset == ISR_OFFSET)
            data[0] = (uint8_t) g_atomic_int_and(&vp->isr, 0); /* read clears (4.1.4.5) */
        return;
    }
    g_mutex_lock(&vdev->lock);
    if (offset < COMMON_OFFSET + COMMON_SIZE) {
        if (offset + len <= COMMON_SIZE && (len == 1 || len == 2 || len == 4 || len == 8)) {
            if (is_write)
                common_write(vp, (uint32_t) offset, data, len);
            else
                common_read(vp, (uint32_t) offset, data, len);
        }
    } else if (offset >= DEVICE_OFFSET && offset - DEVICE_OFFSET + len <= vdev->config_size) {
        uint32_t off = (uint32_t) (offset - DEVICE_OFFSET);
        if (!is_write)
            vdev->ops->read_config(vdev, off, data, len);
        else if (vdev->ops->write_config)
            vdev->ops->write_config(vdev, off, data, len);
    }
    g_mutex_unlock(&vdev->lock);
}

static void bar_remap(FerryPciDevice *pci, unsigned bar, uint64_t addr, gboolean enabled)
{
    FerryVirtioPci *vp = G_STRUCT_MEMBER_P(pci, -G_STRUCT_OFFSET(FerryVirtioPci, pci));
    if (bar != REGS_BAR)
        return;
    if (vp->notify_gpa)
        set_ioeventfds(vp, vp->notify_gpa, FALSE);
    vp->notify_gpa = 0;
    if (enabled) {
        set_ioeventfds(vp, addr, TRUE);
        vp->notify_gpa = addr;
    }
}

static void config_written(FerryPciDevice *pci, uint32_t offset, uint32_t len)
{
    FerryVirtioPci *vp = G_STRUCT_MEMBER_P(pci, -G_STRUCT_OFFSET(FerryVirtioPci, pci));
    if (offset < (uint32_t) vp->msix.cap + 4 && offset + len > vp->msix.cap)
        ferry_msix_config_written(&vp->msix);
}

static const FerryPciDeviceOps virtio_pci_ops = {
    .bar_access = bar_access,
    .bar_remap = bar_remap,
    .config_written = config_written,
};

/* Appends a virtio_pci_cap (section 4.1.4) pointing into REGS_BAR. */
static void add_virtio_cap(FerryPciDevice *pci, uint8_t type, uint32_t offset, uint32_t length,
                           gboolean notify)
{
    uint8_t c[20] = {0};
    c[2] = notify ? 20 : 16; /* cap_len */
    c[3] = type;
    c[4] = REGS_BAR;
    st_le(c + 8, offset, 4);
    st_le(c + 12, length, 4);
    if (notify)
        st_le(c + 16, NOTIFY_MULTIPLIER, 4);
    ferry_pci_device_add_cap(pci, PCI_CAP_ID_VNDR, c, NULL, c[2]);
}

/* ---- FerryDevice ops (main thread, vCPUs stopped) ---------------------------------- */

#define VIRTIO_PCI_STATE_VERSION 1

static FerryVirtioPci *of_dev(FerryDevice *dev)
{
    return (FerryVirtioPci *) dev;
}

static void vp_reset(FerryDevice *dev)
{
    FerryVirtioPci *vp = of_dev(dev);
    g_mutex_lock(&vp->vdev->lock);
    reset_transport(vp);
    g_mutex_unlock(&vp->vdev->lock);
    ferry_msix_reset(&vp->msix);
}

static void vp_pause(FerryDevice *dev)
{
    FerryVirtioPci *vp = of_dev(dev);
    FerryVirtioDev *vdev = vp->vdev;
    g_mutex_lock(&vdev->lock);
    if (!vdev->paused) {
        vdev->paused = TRUE;
        if (vdev->ops->pause)
            vdev->ops->pause(vdev);
    }
    g_mutex_unlock(&vdev->lock);
}

static void vp_resume(FerryDevice *dev)
{
    FerryVirtioPci *vp = of_dev(dev);
    FerryVirtioDev *vdev = vp->vdev;
    g_mutex_lock(&vdev->lock);
    if (vdev->paused) {
        vdev->paused = FALSE;
        if (vdev->ops->resume)
            vdev->ops->resume(vdev);
    }
    g_mutex_unlock(&vdev->lock);
    kick_all_later(vp); /* spurious notifications are harmless */
}

static void vp_save(FerryDevice *dev, GByteArray *out)
{
    FerryVirtioPci *vp = of_dev(dev);
    FerryVirtioDev *vdev = vp->vdev;
    FerryStateWriter w = {out};
    g_mutex_lock(&vdev->lock);
    const TransportRegs *t = &vp->regs;
    ferry_state_put_u8(&w, VIRTIO_PCI_STATE_VERSION);
    ferry_state_put_u16(&w, vdev->ops->device_id);
    ferry_state_put_u8(&w, (uint8_t) vdev->nr_queues);
    ferry_state_put_u8(&w, t->status);
    ferry_state_put_u8(&w, t->config_generation);
    ferry_state_put_u8(&w, (uint8_t) t->broken);
    ferry_state_put_u32(&w, t->device_feature_select);
    ferry_state_put_u32(&w, t->driver_feature_select);
    ferry_state_put_u64(&w, t->driver_features);
    ferry_state_put_u64(&w, vdev->features);
    ferry_state_put_u16(&w, t->msix_config);
    ferry_state_put_u16(&w, t->queue_select);
    ferry_state_put_u8(&w, (uint8_t) g_atomic_int_get(&vp->isr));
    for (unsigned q = 0; q < vdev->nr_queues; q++) {
        const QueueRegs *qr = &t->queues[q];
        ferry_state_put_u16(&w, qr->size);
        ferry_state_put_u16(&w, qr->msix_vector);
        ferry_state_put_u8(&w, (uint8_t) qr->enabled);
        ferry_state_put_u64(&w, qr->desc);
        ferry_state_put_u64(&w, qr->driver);
        ferry_state_put_u64(&w, qr->device);
        ferry_virtq_save(&vdev->vqs[q], &w);
    }
    ferry_msix_save(&vp->msix, &w);
    ferry_state_put_u8(&w, vdev->ops->state_version);
    if (vdev->ops->save)
        vdev->ops->save(vdev, &w);
    g_mutex_unlock(&vdev->lock);
}

static gboolean vp_load(FerryDevice *dev, const uint8_t *data, size_t len, GError **error)
{
    FerryVirtioPci *vp = of_dev(dev);
    FerryVirtioDev *vdev = vp->vdev;
    FerryStateReader r;
    ferry_state_reader_init(&r, data, len, vdev->id);
    uint8_t version, nr_queues, broken, isr, dev_version;
    uint16_t device_id;
    TransportRegs t = {0};
    uint64_t features;
    if (!ferry_state_get_version(&r, VIRTIO_PCI_STATE_VERSION, &version, error) ||
        !ferry_state_get_u16(&r, &device_id, error) || !ferry_state_get_u8(&r, &nr_queues, error))
        return FALSE;
    if (device_id != vdev->ops->device_id || nr_queues != vdev->nr_queues) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: the saved state is of virtio device type %u with %u queues, not "
                    "type %u with %u",
                    vdev->id, device_id, nr_queues, vdev->ops->device_id, vdev->nr_queues);
        return FALSE;
    }
    if (!ferry_state_get_u8(&r, &t.status, error) ||
        !ferry_state_get_u8(&r, &t.config_generation, error) ||
        !ferry_state_get_u8(&r, &broken, error) ||
        !ferry_state_get_u32(&r, &t.device_feature_select, error) ||
        !ferry_state_get_u32(&r, &t.driver_feature_select, error) ||
        !ferry_state_get_u64(&r, &t.driver_features, error) ||
        !ferry_state_get_u64(&r, &features, error) ||
        !ferry_state_get_u16(&r, &t.msix_config, error) ||
        !ferry_state_get_u16(&r, &t.queue_select, error) || !ferry_state_get_u8(&r, &isr, error))
        return FALSE;
    t.broken = broken != 0;
    if ((features & ~vp->offered) || (t.driver_features & ~vp->offered)) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: the saved state uses features 0x%" G_GINT64_MODIFIER "x this device "
                    "does not offer (0x%" G_GINT64_MODIFIER "x)",
                    vdev->id, features, vp->offered);
        return FALSE;
    }
    FerryVirtqueue vqs[FERRY_VIRTIO_MAX_QUEUES];
    for (unsigned q = 0; q < vdev->nr_queues; q++) {
        QueueRegs *qr = &t.queues[q];
        uint8_t enabled;
        if (!ferry_state_get_u16(&r, &qr->size, error) ||
            !ferry_state_get_u16(&r, &qr->msix_vector, error) ||
            !ferry_state_get_u8(&r, &enabled, error) || !ferry_state_get_u64(&r, &qr->desc, error) ||
            !ferry_state_get_u64(&r, &qr->driver, error) ||
            !ferry_state_get_u64(&r, &qr->device, error))
            return FALSE;
        qr->enabled = enabled != 0;
        ferry_virtq_init(&vqs[q], vdev->mem);
        if (!ferry_virtq_load(&vqs[q], &r, error))
            return FALSE;
    }
    /* MSI-X is read here and applied with the rest; the device's load is all-or-nothing. */
    FerryMsixState msix;
    if (!ferry_msix_read_state(&vp->msix, &r, &msix, error) ||
        !ferry_state_get_u8(&r, &dev_version, error))
        return FALSE;
    if (dev_version < 1 || dev_version > vdev->ops->state_version) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_VERSION,
                    "%s: device state version %u; this build reads 1 to %u", vdev->id,
                    dev_version, vdev->ops->state_version);
        return FALSE;
    }
    g_mutex_lock(&vdev->lock);
    if (vdev->ops->load) {
        /* Trailing bytes show only after the device's load: keep its state to put back. */
        g_autoptr(GByteArray) before = g_byte_array_new();
        FerryStateWriter bw = {before};
        if (vdev->ops->save)
            vdev->ops->save(vdev, &bw);
        if (!vdev->ops->load(vdev, dev_version, &r, error)) {
            g_mutex_unlock(&vdev->lock);
            return FALSE;
        }
        if (!ferry_state_reader_finish(&r, error)) {
            FerryStateReader br;
            ferry_state_reader_init(&br, before->data, before->len, vdev->id);
            if (vdev->ops->save && !vdev->ops->load(vdev, vdev->ops->state_version, &br, NULL))
                ferry_log("%s: cannot put back the device state after a failed load", vdev->id);
            g_mutex_unlock(&vdev->lock);
            return FALSE;
        }
    } else if (!ferry_state_reader_finish(&r, error)) {
        g_mutex_unlock(&vdev->lock);
        return FALSE;
    }
    ferry_msix_set_state(&vp->msix, &msix);
    vp->regs = t;
    vdev->features = features;
    memcpy(vdev->vqs, vqs, vdev->nr_queues * sizeof(vqs[0]));
    g_atomic_int_set(&vp->isr, isr);
    /* A running device (DRIVER_OK) starts its I/O again, as after the driver's DRIVER_OK. */
    if ((t.status & VIRTIO_STATUS_DRIVER_OK) && !t.broken && vdev->ops->activate) {
        g_autoptr(GError) activate_error = NULL;
        if (!vdev->ops->activate(vdev, &activate_error)) {
            g_autofree char *msg = g_strdup_printf("cannot start after loading its state: %s",
                                                   activate_error->message);
            ferry_virtio_set_broken(vdev, msg);
        }
    }
    g_mutex_unlock(&vdev->lock);
    return TRUE;
}

static void vp_free(FerryDevice *dev)
{
    FerryVirtioPci *vp = of_dev(dev);
    FerryVirtioDev *vdev = vp->vdev;
    if (vp->notify_gpa)
        set_ioeventfds(vp, vp->notify_gpa, FALSE);
    if (vdev->io) {
        /* Stop the device on its thread first, then the thread (which drops the sources). */
        g_mutex_lock(&vdev->lock);
        vdev->ops->reset(vdev);
        g_mutex_unlock(&vdev->lock);
        ferry_iothread_free(vdev->io);
        vdev->io = NULL;
    }
    for (unsigned q = 0; q < vdev->nr_queues; q++) {
        if (vp->notify_src[q])
            g_source_unref(vp->notify_src[q]);
        if (vp->notify_fd[q] >= 0)
            close(vp->notify_fd[q]);
    }
    ferry_msix_clear(&vp->msix);
    char *id = vdev->id;
    g_mutex_clear(&vdev->lock);
    vdev->ops->free(vdev);
    g_free(id);
    g_free(vp);
}

static const FerryDeviceOps virtio_pci_device_ops = {
    .kind = "virtio-pci",
    .state_version = VIRTIO_PCI_STATE_VERSION,
    .reset = vp_reset,
    .pause = vp_pause,
    .resume = vp_resume,
    .save = vp_save,
    .load = vp_load,
    .free = vp_free,
};

FerryDevice *ferry_virtio_pci_device(FerryVirtioPci *vp)
{
    return &vp->dev;
}

FerryVirtioPci *ferry_virtio_pci_from_device(FerryDevice *dev)
{
    return dev->ops == &virtio_pci_device_ops ? (FerryVirtioPci *) dev : NULL;
}

FerryVirtioDev *ferry_virtio_pci_vdev(FerryVirtioPci *vp)
{
    return vp->vdev;
}

unsigned ferry_virtio_pci_slot(const FerryVirtioPci *vp)
{
    return vp->pci.slot;
}

/* ---- construction ------------------------------------------------------------------ */

FerryVirtioPci *ferry_virtio_pci_new(FerryVirtioDev *vdev, const char *id, FerryPciHost *host,
                                     int slot, FerryGuestMemory *mem, int vm_fd,
                                     FerryIrqRouting *routing, GError **error)
{
    g_assert(vdev->nr_queues >= 1 && vdev->nr_queues <= FERRY_VIRTIO_MAX_QUEUES);
    g_assert(vdev->config_size <= DEVICE_MAX_SIZE);
    FerryVirtioPci *vp = g_new0(FerryVirtioPci, 1);
    ferry_device_init(&vp->dev, &virtio_pci_device_ops, id);
    vp->vdev = vdev;
    vp->vm_fd = vm_fd;
    vdev->transport = vp;
    vdev->id = g_strdup(id);
    vdev->mem = mem;
    g_mutex_init(&vdev->lock);
    for (unsigned q = 0; q < FERRY_VIRTIO_MAX_QUEUES; q++) {
        vp->notify_fd[q] = -1;
        ferry_virtq_init(&vdev->vqs[q], mem);
    }
    vp->ioeventfd_any_length = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0;
    vp->offered = vdev->ops->get_features(vdev) | 1ULL << VIRTIO_F_VERSION_1 |
                  1ULL << VIRTIO_F_EVENT_IDX | 1ULL << VIRTIO_F_INDIRECT_DESC;

    ferry_pci_device_init(&vp->pci, &virtio_pci_ops, vdev->id, VIRTIO_PCI_VENDOR,
                          VIRTIO_PCI_DEVICE_BASE + vdev->ops->device_id, vdev->ops->pci_class,
                          VIRTIO_PCI_REVISION, VIRTIO_PCI_VENDOR, VIRTIO_PCI_SUBSYS_ID);
    ferry_pci_device_add_bar(&vp->pci, MSIX_BAR, MSIX_BAR_SIZE, FALSE);
    ferry_pci_device_add_bar(&vp->pci, REGS_BAR, REGS_BAR_SIZE, TRUE);
    add_virtio_cap(&vp->pci, VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_SIZE, FALSE);
    add_virtio_cap(&vp->pci, VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET,
                   vdev->nr_queues * NOTIFY_MULTIPLIER, TRUE);
    add_virtio_cap(&vp->pci, VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, FALSE);
    if (vdev->config_size)
        add_virtio_cap(&vp->pci, VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, vdev->config_size,
                       FALSE);
    init_regs(vp);

    g_autofree char *thread_name = g_strdup_printf("io-%s", id);
    if (!ferry_msix_init(&vp->msix, &vp->pci, routing, 1 + vdev->nr_queues, MSIX_BAR,
                         MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET, error))
        goto fail;
    for (unsigned q = 0; q < vdev->nr_queues; q++) {
        vp->notify_fd[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (vp->notify_fd[q] < 0) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "eventfd: %s",
                        g_strerror(errno));
            goto fail;
        }
    }
    vdev->io = ferry_iothread_new(thread_name, error);
    if (!vdev->io)
        goto fail;
    for (unsigned q = 0; q < vdev->nr_queues; q++) {
        vp->notify_src[q] = g_unix_fd_source_new(vp->notify_fd[q], G_IO_IN);
        g_source_set_callback(vp->notify_src[q], G_SOURCE_FUNC(notify_ready), vp, NULL);
        g_source_attach(vp->notify_src[q], ferry_iothread_context(vdev->io));
    }
    if (vdev->ops->realize && !vdev->ops->realize(vdev, error))
        goto fail;
    if (!ferry_pci_host_add(host, &vp->pci, slot, error))
        goto fail;
    return vp; /* its BARs decode from here on: the notify ioeventfds are registered */
fail:
    g_prefix_error(error, "%s: ", id);
    g_clear_pointer(&vp->dev.id, g_free);
    vp_free(&vp->dev);
    return NULL;
}

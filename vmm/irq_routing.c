#include "irq_routing.h"

#include <errno.h>
#include <gio/gio.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define LEGACY_GSIS   24 /* IOAPIC pins; 0-15 also reach the PIC */
#define MAX_MSI_GSIS  512

typedef struct {
    int gsi;
    int eventfd;
    gboolean valid;   /* a message has been set */
    uint64_t address;
    uint32_t data;
} MsiRoute;

struct FerryIrqRouting {
    int vm_fd;
    unsigned max_routes;
    GMutex lock;
    MsiRoute *msi;    /* indexed by gsi - LEGACY_GSIS */
    unsigned nr_msi;
};

static void add_irqchip(struct kvm_irq_routing_entry *e, unsigned *n, uint32_t gsi,
                        uint32_t chip, uint32_t pin)
{
    e[*n] = (struct kvm_irq_routing_entry){
        .gsi = gsi,
        .type = KVM_IRQ_ROUTING_IRQCHIP,
        .u.irqchip = {.irqchip = chip, .pin = pin},
    };
    (*n)++;
}

/* Installs the whole table; lock held. */
static gboolean commit(FerryIrqRouting *r, GError **error)
{
    unsigned cap = LEGACY_GSIS + 16 + r->nr_msi;
    g_autofree struct kvm_irq_routing *t =
        g_malloc0(sizeof(*t) + cap * sizeof(struct kvm_irq_routing_entry));
    struct kvm_irq_routing_entry *e = t->entries;
    unsigned n = 0;
    for (uint32_t gsi = 0; gsi < LEGACY_GSIS; gsi++) {
        /* KVM's default table, which KVM_SET_GSI_ROUTING replaces: PIC for 0-15 too */
        if (gsi < 16)
            add_irqchip(e, &n, gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE,
                        gsi % 8);
        add_irqchip(e, &n, gsi, KVM_IRQCHIP_IOAPIC, gsi);
    }
    for (unsigned i = 0; i < r->nr_msi; i++) {
        const MsiRoute *m = &r->msi[i];
        if (!m->valid)
            continue; /* no route: the irqfd signals nothing until the message is set */
        e[n++] = (struct kvm_irq_routing_entry){
            .gsi = (uint32_t) m->gsi,
            .type = KVM_IRQ_ROUTING_MSI,
            .u.msi = {.address_lo = (uint32_t) m->address,
                      .address_hi = (uint32_t) (m->address >> 32),
                      .data = m->data},
        };
    }
    t->nr = n;
    if (ioctl(r->vm_fd, KVM_SET_GSI_ROUTING, t) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                    "KVM_SET_GSI_ROUTING with %u routes failed: %s", n, g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

FerryIrqRouting *ferry_irq_routing_new(int vm_fd, unsigned max_routes, GError **error)
{
    FerryIrqRouting *r = g_new0(FerryIrqRouting, 1);
    r->vm_fd = vm_fd;
    r->max_routes = max_routes;
    g_mutex_init(&r->lock);
    r->msi = g_new0(MsiRoute, MAX_MSI_GSIS);
    if (!commit(r, error)) {
        ferry_irq_routing_free(r);
        return NULL;
    }
    return r;
}

int ferry_irq_routing_add_msi(FerryIrqRouting *r, GError **error)
{
    g_mutex_lock(&r->lock);
    int gsi = -1;
    if (r->nr_msi >= MAX_MSI_GSIS || LEGACY_GSIS + 16 + r->nr_msi >= r->max_routes) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                    "out of interrupt routes (KVM allows %u); use fewer devices or vCPUs",
                    r->max_routes);
        goto out;
    }
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "eventfd: %s",
                    g_strerror(errno));
        goto out;
    }
    int new_gsi = LEGACY_GSIS + (int) r->nr_msi;
    struct kvm_irqfd irqfd = {.fd = (uint32_t) fd, .gsi = (uint32_t) new_gsi};
    if (ioctl(r->vm_fd, KVM_IRQFD, &irqfd) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                    "KVM_IRQFD for GSI %d failed: %s", new_gsi, g_strerror(errno));
        close(fd);
        goto out;
    }
    r->msi[r->nr_msi++] = (MsiRoute){.gsi = new_gsi, .eventfd = fd};
    gsi = new_gsi;
out:
    g_mutex_unlock(&r->lock);
    return gsi;
}

gboolean ferry_irq_routing_set_msi(FerryIrqRouting *r, int gsi, uint64_t address, uint32_t data,
                                   GError **error)
{
    g_return_val_if_fail(gsi >= LEGACY_GSIS, FALSE);
    g_mutex_lock(&r->lock);
    MsiRoute *m = &r->msi[gsi - LEGACY_GSIS];
    gboolean ok = TRUE;
    if (!m->valid || m->address != address || m->data != data) {
        m->valid = TRUE;
        m->address = address;
        m->data = data;
        ok = commit(r, error);
    }
    g_mutex_unlock(&r->lock);
    return ok;
}

void ferry_irq_routing_fire(FerryIrqRouting *r, int gsi)
{
    /* The table only grows, and entries never move: no lock needed. */
    int fd = r->msi[gsi - LEGACY_GSIS].eventfd;
    uint64_t one = 1;
    while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

void ferry_irq_routing_free(FerryIrqRouting *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < r->nr_msi; i++) {
        struct kvm_irqfd irqfd = {.fd = (uint32_t) r->msi[i].eventfd,
                                  .gsi = (uint32_t) r->msi[i].gsi,
                                  .flags = KVM_IRQFD_FLAG_DEASSIGN};
        ioctl(r->vm_fd, KVM_IRQFD, &irqfd);
        close(r->msi[i].eventfd);
    }
    g_free(r->msi);
    g_mutex_clear(&r->lock);
    g_free(r);
}

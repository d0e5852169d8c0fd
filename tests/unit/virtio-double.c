#include "virtio-double.h"

gint virtio_double_notifications[FERRY_VIRTIO_MAX_QUEUES];
gint virtio_double_total;
char *virtio_double_broken_why;

void virtio_double_reset(void)
{
    g_clear_pointer(&virtio_double_broken_why, g_free);
    for (unsigned q = 0; q < FERRY_VIRTIO_MAX_QUEUES; q++)
        g_atomic_int_set(&virtio_double_notifications[q], 0);
    g_atomic_int_set(&virtio_double_total, 0);
}

/* Like the transport: a notification only when the driver asks for one (2.7.7). */
void ferry_virtio_notify_queue(FerryVirtioDev *dev, unsigned index)
{
    if (ferry_virtq_should_notify(&dev->vqs[index])) {
        g_atomic_int_inc(&virtio_double_notifications[index]);
        g_atomic_int_inc(&virtio_double_total);
    }
}

void ferry_virtio_notify_config(FerryVirtioDev *dev)
{
}

void ferry_virtio_set_broken(FerryVirtioDev *dev, const char *why)
{
    if (!virtio_double_broken_why)
        virtio_double_broken_why = g_strdup(why);
}

gboolean ferry_virtio_is_broken(const FerryVirtioDev *dev)
{
    return virtio_double_broken_why != NULL;
}

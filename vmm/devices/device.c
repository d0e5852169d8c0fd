#include "devices/device.h"

void ferry_device_init(FerryDevice *dev, const FerryDeviceOps *ops, const char *id)
{
    dev->ops = ops;
    dev->id = g_strdup(id);
}

void ferry_device_reset(FerryDevice *dev)
{
    dev->ops->reset(dev);
}

void ferry_device_pause(FerryDevice *dev)
{
    if (dev->ops->pause)
        dev->ops->pause(dev);
}

void ferry_device_resume(FerryDevice *dev)
{
    if (dev->ops->resume)
        dev->ops->resume(dev);
}

GBytes *ferry_device_save(FerryDevice *dev)
{
    GByteArray *buf = g_byte_array_new();
    dev->ops->save(dev, buf);
    return g_byte_array_free_to_bytes(buf);
}

gboolean ferry_device_load(FerryDevice *dev, GBytes *state, GError **error)
{
    gsize len;
    const uint8_t *data = g_bytes_get_data(state, &len);
    return dev->ops->load(dev, data, len, error);
}

void ferry_device_free(FerryDevice *dev)
{
    if (!dev)
        return;
    g_free(dev->id);
    dev->id = NULL;
    dev->ops->free(dev);
}

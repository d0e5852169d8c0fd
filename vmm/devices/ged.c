#include "devices/ged.h"

#include "arch/x86/layout.h"
#include "util/state.h"

#define STATE_VERSION 1

struct FerryGed {
    FerryDevice dev;
    FerryMachine *machine;
    GMutex lock;     /* protects the fields below */
    uint32_t events; /* pending FERRY_GED_EVENT_* bits */
    int irq_level;   /* last level driven on FERRY_GED_GSI; -1 forces the next update */
};

/* Drives the line from the pending bits.  Called with the lock held. */
static void update_irq(FerryGed *ged)
{
    int level = ged->events != 0;
    if (level != ged->irq_level) {
        ged->irq_level = level;
        ferry_machine_set_irq(ged->machine, FERRY_GED_GSI, level);
    }
}

static void ged_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                       gboolean is_write)
{
    FerryGed *ged = opaque;
    if (is_write)
        return;
    g_mutex_lock(&ged->lock);
    for (uint32_t i = 0; i < len; i++) {
        uint64_t byte = offset + i;
        data[i] = 0;
        if (byte < 4) {
            data[i] = (uint8_t) (ged->events >> (8 * byte));
            ged->events &= ~(0xffu << (8 * byte));
        }
    }
    update_irq(ged);
    g_mutex_unlock(&ged->lock);
}

void ferry_ged_press_power_button(FerryGed *ged)
{
    g_mutex_lock(&ged->lock);
    ged->events |= FERRY_GED_EVENT_POWER_BUTTON;
    update_irq(ged);
    g_mutex_unlock(&ged->lock);
}

static void ged_reset(FerryDevice *dev)
{
    FerryGed *ged = (FerryGed *) dev;
    g_mutex_lock(&ged->lock);
    ged->events = 0;
    update_irq(ged);
    g_mutex_unlock(&ged->lock);
}

/* State: version byte, then the pending event bits (u32). */
static void ged_save(FerryDevice *dev, GByteArray *out)
{
    FerryGed *ged = (FerryGed *) dev;
    FerryStateWriter w = {out};
    g_mutex_lock(&ged->lock);
    ferry_state_put_u8(&w, STATE_VERSION);
    ferry_state_put_u32(&w, ged->events);
    g_mutex_unlock(&ged->lock);
}

static gboolean ged_load(FerryDevice *dev, const uint8_t *data, size_t len, GError **error)
{
    FerryGed *ged = (FerryGed *) dev;
    FerryStateReader r;
    uint8_t version;
    uint32_t events;
    ferry_state_reader_init(&r, data, len, "GED state");
    if (!ferry_state_get_version(&r, STATE_VERSION, &version, error) ||
        !ferry_state_get_u32(&r, &events, error) || !ferry_state_reader_finish(&r, error))
        return FALSE;
    if (events & ~FERRY_GED_EVENTS_VALID) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "GED state has unknown pending events 0x%x", events);
        return FALSE;
    }
    g_mutex_lock(&ged->lock);
    ged->events = events;
    ged->irq_level = -1; /* drive the line whatever it was */
    update_irq(ged);
    g_mutex_unlock(&ged->lock);
    return TRUE;
}

static void ged_free(FerryDevice *dev)
{
    FerryGed *ged = (FerryGed *) dev;
    g_mutex_clear(&ged->lock);
    g_free(ged);
}

static const FerryDeviceOps ged_ops = {
    .kind = "ged",
    .state_version = STATE_VERSION,
    .reset = ged_reset,
    .save = ged_save,
    .load = ged_load,
    .free = ged_free,
};

FerryGed *ferry_ged_new(FerryBus *mmio, FerryMachine *machine, GError **error)
{
    FerryGed *ged = g_new0(FerryGed, 1);
    ferry_device_init(&ged->dev, &ged_ops, "ged");
    g_mutex_init(&ged->lock);
    ged->machine = machine;
    ged->irq_level = 0; /* the line starts low, as every line at power-on */
    if (!ferry_bus_register(mmio, FERRY_GED_BASE, FERRY_GED_SIZE, ged_access, ged, "ged", error)) {
        ferry_device_free(&ged->dev);
        return NULL;
    }
    return ged;
}

FerryDevice *ferry_ged_device(FerryGed *ged)
{
    return &ged->dev;
}

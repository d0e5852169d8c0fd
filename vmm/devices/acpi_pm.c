#include "devices/acpi_pm.h"

#include "util/state.h"

struct FerryAcpiPm {
    FerryDevice dev;
    FerryMachine *machine;
};

#define SLP_EN        0x20
#define SLP_TYP_SHIFT 2
#define SLP_TYP_MASK  0x1c

static void pm_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                      gboolean is_write)
{
    FerryAcpiPm *pm = opaque;
    uint64_t port = FERRY_ACPI_PM_BASE + offset;
    if (!is_write) {
        for (uint32_t i = 0; i < len; i++)
            data[i] = 0;
        return;
    }
    uint8_t v = data[0];
    if (port == FERRY_ACPI_SLEEP_CONTROL && (v & SLP_EN) &&
        ((v & SLP_TYP_MASK) >> SLP_TYP_SHIFT) == FERRY_ACPI_SLP_TYP_S5)
        ferry_machine_request(pm->machine, FERRY_MACHINE_POWEROFF);
    else if (port == FERRY_ACPI_RESET && v == FERRY_ACPI_RESET_VALUE)
        ferry_machine_request(pm->machine, FERRY_MACHINE_RESET);
    /* Other sleep states (S1-S4) are not offered in the DSDT; writes are ignored. */
}

static void pm_reset(FerryDevice *dev)
{
}

/* The registers are write-only triggers: the state is just a version byte. */
static void pm_save(FerryDevice *dev, GByteArray *out)
{
    FerryStateWriter w = {out};
    ferry_state_put_u8(&w, 1);
}

static gboolean pm_load(FerryDevice *dev, const uint8_t *data, size_t len, GError **error)
{
    FerryStateReader r;
    uint8_t version;
    ferry_state_reader_init(&r, data, len, "ACPI PM state");
    return ferry_state_get_version(&r, 1, &version, error) && ferry_state_reader_finish(&r, error);
}

static void pm_free(FerryDevice *dev)
{
    g_free((FerryAcpiPm *) dev);
}

static const FerryDeviceOps acpi_pm_ops = {
    .kind = "acpi-pm",
    .state_version = 1,
    .reset = pm_reset,
    .save = pm_save,
    .load = pm_load,
    .free = pm_free,
};

FerryAcpiPm *ferry_acpi_pm_new(FerryBus *pio, FerryMachine *machine, GError **error)
{
    FerryAcpiPm *pm = g_new0(FerryAcpiPm, 1);
    ferry_device_init(&pm->dev, &acpi_pm_ops, "acpi-pm");
    pm->machine = machine;
    if (!ferry_bus_register(pio, FERRY_ACPI_PM_BASE, FERRY_ACPI_PM_LEN, pm_access, pm, "acpi-pm",
                            error)) {
        ferry_device_free(&pm->dev);
        return NULL;
    }
    return pm;
}

FerryDevice *ferry_acpi_pm_device(FerryAcpiPm *pm)
{
    return &pm->dev;
}

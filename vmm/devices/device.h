/*
 * The device interface every Ferry device implements from day one.
 *
 * Snapshot, save/restore and migration are "pause everything, serialize the tree": the VM
 * walks its device list and calls these ops.  A device embeds FerryDevice as its first
 * member and points @ops at a static table (kvmtool's ops-table style, Cloud Hypervisor's
 * save/load contract).
 *
 * Threading: @ops are called from the VM's main thread with every vCPU stopped, except
 * where noted.  Register accesses from vCPU threads go through the bus (bus.h) and take the
 * device's own lock.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

typedef struct FerryDevice FerryDevice;

typedef struct {
    /* Short stable name used as the state section's key ("serial0", "rtc"). */
    const char *kind;
    /* Bump when the save format changes; load() accepts 1..state_version. */
    uint8_t state_version;
    /* Return to the power-on state (machine reset).  Host-side backends stay connected. */
    void (*reset)(FerryDevice *dev);
    /* Stop producing side effects (timers, I/O completions) / restart them.  May be NULL. */
    void (*pause)(FerryDevice *dev);
    void (*resume)(FerryDevice *dev);
    /* Append the device's guest-visible state to @out (little-endian, versioned). */
    void (*save)(FerryDevice *dev, GByteArray *out);
    /* Replace the state with a blob written by save(); on error the device is unchanged. */
    gboolean (*load)(FerryDevice *dev, const uint8_t *data, size_t len, GError **error);
    /* Release everything the device owns, including itself. */
    void (*free)(FerryDevice *dev);
} FerryDeviceOps;

struct FerryDevice {
    const FerryDeviceOps *ops;
    char *id; /* instance name, owned ("serial0") */
};

/* Helpers calling through the ops table; pause/resume tolerate NULL ops. */
void ferry_device_init(FerryDevice *dev, const FerryDeviceOps *ops, const char *id);
void ferry_device_reset(FerryDevice *dev);
void ferry_device_pause(FerryDevice *dev);
void ferry_device_resume(FerryDevice *dev);
/* Returns a newly allocated blob; the caller owns it. */
GBytes *ferry_device_save(FerryDevice *dev);
gboolean ferry_device_load(FerryDevice *dev, GBytes *state, GError **error);
/* Frees @dev->id and calls ops->free. */
void ferry_device_free(FerryDevice *dev);

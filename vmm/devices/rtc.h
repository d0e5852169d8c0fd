/*
 * MC146818-compatible CMOS real-time clock and NVRAM at I/O 0x70 (index, bit 7 = NMI mask)
 * and 0x71 (data).  Source: the Motorola MC146818A data sheet (registers 0x00-0x0d, BCD and
 * 12/24-hour modes, the SET bit) and the PC CMOS map (0x32 = century, as the FADT says).
 *
 * The clock runs from the host's UTC time plus an offset that the guest changes by writing
 * the time registers.  Register A never shows an update in progress.  Periodic, alarm and
 * update-ended interrupts are not generated (IRQ 8 stays low); guests read the time by
 * polling, and Linux keeps time with kvmclock.  NVRAM (0x0e-0x7f) survives machine resets.
 */
#pragma once

#include "devices/bus.h"
#include "devices/device.h"

#include <time.h>

#define FERRY_RTC_INDEX 0x70
#define FERRY_RTC_DATA  0x71

typedef struct FerryRtc FerryRtc;

/*
 * Claims ports 0x70-0x71.  @now returns the host's current UTC time in seconds (NULL for
 * time(2)); unit tests pass a fixed clock.
 */
FerryRtc *ferry_rtc_new(FerryBus *pio, time_t (*now)(void), GError **error);
FerryDevice *ferry_rtc_device(FerryRtc *rtc);

/* Register access, exposed for unit tests (offset 0 = index, 1 = data). */
void ferry_rtc_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                      gboolean is_write);

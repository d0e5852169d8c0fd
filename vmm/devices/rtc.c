#include "devices/rtc.h"

#include "util/state.h"

#include <string.h>

#define REG_SEC     0x00
#define REG_MIN     0x02
#define REG_HOUR    0x04
#define REG_WDAY    0x06
#define REG_MDAY    0x07
#define REG_MONTH   0x08
#define REG_YEAR    0x09
#define REG_A       0x0a
#define REG_B       0x0b
#define REG_C       0x0c
#define REG_D       0x0d
#define REG_CENTURY 0x32

#define B_SET    0x80 /* updates frozen while the guest sets the time */
#define B_DM_BIN 0x04 /* binary instead of BCD */
#define B_24H    0x02
#define D_VRT    0x80 /* valid RAM and time */
#define HOUR_PM  0x80

#define NVRAM_SIZE 128
#define STATE_VERSION 1

struct FerryRtc {
    FerryDevice dev;
    GMutex lock;
    time_t (*now)(void);
    uint8_t index;
    uint8_t cmos[NVRAM_SIZE]; /* registers A-D and NVRAM; time registers are computed */
    int64_t offset;           /* guest time - host time, seconds */
    struct tm set_time;       /* time being written while B.SET is on */
};

static time_t host_now(void)
{
    return time(NULL);
}

static uint8_t to_reg(const FerryRtc *r, unsigned v)
{
    return (r->cmos[REG_B] & B_DM_BIN) ? (uint8_t) v : (uint8_t) (((v / 10) << 4) | (v % 10));
}

static unsigned from_reg(const FerryRtc *r, uint8_t v)
{
    return (r->cmos[REG_B] & B_DM_BIN) ? v : (unsigned) ((v >> 4) * 10 + (v & 0x0f));
}

static void guest_time(const FerryRtc *r, struct tm *tm)
{
    time_t t = r->now() + (time_t) r->offset;
    gmtime_r(&t, tm);
}

/* The time the registers show: frozen while the guest sets it (B.SET), else running. */
static void shown_time(const FerryRtc *r, struct tm *tm)
{
    if (r->cmos[REG_B] & B_SET)
        *tm = r->set_time;
    else
        guest_time(r, tm);
}

static uint8_t read_time_reg(FerryRtc *r, uint8_t reg)
{
    struct tm tm;
    shown_time(r, &tm);
    switch (reg) {
    case REG_SEC:
        return to_reg(r, (unsigned) tm.tm_sec);
    case REG_MIN:
        return to_reg(r, (unsigned) tm.tm_min);
    case REG_HOUR:
        if (r->cmos[REG_B] & B_24H)
            return to_reg(r, (unsigned) tm.tm_hour);
        return to_reg(r, (unsigned) (tm.tm_hour % 12 ? tm.tm_hour % 12 : 12)) |
               (tm.tm_hour >= 12 ? HOUR_PM : 0);
    case REG_WDAY:
        return to_reg(r, (unsigned) tm.tm_wday + 1);
    case REG_MDAY:
        return to_reg(r, (unsigned) tm.tm_mday);
    case REG_MONTH:
        return to_reg(r, (unsigned) tm.tm_mon + 1);
    case REG_YEAR:
        return to_reg(r, (unsigned) (tm.tm_year % 100));
    case REG_CENTURY:
        return to_reg(r, (unsigned) (tm.tm_year + 1900) / 100);
    }
    return 0;
}

static gboolean is_time_reg(uint8_t reg)
{
    return reg == REG_SEC || reg == REG_MIN || reg == REG_HOUR || reg == REG_WDAY ||
           reg == REG_MDAY || reg == REG_MONTH || reg == REG_YEAR || reg == REG_CENTURY;
}

static void write_time_reg(FerryRtc *r, uint8_t reg, uint8_t v)
{
    struct tm tm;
    shown_time(r, &tm);
    switch (reg) {
    case REG_SEC:
        tm.tm_sec = (int) from_reg(r, v);
        break;
    case REG_MIN:
        tm.tm_min = (int) from_reg(r, v);
        break;
    case REG_HOUR:
        if (r->cmos[REG_B] & B_24H) {
            tm.tm_hour = (int) from_reg(r, v);
        } else {
            int h = (int) from_reg(r, v & ~HOUR_PM) % 12;
            tm.tm_hour = h + ((v & HOUR_PM) ? 12 : 0);
        }
        break;
    case REG_WDAY:
        break; /* derived from the date */
    case REG_MDAY:
        tm.tm_mday = (int) from_reg(r, v);
        break;
    case REG_MONTH:
        tm.tm_mon = (int) from_reg(r, v) - 1;
        break;
    case REG_YEAR:
        tm.tm_year = (tm.tm_year + 1900) / 100 * 100 + (int) from_reg(r, v) - 1900;
        break;
    case REG_CENTURY:
        tm.tm_year = (int) from_reg(r, v) * 100 + (tm.tm_year % 100) - 1900;
        break;
    }
    if (r->cmos[REG_B] & B_SET) {
        r->set_time = tm;
    } else {
        time_t t = timegm(&tm);
        if (t != (time_t) -1)
            r->offset = (int64_t) (t - r->now());
    }
}

static void write_data(FerryRtc *r, uint8_t v)
{
    uint8_t reg = r->index;
    if (is_time_reg(reg)) {
        write_time_reg(r, reg, v);
        return;
    }
    switch (reg) {
    case REG_A:
        r->cmos[REG_A] = v & 0x7f; /* UIP is read-only */
        break;
    case REG_B:
        if ((v & B_SET) && !(r->cmos[REG_B] & B_SET)) {
            guest_time(r, &r->set_time);
        } else if (!(v & B_SET) && (r->cmos[REG_B] & B_SET)) {
            time_t t = timegm(&r->set_time);
            if (t != (time_t) -1)
                r->offset = (int64_t) (t - r->now());
        }
        r->cmos[REG_B] = v;
        break;
    case REG_C:
    case REG_D:
        break; /* read-only */
    default:
        r->cmos[reg] = v;
        break;
    }
}

static uint8_t read_data(FerryRtc *r)
{
    uint8_t reg = r->index;
    if (is_time_reg(reg))
        return read_time_reg(r, reg);
    if (reg == REG_C) {
        uint8_t v = r->cmos[REG_C];
        r->cmos[REG_C] = 0; /* reading C acknowledges the flags */
        return v;
    }
    return r->cmos[reg];
}

void ferry_rtc_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                      gboolean is_write)
{
    FerryRtc *r = opaque;
    g_mutex_lock(&r->lock);
    for (uint32_t i = 0; i < len; i++) {
        if (((offset + i) & 1) == 0) {
            if (is_write)
                r->index = data[i] & 0x7f; /* bit 7 masks NMI */
            else
                data[i] = 0xff;
        } else if (is_write) {
            write_data(r, data[i]);
        } else {
            data[i] = read_data(r);
        }
    }
    g_mutex_unlock(&r->lock);
}

static void rtc_reset(FerryDevice *dev)
{
    FerryRtc *r = (FerryRtc *) dev;
    g_mutex_lock(&r->lock);
    /* A reset leaves the clock and NVRAM alone; only the control registers return. */
    r->cmos[REG_A] = 0x26; /* 32.768 kHz divider, 1024 Hz rate */
    r->cmos[REG_B] = B_24H;
    r->cmos[REG_C] = 0;
    r->cmos[REG_D] = D_VRT;
    r->index = 0;
    g_mutex_unlock(&r->lock);
}

static void rtc_save(FerryDevice *dev, GByteArray *out)
{
    FerryRtc *r = (FerryRtc *) dev;
    FerryStateWriter w = {out};
    g_mutex_lock(&r->lock);
    ferry_state_put_u8(&w, STATE_VERSION);
    ferry_state_put_u8(&w, r->index);
    ferry_state_put_u64(&w, (uint64_t) r->offset);
    ferry_state_put_bytes(&w, r->cmos, NVRAM_SIZE);
    g_mutex_unlock(&r->lock);
}

static gboolean rtc_load(FerryDevice *dev, const uint8_t *data, size_t len, GError **error)
{
    FerryRtc *r = (FerryRtc *) dev;
    FerryStateReader rd;
    uint8_t version, index, cmos[NVRAM_SIZE];
    uint64_t offset;
    ferry_state_reader_init(&rd, data, len, "RTC state");
    if (!ferry_state_get_version(&rd, STATE_VERSION, &version, error) ||
        !ferry_state_get_u8(&rd, &index, error) || !ferry_state_get_u64(&rd, &offset, error) ||
        !ferry_state_get_bytes(&rd, cmos, NVRAM_SIZE, error) ||
        !ferry_state_reader_finish(&rd, error))
        return FALSE;
    g_mutex_lock(&r->lock);
    r->index = index & 0x7f;
    r->offset = (int64_t) offset;
    memcpy(r->cmos, cmos, NVRAM_SIZE);
    if (r->cmos[REG_B] & B_SET)
        guest_time(r, &r->set_time);
    g_mutex_unlock(&r->lock);
    return TRUE;
}

static void rtc_free(FerryDevice *dev)
{
    FerryRtc *r = (FerryRtc *) dev;
    g_mutex_clear(&r->lock);
    g_free(r);
}

static const FerryDeviceOps rtc_ops = {
    .kind = "rtc",
    .state_version = STATE_VERSION,
    .reset = rtc_reset,
    .save = rtc_save,
    .load = rtc_load,
    .free = rtc_free,
};

FerryRtc *ferry_rtc_new(FerryBus *pio, time_t (*now)(void), GError **error)
{
    FerryRtc *r = g_new0(FerryRtc, 1);
    ferry_device_init(&r->dev, &rtc_ops, "rtc");
    g_mutex_init(&r->lock);
    r->now = now ? now : host_now;
    rtc_reset(&r->dev);
    if (pio && !ferry_bus_register(pio, FERRY_RTC_INDEX, 2, ferry_rtc_access, r, "rtc", error)) {
        ferry_device_free(&r->dev);
        return NULL;
    }
    return r;
}

FerryDevice *ferry_rtc_device(FerryRtc *rtc)
{
    return &rtc->dev;
}

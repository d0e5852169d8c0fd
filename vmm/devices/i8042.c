#include "devices/i8042.h"

#include "util/state.h"

#include <string.h>

#define STATUS_OBF    0x01 /* output buffer full */
#define STATUS_SYS    0x04 /* system flag: self-test passed */
#define STATUS_CMD    0x08 /* last write was a command */

#define CTR_KBD_INT   0x01
#define CTR_SYS       0x04
#define CTR_KBD_OFF   0x10
#define CTR_AUX_OFF   0x20
#define CTR_XLATE     0x40

#define OUTPORT_RESET 0x01 /* 0 = hold the CPU in reset */
#define OUTPORT_A20   0x02

#define OUTBUF_SIZE 8
#define STATE_VERSION 1

struct FerryI8042 {
    FerryDevice dev;
    GMutex lock;
    FerryMachine *machine;
    uint8_t status, ctr, outport;
    uint8_t pending_cmd; /* controller command waiting for its data byte, or 0 */
    uint8_t outbuf[OUTBUF_SIZE];
    unsigned out_head, out_count;
    int irq_level;
};

static void push(FerryI8042 *k, uint8_t v)
{
    if (k->out_count == OUTBUF_SIZE)
        return;
    k->outbuf[(k->out_head + k->out_count) % OUTBUF_SIZE] = v;
    k->out_count++;
}

static uint8_t pop(FerryI8042 *k)
{
    if (!k->out_count)
        return 0;
    uint8_t v = k->outbuf[k->out_head];
    k->out_head = (k->out_head + 1) % OUTBUF_SIZE;
    k->out_count--;
    return v;
}

static void update(FerryI8042 *k)
{
    k->status = (k->status & ~STATUS_OBF) | (k->out_count ? STATUS_OBF : 0);
    int level = (k->out_count && (k->ctr & CTR_KBD_INT)) ? 1 : 0;
    if (level != k->irq_level) {
        k->irq_level = level;
        ferry_machine_set_irq(k->machine, FERRY_I8042_IRQ, level);
    }
}

static void command(FerryI8042 *k, uint8_t cmd)
{
    switch (cmd) {
    case 0x20: /* read controller configuration byte */
        push(k, k->ctr);
        break;
    case 0x60: /* write CTR: data follows */
    case 0xd1: /* write output port: data follows */
    case 0xd2: /* write keyboard output buffer */
    case 0xd3: /* write aux output buffer */
    case 0xd4: /* write to aux device */
        k->pending_cmd = cmd;
        break;
    case 0xa7:
        k->ctr |= CTR_AUX_OFF;
        break;
    case 0xa8:
        k->ctr &= ~CTR_AUX_OFF;
        break;
    case 0xa9: /* aux interface test: no error */
    case 0xab: /* keyboard interface test: no error */
        push(k, 0x00);
        break;
    case 0xaa: /* controller self-test */
        k->status |= STATUS_SYS;
        push(k, 0x55);
        break;
    case 0xad:
        k->ctr |= CTR_KBD_OFF;
        break;
    case 0xae:
        k->ctr &= ~CTR_KBD_OFF;
        break;
    case 0xc0: /* read input port */
        push(k, 0x00);
        break;
    case 0xd0: /* read output port */
        push(k, k->outport);
        break;
    default:
        /* 0xf0-0xff pulse output-port bits low for 6 us; bit 0 is the CPU reset line. */
        if (cmd >= 0xf0 && !(cmd & 0x01))
            ferry_machine_request(k->machine, FERRY_MACHINE_RESET);
        break;
    }
}

static void data_write(FerryI8042 *k, uint8_t v)
{
    uint8_t cmd = k->pending_cmd;
    k->pending_cmd = 0;
    switch (cmd) {
    case 0x60:
        k->ctr = v;
        break;
    case 0xd1:
        k->outport = v;
        if (!(v & OUTPORT_RESET))
            ferry_machine_request(k->machine, FERRY_MACHINE_RESET);
        break;
    case 0xd2:
    case 0xd3:
        push(k, v);
        break;
    case 0xd4:
        break; /* no mouse: the byte goes nowhere */
    default:
        /* A keyboard command with no keyboard behind it: acknowledge; a reset also
         * reports a passed self-test (BAT). */
        push(k, 0xfa);
        if (v == 0xff)
            push(k, 0xaa);
        break;
    }
}

static void kbc_access(FerryI8042 *k, uint16_t port, uint8_t *data, uint32_t len,
                       gboolean is_write)
{
    g_mutex_lock(&k->lock);
    if (port == FERRY_I8042_DATA) {
        if (is_write) {
            k->status &= ~STATUS_CMD;
            data_write(k, data[0]);
        } else {
            data[0] = pop(k);
        }
    } else if (port == FERRY_I8042_COMMAND) {
        if (is_write) {
            k->status |= STATUS_CMD;
            command(k, data[0]);
        } else {
            update(k);
            data[0] = k->status;
        }
    }
    for (uint32_t i = 1; i < len && !is_write; i++)
        data[i] = 0xff;
    update(k);
    g_mutex_unlock(&k->lock);
}

static void data_port(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                      gboolean is_write)
{
    kbc_access(opaque, FERRY_I8042_DATA, data, len, is_write);
}

static void command_port(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                         gboolean is_write)
{
    kbc_access(opaque, FERRY_I8042_COMMAND, data, len, is_write);
}

static void power_on_state(FerryI8042 *k)
{
    k->status = STATUS_SYS;
    k->ctr = CTR_KBD_INT | CTR_SYS | CTR_XLATE;
    k->outport = OUTPORT_RESET | OUTPORT_A20;
    k->pending_cmd = 0;
    k->out_head = k->out_count = 0;
}

static void kbc_reset(FerryDevice *dev)
{
    FerryI8042 *k = (FerryI8042 *) dev;
    g_mutex_lock(&k->lock);
    power_on_state(k);
    update(k);
    g_mutex_unlock(&k->lock);
}

static void kbc_save(FerryDevice *dev, GByteArray *out)
{
    FerryI8042 *k = (FerryI8042 *) dev;
    FerryStateWriter w = {out};
    g_mutex_lock(&k->lock);
    ferry_state_put_u8(&w, STATE_VERSION);
    ferry_state_put_u8(&w, k->status);
    ferry_state_put_u8(&w, k->ctr);
    ferry_state_put_u8(&w, k->outport);
    ferry_state_put_u8(&w, k->pending_cmd);
    ferry_state_put_u8(&w, (uint8_t) k->out_count);
    for (unsigned i = 0; i < k->out_count; i++)
        ferry_state_put_u8(&w, k->outbuf[(k->out_head + i) % OUTBUF_SIZE]);
    g_mutex_unlock(&k->lock);
}

static gboolean kbc_load(FerryDevice *dev, const uint8_t *data, size_t len, GError **error)
{
    FerryI8042 *k = (FerryI8042 *) dev;
    FerryStateReader r;
    uint8_t version, status, ctr, outport, pending, count, buf[OUTBUF_SIZE];
    ferry_state_reader_init(&r, data, len, "i8042 state");
    if (!ferry_state_get_version(&r, STATE_VERSION, &version, error) ||
        !ferry_state_get_u8(&r, &status, error) || !ferry_state_get_u8(&r, &ctr, error) ||
        !ferry_state_get_u8(&r, &outport, error) || !ferry_state_get_u8(&r, &pending, error) ||
        !ferry_state_get_u8(&r, &count, error))
        return FALSE;
    if (count > OUTBUF_SIZE) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "i8042 state has %u queued bytes, more than %u", count, OUTBUF_SIZE);
        return FALSE;
    }
    if (!ferry_state_get_bytes(&r, buf, count, error) || !ferry_state_reader_finish(&r, error))
        return FALSE;
    g_mutex_lock(&k->lock);
    k->status = status;
    k->ctr = ctr;
    k->outport = outport;
    k->pending_cmd = pending;
    k->out_head = 0;
    k->out_count = count;
    memcpy(k->outbuf, buf, count);
    k->irq_level = -1;
    update(k);
    g_mutex_unlock(&k->lock);
    return TRUE;
}

static void kbc_free(FerryDevice *dev)
{
    FerryI8042 *k = (FerryI8042 *) dev;
    g_mutex_clear(&k->lock);
    g_free(k);
}

static const FerryDeviceOps i8042_ops = {
    .kind = "i8042",
    .state_version = STATE_VERSION,
    .reset = kbc_reset,
    .save = kbc_save,
    .load = kbc_load,
    .free = kbc_free,
};

FerryI8042 *ferry_i8042_new(FerryBus *pio, FerryMachine *machine, GError **error)
{
    FerryI8042 *k = g_new0(FerryI8042, 1);
    ferry_device_init(&k->dev, &i8042_ops, "i8042");
    g_mutex_init(&k->lock);
    k->machine = machine;
    power_on_state(k);
    /* Ports 0x60 and 0x64 (0x61 belongs to the in-kernel PIT's speaker port). */
    if (!ferry_bus_register(pio, FERRY_I8042_DATA, 1, data_port, k, "i8042", error) ||
        !ferry_bus_register(pio, FERRY_I8042_COMMAND, 1, command_port, k, "i8042", error)) {
        ferry_device_free(&k->dev);
        return NULL;
    }
    return k;
}

FerryDevice *ferry_i8042_device(FerryI8042 *kbc)
{
    return &kbc->dev;
}

#include "devices/serial.h"

#include "util/state.h"

#include <string.h>

/* Register offsets */
#define UART_RBR_THR 0 /* DLL when LCR.DLAB */
#define UART_IER     1 /* DLM when LCR.DLAB */
#define UART_IIR_FCR 2
#define UART_LCR     3
#define UART_MCR     4
#define UART_LSR     5
#define UART_MSR     6
#define UART_SCR     7

#define IER_RDI  0x01 /* received data available */
#define IER_THRI 0x02 /* THR empty */
#define IER_RLSI 0x04 /* receiver line status */
#define IER_MSI  0x08 /* modem status */

#define IIR_NO_INT 0x01
#define IIR_MSI    0x00
#define IIR_THRI   0x02
#define IIR_RDI    0x04
#define IIR_RLSI   0x06
#define IIR_FIFO_ENABLED 0xc0

#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04

#define LCR_DLAB 0x80

#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10

#define LSR_DR   0x01
#define LSR_OE   0x02
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_CTS  0x10
#define MSR_DSR  0x20
#define MSR_RI   0x40
#define MSR_DCD  0x80

#define FIFO_SIZE 16
#define STATE_VERSION 1

struct FerrySerial {
    FerryDevice dev;
    GMutex lock;
    FerryMachine *machine;
    FerryChardev *chardev;
    uint32_t gsi;
    int irq_level;
    gboolean input_throttled; /* told the chardev we had no room */

    /* guest-visible registers */
    uint8_t dll, dlm, ier, lcr, mcr, lsr, msr, scr, fcr;
    gboolean thr_int_pending; /* THR-empty interrupt not yet acknowledged */
    uint8_t rx[FIFO_SIZE];
    unsigned rx_head, rx_count;
};

static unsigned rx_capacity(const FerrySerial *s)
{
    return (s->fcr & FCR_ENABLE) ? FIFO_SIZE : 1;
}

static uint8_t compute_iir(const FerrySerial *s)
{
    uint8_t fifo = (s->fcr & FCR_ENABLE) ? IIR_FIFO_ENABLED : 0;
    if ((s->ier & IER_RLSI) && (s->lsr & LSR_OE))
        return fifo | IIR_RLSI;
    if ((s->ier & IER_RDI) && s->rx_count)
        return fifo | IIR_RDI;
    if ((s->ier & IER_THRI) && s->thr_int_pending)
        return fifo | IIR_THRI;
    if ((s->ier & IER_MSI) && (s->msr & 0x0f))
        return fifo | IIR_MSI;
    return fifo | IIR_NO_INT;
}

static void update_irq(FerrySerial *s)
{
    int level = !(compute_iir(s) & IIR_NO_INT);
    if (level != s->irq_level) {
        s->irq_level = level;
        if (s->machine)
            ferry_machine_set_irq(s->machine, s->gsi, level);
    }
}

/* Modem status inputs: loopback reflects MCR outputs, otherwise the line is connected. */
static uint8_t modem_inputs(const FerrySerial *s)
{
    if (!(s->mcr & MCR_LOOP))
        return MSR_DCD | MSR_DSR | MSR_CTS;
    uint8_t v = 0;
    if (s->mcr & MCR_RTS)
        v |= MSR_CTS;
    if (s->mcr & MCR_DTR)
        v |= MSR_DSR;
    if (s->mcr & MCR_OUT1)
        v |= MSR_RI;
    if (s->mcr & MCR_OUT2)
        v |= MSR_DCD;
    return v;
}

static void set_modem_inputs(FerrySerial *s)
{
    uint8_t old = s->msr & 0xf0, now = modem_inputs(s);
    uint8_t delta = 0;
    if ((old ^ now) & MSR_CTS)
        delta |= MSR_DCTS;
    if ((old ^ now) & MSR_DSR)
        delta |= MSR_DDSR;
    if ((old & MSR_RI) && !(now & MSR_RI))
        delta |= MSR_TERI;
    if ((old ^ now) & MSR_DCD)
        delta |= MSR_DDCD;
    s->msr = now | (s->msr & 0x0f) | delta;
}

/* Appends one byte to the receive FIFO; sets overrun if it is full. */
static void rx_push(FerrySerial *s, uint8_t byte)
{
    if (s->rx_count >= rx_capacity(s)) {
        s->lsr |= LSR_OE;
        return;
    }
    s->rx[(s->rx_head + s->rx_count) % FIFO_SIZE] = byte;
    s->rx_count++;
    s->lsr |= LSR_DR;
}

static uint8_t rx_pop(FerrySerial *s)
{
    if (!s->rx_count)
        return 0;
    uint8_t b = s->rx[s->rx_head];
    s->rx_head = (s->rx_head + 1) % FIFO_SIZE;
    s->rx_count--;
    if (!s->rx_count)
        s->lsr &= ~LSR_DR;
    return b;
}

static void rx_clear(FerrySerial *s)
{
    s->rx_head = s->rx_count = 0;
    s->lsr &= ~LSR_DR;
}

static void write_reg(FerrySerial *s, unsigned reg, uint8_t v)
{
    switch (reg) {
    case UART_RBR_THR:
        if (s->lcr & LCR_DLAB) {
            s->dll = v;
            break;
        }
        if (s->mcr & MCR_LOOP) {
            rx_push(s, v);
        } else if (s->chardev) {
            g_mutex_unlock(&s->lock); /* output may block: do not hold the register lock */
            ferry_chardev_write(s->chardev, &v, 1);
            g_mutex_lock(&s->lock);
        }
        s->thr_int_pending = TRUE;
        break;
    case UART_IER:
        if (s->lcr & LCR_DLAB) {
            s->dlm = v;
            break;
        }
        /* Enabling the THRE interrupt while THR is empty raises it (16550 behaviour). */
        if (!(s->ier & IER_THRI) && (v & IER_THRI))
            s->thr_int_pending = TRUE;
        s->ier = v & 0x0f;
        break;
    case UART_IIR_FCR:
        if ((v ^ s->fcr) & FCR_ENABLE)
            rx_clear(s);
        if (v & FCR_CLEAR_RX)
            rx_clear(s);
        s->fcr = v & 0xc9; /* enable, DMA mode, trigger level */
        break;
    case UART_LCR:
        s->lcr = v;
        break;
    case UART_MCR:
        s->mcr = v & 0x1f;
        set_modem_inputs(s);
        break;
    case UART_LSR:
    case UART_MSR:
        break; /* read-only */
    case UART_SCR:
        s->scr = v;
        break;
    }
}

static uint8_t read_reg(FerrySerial *s, unsigned reg)
{
    uint8_t v = 0;
    switch (reg) {
    case UART_RBR_THR:
        if (s->lcr & LCR_DLAB)
            return s->dll;
        v = rx_pop(s);
        if (s->input_throttled && s->chardev && s->rx_count < rx_capacity(s)) {
            s->input_throttled = FALSE;
            ferry_chardev_accept_input(s->chardev);
        }
        return v;
    case UART_IER:
        return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
    case UART_IIR_FCR:
        v = compute_iir(s);
        if ((v & 0x0f) == IIR_THRI)
            s->thr_int_pending = FALSE; /* reading IIR acknowledges THRE */
        return v;
    case UART_LCR:
        return s->lcr;
    case UART_MCR:
        return s->mcr;
    case UART_LSR:
        v = s->lsr | LSR_THRE | LSR_TEMT;
        s->lsr &= ~LSR_OE;
        return v;
    case UART_MSR:
        v = s->msr;
        s->msr &= 0xf0;
        return v;
    case UART_SCR:
        return s->scr;
    }
    return 0xff;
}

void ferry_serial_access(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                         gboolean is_write)
{
    FerrySerial *s = opaque;
    g_mutex_lock(&s->lock);
    for (uint32_t i = 0; i < len; i++) {
        unsigned reg = (unsigned) ((offset + i) & 7);
        if (is_write)
            write_reg(s, reg, data[i]);
        else
            data[i] = read_reg(s, reg);
    }
    update_irq(s);
    g_mutex_unlock(&s->lock);
}

size_t ferry_serial_receive(FerrySerial *s, const uint8_t *data, size_t len)
{
    g_mutex_lock(&s->lock);
    size_t n = 0;
    while (n < len && s->rx_count < rx_capacity(s))
        rx_push(s, data[n++]);
    update_irq(s);
    g_mutex_unlock(&s->lock);
    return n;
}

static size_t chardev_room(void *opaque)
{
    FerrySerial *s = opaque;
    g_mutex_lock(&s->lock);
    size_t room = rx_capacity(s) - s->rx_count;
    if (room == 0)
        s->input_throttled = TRUE;
    g_mutex_unlock(&s->lock);
    return room;
}

static void chardev_receive(void *opaque, const uint8_t *data, size_t len)
{
    ferry_serial_receive(opaque, data, len);
}

static const FerryChardevFrontend serial_frontend = {
    .room = chardev_room,
    .receive = chardev_receive,
};

static void power_on_state(FerrySerial *s)
{
    s->dll = 0x0c; /* 9600 baud */
    s->dlm = 0;
    s->ier = 0;
    s->lcr = 0x03; /* 8N1 */
    s->mcr = MCR_OUT2;
    s->lsr = LSR_THRE | LSR_TEMT;
    s->scr = 0;
    s->fcr = 0;
    s->thr_int_pending = FALSE;
    rx_clear(s);
    s->msr = 0;
    set_modem_inputs(s);
    s->msr &= 0xf0;
}

static void serial_reset(FerryDevice *dev)
{
    FerrySerial *s = (FerrySerial *) dev;
    g_mutex_lock(&s->lock);
    power_on_state(s);
    update_irq(s);
    g_mutex_unlock(&s->lock);
}

static void serial_save(FerryDevice *dev, GByteArray *out)
{
    FerrySerial *s = (FerrySerial *) dev;
    FerryStateWriter w = {out};
    g_mutex_lock(&s->lock);
    ferry_state_put_u8(&w, STATE_VERSION);
    const uint8_t regs[] = {s->dll, s->dlm, s->ier, s->lcr, s->mcr, s->lsr, s->msr, s->scr, s->fcr};
    ferry_state_put_bytes(&w, regs, sizeof(regs));
    ferry_state_put_u8(&w, s->thr_int_pending);
    ferry_state_put_u8(&w, (uint8_t) s->rx_count);
    for (unsigned i = 0; i < s->rx_count; i++)
        ferry_state_put_u8(&w, s->rx[(s->rx_head + i) % FIFO_SIZE]);
    g_mutex_unlock(&s->lock);
}

static gboolean serial_load(FerryDevice *dev, const uint8_t *data, size_t len, GError **error)
{
    FerrySerial *s = (FerrySerial *) dev;
    FerryStateReader r;
    uint8_t version, regs[9], thr, count, rx[FIFO_SIZE];
    ferry_state_reader_init(&r, data, len, "serial state");
    if (!ferry_state_get_version(&r, STATE_VERSION, &version, error) ||
        !ferry_state_get_bytes(&r, regs, sizeof(regs), error) ||
        !ferry_state_get_u8(&r, &thr, error) || !ferry_state_get_u8(&r, &count, error))
        return FALSE;
    if (count > FIFO_SIZE) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "serial state has %u bytes in a %u-byte FIFO", count, FIFO_SIZE);
        return FALSE;
    }
    if (!ferry_state_get_bytes(&r, rx, count, error) || !ferry_state_reader_finish(&r, error))
        return FALSE;

    g_mutex_lock(&s->lock);
    s->dll = regs[0];
    s->dlm = regs[1];
    s->ier = regs[2] & 0x0f;
    s->lcr = regs[3];
    s->mcr = regs[4] & 0x1f;
    s->lsr = regs[5];
    s->msr = regs[6];
    s->scr = regs[7];
    s->fcr = regs[8] & 0xc9;
    s->thr_int_pending = thr != 0;
    s->rx_head = 0;
    s->rx_count = count;
    memcpy(s->rx, rx, count);
    s->lsr = (s->lsr & ~LSR_DR) | (count ? LSR_DR : 0);
    s->irq_level = -1; /* force the line to be driven */
    update_irq(s);
    g_mutex_unlock(&s->lock);
    return TRUE;
}

static void serial_free(FerryDevice *dev)
{
    FerrySerial *s = (FerrySerial *) dev;
    g_mutex_clear(&s->lock);
    g_free(s);
}

static const FerryDeviceOps serial_ops = {
    .kind = "serial",
    .state_version = STATE_VERSION,
    .reset = serial_reset,
    .save = serial_save,
    .load = serial_load,
    .free = serial_free,
};

FerrySerial *ferry_serial_new(const char *id, FerryBus *pio, uint16_t base, uint32_t gsi,
                              FerryMachine *machine, FerryChardev *chardev, GError **error)
{
    FerrySerial *s = g_new0(FerrySerial, 1);
    ferry_device_init(&s->dev, &serial_ops, id);
    g_mutex_init(&s->lock);
    s->machine = machine;
    s->chardev = chardev;
    s->gsi = gsi;
    power_on_state(s);
    if (pio && !ferry_bus_register(pio, base, 8, ferry_serial_access, s, s->dev.id, error)) {
        ferry_device_free(&s->dev);
        return NULL;
    }
    if (chardev)
        ferry_chardev_set_frontend(chardev, &serial_frontend, s);
    return s;
}

FerryDevice *ferry_serial_device(FerrySerial *s)
{
    return &s->dev;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "kernel/console.h"
#include "kernel/serial.h"
#include "lib/printf.h"
#include "lib/x86.h"

#define RBR 0       /* receive buffer (read), DLAB=0 */
#define THR 0       /* transmit holding (write), DLAB=0 */
#define DLL 0       /* divisor latch low, DLAB=1 */
#define IER 1
#define DLM 1
#define IIR 2       /* read */
#define FCR 2       /* write */
#define LCR 3
#define MCR 4
#define LSR 5

#define LSR_DR      0x01
#define LSR_THRE    0x20

#define ECHO_MAX    256

static bool fifo;                   /* 16550A FIFO present: 16 bytes per THRE wait */
static char line[ECHO_MAX];
static u32 line_len;
static bool last_cr;

void serial_init(void)
{
    outb(COM1_PORT + IER, 0x00);
    outb(COM1_PORT + LCR, 0x80);    /* DLAB */
    outb(COM1_PORT + DLL, 0x01);    /* 115200 baud */
    outb(COM1_PORT + DLM, 0x00);
    outb(COM1_PORT + LCR, 0x03);    /* 8N1 */
    outb(COM1_PORT + FCR, 0x07);    /* enable and clear FIFOs, RX trigger 1 byte */
    fifo = (inb(COM1_PORT + IIR) & 0xc0) == 0xc0;
    outb(COM1_PORT + MCR, 0x0b);    /* DTR, RTS, OUT2 (IRQ gate on PCs) */
}

void serial_enable_rx_irq(void)
{
    while (inb(COM1_PORT + LSR) & LSR_DR)
        (void)inb(COM1_PORT + RBR);
    outb(COM1_PORT + IER, 0x01);
    (void)inb(COM1_PORT + IIR);
}

static void wait_thre(void)
{
    for (u32 i = 0; i < 1000000; i++) {     /* bounded: a missing UART must not hang us */
        if (inb(COM1_PORT + LSR) & LSR_THRE)
            return;
        cpu_relax();
    }
}

void serial_write(const char *s, size_t n)
{
    u32 room = 0;

    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        for (int k = c == '\n' ? 2 : 1; k > 0; k--) {
            if (room == 0) {
                wait_thre();
                room = fifo ? 16 : 1;
            }
            outb(COM1_PORT + THR, (u8)(k == 2 ? '\r' : c));
            room--;
        }
    }
}

static void echo_line(void)
{
    line[line_len] = 0;
    kprintf("FERRY-ECHO: %s\n", line);
    line_len = 0;
}

void serial_irq(void)
{
    for (u32 guard = 0; guard < 4096 && (inb(COM1_PORT + LSR) & LSR_DR); guard++) {
        char c = (char)inb(COM1_PORT + RBR);

        if (c == '\r') {
            echo_line();
            last_cr = true;
            continue;
        }
        if (c == '\n') {
            if (!last_cr)
                echo_line();
            last_cr = false;
            continue;
        }
        last_cr = false;
        if ((c == 0x7f || c == 0x08) && line_len) {
            line_len--;
        } else if ((u8)c >= 0x20 && c != 0x7f && line_len < ECHO_MAX - 1) {
            line[line_len++] = c;
        }
    }
    (void)inb(COM1_PORT + IIR);
}

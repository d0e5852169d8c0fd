/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * 16550A UART on COM1 (I/O port 0x3f8, ISA IRQ 4). Output is polled (LSR.THRE),
 * input is interrupt driven (IER bit 0, received data available). Register
 * layout: National Semiconductor PC16550D data sheet.
 */
#ifndef FERRY_GUEST_SERIAL_H
#define FERRY_GUEST_SERIAL_H

#include "lib/types.h"

#define COM1_PORT   0x3f8
#define COM1_IRQ    4

/* 115200 8N1, FIFOs on, interrupts off. */
void serial_init(void);
/* Enables the receive interrupt (after the IOAPIC route is in place). */
void serial_enable_rx_irq(void);
/* Unlocked polled output; '\n' is sent as CR LF. Callers hold the console lock. */
void serial_write(const char *s, size_t n);
/* Interrupt handler body: drains the receiver, answers each line with
 * "FERRY-ECHO: <line>". */
void serial_irq(void);

#endif

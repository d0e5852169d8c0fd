/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "kernel/console.h"
#include "kernel/serial.h"
#include "lib/printf.h"
#include "lib/x86.h"

bool g_console_debug;
static u32 console_lock;

static void lock(void)
{
    while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE)) {
        while (READ_ONCE(console_lock))
            cpu_relax();
    }
}

static void unlock(void)
{
    __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

void console_write(const char *s, size_t n)
{
    lock();
    serial_write(s, n);
    unlock();
}

void console_write_force(const char *s, size_t n)
{
    bool locked = false;

    for (u32 i = 0; i < 1000000 && !locked; i++) {
        locked = !__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE);
        if (!locked)
            cpu_relax();
    }
    serial_write(s, n);
    if (locked)
        unlock();
}

static void vkprintf(const char *fmt, va_list ap)
{
    char buf[512];
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    console_write(buf, (size_t)n);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void kdebug(const char *fmt, ...)
{
    if (!g_console_debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void halt_forever(void)
{
    for (;;) {
        cli();
        hlt();
    }
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Minimal vsnprintf for the guest (kernel and user mode share it). */
#include "lib/printf.h"
#include "lib/string.h"

struct out {
    char *buf;
    size_t size;
    size_t len;
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void put_field(struct out *o, const char *s, size_t n, int width, bool left, char pad)
{
    int fill = width > (int)n ? width - (int)n : 0;

    if (!left) {
        while (fill-- > 0)
            put(o, pad);
    }
    for (size_t i = 0; i < n; i++)
        put(o, s[i]);
    if (left) {
        while (fill-- > 0)
            put(o, ' ');
    }
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    char tmp[24];

    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        fmt++;
        bool left = false;
        char pad = ' ';
        int width = 0, lng = 0;

        for (;; fmt++) {
            if (*fmt == '-')
                left = true;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') {
            lng++;
            fmt++;
        }

        switch (*fmt) {
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            put_field(&o, tmp, 1, width, left, ' ');
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            put_field(&o, s, strlen(s), width, left, ' ');
            break;
        }
        case 'd':
        case 'i':
        case 'u':
        case 'x':
        case 'X':
        case 'p': {
            u64 v;
            bool neg = false;
            unsigned base = (*fmt == 'x' || *fmt == 'X' || *fmt == 'p') ? 16 : 10;
            const char *digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";

            if (*fmt == 'p') {
                v = (u64)(uintptr_t)va_arg(ap, void *);
            } else if (*fmt == 'd' || *fmt == 'i') {
                s64 sv = lng ? va_arg(ap, s64) : va_arg(ap, int);
                neg = sv < 0;
                v = neg ? (u64)0 - (u64)sv : (u64)sv;
            } else {
                v = lng ? va_arg(ap, u64) : va_arg(ap, unsigned int);
            }
            int n = 0;
            do {
                tmp[sizeof(tmp) - 1 - n++] = digits[v % base];
                v /= base;
            } while (v);
            if (neg) {
                if (pad == '0') {
                    put(&o, '-');
                    width--;
                } else {
                    tmp[sizeof(tmp) - 1 - n++] = '-';
                }
            }
            put_field(&o, tmp + sizeof(tmp) - n, n, width, left, left ? ' ' : pad);
            break;
        }
        case '%':
            put(&o, '%');
            break;
        case 0:
            fmt--;
            break;
        default:
            put(&o, '%');
            put(&o, *fmt);
            break;
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = 0;
    return (int)(o.len < size ? o.len : size - 1);
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Basic types for the freestanding guest (only compiler-provided headers). */
#ifndef FERRY_GUEST_TYPES_H
#define FERRY_GUEST_TYPES_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef unsigned long long u64;   /* so that %llu/%llx match */
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef long long s64;

#define ARRAY_SIZE(a)      (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a)     (((x) + (a) - 1) & ~((u64)(a) - 1))
#define ALIGN_DOWN(x, a)   ((x) & ~((u64)(a) - 1))
#define MIN(a, b)          ((a) < (b) ? (a) : (b))
#define MAX(a, b)          ((a) > (b) ? (a) : (b))
#define PACKED             __attribute__((packed))
#define ALIGNED(n)         __attribute__((aligned(n)))
#define NORETURN           __attribute__((noreturn))
#define READ_ONCE(x)       (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v)   (*(volatile __typeof__(x) *)&(x) = (v))
#define barrier()          __asm__ volatile("" ::: "memory")

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)

#endif

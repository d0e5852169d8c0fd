/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * System calls of the guest kernel, made from CPL3 with `int $0x80`:
 * RAX = number, RDI/RSI = arguments, result in RAX. Shared with user/.
 *
 * On hardware KVM the DPL-3 interrupt gate 0x80 is taken. The software PVM
 * hypervisor this project is developed on raises #UD for `int n` at CPL3 (and its
 * `syscall` reaches LSTAR without leaving CPL3), so the #UD handler also accepts
 * a #UD from CPL3 whose RIP points at the bytes CD 80 as the same system call.
 */
#ifndef FERRY_GUEST_SYSCALL_H
#define FERRY_GUEST_SYSCALL_H

#define SYS_WRITE       0   /* (const char *buf, size_t len) -> len; one atomic console write */
#define SYS_IDLE        1   /* () -> 0; sleeps until the next interrupt (timer, serial) */
#define SYS_POWEROFF    2   /* () does not return */
#define SYS_REBOOT      3   /* () does not return */
#define SYS_CRASH       4   /* () faults at CPL0 (ferry.crash=kernel, for testing) */
#define SYS_PCI_CFG     5   /* (u64 op, u32 value) -> value read; PCI config mechanism #1 */
#define SYS_MAP_MMIO    6   /* (u64 gpa, u64 size) -> 0 / -1; maps MMIO uncached, user-accessible */

/* SYS_PCI_CFG op: bits 0-7 register (aligned to the width), 8-15 devfn,
 * 16-23 bus, 32-35 width in bytes (1, 2, 4), bit 40 write. */
#define PCI_CFG_OP(bus, devfn, reg, width, wr) \
    ((u64)(reg) | ((u64)(devfn) << 8) | ((u64)(bus) << 16) | ((u64)(width) << 32) | \
     ((u64)(wr) << 40))

#define SYS_WRITE_MAX   4096

/* Above the 512 GiB the page tables can map: any access is a page fault. */
#define CRASH_ADDR      0x8000000000ull

#endif

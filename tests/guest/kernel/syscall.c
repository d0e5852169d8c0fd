/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "kernel/console.h"
#include "kernel/mm.h"
#include "kernel/power.h"
#include "kernel/shared.h"
#include "kernel/syscall.h"
#include "kernel/trap.h"
#include "lib/x86.h"

/* PCI Local Bus 3.0, 3.2.2.3.2: configuration mechanism #1 (ports 0xCF8/0xCFC). */
static u64 pci_cfg(u64 op, u32 val)
{
    u32 reg = op & 0xff, width = (op >> 32) & 0xf;
    u16 port = 0xcfc + (reg & 3);

    outl(0xcf8, 0x80000000u | (u32)(op & 0xffff00) | (reg & 0xfc));
    if (op & (1ull << 40)) {
        if (width == 1)
            outb(port, (u8)val);
        else if (width == 2)
            outw(port, (u16)val);
        else
            outl(port, val);
        return 0;
    }
    return width == 1 ? inb(port) : width == 2 ? inw(port) : inl(port);
}

u64 syscall_dispatch(struct trap_frame *f)
{
    switch (f->rax) {
    case SYS_WRITE: {
        u64 len = MIN(f->rsi, (u64)SYS_WRITE_MAX);
        if (f->rdi + len > g_shared.ram_top || f->rdi + len < f->rdi)
            return (u64)-1;
        console_write((const char *)f->rdi, len);
        return len;
    }
    case SYS_IDLE:
        if (g_shared.timer_count)       /* without a timer nothing would wake us */
            sti_hlt_cli();
        return 0;
    case SYS_POWEROFF:
        power_off();
    case SYS_REBOOT:
        power_reset();
    case SYS_CRASH:
        return *(volatile u64 *)phys(CRASH_ADDR);   /* not mapped: #PF at CPL0 */
    case SYS_PCI_CFG:
        return pci_cfg(f->rdi, (u32)f->rsi);
    case SYS_MAP_MMIO:
        return mm_map_mmio(f->rdi, f->rsi) ? 0 : (u64)-1;
    default:
        return (u64)-1;
    }
}

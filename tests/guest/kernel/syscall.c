/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "kernel/console.h"
#include "kernel/power.h"
#include "kernel/shared.h"
#include "kernel/syscall.h"
#include "kernel/trap.h"
#include "lib/x86.h"

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
    default:
        return (u64)-1;
    }
}

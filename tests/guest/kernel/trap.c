/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Vector dispatch. CPU exceptions are fatal for the CPU that took them:
 *   CPL0: FERRY-GUEST-PANIC vector=<n> rip=0x.. cr2=0x.. err=0x..
 *   CPL3: FERRY-GUEST-FAULT vector=<n> rip=0x.. cr2=0x.. err=0x..
 * and the CPU halts; the other CPUs keep running.
 */
#include "kernel/apic.h"
#include "kernel/console.h"
#include "kernel/layout.h"
#include "kernel/percpu.h"
#include "kernel/power.h"
#include "kernel/serial.h"
#include "kernel/shared.h"
#include "kernel/trap.h"
#include "lib/printf.h"
#include "lib/x86.h"

static NORETURN void exception(struct trap_frame *f)
{
    char buf[160];
    int n = snprintf(buf, sizeof(buf), "%s vector=%llu rip=0x%llx cr2=0x%llx err=0x%llx\n",
                     (f->cs & 3) ? "FERRY-GUEST-FAULT" : "FERRY-GUEST-PANIC",
                     f->vector, f->rip, read_cr2(), f->error);
    console_write_force(buf, (size_t)n);
    if (g_console_debug) {
        u16 cs;
        __asm__ volatile("mov %%cs, %0" : "=r"(cs));
        n = snprintf(buf, sizeof(buf), "ferry-guest: fault frame cs=0x%llx ss=0x%llx rsp=0x%llx "
                     "rflags=0x%llx, now cs=0x%x\n", f->cs, f->ss, f->rsp, f->rflags, cs);
        console_write_force(buf, (size_t)n);
    }
    halt_forever();
}

void trap_dispatch(struct trap_frame *f)
{
    switch (f->vector) {
    case VEC_TIMER:
        this_cpu()->ticks++;
        lapic_eoi();
        break;
    case VEC_SERIAL:
        serial_irq();
        lapic_eoi();
        break;
    case VEC_GED:
        power_button_irq();             /* EOIs itself; powers off on a press */
        break;
    case VEC_SYSCALL:
        f->rax = syscall_dispatch(f);
        break;
    case VEC_MSI_BASE ... VEC_MSI_BASE + VEC_MSI_COUNT - 1:
        /* virtio MSI-X: counted only; CPL3 polls the used rings (user/virtio.c). */
        g_shared.msi_count[f->vector - VEC_MSI_BASE]++;
        lapic_eoi();
        break;
    case VEC_SPURIOUS:
        break;                          /* no EOI for the spurious vector */
    case 2:
        /* NMI (e.g. virsh inject-nmi): counted, reported by CPU 0 at CPL3. No
         * printing here: the console lock may be held by the interrupted code. */
        atomic_inc(&g_shared.nmi_count[this_cpu()->index]);
        break;
    case 6:
        /* #UD on "int $0x80" at CPL3: a PVM host's way of delivering it. */
        if ((f->cs & 3) == 3 && f->rip < g_shared.ram_top &&
            *(const u16 *)f->rip == 0x80cd) {
            f->rip += 2;
            f->rax = syscall_dispatch(f);
            break;
        }
        exception(f);
    default:
        exception(f);
    }
}

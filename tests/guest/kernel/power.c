/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Power-off (ACPI 6.4, 16.1.7 "Transitioning from the Working to the Sleeping
 * State" and 4.8.3.7 "Sleep Control and Status Registers"):
 *   HW-reduced ACPI (FADT flag bit 20) with SLEEP_CONTROL_REG (FADT offset 244):
 *     write (SLP_TYP << 2) | SLP_EN (bit 5) to it;
 *   else write SLP_TYP << 10 | SLP_EN (bit 13) to PM1a_CNT (and PM1b_CNT if
 *     present), keeping the other bits (e.g. SCI_EN) of the register.
 *   SLP_TYP comes from the DSDT's \_S5_ package.
 * Reset (ACPI 6.4, 4.8.3.6 "Reset Register"): RESET_VALUE (offset 128) to
 * RESET_REG (offset 116) when flag RESET_REG_SUP (bit 10) is set.
 */
#include "kernel/acpi.h"
#include "kernel/apic.h"
#include "kernel/console.h"
#include "kernel/kclock.h"
#include "kernel/layout.h"
#include "kernel/mm.h"
#include "kernel/power.h"
#include "kernel/shared.h"
#include "lib/cmdline.h"
#include "lib/x86.h"

static void pm1_write(u32 port, const struct acpi_gas *x, u8 slp_typ)
{
    struct acpi_gas g = { 1, 16, 0, 2, port };

    if (x->address)
        g = *x;
    else if (!port)
        return;
    u64 v = acpi_gas_read(&g);
    v = (v & ~(7ull << 10)) | ((u64)(slp_typ & 7) << 10) | (1u << 13);
    acpi_gas_write(&g, v);
}

/* Waits with interrupts on, so this CPU stays responsive (serial echo). */
static void wait_ms(u64 ms)
{
    u64 t0 = now_ns();
    while (now_ns() - t0 < ms * 1000000ull)
        sti_hlt_cli();
}

void power_off(void)
{
    const struct acpi_info *ai = &g_shared.acpi;
    u8 a = 0, b = 0;

    if (ai->fadt) {
        bool have_s5 = g_shared.s5_valid;
        a = g_shared.s5_slp_typ_a;
        b = g_shared.s5_slp_typ_b;
        if (!have_s5)
            have_s5 = acpi_s5(ai, &a, &b);
        kdebug("ferry-guest: poweroff: _S5_ %s SLP_TYPa=%u SLP_TYPb=%u\n",
               have_s5 ? "found" : "missing", a, b);
        if ((ai->fadt_flags & FADT_HW_REDUCED_ACPI) && ai->sleep_control.address) {
            acpi_gas_write(&ai->sleep_control, ((u64)(a & 7) << 2) | (1u << 5));
        } else {
            pm1_write(ai->pm1a_cnt, &ai->x_pm1a_cnt, a);
            pm1_write(ai->pm1b_cnt, &ai->x_pm1b_cnt, b);
        }
        wait_ms(1000);
    }
    kprintf("FERRY-POWEROFF-FAILED\n");
    halt_forever();
}

/*
 * Power button (ACPI 6.4 4.8.2.2.1.2 "Control Method Power Button", 5.6.9 "Interrupt-
 * signaled ACPI events"): the GED's interrupt says an event is pending; the VMM's event
 * register (Ferry: vmm/devices/ged.h) is read-to-clear with bit 0 = power button. What
 * the DSDT's _EVT method would do (Notify the PNP0C0C device), this guest does directly.
 */
#define GED_EVENT_POWER_BUTTON  1u

void power_button_init(u32 dest_apic)
{
    struct acpi_info *ai = &g_shared.acpi;

    if (!acpi_find_ged(ai) || ai->ged_base >= (1ull << 32))
        return;
    mm_set_uncached(ai->ged_base);
    int gsi = ioapic_route_gsi(ai, ai->ged_gsi, VEC_GED, dest_apic, ai->ged_level,
                               ai->ged_active_low);
    kdebug("ferry-guest: ged at 0x%llx gsi %u %s %s%s\n", ai->ged_base, ai->ged_gsi,
           ai->ged_level ? "level" : "edge", ai->ged_active_low ? "active-low" : "active-high",
           gsi < 0 ? ", no IOAPIC pin" : "");
}

void power_button_irq(void)
{
    static bool pressed;
    u32 events = mmio_read32(g_shared.acpi.ged_base);   /* clears them; the line drops */

    lapic_eoi();
    kdebug("ferry-guest: ged events 0x%x\n", events);
    /* Once: power_off() waits with interrupts on, and a second press must not nest. */
    if ((events & GED_EVENT_POWER_BUTTON) && !pressed) {
        pressed = true;
        kprintf("FERRY-GUEST-POWERBUTTON\n");
        power_off();
    }
}

/* ferry.reset=acpi|kbd|triple restricts the reset to one method (debugging). */
static bool method(const char *name)
{
    const char *c = g_shared.boot.cmdline;
    return !cmdline_has(c, "ferry.reset") || cmdline_is(c, "ferry.reset", name);
}

void power_reset(void)
{
    const struct acpi_info *ai = &g_shared.acpi;

    if (method("acpi") && ai->fadt && (ai->fadt_flags & FADT_RESET_REG_SUP) &&
        ai->reset_reg.address) {
        kdebug("ferry-guest: reset: FADT RESET_REG space %u address 0x%llx value 0x%x\n",
               ai->reset_reg.space_id, ai->reset_reg.address, ai->reset_value);
        acpi_gas_write(&ai->reset_reg, ai->reset_value);
        wait_ms(500);
    }
    if (method("kbd")) {
        kdebug("ferry-guest: reset: i8042 (0xfe to port 0x64)\n");
        outb(0x64, 0xfe);               /* i8042: pulse the CPU reset line */
        wait_ms(500);
    }

    /* Triple fault: no IDT, then an exception. */
    kdebug("ferry-guest: reset: triple fault\n");
    struct {
        u16 limit;
        u64 base;
    } PACKED null_idt = { 0, 0 };
    __asm__ volatile("lidt %0; ud2" : : "m"(null_idt));
    halt_forever();
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#ifndef FERRY_GUEST_SMP_H
#define FERRY_GUEST_SMP_H

/* Starts every enabled MADT processor other than the BSP, one at a time, with
 * INIT-SIPI-SIPI; each AP ends in CPL3 (user_main). Updates g_shared.ncpus. */
void smp_boot(void);

#endif

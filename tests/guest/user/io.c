/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The device exercisers: PCI scan and virtio set-up before READY (CPU 0), then
 * polled from CPU 0's workload loop (monitor_poll). Nothing here runs unless
 * ferry.pci, ferry.blk, ferry.net, ferry.rng or ferry.vcon is on the command
 * line, so guests without them never touch the PCI configuration ports.
 */
#include "lib/cmdline.h"
#include "user/ulib.h"
#include "user/virtio.h"

void blk_start(u64 now);
void net_start(u64 now);
void rng_start(u64 now);
void vcon_start(u64 now);

static bool have_blk, have_net, have_rng, have_vcon;

void io_init(void)
{
    const char *c = g_shared.boot.cmdline;
    bool want_blk = cmdline_has(c, "ferry.blk"), want_net = cmdline_has(c, "ferry.net.ip");
    bool want_rng = cmdline_has(c, "ferry.rng"), want_vcon = cmdline_has(c, "ferry.vcon");

    if (!want_blk && !want_net && !want_rng && !want_vcon && !cmdline_has(c, "ferry.pci"))
        return;
    pci_scan();

    u64 blk_index = cmdline_u64(c, "ferry.blk.dev", 0), nblk = 0;
    for (u32 i = 0; i < g_nvdevs; i++) {
        struct vdev *d = &g_vdevs[i];
        if (d->type == VIRTIO_ID_BLK && nblk++ == blk_index && want_blk)
            have_blk = blk_init(d);
        else if (d->type == VIRTIO_ID_NET && want_net && !have_net)
            have_net = net_init(d);
        else if (d->type == VIRTIO_ID_RNG && want_rng && !have_rng)
            have_rng = rng_init(d);
        else if (d->type == VIRTIO_ID_CONSOLE && want_vcon && !have_vcon)
            have_vcon = vcon_init(d);
    }
    if (want_blk && !have_blk)
        uprintf("ferry-guest: no usable virtio-blk device %llu (%llu found)\n", blk_index, nblk);
    if (want_net && !have_net)
        uprintf("ferry-guest: no usable virtio-net device\n");
    if (want_rng && !have_rng)
        uprintf("FERRY-RNG-ERROR no device\n");
    if (want_vcon && !have_vcon)
        uprintf("FERRY-VCON-ERROR no device\n");
}

bool io_active(void)
{
    return have_blk || have_net || have_rng || have_vcon;
}

static bool started;

void io_poll(u64 now)
{
    if (!started) {
        started = true;
        if (have_blk)
            blk_start(now);
        if (have_net)
            net_start(now);
        if (have_rng)
            rng_start(now);
        if (have_vcon)
            vcon_start(now);
    }
    if (have_blk)
        blk_poll(now);
    if (have_net)
        net_poll(now);
    if (have_rng)
        rng_poll(now);
    if (have_vcon)
        vcon_poll(now);
}

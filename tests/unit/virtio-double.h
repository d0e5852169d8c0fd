/*
 * Test doubles for the transport side of vmm/virtio/virtio.h, so device-model unit tests
 * (blk, net, rng, console) drive a device through its ops without PCI or KVM: they count
 * used-buffer notifications and remember why a device was marked broken.
 */
#pragma once

#include "virtio/virtio.h"

#include <glib.h>

/* Notifications ferry_virtio_notify_queue() delivered, per queue and in all (atomic). */
extern gint virtio_double_notifications[FERRY_VIRTIO_MAX_QUEUES];
extern gint virtio_double_total;
/* The first reason given to ferry_virtio_set_broken(), or NULL; owned here. */
extern char *virtio_double_broken_why;

/* Clears the counters and the broken reason (call in each test's setup). */
void virtio_double_reset(void);

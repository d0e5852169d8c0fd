/*
 * I/O threads: a thread running a GLib main loop on its own GMainContext, on which a device
 * watches its file descriptors (ioeventfds, io_uring completions, TAP devices).  Each
 * virtio device has one, so device emulation never runs on a vCPU thread and one slow
 * device does not hold up another.
 */
#pragma once

#include <glib.h>

typedef struct FerryIoThread FerryIoThread;

/* Starts a thread named @name (shown in /proc, e.g. "io-disk0"). */
FerryIoThread *ferry_iothread_new(const char *name, GError **error);

/* The thread's context: attach sources here (g_source_attach, or the *_full helpers). */
GMainContext *ferry_iothread_context(FerryIoThread *io);

/*
 * Runs @fn(@data) on the I/O thread and waits for it to return (from any other thread; from
 * the I/O thread itself it is a plain call).  @fn must not wait for a vCPU or the main loop.
 */
void ferry_iothread_call(FerryIoThread *io, void (*fn)(gpointer data), gpointer data);

/* Stops the loop, joins the thread, frees everything.  Sources still attached are destroyed. */
void ferry_iothread_free(FerryIoThread *io);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryIoThread, ferry_iothread_free)

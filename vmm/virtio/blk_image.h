/*
 * Raw disk images for virtio-blk (blk.c): opening, size checks and cross-process locking,
 * with error messages that name the image and say what to do.  No virtio here.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

/*
 * Opens the raw image @path (a regular file or a block device) read-only with @readonly,
 * else read-write, close-on-exec, and takes an open-file-description lock on all of it:
 * shared for read-only, exclusive for read-write, so two VMs never write one image.  The
 * lock goes with the descriptor (close() drops it).  With @lock FALSE no lock is taken: an
 * incoming migration opens the image the source still holds and locks it at switch-over.
 *
 * Returns the descriptor (owned by the caller) and sets *@sectors to the size in 512-byte
 * sectors; -1 on error.  Errors are G_IO_ERROR with a message naming the image and what to
 * do:
 *   G_IO_ERROR_NOT_FOUND           the image does not exist
 *   G_IO_ERROR_NOT_REGULAR_FILE    neither a regular file nor a block device
 *   G_IO_ERROR_PERMISSION_DENIED   no permission to open it as asked
 *   G_IO_ERROR_READ_ONLY           a read-only file or file system without readonly=on
 *   G_IO_ERROR_INVALID_DATA        its size is 0 or not a multiple of 512 bytes
 *   G_IO_ERROR_BUSY                another process (VM) holds a conflicting lock
 *   G_IO_ERROR_FAILED and others   any other system error
 */
int ferry_blk_image_open(const char *path, gboolean readonly, gboolean lock, uint64_t *sectors,
                         GError **error);

/* Takes the lock ferry_blk_image_open() takes (errors as there: G_IO_ERROR_BUSY, ...). */
gboolean ferry_blk_image_lock(const char *path, int fd, gboolean readonly, GError **error);

/* Drops the lock of @fd (migration hands the image over to the destination). */
void ferry_blk_image_unlock(int fd);

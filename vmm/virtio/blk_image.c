/*
 * Raw disk images: opening, size checks and locking (blk_image.h).
 */
#include "virtio/blk_image.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECTOR_SIZE 512u

/* TRUE for a regular file or a block device, else sets an error naming what @path is. */
static gboolean check_type(const char *path, mode_t mode, GError **error)
{
    const char *what;
    if (S_ISREG(mode) || S_ISBLK(mode))
        return TRUE;
    if (S_ISDIR(mode))
        what = "a directory";
    else if (S_ISCHR(mode))
        what = "a character device";
    else if (S_ISFIFO(mode))
        what = "a FIFO";
    else if (S_ISSOCK(mode))
        what = "a socket";
    else
        what = "not a regular file";
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_REGULAR_FILE,
                "disk image '%s' is %s: give a raw image file or a block device", path, what);
    return FALSE;
}

static int open_image(const char *path, gboolean readonly, GError **error)
{
    /* stat() first: opening a FIFO would block. */
    struct stat st;
    if (stat(path, &st) < 0) {
        int err = errno;
        if (err == ENOENT)
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                        "disk image '%s' does not exist: create it with 'truncate -s SIZE %s' "
                        "or 'qemu-img create -f raw %s SIZE'",
                        path, path, path);
        else
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                        "cannot access disk image '%s': %s", path, g_strerror(err));
        return -1;
    }
    if (!check_type(path, st.st_mode, error))
        return -1;
    int fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int err = errno;
        gboolean readable = access(path, R_OK) == 0;
        if (!readonly && (err == EROFS || ((err == EACCES || err == EPERM) && readable))) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_READ_ONLY,
                        "disk image '%s' is read-only (%s): add readonly=on to --disk, or "
                        "make it writable (chmod u+w '%s')",
                        path, g_strerror(err), path);
        } else if (err == EACCES || err == EPERM) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                        "permission denied opening disk image '%s' for %s: check its mode and "
                        "owner, and the permissions of its directories",
                        path, readonly ? "reading" : "reading and writing");
        } else {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                        "cannot open disk image '%s': %s", path, g_strerror(err));
        }
    }
    return fd;
}

/* Size in bytes of what @fd opened (checked again: not what stat() saw). */
static gboolean image_size(const char *path, int fd, uint64_t *size, GError **error)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                    "cannot stat disk image '%s': %s", path, g_strerror(err));
        return FALSE;
    }
    if (!check_type(path, st.st_mode, error))
        return FALSE;
    if (S_ISREG(st.st_mode)) {
        *size = (uint64_t) st.st_size;
        return TRUE;
    }
    if (ioctl(fd, BLKGETSIZE64, size) < 0) {
        int err = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                    "cannot get the size of block device '%s': %s", path, g_strerror(err));
        return FALSE;
    }
    return TRUE;
}

/* One writer or many readers per image, across processes (open file description lock). */
gboolean ferry_blk_image_lock(const char *path, int fd, gboolean readonly, GError **error)
{
    struct flock fl = {
        .l_type = readonly ? F_RDLCK : F_WRLCK,
        .l_whence = SEEK_SET,
        .l_start = 0,
        .l_len = 0,
    };
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
        return TRUE;
    int err = errno;
    if (err == EAGAIN || err == EACCES)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY,
                    "disk image '%s' is in use: another process holds a%s lock on it; "
                    "stop that VM first (an image is shared only if every VM opens it "
                    "with readonly=on)",
                    path, readonly ? "n exclusive (read-write)" : "");
    else
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err),
                    "cannot lock disk image '%s': %s", path, g_strerror(err));
    return FALSE;
}

void ferry_blk_image_unlock(int fd)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
    fcntl(fd, F_OFD_SETLK, &fl);
}

int ferry_blk_image_open(const char *path, gboolean readonly, gboolean lock, uint64_t *sectors,
                         GError **error)
{
    int fd = open_image(path, readonly, error);
    if (fd < 0)
        return -1;
    uint64_t size;
    if (!image_size(path, fd, &size, error))
        goto fail;
    if (size == 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "disk image '%s' is empty: give it a size with 'truncate -s SIZE %s'", path,
                    path);
        goto fail;
    }
    if (size % SECTOR_SIZE) {
        uint64_t up = (size + SECTOR_SIZE - 1) / SECTOR_SIZE * SECTOR_SIZE;
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "disk image '%s' is %" G_GUINT64_FORMAT " bytes, not a multiple of 512: "
                    "a raw image must hold whole sectors (round it up with "
                    "'truncate -s %" G_GUINT64_FORMAT " %s')",
                    path, size, up, path);
        goto fail;
    }
    if (lock && !ferry_blk_image_lock(path, fd, readonly, error))
        goto fail;
    *sectors = size / SECTOR_SIZE;
    return fd;

fail:
    close(fd);
    return -1;
}

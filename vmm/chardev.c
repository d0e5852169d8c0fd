#include "chardev.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <gio/gio.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

struct FerryChardev {
    FerryChardevKind kind;
    int in_fd;      /* -1 when there is no input */
    int out_fd;     /* -1 when output is discarded */
    int listen_fd;  /* SOCKET */
    char *socket_path;
    guint in_watch;
    guint listen_watch;
    guint retry_timer;
    GMutex out_lock; /* guards out_fd and the socket client */
    gboolean restore_tty;
    struct termios saved_tty;
    const FerryChardevFrontend *fe;
    void *fe_opaque;
};

gboolean ferry_chardev_parse(const char *text, FerryChardevSpec *spec, GError **error)
{
    memset(spec, 0, sizeof(*spec));
    if (g_str_equal(text, "stdio")) {
        spec->kind = FERRY_CHARDEV_STDIO;
    } else if (g_str_equal(text, "pty")) {
        spec->kind = FERRY_CHARDEV_PTY;
    } else if (g_str_equal(text, "off") || g_str_equal(text, "null")) {
        spec->kind = FERRY_CHARDEV_OFF;
    } else if (g_str_has_prefix(text, "file=") && text[5]) {
        spec->kind = FERRY_CHARDEV_FILE;
        spec->path = g_strdup(text + 5);
    } else if (g_str_has_prefix(text, "socket=") && text[7]) {
        spec->kind = FERRY_CHARDEV_SOCKET;
        spec->path = g_strdup(text + 7);
        if (strlen(spec->path) >= sizeof(((struct sockaddr_un *) 0)->sun_path)) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "socket path '%s' is too long for a unix socket", spec->path);
            ferry_chardev_spec_clear(spec);
            return FALSE;
        }
    } else {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "'%s' is not a console back end; use stdio, pty, off, file=PATH or "
                    "socket=PATH",
                    text);
        return FALSE;
    }
    return TRUE;
}

void ferry_chardev_spec_clear(FerryChardevSpec *spec)
{
    g_clear_pointer(&spec->path, g_free);
}

static gboolean on_input(int fd, GIOCondition cond, gpointer data);

static void watch_input(FerryChardev *cd)
{
    if (cd->in_fd >= 0 && !cd->in_watch && cd->fe)
        cd->in_watch = g_unix_fd_add(cd->in_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_input, cd);
}

static gboolean retry_input(gpointer data)
{
    FerryChardev *cd = data;
    cd->retry_timer = 0;
    watch_input(cd);
    return G_SOURCE_REMOVE;
}

static void drop_socket_client(FerryChardev *cd)
{
    g_mutex_lock(&cd->out_lock);
    if (cd->out_fd >= 0)
        close(cd->out_fd);
    cd->out_fd = -1;
    cd->in_fd = -1;
    g_mutex_unlock(&cd->out_lock);
}

static gboolean on_input(int fd, GIOCondition cond, gpointer data)
{
    FerryChardev *cd = data;
    size_t room = cd->fe->room(cd->fe_opaque);
    if (room == 0) {
        /* The front end is full: stop polling until it calls ferry_chardev_accept_input. */
        cd->in_watch = 0;
        return G_SOURCE_REMOVE;
    }
    uint8_t buf[4096];
    ssize_t n = read(fd, buf, MIN(room, sizeof(buf)));
    if (n > 0) {
        cd->fe->receive(cd->fe_opaque, buf, (size_t) n);
        return G_SOURCE_CONTINUE;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return G_SOURCE_CONTINUE;
    cd->in_watch = 0;
    if (cd->kind == FERRY_CHARDEV_SOCKET) {
        drop_socket_client(cd); /* client went away; wait for the next one */
    } else if (cd->kind == FERRY_CHARDEV_PTY) {
        /* EIO while no one has the terminal open: look again later. */
        cd->retry_timer = g_timeout_add(250, retry_input, cd);
    } else {
        cd->in_fd = -1; /* end of stdin */
    }
    return G_SOURCE_REMOVE;
}

static gboolean on_connect(int fd, GIOCondition cond, gpointer data)
{
    FerryChardev *cd = data;
    int client = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client < 0)
        return G_SOURCE_CONTINUE;
    if (cd->in_watch) {
        g_source_remove(cd->in_watch);
        cd->in_watch = 0;
    }
    drop_socket_client(cd); /* a new client replaces the old one */
    g_mutex_lock(&cd->out_lock);
    cd->out_fd = client;
    cd->in_fd = client;
    g_mutex_unlock(&cd->out_lock);
    watch_input(cd);
    return G_SOURCE_CONTINUE;
}

static gboolean set_raw(int fd, struct termios *saved, GError **error)
{
    struct termios t;
    if (tcgetattr(fd, &t) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "tcgetattr: %s",
                    g_strerror(errno));
        return FALSE;
    }
    if (saved)
        *saved = t;
    cfmakeraw(&t);
    t.c_lflag |= ISIG; /* Ctrl-C still stops ferry-vmm */
    t.c_oflag |= OPOST | ONLCR;
    if (tcsetattr(fd, TCSANOW, &t) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "tcsetattr: %s",
                    g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

static gboolean open_pty(FerryChardev *cd, GError **error)
{
    int fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 || grantpt(fd) < 0 || unlockpt(fd) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                    "cannot create a pseudo-terminal: %s", g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return FALSE;
    }
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        tcsetattr(fd, TCSANOW, &t);
    }
    g_unix_set_fd_nonblocking(fd, TRUE, NULL);
    cd->in_fd = cd->out_fd = fd;
    fprintf(stderr, "ferry-vmm: serial console on %s\n", ptsname(fd));
    return TRUE;
}

static gboolean open_socket(FerryChardev *cd, const char *path, GError **error)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    g_strlcpy(addr.sun_path, path, sizeof(addr.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "socket: %s",
                    g_strerror(errno));
        return FALSE;
    }
    unlink(path);
    if (bind(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0 || listen(fd, 1) < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                    "cannot listen on console socket %s: %s", path, g_strerror(errno));
        close(fd);
        return FALSE;
    }
    cd->listen_fd = fd;
    cd->socket_path = g_strdup(path);
    cd->listen_watch = g_unix_fd_add(fd, G_IO_IN, on_connect, cd);
    return TRUE;
}

FerryChardev *ferry_chardev_new(const FerryChardevSpec *spec, GError **error)
{
    g_autoptr(FerryChardev) cd = g_new0(FerryChardev, 1);
    cd->kind = spec->kind;
    cd->in_fd = cd->out_fd = cd->listen_fd = -1;
    g_mutex_init(&cd->out_lock);

    switch (spec->kind) {
    case FERRY_CHARDEV_OFF:
        break;
    case FERRY_CHARDEV_STDIO:
        cd->in_fd = STDIN_FILENO;
        cd->out_fd = STDOUT_FILENO;
        if (isatty(STDIN_FILENO) && set_raw(STDIN_FILENO, &cd->saved_tty, NULL))
            cd->restore_tty = TRUE;
        break;
    case FERRY_CHARDEV_PTY:
        if (!open_pty(cd, error))
            return NULL;
        break;
    case FERRY_CHARDEV_FILE:
        cd->out_fd = open(spec->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (cd->out_fd < 0) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                        "cannot open console file %s: %s", spec->path, g_strerror(errno));
            return NULL;
        }
        break;
    case FERRY_CHARDEV_SOCKET:
        if (!open_socket(cd, spec->path, error))
            return NULL;
        break;
    }
    return g_steal_pointer(&cd);
}

void ferry_chardev_set_frontend(FerryChardev *cd, const FerryChardevFrontend *fe, void *opaque)
{
    cd->fe = fe;
    cd->fe_opaque = opaque;
    watch_input(cd);
}

void ferry_chardev_write(FerryChardev *cd, const uint8_t *data, size_t len)
{
    g_mutex_lock(&cd->out_lock);
    size_t done = 0;
    while (cd->out_fd >= 0 && done < len) {
        ssize_t n = write(cd->out_fd, data + done, len - done);
        if (n > 0) {
            done += (size_t) n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            break; /* EAGAIN on a socket or pty nobody reads, or the reader is gone: drop */
        }
    }
    g_mutex_unlock(&cd->out_lock);
}

static gboolean rearm(gpointer data)
{
    watch_input(data);
    return G_SOURCE_REMOVE;
}

void ferry_chardev_accept_input(FerryChardev *cd)
{
    g_main_context_invoke(NULL, rearm, cd);
}

void ferry_chardev_free(FerryChardev *cd)
{
    if (!cd)
        return;
    if (cd->in_watch)
        g_source_remove(cd->in_watch);
    if (cd->listen_watch)
        g_source_remove(cd->listen_watch);
    if (cd->retry_timer)
        g_source_remove(cd->retry_timer);
    if (cd->restore_tty)
        tcsetattr(STDIN_FILENO, TCSANOW, &cd->saved_tty);
    if (cd->kind == FERRY_CHARDEV_SOCKET) {
        drop_socket_client(cd);
        if (cd->listen_fd >= 0)
            close(cd->listen_fd);
        if (cd->socket_path)
            unlink(cd->socket_path);
    } else if (cd->kind == FERRY_CHARDEV_PTY || cd->kind == FERRY_CHARDEV_FILE) {
        if (cd->out_fd >= 0)
            close(cd->out_fd);
    }
    g_free(cd->socket_path);
    g_mutex_clear(&cd->out_lock);
    g_free(cd);
}

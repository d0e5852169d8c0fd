/*
 * Character back ends for consoles: where the guest's serial port leads on the host.
 *
 *   stdio         output to stdout, input from stdin (a terminal is put in raw mode and
 *                 restored on exit)
 *   pty           a new pseudo-terminal; its path is printed on stderr
 *   file=PATH     output appended to PATH (created if missing); no input
 *   socket=PATH   a unix stream socket Ferry listens on; one client at a time, both ways
 *   off           output discarded
 *
 * Output may be written from any thread (vCPU threads write the UART's transmit register);
 * input is read on the main loop's thread and handed to the front end (the UART), which says
 * how many bytes it can take so nothing typed is dropped.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

typedef enum {
    FERRY_CHARDEV_OFF,
    FERRY_CHARDEV_STDIO,
    FERRY_CHARDEV_PTY,
    FERRY_CHARDEV_FILE,
    FERRY_CHARDEV_SOCKET,
} FerryChardevKind;

typedef struct {
    FerryChardevKind kind;
    char *path; /* FILE and SOCKET, owned */
} FerryChardevSpec;

/*
 * Parses "stdio", "pty", "off", "file=PATH" or "socket=PATH" into @spec (path owned by the
 * caller afterwards).  Errors (G_OPTION_ERROR_BAD_VALUE) say which forms are accepted.
 */
gboolean ferry_chardev_parse(const char *text, FerryChardevSpec *spec, GError **error);
void ferry_chardev_spec_clear(FerryChardevSpec *spec);

typedef struct FerryChardev FerryChardev;

/*
 * Front end: @room returns how many bytes it can accept now; @receive takes at most that
 * many.  Both run on the main-loop thread.
 */
typedef struct {
    size_t (*room)(void *opaque);
    void (*receive)(void *opaque, const uint8_t *data, size_t len);
} FerryChardevFrontend;

/* Opens the back end described by @spec; input is polled on the default main context. */
FerryChardev *ferry_chardev_new(const FerryChardevSpec *spec, GError **error);

/* Connects the front end (one per chardev); input is read only after this. */
void ferry_chardev_set_frontend(FerryChardev *cd, const FerryChardevFrontend *fe, void *opaque);

/* Writes @len bytes of guest output; never blocks on a slow socket client (drops instead). */
void ferry_chardev_write(FerryChardev *cd, const uint8_t *data, size_t len);

/* Called by the front end (any thread) when it has room again after reporting none. */
void ferry_chardev_accept_input(FerryChardev *cd);

void ferry_chardev_free(FerryChardev *cd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryChardev, ferry_chardev_free)

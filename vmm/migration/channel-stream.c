/*
 * The GIOStream of a migration connection: a socket, plain or with a gnutls session
 * (tls.c) on it.  The input and output streams share a Core; each direction touches only
 * its own fields of it, so a reading and a writing thread never wait for each other.
 */
#include "migration/channel-internal.h"

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

/* First bytes of a TLS record (RFC 8446 section 5.1): content type alert or handshake. */
#define TLS_RECORD_ALERT     0x15
#define TLS_RECORD_HANDSHAKE 0x16

/* One direction's cancellable, connected once and kept (a read costs no signal connect). */
typedef struct {
    GCancellable *cancellable; /* referenced */
    gulong handler;
} Watch;

typedef struct {
    gatomicrefcount ref;
    int fd;               /* owned; closed when the last reference goes */
    FerryTlsSession *tls; /* owned, nullable */
    char *what;           /* "connection to 10.0.0.2:4444" */
    const char *peer_role;
    GMutex lock;               /* @closed, @write_closed */
    gboolean closed;           /* the GIOStream was closed */
    gboolean write_closed;     /* close_notify and FIN sent */
    gint aborted;              /* atomic: shut down by abort or a cancellable */
    gint broken;               /* atomic: a send failed (no close_notify then) */
    gint received;             /* atomic: the first byte has been read */
    GMutex recv_lock;          /* held by the reading thread inside the TLS session */
    Watch in_watch, out_watch; /* touched by the reading / writing thread only */
} Core;

static Core *core_ref(Core *c)
{
    g_atomic_ref_count_inc(&c->ref);
    return c;
}

static void watch_set(Watch *w, Core *c, GCancellable *cancellable);

static void core_unref(Core *c)
{
    if (!g_atomic_ref_count_dec(&c->ref))
        return;
    watch_set(&c->in_watch, c, NULL);
    watch_set(&c->out_watch, c, NULL);
    ferry_tls_session_free(c->tls);
    close(c->fd);
    g_mutex_clear(&c->lock);
    g_mutex_clear(&c->recv_lock);
    g_free(c->what);
    g_free(c);
}

static void core_abort(Core *c)
{
    g_atomic_int_set(&c->aborted, 1);
    shutdown(c->fd, SHUT_RDWR);
}

static void on_cancelled(GCancellable *cancellable, gpointer data)
{
    core_abort(data);
}

/*
 * Points @w at @cancellable.  The handler holds no reference: it is disconnected before the
 * core is freed (g_cancellable_disconnect waits for a handler that is running).
 */
static void watch_set(Watch *w, Core *c, GCancellable *cancellable)
{
    if (w->cancellable == cancellable)
        return;
    if (w->cancellable) {
        g_cancellable_disconnect(w->cancellable, w->handler);
        g_clear_object(&w->cancellable);
        w->handler = 0;
    }
    if (cancellable) {
        w->cancellable = g_object_ref(cancellable);
        w->handler = g_cancellable_connect(cancellable, G_CALLBACK(on_cancelled), c, NULL);
    }
}

static void set_cancelled(Core *c, GError **error)
{
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "%s was cancelled", c->what);
}

/* Checks the connection can still be used in the direction of @w. */
static gboolean op_begin(Core *c, Watch *w, gboolean writing, GCancellable *cancellable,
                         GError **error)
{
    if (cancellable)
        watch_set(w, c, cancellable);
    if (g_atomic_int_get(&c->aborted) || g_cancellable_is_cancelled(cancellable)) {
        set_cancelled(c, error);
        return FALSE;
    }
    g_mutex_lock(&c->lock);
    gboolean closed = c->closed || (writing && c->write_closed);
    g_mutex_unlock(&c->lock);
    if (closed) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CLOSED, "%s is closed", c->what);
        return FALSE;
    }
    return TRUE;
}

/* Completes a failed operation's error: cancellation wins, else "... lost: cause". */
static void op_failed(Core *c, GError *cause, GError **error)
{
    if (g_atomic_int_get(&c->aborted)) {
        g_clear_error(&cause);
        set_cancelled(c, error);
        return;
    }
    if (g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_TIMED_OUT)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "%s lost: %s (no answer from the %s for %d s: link down or host gone?)",
                    c->what, cause->message, c->peer_role, FERRY_CHANNEL_USER_TIMEOUT_MS / 1000);
        g_error_free(cause);
        return;
    }
    if (cause->domain == FERRY_TLS_ERROR)
        g_prefix_error(&cause, "%s: ", c->what);
    else
        g_prefix_error(&cause, "%s lost: ", c->what);
    g_propagate_error(error, cause);
}

static void set_errno_error(GError **error, int err_no)
{
    g_set_error_literal(error, G_IO_ERROR, g_io_error_from_errno(err_no), g_strerror(err_no));
}

/*
 * A plain connection whose first byte is a TLS record type: the other side uses tls:
 * (our streams begin with 0x89).  A tls: listener answers a plain source with an alert.
 */
static gboolean peer_speaks_tls(uint8_t first)
{
    return first == TLS_RECORD_HANDSHAKE || first == TLS_RECORD_ALERT;
}

static void set_mismatch(Core *c, GError **error)
{
    g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH,
                "the %s speaks TLS; use tls: on both sides", c->peer_role);
}

/* ---- input ---------------------------------------------------------------------------- */

#define FERRY_TYPE_CHANNEL_INPUT (ferry_channel_input_get_type())
G_DECLARE_FINAL_TYPE(FerryChannelInput, ferry_channel_input, FERRY, CHANNEL_INPUT, GInputStream)

struct _FerryChannelInput {
    GInputStream parent;
    Core *core;
};

G_DEFINE_TYPE(FerryChannelInput, ferry_channel_input, G_TYPE_INPUT_STREAM)

static gssize channel_input_read(GInputStream *stream, void *buffer, gsize count,
                                 GCancellable *cancellable, GError **error)
{
    Core *c = FERRY_CHANNEL_INPUT(stream)->core;
    if (!op_begin(c, &c->in_watch, FALSE, cancellable, error))
        return -1;

    GError *cause = NULL;
    gssize n;
    if (c->tls) {
        g_mutex_lock(&c->recv_lock);
        n = ferry_tls_session_recv(c->tls, buffer, count, &cause);
        g_mutex_unlock(&c->recv_lock);
    } else {
        do
            n = recv(c->fd, buffer, count, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            set_errno_error(&cause, errno);
        else if (n > 0 && !g_atomic_int_get(&c->received) &&
                 peer_speaks_tls(((const uint8_t *) buffer)[0]))
            set_mismatch(c, &cause);
    }
    if (n > 0)
        g_atomic_int_set(&c->received, 1);
    if (n == 0 && g_atomic_int_get(&c->aborted))
        set_cancelled(c, &cause);
    if (cause) {
        op_failed(c, cause, error);
        return -1;
    }
    return n;
}

static void ferry_channel_input_finalize(GObject *object)
{
    core_unref(FERRY_CHANNEL_INPUT(object)->core);
    G_OBJECT_CLASS(ferry_channel_input_parent_class)->finalize(object);
}

static void ferry_channel_input_class_init(FerryChannelInputClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = ferry_channel_input_finalize;
    G_INPUT_STREAM_CLASS(klass)->read_fn = channel_input_read;
}

static void ferry_channel_input_init(FerryChannelInput *self)
{
}

/* ---- output --------------------------------------------------------------------------- */

#define FERRY_TYPE_CHANNEL_OUTPUT (ferry_channel_output_get_type())
G_DECLARE_FINAL_TYPE(FerryChannelOutput, ferry_channel_output, FERRY, CHANNEL_OUTPUT, GOutputStream)

struct _FerryChannelOutput {
    GOutputStream parent;
    Core *core;
};

G_DEFINE_TYPE(FerryChannelOutput, ferry_channel_output, G_TYPE_OUTPUT_STREAM)

static gboolean plain_send_all(int fd, const uint8_t *p, size_t count, GError **error)
{
    while (count > 0) {
        ssize_t n = send(fd, p, count, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            set_errno_error(error, errno);
            return FALSE;
        }
        p += n;
        count -= (size_t) n;
    }
    return TRUE;
}

/*
 * A send failed: when the peer reset the connection, what it sent before may say why (a
 * TLS alert refusing our certificate; a tls: listener's alert to a plain source).
 */
static void explain_send_failure(Core *c, GError **cause)
{
    if (c->tls) {
        /* Only when no thread is reading: one receiver per session. */
        if (g_mutex_trylock(&c->recv_lock)) {
            ferry_tls_session_explain_reset(c->tls, cause);
            g_mutex_unlock(&c->recv_lock);
        }
        return;
    }
    uint8_t first;
    if (!g_atomic_int_get(&c->received) && recv(c->fd, &first, 1, MSG_PEEK | MSG_DONTWAIT) == 1 &&
        peer_speaks_tls(first)) {
        g_clear_error(cause);
        set_mismatch(c, cause);
    }
}

static gssize channel_output_write(GOutputStream *stream, const void *buffer, gsize count,
                                   GCancellable *cancellable, GError **error)
{
    Core *c = FERRY_CHANNEL_OUTPUT(stream)->core;
    if (!op_begin(c, &c->out_watch, TRUE, cancellable, error))
        return -1;

    GError *cause = NULL;
    gboolean ok = c->tls ? ferry_tls_session_send_all(c->tls, buffer, count, &cause)
                         : plain_send_all(c->fd, buffer, count, &cause);
    if (!ok) {
        g_atomic_int_set(&c->broken, 1);
        if (!g_atomic_int_get(&c->aborted))
            explain_send_failure(c, &cause);
        op_failed(c, cause, error);
        return -1;
    }
    return (gssize) count;
}

/* Half-close: close_notify (tls) and FIN; the return path stays open.  Once. */
static gboolean core_close_write(Core *c, GError **error)
{
    g_mutex_lock(&c->lock);
    gboolean first = !c->write_closed && !c->closed;
    c->write_closed = TRUE;
    g_mutex_unlock(&c->lock);
    if (!first)
        return TRUE;

    GError *cause = NULL;
    if (c->tls && !g_atomic_int_get(&c->aborted) && !g_atomic_int_get(&c->broken))
        ferry_tls_session_bye(c->tls, &cause);
    shutdown(c->fd, SHUT_WR);
    if (cause) {
        g_propagate_prefixed_error(error, cause, "closing %s: ", c->what);
        return FALSE;
    }
    return TRUE;
}

static gboolean channel_output_close(GOutputStream *stream, GCancellable *cancellable,
                                     GError **error)
{
    return core_close_write(FERRY_CHANNEL_OUTPUT(stream)->core, error);
}

static void ferry_channel_output_finalize(GObject *object)
{
    core_unref(FERRY_CHANNEL_OUTPUT(object)->core);
    G_OBJECT_CLASS(ferry_channel_output_parent_class)->finalize(object);
}

static void ferry_channel_output_class_init(FerryChannelOutputClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = ferry_channel_output_finalize;
    G_OUTPUT_STREAM_CLASS(klass)->write_fn = channel_output_write;
    G_OUTPUT_STREAM_CLASS(klass)->close_fn = channel_output_close;
}

static void ferry_channel_output_init(FerryChannelOutput *self)
{
}

/* ---- the connection ------------------------------------------------------------------- */

#define FERRY_TYPE_CHANNEL_STREAM (ferry_channel_stream_get_type())
G_DECLARE_FINAL_TYPE(FerryChannelStream, ferry_channel_stream, FERRY, CHANNEL_STREAM, GIOStream)

struct _FerryChannelStream {
    GIOStream parent;
    Core *core;
    FerryChannelInput *input;
    FerryChannelOutput *output;
};

G_DEFINE_TYPE(FerryChannelStream, ferry_channel_stream, G_TYPE_IO_STREAM)

static GInputStream *channel_get_input(GIOStream *stream)
{
    return G_INPUT_STREAM(FERRY_CHANNEL_STREAM(stream)->input);
}

static GOutputStream *channel_get_output(GIOStream *stream)
{
    return G_OUTPUT_STREAM(FERRY_CHANNEL_STREAM(stream)->output);
}

static gboolean channel_close(GIOStream *stream, GCancellable *cancellable, GError **error)
{
    Core *c = FERRY_CHANNEL_STREAM(stream)->core;
    gboolean ok = core_close_write(c, error);
    g_mutex_lock(&c->lock);
    c->closed = TRUE;
    g_mutex_unlock(&c->lock);
    /* Wakes a thread still reading; the descriptor is closed with the last reference. */
    shutdown(c->fd, SHUT_RDWR);
    return ok;
}

static void ferry_channel_stream_finalize(GObject *object)
{
    FerryChannelStream *self = FERRY_CHANNEL_STREAM(object);
    g_clear_object(&self->input);
    g_clear_object(&self->output);
    core_unref(self->core);
    G_OBJECT_CLASS(ferry_channel_stream_parent_class)->finalize(object);
}

static void ferry_channel_stream_class_init(FerryChannelStreamClass *klass)
{
    G_OBJECT_CLASS(klass)->finalize = ferry_channel_stream_finalize;
    G_IO_STREAM_CLASS(klass)->get_input_stream = channel_get_input;
    G_IO_STREAM_CLASS(klass)->get_output_stream = channel_get_output;
    G_IO_STREAM_CLASS(klass)->close_fn = channel_close;
}

static void ferry_channel_stream_init(FerryChannelStream *self)
{
}

GIOStream *ferry_channel_stream_new(int fd, FerryTlsSession *tls, const char *what,
                                    const char *peer_role)
{
    Core *c = g_new0(Core, 1);
    g_atomic_ref_count_init(&c->ref);
    c->fd = fd;
    c->tls = tls;
    c->what = g_strdup(what);
    c->peer_role = peer_role;
    g_mutex_init(&c->lock);
    g_mutex_init(&c->recv_lock);

    FerryChannelStream *self = g_object_new(FERRY_TYPE_CHANNEL_STREAM, NULL);
    self->core = c;
    self->input = g_object_new(FERRY_TYPE_CHANNEL_INPUT, NULL);
    self->input->core = core_ref(c);
    self->output = g_object_new(FERRY_TYPE_CHANNEL_OUTPUT, NULL);
    self->output->core = core_ref(c);
    return G_IO_STREAM(self);
}

void ferry_migration_channel_abort(GIOStream *s)
{
    g_return_if_fail(FERRY_IS_CHANNEL_STREAM(s));
    core_abort(FERRY_CHANNEL_STREAM(s)->core);
}

const char *ferry_migration_channel_security(GIOStream *s)
{
    g_return_val_if_fail(FERRY_IS_CHANNEL_STREAM(s), NULL);
    Core *c = FERRY_CHANNEL_STREAM(s)->core;
    return c->tls ? ferry_tls_session_describe(c->tls) : NULL;
}

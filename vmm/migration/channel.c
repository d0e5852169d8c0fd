#include "migration/channel.h"

#include "migration/channel-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN_BACKLOG 16

/* How long a refused peer is given to read our alert and close first (see close_refused). */
#define REFUSAL_LINGER_MS 1000
#define UNIX_PATH_MAX     (sizeof(((struct sockaddr_un *) 0)->sun_path) - 1)

/* ---- URIs ----------------------------------------------------------------------------- */

static gboolean uri_error(GError **error, const char *text, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static gboolean uri_error(GError **error, const char *text, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "migration URI '%s': %s", text,
                why);
    return FALSE;
}

/* A DNS name: labels of letters, digits, '-' and '_' separated by dots, 1..253 bytes. */
static gboolean valid_hostname(const char *h)
{
    size_t len = strlen(h), label = 0;
    if (len == 0 || len > 253)
        return FALSE;
    for (const char *p = h; *p; p++) {
        if (*p == '.') {
            if (label == 0)
                return FALSE;
            label = 0;
        } else if (g_ascii_isalnum(*p) || *p == '-' || *p == '_') {
            if (++label > 63)
                return FALSE;
        } else {
            return FALSE;
        }
    }
    return label > 0 || len > 1;
}

static gboolean parse_host_port(const char *text, const char *rest, FerryMigrationUri *uri,
                                GError **error)
{
    g_autofree char *host = NULL;
    const char *port;

    if (rest[0] == '[') {
        const char *end = strchr(rest, ']');
        if (!end)
            return uri_error(error, text, "the IPv6 address lacks its closing ']'");
        host = g_strndup(rest + 1, (size_t) (end - rest - 1));
        struct in6_addr a6;
        if (inet_pton(AF_INET6, host, &a6) != 1)
            return uri_error(error, text, "'%s' is not an IPv6 address", host);
        if (end[1] != ':')
            return uri_error(error, text, "the port is missing after '[%s]' (HOST:PORT)", host);
        port = end + 2;
    } else {
        const char *colon = strrchr(rest, ':');
        if (!colon)
            return uri_error(error, text, "the port is missing (HOST:PORT)");
        host = g_strndup(rest, (size_t) (colon - rest));
        port = colon + 1;
        if (strchr(host, ':'))
            return uri_error(error, text,
                             "an IPv6 address must be in brackets, as in tls:[::1]:4444");
        if (host[0] == '\0')
            return uri_error(error, text, "the host is missing (HOST:PORT)");
        if (!valid_hostname(host))
            return uri_error(error, text, "'%s' is not a host name or IPv4 address", host);
    }
    guint64 value;
    if (!g_ascii_string_to_unsigned(port, 10, 0, 65535, &value, NULL))
        return uri_error(error, text, "the port '%s' is not a number 0..65535", port);
    uri->host = g_steal_pointer(&host);
    uri->port = (guint16) value;
    return TRUE;
}

gboolean ferry_migration_uri_parse(const char *text, FerryMigrationUri *uri, GError **error)
{
    *uri = (FerryMigrationUri){.fd = -1};
    const char *colon = strchr(text, ':');
    if (!colon)
        return uri_error(error, text, "expected tcp:HOST:PORT, tls:HOST:PORT, unix:PATH or fd:N");
    g_autofree char *scheme = g_strndup(text, (size_t) (colon - text));
    const char *rest = colon + 1;

    if (g_str_equal(scheme, "tcp") || g_str_equal(scheme, "tls")) {
        uri->transport = g_str_equal(scheme, "tcp") ? FERRY_MIGRATION_TRANSPORT_TCP
                                                    : FERRY_MIGRATION_TRANSPORT_TLS;
        return parse_host_port(text, rest, uri, error);
    }
    if (g_str_equal(scheme, "unix")) {
        if (rest[0] == '\0')
            return uri_error(error, text, "the socket path is missing (unix:PATH)");
        if (strlen(rest) > UNIX_PATH_MAX)
            return uri_error(error, text, "the socket path is %zu bytes long; at most %zu fit",
                             strlen(rest), (size_t) UNIX_PATH_MAX);
        uri->transport = FERRY_MIGRATION_TRANSPORT_UNIX;
        uri->path = g_strdup(rest);
        return TRUE;
    }
    if (g_str_equal(scheme, "fd")) {
        guint64 value;
        if (!g_ascii_string_to_unsigned(rest, 10, 0, G_MAXINT, &value, NULL))
            return uri_error(error, text, "'%s' is not a file descriptor number", rest);
        uri->transport = FERRY_MIGRATION_TRANSPORT_FD;
        uri->fd = (int) value;
        return TRUE;
    }
    return uri_error(error, text, "unknown transport '%s' (use tcp:, tls:, unix: or fd:)", scheme);
}

/* "host:port", "[::1]:port" */
static char *host_port(const char *host, guint16 port)
{
    return strchr(host, ':') ? g_strdup_printf("[%s]:%u", host, port)
                             : g_strdup_printf("%s:%u", host, port);
}

char *ferry_migration_uri_to_string(const FerryMigrationUri *uri)
{
    switch (uri->transport) {
    case FERRY_MIGRATION_TRANSPORT_TCP:
    case FERRY_MIGRATION_TRANSPORT_TLS: {
        g_autofree char *hp = host_port(uri->host, uri->port);
        return g_strdup_printf("%s:%s",
                               uri->transport == FERRY_MIGRATION_TRANSPORT_TCP ? "tcp" : "tls", hp);
    }
    case FERRY_MIGRATION_TRANSPORT_UNIX:
        return g_strdup_printf("unix:%s", uri->path);
    case FERRY_MIGRATION_TRANSPORT_FD:
        return g_strdup_printf("fd:%d", uri->fd);
    }
    g_return_val_if_reached(NULL);
}

void ferry_migration_uri_clear(FerryMigrationUri *uri)
{
    g_clear_pointer(&uri->host, g_free);
    g_clear_pointer(&uri->path, g_free);
    uri->port = 0;
    uri->fd = -1;
}

/* ---- sockets -------------------------------------------------------------------------- */

static gboolean set_int_opt(int fd, int level, int name, int value, const char *what,
                            GError **error)
{
    if (setsockopt(fd, level, name, &value, sizeof(value)) == 0)
        return TRUE;
    int e = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "cannot set %s on a socket: %s", what,
                g_strerror(e));
    return FALSE;
}

/*
 * Keepalive and the user timeout on a TCP socket, and TCP_NODELAY: the stream writer sends
 * large buffers anyway, while the TLS handshake, the return path's small records and the
 * post-copy page requests would otherwise wait for delayed ACKs (Nagle), tens of ms each.
 * Nothing on other sockets.
 */
static gboolean set_socket_options(int fd, GError **error)
{
    int domain = 0;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 ||
        (domain != AF_INET && domain != AF_INET6))
        return TRUE;
    return set_int_opt(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY", error) &&
           set_int_opt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE", error) &&
           set_int_opt(fd, IPPROTO_TCP, TCP_KEEPIDLE, FERRY_CHANNEL_KEEPALIVE_IDLE_S,
                       "TCP_KEEPIDLE", error) &&
           set_int_opt(fd, IPPROTO_TCP, TCP_KEEPINTVL, FERRY_CHANNEL_KEEPALIVE_INTERVAL_S,
                       "TCP_KEEPINTVL", error) &&
           set_int_opt(fd, IPPROTO_TCP, TCP_KEEPCNT, FERRY_CHANNEL_KEEPALIVE_COUNT, "TCP_KEEPCNT",
                       error) &&
           set_int_opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, FERRY_CHANNEL_USER_TIMEOUT_MS,
                       "TCP_USER_TIMEOUT", error);
}

/* Waits until @fd has @events or @cancellable fires (then G_IO_ERROR_CANCELLED). */
static gboolean wait_fd(int fd, gushort events, GCancellable *cancellable, GError **error)
{
    GPollFD fds[2] = {{.fd = fd, .events = events}};
    int n = 1;
    if (cancellable && g_cancellable_make_pollfd(cancellable, &fds[1]))
        n = 2;
    int r;
    do
        r = g_poll(fds, (guint) n, -1);
    while (r < 0 && errno == EINTR);
    int e = errno;
    if (n == 2)
        g_cancellable_release_fd(cancellable);
    if (g_cancellable_set_error_if_cancelled(cancellable, error))
        return FALSE;
    if (r < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "poll: %s", g_strerror(e));
        return FALSE;
    }
    return TRUE;
}

static gboolean set_blocking(int fd, gboolean blocking)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return FALSE;
    flags = blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK;
    return fcntl(fd, F_SETFL, flags) == 0;
}

/* connect(2) that @cancellable can interrupt; returns 0 or an errno (ECANCELED). */
static int connect_cancellable(int fd, const struct sockaddr *addr, socklen_t len,
                               GCancellable *cancellable)
{
    if (!set_blocking(fd, FALSE))
        return errno;
    int e = 0;
    if (connect(fd, addr, len) < 0) {
        e = errno;
        if (e == EINPROGRESS) {
            if (!wait_fd(fd, G_IO_OUT, cancellable, NULL)) {
                e = g_cancellable_is_cancelled(cancellable) ? ECANCELED : errno;
            } else {
                socklen_t elen = sizeof(e);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
                    e = errno;
            }
        }
    }
    if (e == 0 && !set_blocking(fd, TRUE))
        e = errno;
    return e;
}

/* The numeric address of @ai for messages ("10.0.0.2", "::1"). */
static char *numeric_host(const struct sockaddr *sa, socklen_t len)
{
    char host[NI_MAXHOST];
    if (getnameinfo(sa, len, host, sizeof(host), NULL, 0, NI_NUMERICHOST) != 0)
        return g_strdup("?");
    return g_strdup(host);
}

static struct addrinfo *resolve(const FerryMigrationUri *uri, gboolean passive, GError **error)
{
    struct addrinfo hints = {
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
    };
    char port[8];
    g_snprintf(port, sizeof(port), "%u", uri->port);
    struct addrinfo *res = NULL;
    int r = getaddrinfo(uri->host, port, &hints, &res);
    if (r != 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_HOST_NOT_FOUND, "cannot resolve '%s': %s",
                    uri->host, r == EAI_SYSTEM ? g_strerror(errno) : gai_strerror(r));
        return NULL;
    }
    return res;
}

static const char *connect_hint(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return " (is the destination listening?)";
    case ETIMEDOUT:
        return " (no answer within 10 s: is the host up and reachable?)";
    default:
        return "";
    }
}

/* A connected TCP socket to @uri's host (trying every address), or -1. */
static int tcp_connect(const FerryMigrationUri *uri, GCancellable *cancellable, GError **error)
{
    g_autofree char *text = ferry_migration_uri_to_string(uri);
    if (uri->port == 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "cannot connect to %s: port 0 is only for listening", text);
        return -1;
    }
    struct addrinfo *res = resolve(uri, FALSE, error);
    if (!res) {
        g_prefix_error(error, "cannot connect to %s: ", text);
        return -1;
    }
    int fd = -1, e = 0;
    g_autofree char *addr = NULL;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        g_free(addr);
        addr = numeric_host(ai->ai_addr, ai->ai_addrlen);
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            e = errno;
            continue;
        }
        /* Before connecting: TCP_USER_TIMEOUT also bounds the SYN retransmissions. */
        g_autoptr(GError) opt_error = NULL;
        if (!set_socket_options(fd, &opt_error)) {
            close(fd);
            g_propagate_error(error, g_steal_pointer(&opt_error));
            freeaddrinfo(res);
            return -1;
        }
        e = connect_cancellable(fd, ai->ai_addr, ai->ai_addrlen, cancellable);
        if (e != 0) {
            close(fd);
            fd = -1;
            if (e == ECANCELED)
                break;
        }
    }
    freeaddrinfo(res);
    if (fd >= 0)
        return fd;
    if (e == ECANCELED)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "connecting to %s was cancelled",
                    text);
    else
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "cannot connect to %s (%s): %s%s",
                    text, addr, g_strerror(e), connect_hint(e));
    return -1;
}

static gboolean fill_unix_addr(struct sockaddr_un *sun, const char *path)
{
    *sun = (struct sockaddr_un){.sun_family = AF_UNIX};
    if (strlen(path) > UNIX_PATH_MAX)
        return FALSE;
    memcpy(sun->sun_path, path, strlen(path) + 1);
    return TRUE;
}

static int unix_connect(const FerryMigrationUri *uri, GCancellable *cancellable, GError **error)
{
    struct sockaddr_un sun;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0 && !fill_unix_addr(&sun, uri->path))
        e = ENAMETOOLONG;
    if (e == 0)
        e = connect_cancellable(fd, (struct sockaddr *) &sun, sizeof(sun), cancellable);
    if (e == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    if (e == ECANCELED)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "connecting to unix:%s was cancelled",
                    uri->path);
    else
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "cannot connect to unix:%s: %s%s",
                    uri->path, g_strerror(e),
                    e == ENOENT || e == ECONNREFUSED ? " (is the destination listening?)" : "");
    return -1;
}

/* Checks that fd:N is a connected stream socket. */
static gboolean check_fd(int fd, GError **error)
{
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "fd:%d is not usable: %s", fd,
                    e == ENOTSOCK ? "not a socket" : g_strerror(e));
        return FALSE;
    }
    struct sockaddr_storage ss;
    len = sizeof(ss);
    if (type != SOCK_STREAM || getpeername(fd, (struct sockaddr *) &ss, &len) < 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "fd:%d is not a connected stream socket", fd);
        return FALSE;
    }
    return TRUE;
}

/*
 * Closes a connection we refused after telling the peer why (a TLS alert).  close(2) with
 * unread data sends a reset and drops what is still queued for sending, alert included
 * (RFC 1122 section 4.2.2.13); so send FIN behind the alert and read until the peer closes,
 * for at most REFUSAL_LINGER_MS.
 */
static void close_refused(int fd)
{
    shutdown(fd, SHUT_WR);
    gint64 deadline = g_get_monotonic_time() + REFUSAL_LINGER_MS * 1000;
    for (;;) {
        gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left_ms <= 0 || poll(&p, 1, (int) left_ms) <= 0)
            break;
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            break;
    }
    close(fd);
}

static void shutdown_on_cancel(GCancellable *cancellable, gpointer fd)
{
    shutdown(GPOINTER_TO_INT(fd), SHUT_RDWR);
}

/*
 * Runs the TLS handshake on @fd, which @cancellable can interrupt (by shutting the socket
 * down, the only way to stop a blocking gnutls call).
 */
static FerryTlsSession *handshake(FerryTlsCreds *creds, int fd, const char *peer,
                                  const char *expected_name, GCancellable *cancellable,
                                  GError **error)
{
    gulong handler = 0;
    if (cancellable)
        handler = g_cancellable_connect(cancellable, G_CALLBACK(shutdown_on_cancel),
                                        GINT_TO_POINTER(fd), NULL);
    GError *err = NULL;
    FerryTlsSession *s = ferry_tls_session_new(creds, fd, peer, expected_name, &err);
    if (cancellable)
        g_cancellable_disconnect(cancellable, handler);
    if (g_cancellable_is_cancelled(cancellable)) {
        g_clear_error(&err);
        ferry_tls_session_free(s);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                    "the TLS handshake with %s was cancelled", peer);
        return NULL;
    }
    if (!s)
        g_propagate_error(error, err);
    return s;
}

GIOStream *ferry_migration_connect(const FerryMigrationUri *uri, const FerryTlsOptions *tls,
                                   GCancellable *cancellable, GError **error)
{
    int fd;
    g_autofree char *what = NULL;

    switch (uri->transport) {
    case FERRY_MIGRATION_TRANSPORT_TCP:
    case FERRY_MIGRATION_TRANSPORT_TLS: {
        g_autoptr(FerryTlsCreds) creds = NULL;
        if (uri->transport == FERRY_MIGRATION_TRANSPORT_TLS) {
            creds = ferry_tls_creds_load(tls ? tls->dir : NULL, FERRY_TLS_SOURCE, error);
            if (!creds)
                return NULL;
        }
        fd = tcp_connect(uri, cancellable, error);
        if (fd < 0)
            return NULL;
        g_autofree char *peer = host_port(uri->host, uri->port);
        what = g_strdup_printf("connection to %s", peer);
        FerryTlsSession *session = NULL;
        if (creds) {
            const char *name = tls && tls->hostname ? tls->hostname : uri->host;
            session = handshake(creds, fd, peer, name, cancellable, error);
            if (!session) {
                close_refused(fd);
                return NULL;
            }
        }
        return ferry_channel_stream_new(fd, session, what, "destination");
    }
    case FERRY_MIGRATION_TRANSPORT_UNIX:
        fd = unix_connect(uri, cancellable, error);
        if (fd < 0)
            return NULL;
        what = g_strdup_printf("connection to unix:%s", uri->path);
        return ferry_channel_stream_new(fd, NULL, what, "destination");
    case FERRY_MIGRATION_TRANSPORT_FD:
        if (!check_fd(uri->fd, error) || !set_socket_options(uri->fd, error))
            return NULL;
        what = g_strdup_printf("connection on fd:%d", uri->fd);
        return ferry_channel_stream_new(uri->fd, NULL, what, "destination");
    }
    g_return_val_if_reached(NULL);
}

/* ---- listening ------------------------------------------------------------------------ */

struct FerryMigrationListener {
    FerryMigrationTransport transport;
    int fd;          /* listening socket, or fd:'s connected socket until accepted */
    guint16 port;    /* tcp/tls: bound port */
    char *text;      /* the URI as bound, for messages */
    char *unix_path; /* unix: the socket file we made ... */
    dev_t unix_dev;  /* ... identified, so that free removes only that one */
    ino_t unix_ino;
    FerryTlsCreds *creds; /* tls */
};

static FerryMigrationListener *listener_new(const FerryMigrationUri *uri)
{
    FerryMigrationListener *l = g_new0(FerryMigrationListener, 1);
    l->transport = uri->transport;
    l->fd = -1;
    l->text = ferry_migration_uri_to_string(uri);
    return l;
}

static gboolean listen_error(FerryMigrationListener *l, const char *what, int e, GError **error)
{
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "cannot listen on %s: %s: %s%s",
                l->text, what, g_strerror(e),
                e == EADDRINUSE ? " (something else listens there)" : "");
    return FALSE;
}

static gboolean tcp_listen(FerryMigrationListener *l, const FerryMigrationUri *uri, GError **error)
{
    struct addrinfo *res = resolve(uri, TRUE, error);
    if (!res) {
        g_prefix_error(error, "cannot listen on %s: ", l->text);
        return FALSE;
    }
    /* The first address: a name that resolves to several is rare for a listener. */
    struct addrinfo *ai = res;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int e = fd < 0 ? errno : 0;
    const char *what = "socket";
    if (e == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &(int){1}, sizeof(int)) < 0)
        e = errno, what = "SO_REUSEADDR";
    if (e == 0 && bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        e = errno, what = "bind";
    if (e == 0 && listen(fd, LISTEN_BACKLOG) < 0)
        e = errno, what = "listen";
    freeaddrinfo(res);
    if (e != 0) {
        if (fd >= 0)
            close(fd);
        return listen_error(l, what, e, error);
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    getsockname(fd, (struct sockaddr *) &ss, &len);
    l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                             : ((struct sockaddr_in *) &ss)->sin_port);
    l->fd = fd;
    return TRUE;
}

/* TRUE if a unix socket at @sun is left over from a process that is gone. */
static gboolean unix_socket_stale(const struct sockaddr_un *sun)
{
    struct stat st;
    if (stat(sun->sun_path, &st) < 0 || !S_ISSOCK(st.st_mode))
        return FALSE;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return FALSE;
    gboolean stale =
        connect(fd, (const struct sockaddr *) sun, sizeof(*sun)) < 0 && errno == ECONNREFUSED;
    close(fd);
    return stale;
}

static gboolean unix_listen(FerryMigrationListener *l, const FerryMigrationUri *uri, GError **error)
{
    struct sockaddr_un sun;
    if (!fill_unix_addr(&sun, uri->path))
        return listen_error(l, "path", ENAMETOOLONG, error);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return listen_error(l, "socket", errno, error);
    int r = bind(fd, (struct sockaddr *) &sun, sizeof(sun));
    if (r < 0 && errno == EADDRINUSE && unix_socket_stale(&sun)) {
        unlink(sun.sun_path);
        r = bind(fd, (struct sockaddr *) &sun, sizeof(sun));
    }
    struct stat st;
    if (r < 0 || listen(fd, LISTEN_BACKLOG) < 0 || stat(sun.sun_path, &st) < 0) {
        int e = errno;
        close(fd);
        return listen_error(l, "bind", e, error);
    }
    l->fd = fd;
    l->unix_path = g_strdup(uri->path);
    l->unix_dev = st.st_dev;
    l->unix_ino = st.st_ino;
    return TRUE;
}

FerryMigrationListener *ferry_migration_listen(const FerryMigrationUri *uri,
                                               const FerryTlsOptions *tls, GError **error)
{
    g_autoptr(FerryMigrationListener) l = listener_new(uri);
    switch (uri->transport) {
    case FERRY_MIGRATION_TRANSPORT_TLS:
        l->creds = ferry_tls_creds_load(tls ? tls->dir : NULL, FERRY_TLS_DESTINATION, error);
        if (!l->creds)
            return NULL;
        /* fall through */
    case FERRY_MIGRATION_TRANSPORT_TCP:
        if (!tcp_listen(l, uri, error))
            return NULL;
        break;
    case FERRY_MIGRATION_TRANSPORT_UNIX:
        if (!unix_listen(l, uri, error))
            return NULL;
        break;
    case FERRY_MIGRATION_TRANSPORT_FD:
        if (!check_fd(uri->fd, error))
            return NULL;
        l->fd = uri->fd;
        break;
    }
    return g_steal_pointer(&l);
}

guint16 ferry_migration_listener_port(const FerryMigrationListener *l)
{
    return l->port;
}

/* "10.0.0.1:50000" for an accepted TCP peer, NULL for others. */
static char *peer_name(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *) &ss, &len) < 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return NULL;
    g_autofree char *host = numeric_host((struct sockaddr *) &ss, len);
    guint16 port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                  : ((struct sockaddr_in *) &ss)->sin_port);
    return host_port(host, port);
}

/*
 * A tls: listener's check of the first byte a source sends: a TLS handshake record, or
 * plain data (a ferry stream begins with 0x89).  A plain source gets a fatal
 * protocol_version alert record (RFC 8446 sections 5.1 and 6), so that it can say "the
 * destination speaks TLS" instead of just "connection reset".
 */
static gboolean expect_tls_client(int fd, GError **error)
{
    uint8_t first;
    ssize_t n = -1;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, FERRY_TLS_HANDSHAKE_TIMEOUT_MS);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "the source sent nothing for %d s after connecting",
                    FERRY_TLS_HANDSHAKE_TIMEOUT_MS / 1000);
        return FALSE;
    }
    do
        n = recv(fd, &first, 1, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        int e = errno;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                    "lost before the TLS handshake: %s", g_strerror(e));
        return FALSE;
    }
    if (n == 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "the source closed the connection without starting the TLS handshake");
        return FALSE;
    }
    if (first == 0x16)
        return TRUE;
    static const uint8_t alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46};
    ssize_t ignored = send(fd, alert, sizeof(alert), MSG_NOSIGNAL | MSG_DONTWAIT);
    (void) ignored;
    g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH,
                "the source does not speak TLS (its first byte is 0x%02x, not a TLS "
                "handshake); use tls: on both sides",
                first);
    return FALSE;
}

GIOStream *ferry_migration_listener_accept(FerryMigrationListener *l, GCancellable *cancellable,
                                           GError **error)
{
    if (l->transport == FERRY_MIGRATION_TRANSPORT_FD) {
        if (l->fd < 0) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_CLOSED,
                        "%s was already accepted: an fd: listener has one connection", l->text);
            return NULL;
        }
        if (g_cancellable_set_error_if_cancelled(cancellable, error))
            return NULL;
        g_autofree char *what = g_strdup_printf("connection on %s", l->text);
        int fd = l->fd;
        l->fd = -1;
        if (!set_socket_options(fd, error)) {
            close(fd);
            return NULL;
        }
        return ferry_channel_stream_new(fd, NULL, what, "source");
    }

    int fd;
    for (;;) {
        if (!wait_fd(l->fd, G_IO_IN, cancellable, error))
            return NULL;
        fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            break;
        int e = errno;
        if (e == EINTR || e == EAGAIN || e == ECONNABORTED)
            continue;
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "accepting on %s: %s", l->text,
                    g_strerror(e));
        return NULL;
    }
    if (!set_socket_options(fd, error)) {
        close(fd);
        return NULL;
    }
    g_autofree char *peer = peer_name(fd);
    g_autofree char *what = peer ? g_strdup_printf("connection from %s", peer)
                                 : g_strdup_printf("connection on %s", l->text);
    if (!peer)
        peer = g_strdup(l->text);
    FerryTlsSession *session = NULL;
    if (l->creds) {
        gulong handler = 0;
        if (cancellable)
            handler = g_cancellable_connect(cancellable, G_CALLBACK(shutdown_on_cancel),
                                            GINT_TO_POINTER(fd), NULL);
        gboolean tls_client = expect_tls_client(fd, error);
        if (cancellable)
            g_cancellable_disconnect(cancellable, handler);
        if (g_cancellable_is_cancelled(cancellable)) {
            g_clear_error(error);
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "accepting on %s was cancelled",
                        l->text);
            tls_client = FALSE;
        }
        if (tls_client)
            session = handshake(l->creds, fd, peer, NULL, cancellable, error);
        if (!session) {
            if (!g_cancellable_is_cancelled(cancellable))
                g_prefix_error(error, "%s: ", what);
            close_refused(fd);
            return NULL;
        }
    }
    return ferry_channel_stream_new(fd, session, what, "source");
}

void ferry_migration_listener_free(FerryMigrationListener *l)
{
    if (!l)
        return;
    if (l->fd >= 0)
        close(l->fd);
    struct stat st;
    if (l->unix_path && stat(l->unix_path, &st) == 0 && st.st_dev == l->unix_dev &&
        st.st_ino == l->unix_ino)
        unlink(l->unix_path);
    ferry_tls_creds_unref(l->creds);
    g_free(l->unix_path);
    g_free(l->text);
    g_free(l);
}

/*
 * Migration connections: URIs, connecting (source), listening and accepting (destination),
 * and the GIOStream a state stream (stream.h) is written to and read from.
 *
 * Transports (docs/migration-protocol.md, "Connections and TLS"):
 *
 *   tcp:HOST:PORT   plain TCP; HOST is a name, an IPv4 literal or "[IPv6 literal]"
 *   tls:HOST:PORT   TCP with TLS and x509 mutual authentication (tls.h, gnutls)
 *   unix:PATH       a unix stream socket (a local destination, tests)
 *   fd:N            an already-connected stream socket handed over by the caller
 *
 * Every connection is one GIOStream: its input and output streams may be used at the same
 * time by two threads (one writes the forward stream, the other reads the return path);
 * each stream on its own is for one thread.  I/O is blocking.  TCP connections use
 * keepalive probes and TCP_USER_TIMEOUT so that a link that went down fails reads and
 * writes within about 10 s; errors read "connection to 10.0.0.2:4444 lost: Connection
 * timed out" ("connection from ..." on the destination).
 *
 * A GCancellable given to a read or write, or ferry_migration_channel_abort(), shuts the
 * socket down: every thread blocked on the connection returns G_IO_ERROR_CANCELLED at once,
 * and the connection is unusable afterwards (migrate-cancel).  Closing the GIOStream sends
 * TLS close_notify, shuts the socket down (waking a thread still reading) and closes it
 * once the last reference is gone; close only after the writing thread has finished.
 * Closing the output stream alone half-closes (close_notify, then FIN) so the peer reads
 * the end while the return path stays open.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>

typedef enum {
    FERRY_MIGRATION_TRANSPORT_TCP,
    FERRY_MIGRATION_TRANSPORT_TLS,
    FERRY_MIGRATION_TRANSPORT_UNIX,
    FERRY_MIGRATION_TRANSPORT_FD,
} FerryMigrationTransport;

typedef struct {
    FerryMigrationTransport transport;
    char *host;   /* tcp/tls: name or IPv4/IPv6 literal (without the URI's brackets) */
    guint16 port; /* tcp/tls; 0 only for listening (any free port) */
    char *path;   /* unix: 1..107 bytes */
    int fd;       /* fd: an already-connected stream socket (else -1); see below */
} FerryMigrationUri;

/*
 * Parses "tcp:HOST:PORT", "tls:HOST:PORT", "unix:PATH" or "fd:N" into @uri (its previous
 * contents are ignored; free with ferry_migration_uri_clear()).  Fails with
 * G_IO_ERROR_INVALID_ARGUMENT naming the bad part: "migration URI 'tcp:host:http': the port
 * 'http' is not a number 0..65535".  Parsing an fd: URI takes nothing over; the fd passes to
 * the connection or listener made from it.
 */
gboolean ferry_migration_uri_parse(const char *text, FerryMigrationUri *uri, GError **error);

/* The URI in the syntax above ("tls:[::1]:4444"); free with g_free(). */
char *ferry_migration_uri_to_string(const FerryMigrationUri *uri);

/* Frees the strings of @uri and resets it (does not close @uri->fd). */
void ferry_migration_uri_clear(FerryMigrationUri *uri);

typedef struct {
    const char *dir;      /* certificate directory (tls.h), NULL = "/etc/pki/ferry" */
    const char *hostname; /* client: name the server certificate must carry; NULL = URI host */
} FerryTlsOptions;

/*
 * Source side: connects to @uri and, for tls:, runs the handshake and verifies the
 * destination (@tls: nullable, only for tls:).  Blocking; @cancellable (nullable) aborts
 * it with G_IO_ERROR_CANCELLED.  For fd:, the socket must be a connected stream socket;
 * the returned connection owns it (on error it stays the caller's).  Errors name the URI
 * and the cause: "cannot connect to tcp:10.0.0.2:4444: Connection refused (is the
 * destination listening?)"; TLS errors are FERRY_TLS_ERROR (tls.h).
 */
GIOStream *ferry_migration_connect(const FerryMigrationUri *uri, const FerryTlsOptions *tls,
                                   GCancellable *cancellable, GError **error);

typedef struct FerryMigrationListener FerryMigrationListener;

/*
 * Destination side: binds and listens on @uri (tcp/tls: the first address HOST resolves
 * to, port 0 = any free port; unix: creates the socket file, replacing a stale one; fd:
 * keeps the handed-over connected socket, owned by the listener from here on).  For tls:
 * the certificates are loaded now, so missing files are reported before anyone connects.
 */
FerryMigrationListener *ferry_migration_listen(const FerryMigrationUri *uri,
                                               const FerryTlsOptions *tls, GError **error);

/* The bound port (tcp/tls), 0 for other transports. */
guint16 ferry_migration_listener_port(const FerryMigrationListener *l);

/*
 * Waits for the next connection (tls: handshake + verification of the source).  Blocking;
 * @cancellable aborts it.  For fd: returns the handed-over socket the first time, then
 * fails.  A failed handshake fails this call (the next call waits for another source).
 * A tls: listener refuses a source that sends plain data ("the source at 10.0.0.1:50000
 * does not speak TLS; use tls: on both sides") and answers it with a TLS alert, which a
 * plain source reports as "the destination speaks TLS".
 */
GIOStream *ferry_migration_listener_accept(FerryMigrationListener *l, GCancellable *cancellable,
                                           GError **error);

/* Closes the listening socket (and removes a unix socket file this listener made). */
void ferry_migration_listener_free(FerryMigrationListener *l);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryMigrationListener, ferry_migration_listener_free)

/*
 * Makes every thread blocked in a read or write on @s (a connection from this file) return
 * G_IO_ERROR_CANCELLED promptly (shutdown(2) of the socket), and every later one too.
 * Safe from any thread while the caller holds a reference to @s.
 */
void ferry_migration_channel_abort(GIOStream *s);

/*
 * "TLS1.3 AES-256-GCM" for a tls: connection, NULL for a plain one (borrowed, valid while
 * @s lives).
 */
const char *ferry_migration_channel_security(GIOStream *s);

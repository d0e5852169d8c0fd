/*
 * TLS for migration connections (tls: URIs, channel.h): gnutls sessions with x509 mutual
 * authentication over a connected, blocking stream socket.
 *
 * The source is the TLS client and the destination the TLS server.  Both load their
 * certificates from one directory laid out like QEMU's (docs/migration-protocol.md,
 * "Connections and TLS"):
 *
 *   ca-cert.pem                        the CA both sides trust (PEM, may hold several)
 *   server-cert.pem, server-key.pem    this host as a destination
 *   client-cert.pem, client-key.pem    this host as a source
 *
 * The destination requires a client certificate; each side checks that the peer's
 * certificate chains to ca-cert.pem, is within its validity period and has the extended key
 * usage of its role (TLS server / TLS client); the source also checks that the destination's
 * certificate carries the name it connected to (a DNS name in a dNSName SAN, an IP literal
 * in an iPAddress SAN; RFC 6125).  Priority string "NORMAL" (gnutls' defaults: TLS 1.3 or
 * 1.2, AES-GCM first).  No session tickets or resumption: every connection does a full
 * handshake.
 *
 * A session may be used by two threads at once, one sending and one receiving (gnutls
 * supports that; TLS 1.3 key updates the peer asks for are sent from the sending side).
 * Nothing here serializes the two directions.
 */
#pragma once

#include <glib.h>
#include <stddef.h>

#define FERRY_TLS_PRIORITY    "NORMAL"
#define FERRY_TLS_DEFAULT_DIR "/etc/pki/ferry"

/* A peer that accepted the TCP connection but does not go on with the handshake: ms. */
#define FERRY_TLS_HANDSHAKE_TIMEOUT_MS 30000

#define FERRY_TLS_ERROR (ferry_tls_error_quark())
GQuark ferry_tls_error_quark(void);

typedef enum {
    FERRY_TLS_ERROR_FILES,          /* a certificate or key file missing, unreadable or bad */
    FERRY_TLS_ERROR_MISMATCH,       /* one side uses tls:, the other plain tcp: */
    FERRY_TLS_ERROR_HANDSHAKE,      /* the handshake failed otherwise (peer silent, closed) */
    FERRY_TLS_ERROR_NO_CERTIFICATE, /* the peer presented no certificate */
    FERRY_TLS_ERROR_UNTRUSTED,      /* the peer's certificate does not chain to our CA */
    FERRY_TLS_ERROR_EXPIRED,        /* ... has expired or is not valid yet */
    FERRY_TLS_ERROR_NAME,           /* ... does not carry the name the source connected to */
    FERRY_TLS_ERROR_PURPOSE,        /* ... is not for this role (client cert on a server) */
    FERRY_TLS_ERROR_REFUSED,        /* the peer refused us with a TLS alert */
    FERRY_TLS_ERROR_RECORD,         /* a received record failed its integrity check */
} FerryTlsError;

typedef enum {
    FERRY_TLS_SOURCE,      /* TLS client: client-cert.pem, client-key.pem */
    FERRY_TLS_DESTINATION, /* TLS server: server-cert.pem, server-key.pem */
} FerryTlsRole;

/* ---- Credentials: one role's certificate, key and CA, loaded once (reference counted) ---- */

typedef struct FerryTlsCreds FerryTlsCreds;

/*
 * Loads the CA and this host's certificate and key for @role from @dir (NULL =
 * FERRY_TLS_DEFAULT_DIR).  FERRY_TLS_ERROR_FILES names the file that is missing,
 * unreadable, not PEM, or whose key does not match its certificate.
 */
FerryTlsCreds *ferry_tls_creds_load(const char *dir, FerryTlsRole role, GError **error);
FerryTlsCreds *ferry_tls_creds_ref(FerryTlsCreds *creds);
void ferry_tls_creds_unref(FerryTlsCreds *creds);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTlsCreds, ferry_tls_creds_unref)

/* ---- Sessions ---- */

typedef struct FerryTlsSession FerryTlsSession;

/*
 * Runs the handshake for @creds' role on @fd (a connected, blocking stream socket; not
 * owned, must outlive the session) and verifies the peer.  @peer ("10.0.0.2:4444",
 * borrowed) names the other end in messages.  @expected_name (source only) is the DNS name
 * or IP literal the destination's certificate must carry.
 *
 * Blocking; to abort it, shut @fd down from another thread (the caller then reports the
 * cancellation).  Errors (FERRY_TLS_ERROR) say what failed on this side: "the destination's
 * certificate expired on 2026-01-01", "the source presented no client certificate", "the
 * peer at 10.0.0.2:4444 did not answer the TLS handshake (is it listening for plain tcp:?)",
 * "the destination refused the TLS session with alert 'Unknown CA' (...)".  On a
 * verification failure the peer is told why with an alert (RFC 8446 section 6.2).
 */
FerryTlsSession *ferry_tls_session_new(FerryTlsCreds *creds, int fd, const char *peer,
                                       const char *expected_name, GError **error);

/*
 * Reads up to @count bytes of application data (one TLS record's worth, at most 16 KiB,
 * plus what gnutls already has buffered).  Returns the number of bytes (> 0), 0 when the
 * peer ended the session (close_notify), or -1 with @error set: G_IO_ERROR from the socket
 * ("Connection reset by peer"), G_IO_ERROR_CONNECTION_CLOSED for a connection closed
 * without close_notify, FERRY_TLS_ERROR_REFUSED for a fatal alert, FERRY_TLS_ERROR_RECORD
 * for a record that failed to decrypt.  Messages do not name the peer (the caller does).
 */
gssize ferry_tls_session_recv(FerryTlsSession *s, void *buf, size_t count, GError **error);

/* Sends all of @buf[0..@count) as records of up to 16 KiB.  Errors as for recv. */
gboolean ferry_tls_session_send_all(FerryTlsSession *s, const void *buf, size_t count,
                                    GError **error);

/*
 * After a send failed because the peer reset the connection: reads what the peer sent last
 * without blocking, and if that was a fatal alert (it refused our certificate after a TLS
 * 1.3 handshake had completed on our side), replaces *@error with FERRY_TLS_ERROR_REFUSED
 * explaining it.  Must not run while another thread is in ferry_tls_session_recv().
 */
void ferry_tls_session_explain_reset(FerryTlsSession *s, GError **error);

/* Sends close_notify (gnutls_bye GNUTLS_SHUT_WR); nothing more may be sent afterwards. */
gboolean ferry_tls_session_bye(FerryTlsSession *s, GError **error);

/* "TLS1.3 AES-256-GCM" (protocol and cipher; borrowed, valid for the session's life). */
const char *ferry_tls_session_describe(const FerryTlsSession *s);

/* Frees @s (without sending anything; does not close the socket). */
void ferry_tls_session_free(FerryTlsSession *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTlsSession, ferry_tls_session_free)

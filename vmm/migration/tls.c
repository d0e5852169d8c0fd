#include "migration/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

G_DEFINE_QUARK(ferry-tls-error-quark, ferry_tls_error)

struct FerryTlsCreds {
    gatomicrefcount ref;
    FerryTlsRole role;
    char *ca_path; /* for messages */
    gnutls_certificate_credentials_t x509;
    gnutls_priority_t priority;
};

struct FerryTlsSession {
    gnutls_session_t gs;
    FerryTlsCreds *creds; /* referenced: gnutls uses them for the session's life */
    int fd;
    char *peer;          /* "10.0.0.2:4444" */
    char *expected_name; /* source: the destination's name or IP literal */
    char *description;   /* "TLS1.3 AES-256-GCM", after the handshake */
    /* The outcome of verify_peer(), which gnutls calls during the handshake. */
    GError *verify_error;
    gnutls_alert_description_t verify_alert;
    /* Written by the pull (receiving) and push (sending) sides respectively. */
    int recv_errno, send_errno;
    uint64_t received; /* bytes read from the socket */
};

/* The other end, as the user knows it. */
static const char *peer_role(const FerryTlsCreds *c)
{
    return c->role == FERRY_TLS_SOURCE ? "destination" : "source";
}

/* ---- credentials -------------------------------------------------------------------- */

static gboolean check_readable(const char *path, const char *dir, FerryTlsRole role, GError **error)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return TRUE;
    }
    int e = errno;
    if (e == ENOENT) {
        const char *who = role == FERRY_TLS_SOURCE ? "source" : "destination";
        const char *mine = role == FERRY_TLS_SOURCE ? "client" : "server";
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES,
                    "%s is missing: a migration %s needs ca-cert.pem, %s-cert.pem and "
                    "%s-key.pem in %s (contrib/ferry-certs makes them)",
                    path, who, mine, mine, dir);
    } else {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES, "cannot read %s: %s", path,
                    g_strerror(e));
    }
    return FALSE;
}

static int verify_peer(gnutls_session_t gs);

FerryTlsCreds *ferry_tls_creds_load(const char *dir, FerryTlsRole role, GError **error)
{
    if (!dir)
        dir = FERRY_TLS_DEFAULT_DIR;
    const char *mine = role == FERRY_TLS_SOURCE ? "client" : "server";
    g_autofree char *ca = g_build_filename(dir, "ca-cert.pem", NULL);
    g_autofree char *cert_name = g_strdup_printf("%s-cert.pem", mine);
    g_autofree char *key_name = g_strdup_printf("%s-key.pem", mine);
    g_autofree char *cert = g_build_filename(dir, cert_name, NULL);
    g_autofree char *key = g_build_filename(dir, key_name, NULL);
    if (!check_readable(ca, dir, role, error) || !check_readable(cert, dir, role, error) ||
        !check_readable(key, dir, role, error))
        return NULL;

    g_autoptr(FerryTlsCreds) c = g_new0(FerryTlsCreds, 1);
    g_atomic_ref_count_init(&c->ref);
    c->role = role;
    c->ca_path = g_steal_pointer(&ca);
    int ret = gnutls_certificate_allocate_credentials(&c->x509);
    if (ret < 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES,
                    "cannot allocate TLS credentials: %s", gnutls_strerror(ret));
        return NULL;
    }
    ret = gnutls_certificate_set_x509_trust_file(c->x509, c->ca_path, GNUTLS_X509_FMT_PEM);
    if (ret <= 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES,
                    "%s holds no usable CA certificate: %s", c->ca_path,
                    ret == 0 ? "no PEM certificate found" : gnutls_strerror(ret));
        return NULL;
    }
    ret = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (ret < 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES,
                    "cannot use the certificate %s with the key %s: %s", cert, key,
                    gnutls_strerror(ret));
        return NULL;
    }
    gnutls_certificate_set_verify_function(c->x509, verify_peer);
    const char *err_pos = NULL;
    ret = gnutls_priority_init(&c->priority, FERRY_TLS_PRIORITY, &err_pos);
    if (ret < 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "gnutls refuses the priority string \"%s\" at \"%s\": %s", FERRY_TLS_PRIORITY,
                    err_pos ? err_pos : "", gnutls_strerror(ret));
        return NULL;
    }
    return g_steal_pointer(&c);
}

FerryTlsCreds *ferry_tls_creds_ref(FerryTlsCreds *c)
{
    g_atomic_ref_count_inc(&c->ref);
    return c;
}

void ferry_tls_creds_unref(FerryTlsCreds *c)
{
    if (!c || !g_atomic_ref_count_dec(&c->ref))
        return;
    if (c->priority)
        gnutls_priority_deinit(c->priority);
    if (c->x509)
        gnutls_certificate_free_credentials(c->x509);
    g_free(c->ca_path);
    g_free(c);
}

/* ---- explaining a certificate the peer presented ------------------------------------ */

static char *format_date(time_t t)
{
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);
    return dt ? g_date_time_format(dt, "%Y-%m-%d") : g_strdup("an unknown date");
}

/* "'host-b', '10.0.0.2'": the certificate's DNS and IP subject alternative names, else CN. */
static char *certificate_names(gnutls_x509_crt_t crt)
{
    GString *names = g_string_new(NULL);
    for (unsigned i = 0;; i++) {
        char buf[256], text[INET6_ADDRSTRLEN];
        size_t size = sizeof(buf) - 1;
        unsigned critical;
        int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &size, &critical);
        if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
            break;
        g_autofree char *name = NULL;
        if (type == GNUTLS_SAN_DNSNAME) {
            buf[size] = '\0';
            name = g_strescape(buf, NULL);
        } else if (type == GNUTLS_SAN_IPADDRESS && (size == 4 || size == 16) &&
                   inet_ntop(size == 4 ? AF_INET : AF_INET6, buf, text, sizeof(text))) {
            name = g_strdup(text);
        }
        if (name)
            g_string_append_printf(names, "%s'%s'", names->len ? ", " : "", name);
    }
    if (names->len == 0) {
        char cn[256];
        size_t size = sizeof(cn);
        if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &size) == 0) {
            g_autofree char *escaped = g_strescape(cn, NULL);
            g_string_append_printf(names, "'%s' (a common name without alternative names)",
                                   escaped);
        } else {
            g_string_append(names, "no name");
        }
    }
    return g_string_free(names, FALSE);
}

/*
 * Turns gnutls' verification @status into one message about the most fundamental problem:
 * trust first (nothing else matters for a certificate of unknown origin), then validity
 * dates, then the name, then the key usage.
 */
static void explain_status(FerryTlsSession *s, unsigned status, gnutls_x509_crt_t crt,
                           GError **error)
{
    const char *who = peer_role(s->creds);
    int code = FERRY_TLS_ERROR_UNTRUSTED;
    char *msg;

    s->verify_alert = GNUTLS_A_BAD_CERTIFICATE;
    if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA |
                  GNUTLS_CERT_SIGNER_CONSTRAINTS_FAILURE)) {
        s->verify_alert = GNUTLS_A_UNKNOWN_CA;
        msg = g_strdup_printf("the %s's certificate is not signed by the CA in %s", who,
                              s->creds->ca_path);
    } else if (status & GNUTLS_CERT_SIGNATURE_FAILURE) {
        msg = g_strdup_printf("the %s's certificate has a bad signature (damaged, or not made "
                              "by the CA in %s)",
                              who, s->creds->ca_path);
    } else if (status & GNUTLS_CERT_INSECURE_ALGORITHM) {
        msg = g_strdup_printf("the %s's certificate is signed with an algorithm gnutls "
                              "considers insecure; make a new one (contrib/ferry-certs)",
                              who);
    } else if (status & GNUTLS_CERT_EXPIRED) {
        code = FERRY_TLS_ERROR_EXPIRED;
        s->verify_alert = GNUTLS_A_CERTIFICATE_EXPIRED;
        time_t end = crt ? gnutls_x509_crt_get_expiration_time(crt) : (time_t) -1;
        if (end != (time_t) -1 && end < time(NULL)) {
            g_autofree char *date = format_date(end);
            msg = g_strdup_printf("the %s's certificate expired on %s", who, date);
        } else {
            msg = g_strdup_printf("the %s's certificate chains to a CA certificate that has "
                                  "expired (%s or the %s's own CA)",
                                  who, s->creds->ca_path, who);
        }
    } else if (status & GNUTLS_CERT_NOT_ACTIVATED) {
        code = FERRY_TLS_ERROR_EXPIRED;
        time_t start = crt ? gnutls_x509_crt_get_activation_time(crt) : (time_t) -1;
        g_autofree char *date = format_date(start);
        msg = g_strdup_printf("the %s's certificate is not valid before %s (is this host's "
                              "clock right?)",
                              who, date);
    } else if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
        code = FERRY_TLS_ERROR_NAME;
        g_autofree char *names = crt ? certificate_names(crt) : g_strdup("another name");
        msg = g_strdup_printf("the %s's certificate is for %s, not '%s' (set tls-hostname if "
                              "that is intended)",
                              who, names, s->expected_name);
    } else if (status & GNUTLS_CERT_PURPOSE_MISMATCH) {
        code = FERRY_TLS_ERROR_PURPOSE;
        s->verify_alert = GNUTLS_A_UNSUPPORTED_CERTIFICATE;
        msg = g_strdup_printf("the %s's certificate is not meant for a TLS %s (its extended key "
                              "usage lacks %s; were the %s and %s files swapped?)",
                              who, s->creds->role == FERRY_TLS_SOURCE ? "server" : "client",
                              s->creds->role == FERRY_TLS_SOURCE ? "serverAuth" : "clientAuth",
                              s->creds->role == FERRY_TLS_SOURCE ? "server-*.pem" : "client-*.pem",
                              s->creds->role == FERRY_TLS_SOURCE ? "client-*.pem" : "server-*.pem");
    } else {
        gnutls_datum_t text = {0};
        gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0);
        msg = g_strdup_printf("the %s's certificate was refused: %s", who,
                              text.data ? (const char *) text.data : "unknown problem");
        gnutls_free(text.data);
    }
    g_set_error_literal(error, FERRY_TLS_ERROR, code, msg);
    g_free(msg);
}

static gboolean check_peer(FerryTlsSession *s, GError **error)
{
    unsigned n_certs = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s->gs, &n_certs);
    if (!certs || n_certs == 0) {
        s->verify_alert = GNUTLS_A_CERTIFICATE_REQUIRED;
        if (s->creds->role == FERRY_TLS_DESTINATION)
            g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_NO_CERTIFICATE,
                        "the source presented no client certificate (its TLS directory "
                        "needs client-cert.pem and client-key.pem)");
        else
            g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_NO_CERTIFICATE,
                        "the destination presented no certificate");
        return FALSE;
    }

    gnutls_typed_vdata_st data[2];
    unsigned n = 0;
    uint8_t ip[16];
    if (s->creds->role == FERRY_TLS_SOURCE) {
        if (inet_pton(AF_INET, s->expected_name, ip) == 1)
            data[n++] = (gnutls_typed_vdata_st){GNUTLS_DT_IP_ADDRESS, ip, 4};
        else if (inet_pton(AF_INET6, s->expected_name, ip) == 1)
            data[n++] = (gnutls_typed_vdata_st){GNUTLS_DT_IP_ADDRESS, ip, 16};
        else
            data[n++] = (gnutls_typed_vdata_st){GNUTLS_DT_DNS_HOSTNAME,
                                                (unsigned char *) s->expected_name, 0};
        data[n++] = (gnutls_typed_vdata_st){GNUTLS_DT_KEY_PURPOSE_OID,
                                            (unsigned char *) GNUTLS_KP_TLS_WWW_SERVER, 0};
    } else {
        data[n++] = (gnutls_typed_vdata_st){GNUTLS_DT_KEY_PURPOSE_OID,
                                            (unsigned char *) GNUTLS_KP_TLS_WWW_CLIENT, 0};
    }
    unsigned status = 0;
    int ret = gnutls_certificate_verify_peers(s->gs, data, n, &status);
    if (ret < 0) {
        s->verify_alert = GNUTLS_A_BAD_CERTIFICATE;
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_UNTRUSTED,
                    "cannot verify the %s's certificate: %s", peer_role(s->creds),
                    gnutls_strerror(ret));
        return FALSE;
    }
    if (status == 0)
        return TRUE;

    gnutls_x509_crt_t crt = NULL;
    if (gnutls_x509_crt_init(&crt) == 0 &&
        gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) < 0) {
        gnutls_x509_crt_deinit(crt);
        crt = NULL;
    }
    explain_status(s, status, crt, error);
    if (crt)
        gnutls_x509_crt_deinit(crt);
    return FALSE;
}

/* gnutls calls this during the handshake once the peer's certificate arrived. */
static int verify_peer(gnutls_session_t gs)
{
    FerryTlsSession *s = gnutls_session_get_ptr(gs);
    g_clear_error(&s->verify_error);
    if (!check_peer(s, &s->verify_error))
        return GNUTLS_E_CERTIFICATE_ERROR;
    return 0;
}

/* ---- transport: the socket, with errno kept per direction --------------------------- */

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t size)
{
    FerryTlsSession *s = ptr;
    ssize_t n = recv(s->fd, buf, size, 0);
    if (n < 0)
        s->recv_errno = errno;
    else
        s->received += (uint64_t) n;
    return n;
}

static int tls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned ms)
{
    FerryTlsSession *s = ptr;
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    return poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int) ms);
}

static ssize_t tls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t size)
{
    FerryTlsSession *s = ptr;
    ssize_t n = send(s->fd, buf, size, MSG_NOSIGNAL);
    if (n < 0)
        s->send_errno = errno;
    return n;
}

static ssize_t tls_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int iovcnt)
{
    FerryTlsSession *s = ptr;
    struct msghdr m = {.msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) iovcnt};
    ssize_t n = sendmsg(s->fd, &m, MSG_NOSIGNAL);
    if (n < 0)
        s->send_errno = errno;
    return n;
}

/* ---- errors ------------------------------------------------------------------------- */

/* The peer sent a fatal alert: say what it most likely means. */
static void set_refused(FerryTlsSession *s, const char *what, GError **error)
{
    gnutls_alert_description_t alert = gnutls_alert_get(s->gs);
    const char *name = gnutls_alert_get_name(alert);
    const char *why = "";
    switch (alert) {
    case GNUTLS_A_UNKNOWN_CA:
        why = ": it does not trust this host's certificate (made by another CA?)";
        break;
    case GNUTLS_A_CERTIFICATE_EXPIRED:
        why = ": it says this host's certificate has expired";
        break;
    case GNUTLS_A_CERTIFICATE_REQUIRED:
        why = ": it requires a client certificate";
        break;
    case GNUTLS_A_BAD_CERTIFICATE:
    case GNUTLS_A_UNSUPPORTED_CERTIFICATE:
    case GNUTLS_A_CERTIFICATE_UNKNOWN:
        why = ": it refused this host's certificate";
        break;
    case GNUTLS_A_PROTOCOL_VERSION:
    case GNUTLS_A_HANDSHAKE_FAILURE:
    case GNUTLS_A_INSUFFICIENT_SECURITY:
        why = ": the two sides have no TLS version or cipher suite in common";
        break;
    default:
        break;
    }
    g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_REFUSED,
                "the %s %s with alert '%s'%s; the %s's log says more", peer_role(s->creds), what,
                name ? name : "unknown", why, peer_role(s->creds));
}

/* A failed record send or receive (@err_no: the direction's errno for transport errors). */
static void record_error(FerryTlsSession *s, ssize_t ret, int err_no, GError **error)
{
    switch (ret) {
    case GNUTLS_E_PULL_ERROR:
    case GNUTLS_E_PUSH_ERROR:
        g_set_error_literal(error, G_IO_ERROR, g_io_error_from_errno(err_no), g_strerror(err_no));
        break;
    case GNUTLS_E_PREMATURE_TERMINATION:
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                    "the %s closed the connection without ending the TLS session",
                    peer_role(s->creds));
        break;
    case GNUTLS_E_FATAL_ALERT_RECEIVED:
        set_refused(s, "ended the TLS session", error);
        break;
    case GNUTLS_E_INVALID_SESSION:
        /* an earlier send or receive already failed: the transport is gone */
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                    "the TLS session ended after an earlier failure: the %s went away or the "
                    "network failed",
                    peer_role(s->creds));
        break;
    case GNUTLS_E_DECRYPTION_FAILED:
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_RECORD,
                    "a TLS record failed its integrity check (corrupted in transit, or "
                    "tampered with)");
        break;
    default:
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "TLS: %s", gnutls_strerror((int) ret));
        break;
    }
}

static void handshake_error(FerryTlsSession *s, int ret, GError **error)
{
    const char *who = peer_role(s->creds);
    gboolean source = s->creds->role == FERRY_TLS_SOURCE;
    int err_no = ret == GNUTLS_E_PUSH_ERROR ? s->send_errno : s->recv_errno;

    if (s->verify_error) {
        g_propagate_error(error, g_steal_pointer(&s->verify_error));
        return;
    }
    switch (ret) {
    case GNUTLS_E_FATAL_ALERT_RECEIVED:
        set_refused(s, "refused the TLS session", error);
        return;
    case GNUTLS_E_NO_CERTIFICATE_FOUND:
    case GNUTLS_E_CERTIFICATE_REQUIRED:
        if (check_peer(s, error))
            g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_NO_CERTIFICATE,
                        "the %s presented no certificate", who);
        return;
    case GNUTLS_E_PULL_ERROR:
    case GNUTLS_E_PUSH_ERROR:
        if (err_no != ECONNRESET && err_no != EPIPE) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(err_no),
                        "the connection to the %s was lost during the TLS handshake: %s", who,
                        g_strerror(err_no));
            return;
        }
        break; /* the peer closed: as below */
    case GNUTLS_E_PREMATURE_TERMINATION:
    case GNUTLS_E_TIMEDOUT:
    case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
    case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
    case GNUTLS_E_UNEXPECTED_PACKET:
        break;
    default:
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "the TLS handshake with the %s failed: %s", who, gnutls_strerror(ret));
        return;
    }

    /* A source whose peer says nothing, or hangs up at once: probably a plain listener. */
    if (source && (ret == GNUTLS_E_TIMEDOUT || s->received == 0))
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "the peer at %s did not answer the TLS handshake%s (is it listening for "
                    "plain tcp:?)",
                    s->peer, ret == GNUTLS_E_TIMEDOUT ? " in time" : "");
    else if (ret == GNUTLS_E_UNEXPECTED_PACKET_LENGTH ||
             ret == GNUTLS_E_UNSUPPORTED_VERSION_PACKET || ret == GNUTLS_E_UNEXPECTED_PACKET)
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH,
                    "the %s does not speak TLS; use tls: on both sides", who);
    else if (ret == GNUTLS_E_TIMEDOUT)
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "the %s did not complete the TLS handshake within %d s", who,
                    FERRY_TLS_HANDSHAKE_TIMEOUT_MS / 1000);
    else
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "the %s closed the connection during the TLS handshake", who);
}

/* ---- sessions ----------------------------------------------------------------------- */

FerryTlsSession *ferry_tls_session_new(FerryTlsCreds *creds, int fd, const char *peer,
                                       const char *expected_name, GError **error)
{
    gboolean source = creds->role == FERRY_TLS_SOURCE;
    g_return_val_if_fail(!source || expected_name, NULL);

    g_autoptr(FerryTlsSession) s = g_new0(FerryTlsSession, 1);
    s->creds = ferry_tls_creds_ref(creds);
    s->fd = fd;
    s->peer = g_strdup(peer);
    s->expected_name = g_strdup(expected_name);

    int ret = gnutls_init(&s->gs, (source ? GNUTLS_CLIENT : GNUTLS_SERVER) | GNUTLS_NO_SIGNAL |
                                      GNUTLS_NO_TICKETS);
    if (ret == 0)
        ret = gnutls_priority_set(s->gs, creds->priority);
    if (ret == 0)
        ret = gnutls_credentials_set(s->gs, GNUTLS_CRD_CERTIFICATE, creds->x509);
    if (ret == 0 && source && !g_hostname_is_ip_address(expected_name))
        ret = gnutls_server_name_set(s->gs, GNUTLS_NAME_DNS, expected_name, strlen(expected_name));
    if (ret < 0) {
        g_set_error(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE,
                    "cannot set up a TLS session: %s", gnutls_strerror(ret));
        return NULL;
    }
    if (!source)
        gnutls_certificate_server_set_request(s->gs, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_ptr(s->gs, s);
    gnutls_transport_set_ptr(s->gs, s);
    gnutls_transport_set_pull_function(s->gs, tls_pull);
    gnutls_transport_set_pull_timeout_function(s->gs, tls_pull_timeout);
    gnutls_transport_set_push_function(s->gs, tls_push);
    gnutls_transport_set_vec_push_function(s->gs, tls_vec_push);
    gnutls_handshake_set_timeout(s->gs, FERRY_TLS_HANDSHAKE_TIMEOUT_MS);

    do
        ret = gnutls_handshake(s->gs);
    while (ret < 0 && !gnutls_error_is_fatal(ret));
    if (ret < 0) {
        /* Tell the peer why, when the refusal is ours; it reports the alert. */
        if (s->verify_error)
            gnutls_alert_send(s->gs, GNUTLS_AL_FATAL, s->verify_alert);
        else if (ret != GNUTLS_E_FATAL_ALERT_RECEIVED && ret != GNUTLS_E_PULL_ERROR &&
                 ret != GNUTLS_E_PUSH_ERROR && ret != GNUTLS_E_PREMATURE_TERMINATION &&
                 ret != GNUTLS_E_TIMEDOUT)
            gnutls_alert_send_appropriate(s->gs, ret);
        handshake_error(s, ret, error);
        return NULL;
    }
    s->description =
        g_strdup_printf("%s %s", gnutls_protocol_get_name(gnutls_protocol_get_version(s->gs)),
                        gnutls_cipher_get_name(gnutls_cipher_get(s->gs)));
    return g_steal_pointer(&s);
}

gssize ferry_tls_session_recv(FerryTlsSession *s, void *buf, size_t count, GError **error)
{
    ssize_t ret;
    do
        ret = gnutls_record_recv(s->gs, buf, count);
    while (ret == GNUTLS_E_INTERRUPTED || ret == GNUTLS_E_AGAIN ||
           ret == GNUTLS_E_WARNING_ALERT_RECEIVED);
    if (ret < 0) {
        record_error(s, ret, s->recv_errno, error);
        return -1;
    }
    /* Hand over whatever else gnutls has already decrypted (never blocks). */
    while (ret > 0 && (size_t) ret < count && gnutls_record_check_pending(s->gs) > 0) {
        ssize_t more = gnutls_record_recv(s->gs, (uint8_t *) buf + ret, count - (size_t) ret);
        if (more <= 0)
            break;
        ret += more;
    }
    return ret;
}

gboolean ferry_tls_session_send_all(FerryTlsSession *s, const void *buf, size_t count,
                                    GError **error)
{
    const uint8_t *p = buf;
    size_t done = 0;
    while (done < count) {
        ssize_t ret = gnutls_record_send(s->gs, p + done, count - done);
        if (ret == GNUTLS_E_INTERRUPTED || ret == GNUTLS_E_AGAIN)
            continue;
        if (ret < 0) {
            record_error(s, ret, s->send_errno, error);
            return FALSE;
        }
        done += (size_t) ret;
    }
    return TRUE;
}

void ferry_tls_session_explain_reset(FerryTlsSession *s, GError **error)
{
    if (s->send_errno != ECONNRESET && s->send_errno != EPIPE)
        return;
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return;
    /* The peer has closed, so this read ends at its last record or the reset. */
    uint8_t buf[512];
    ssize_t ret;
    do
        ret = gnutls_record_recv(s->gs, buf, sizeof(buf));
    while (ret == GNUTLS_E_INTERRUPTED || ret == GNUTLS_E_AGAIN);
    if (ret == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        g_clear_error(error);
        set_refused(s, "ended the TLS session", error);
    }
}

gboolean ferry_tls_session_bye(FerryTlsSession *s, GError **error)
{
    int ret;
    do
        ret = gnutls_bye(s->gs, GNUTLS_SHUT_WR);
    while (ret == GNUTLS_E_INTERRUPTED || ret == GNUTLS_E_AGAIN);
    if (ret < 0) {
        record_error(s, ret, s->send_errno, error);
        return FALSE;
    }
    return TRUE;
}

const char *ferry_tls_session_describe(const FerryTlsSession *s)
{
    return s->description;
}

void ferry_tls_session_free(FerryTlsSession *s)
{
    if (!s)
        return;
    if (s->gs)
        gnutls_deinit(s->gs);
    g_clear_error(&s->verify_error);
    ferry_tls_creds_unref(s->creds);
    g_free(s->peer);
    g_free(s->expected_name);
    g_free(s->description);
    g_free(s);
}

#include "control.h"

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib/gstdio.h>
#include <stdint.h>
#include <string.h>

#define READ_CHUNK 65536
#define MAX_QUEUED_OUTPUT (4 * 1024 * 1024) /* bytes a slow client may fall behind */

/*
 * A connected client.  It is freed only when no read or write is pending, so completion
 * callbacks never see freed memory: closing = no more reads; output still queued is sent
 * first unless the connection failed (drop_output).
 */
typedef struct {
    FerryControl *server; /* NULL once the server is gone */
    GSocketConnection *conn;
    GCancellable *cancel;
    GByteArray *inbuf;      /* bytes received, not yet a full line */
    uint8_t chunk[READ_CHUNK];
    GQueue outq;            /* GBytes waiting to be written */
    gsize queued;           /* bytes in outq */
    gboolean reading, writing, closing, drop_output;
} Client;

struct FerryControl {
    GSocketService *service;
    char *path;
    const FerryControlMethod *methods;
    void *opaque;
    GList *clients;
};

static void client_read(Client *cl);
static void write_next(Client *cl);

static void client_free(Client *cl)
{
    if (cl->server)
        cl->server->clients = g_list_remove(cl->server->clients, cl);
    g_io_stream_close(G_IO_STREAM(cl->conn), NULL, NULL);
    g_object_unref(cl->conn);
    g_object_unref(cl->cancel);
    g_byte_array_unref(cl->inbuf);
    g_queue_clear_full(&cl->outq, (GDestroyNotify) g_bytes_unref);
    g_free(cl);
}

/* Frees the client once it is closing and nothing is pending. */
static void maybe_free(Client *cl)
{
    if (!cl->closing || cl->reading || cl->writing)
        return;
    if (!cl->drop_output && !g_queue_is_empty(&cl->outq))
        return;
    client_free(cl);
}

/* Ends the connection at once (peer gone, server stopping, client too slow). */
static void client_abort(Client *cl)
{
    cl->closing = TRUE;
    cl->drop_output = TRUE;
    g_cancellable_cancel(cl->cancel);
    maybe_free(cl);
}

static void write_done(GObject *src, GAsyncResult *res, gpointer data)
{
    Client *cl = data;
    g_autoptr(GError) error = NULL;
    cl->writing = FALSE;
    if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(src), res, NULL, &error)) {
        client_abort(cl);
        return;
    }
    GBytes *b = g_queue_pop_head(&cl->outq);
    cl->queued -= g_bytes_get_size(b);
    g_bytes_unref(b);
    write_next(cl);
    maybe_free(cl);
}

static void write_next(Client *cl)
{
    GBytes *b = g_queue_peek_head(&cl->outq);
    if (cl->writing || cl->drop_output || !b)
        return;
    cl->writing = TRUE;
    gsize len;
    const void *data = g_bytes_get_data(b, &len);
    g_output_stream_write_all_async(g_io_stream_get_output_stream(G_IO_STREAM(cl->conn)), data,
                                    len, G_PRIORITY_DEFAULT, cl->cancel, write_done, cl);
}

/* Queues one JSON message plus newline; a client too far behind is disconnected. */
static void send_node(Client *cl, JsonNode *node)
{
    if (cl->drop_output)
        return;
    g_autofree char *text = json_to_string(node, FALSE);
    gsize len = strlen(text) + 1;
    if (cl->queued + len > MAX_QUEUED_OUTPUT) {
        client_abort(cl);
        return;
    }
    GBytes *b = g_bytes_new_take(g_strconcat(text, "\n", NULL), len);
    cl->queued += len;
    g_queue_push_tail(&cl->outq, b);
    write_next(cl);
}

static void send_error(Client *cl, JsonNode *id, int code, const char *message)
{
    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "jsonrpc");
    json_builder_add_string_value(jb, "2.0");
    json_builder_set_member_name(jb, "error");
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "code");
    json_builder_add_int_value(jb, code);
    json_builder_set_member_name(jb, "message");
    json_builder_add_string_value(jb, message);
    json_builder_end_object(jb);
    json_builder_set_member_name(jb, "id");
    json_builder_add_value(jb, id ? json_node_copy(id) : json_node_new(JSON_NODE_NULL));
    json_builder_end_object(jb);
    g_autoptr(JsonNode) root = json_builder_get_root(jb);
    send_node(cl, root);
}

static void send_result(Client *cl, JsonNode *id, JsonNode *result)
{
    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "jsonrpc");
    json_builder_add_string_value(jb, "2.0");
    json_builder_set_member_name(jb, "result");
    json_builder_add_value(jb, result ? result : json_node_new(JSON_NODE_NULL));
    json_builder_set_member_name(jb, "id");
    json_builder_add_value(jb, json_node_copy(id));
    json_builder_end_object(jb);
    g_autoptr(JsonNode) root = json_builder_get_root(jb);
    send_node(cl, root);
}

static void handle_line(Client *cl, const char *line, gsize len)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) error = NULL;
    if (!json_parser_load_from_data(parser, line, (gssize) len, &error)) {
        send_error(cl, NULL, FERRY_JSONRPC_PARSE_ERROR, error->message);
        return;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        send_error(cl, NULL, FERRY_JSONRPC_INVALID_REQUEST, "a request must be a JSON object");
        return;
    }
    JsonObject *req = json_node_get_object(root);
    JsonNode *id = json_object_get_member(req, "id");
    if (id && !JSON_NODE_HOLDS_VALUE(id) && !JSON_NODE_HOLDS_NULL(id)) {
        send_error(cl, NULL, FERRY_JSONRPC_INVALID_REQUEST, "\"id\" must be a number or string");
        return;
    }
    JsonNode *version = json_object_get_member(req, "jsonrpc");
    JsonNode *method = json_object_get_member(req, "method");
    if (!version || json_node_get_value_type(version) != G_TYPE_STRING ||
        g_strcmp0(json_node_get_string(version), "2.0") != 0 || !method ||
        json_node_get_value_type(method) != G_TYPE_STRING) {
        send_error(cl, id, FERRY_JSONRPC_INVALID_REQUEST,
                   "a request needs \"jsonrpc\": \"2.0\" and a string \"method\"");
        return;
    }
    JsonNode *params = json_object_get_member(req, "params");
    if (params && !JSON_NODE_HOLDS_OBJECT(params) && !JSON_NODE_HOLDS_NULL(params)) {
        send_error(cl, id, FERRY_JSONRPC_INVALID_PARAMS, "\"params\" must be an object");
        return;
    }
    const char *name = json_node_get_string(method);
    const FerryControlMethod *m = cl->server->methods;
    while (m->name && !g_str_equal(m->name, name))
        m++;
    if (!m->name) {
        g_autofree char *msg = g_strdup_printf("unknown method '%s'", name);
        if (id)
            send_error(cl, id, FERRY_JSONRPC_METHOD_NOT_FOUND, msg);
        return;
    }
    JsonObject *p = params && JSON_NODE_HOLDS_OBJECT(params) ? json_node_get_object(params) : NULL;
    JsonNode *result = m->fn(cl->server->opaque, p, &error);
    if (!id) { /* a notification from the client: no answer */
        if (result)
            json_node_unref(result);
        return;
    }
    if (error) {
        int code = g_error_matches(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT)
                       ? FERRY_JSONRPC_INVALID_PARAMS
                       : FERRY_JSONRPC_SERVER_ERROR;
        send_error(cl, id, code, error->message);
        return;
    }
    send_result(cl, id, result);
}

/* Splits complete lines off the input buffer and handles them. */
static void process_input(Client *cl)
{
    for (;;) {
        uint8_t *nl = memchr(cl->inbuf->data, '\n', cl->inbuf->len);
        if (!nl)
            break;
        gsize len = (gsize) (nl - cl->inbuf->data);
        if (len > 0 && cl->inbuf->data[len - 1] == '\r')
            len--;
        if (len > 0)
            handle_line(cl, (const char *) cl->inbuf->data, len);
        g_byte_array_remove_range(cl->inbuf, 0, (guint) (nl - cl->inbuf->data) + 1);
        if (cl->closing)
            return;
    }
    if (cl->inbuf->len > FERRY_CONTROL_MAX_LINE) {
        send_error(cl, NULL, FERRY_JSONRPC_INVALID_REQUEST,
                   "request longer than 1 MiB; closing the connection");
        g_byte_array_set_size(cl->inbuf, 0);
        cl->closing = TRUE;
    }
}

static void read_done(GObject *src, GAsyncResult *res, gpointer data)
{
    Client *cl = data;
    g_autoptr(GError) error = NULL;
    /* cl->reading stays TRUE while the input is processed, so nothing frees the client
     * underneath (a method's answer may abort a client that fell too far behind). */
    gssize n = g_input_stream_read_finish(G_INPUT_STREAM(src), res, &error);
    if (n < 0)
        cl->drop_output = TRUE;
    if (n <= 0) {
        cl->closing = TRUE; /* error or the peer closed its end: answer what was asked */
    } else if (!cl->closing) {
        g_byte_array_append(cl->inbuf, cl->chunk, (guint) n);
        process_input(cl);
    }
    cl->reading = FALSE;
    if (!cl->closing)
        client_read(cl);
    maybe_free(cl);
}

static void client_read(Client *cl)
{
    cl->reading = TRUE;
    g_input_stream_read_async(g_io_stream_get_input_stream(G_IO_STREAM(cl->conn)), cl->chunk,
                              sizeof(cl->chunk), G_PRIORITY_DEFAULT, cl->cancel, read_done, cl);
}

static gboolean on_incoming(GSocketService *service, GSocketConnection *conn, GObject *source,
                            gpointer data)
{
    FerryControl *c = data;
    Client *cl = g_new0(Client, 1);
    cl->server = c;
    cl->conn = g_object_ref(conn);
    cl->cancel = g_cancellable_new();
    cl->inbuf = g_byte_array_new();
    g_queue_init(&cl->outq);
    c->clients = g_list_prepend(c->clients, cl);
    client_read(cl);
    return TRUE;
}

FerryControl *ferry_control_new(const char *path, const FerryControlMethod *methods,
                                void *opaque, GError **error)
{
    g_autoptr(FerryControl) c = g_new0(FerryControl, 1);
    c->methods = methods;
    c->opaque = opaque;
    c->service = g_socket_service_new();
    g_unlink(path);
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(path);
    if (!g_socket_listener_add_address(G_SOCKET_LISTENER(c->service), addr,
                                       G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_DEFAULT, NULL,
                                       NULL, error)) {
        g_prefix_error(error, "cannot listen on control socket %s: ", path);
        return NULL;
    }
    g_chmod(path, 0600);
    c->path = g_strdup(path);
    g_signal_connect(c->service, "incoming", G_CALLBACK(on_incoming), c);
    g_socket_service_start(c->service);
    return g_steal_pointer(&c);
}

void ferry_control_notify(FerryControl *c, const char *method, JsonNode *params)
{
    g_autoptr(JsonBuilder) jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "jsonrpc");
    json_builder_add_string_value(jb, "2.0");
    json_builder_set_member_name(jb, "method");
    json_builder_add_string_value(jb, method);
    if (params) {
        json_builder_set_member_name(jb, "params");
        json_builder_add_value(jb, params);
    }
    json_builder_end_object(jb);
    g_autoptr(JsonNode) root = json_builder_get_root(jb);
    for (GList *l = c->clients; l;) {
        Client *cl = l->data;
        l = l->next;
        if (!cl->closing)
            send_node(cl, root);
    }
}

static gboolean output_pending(FerryControl *c)
{
    for (GList *l = c->clients; l; l = l->next) {
        Client *cl = l->data;
        if (!cl->drop_output && !g_queue_is_empty(&cl->outq))
            return TRUE;
    }
    return FALSE;
}

static gboolean flush_timeout(gpointer data)
{
    *(gboolean *) data = TRUE;
    return G_SOURCE_REMOVE;
}

void ferry_control_flush(FerryControl *c, unsigned timeout_ms)
{
    gboolean expired = FALSE;
    guint timer = g_timeout_add(timeout_ms, flush_timeout, &expired);
    while (!expired && output_pending(c))
        g_main_context_iteration(NULL, TRUE);
    if (!expired)
        g_source_remove(timer);
}

void ferry_control_free(FerryControl *c)
{
    if (!c)
        return;
    if (c->service) {
        g_socket_service_stop(c->service);
        g_socket_listener_close(G_SOCKET_LISTENER(c->service));
        g_object_unref(c->service);
    }
    /* Pending reads and writes end with G_IO_ERROR_CANCELLED and free their client. */
    for (GList *l = c->clients; l; l = l->next) {
        Client *cl = l->data;
        cl->server = NULL;
        client_abort(cl);
    }
    g_list_free(c->clients);
    c->clients = NULL;
    if (c->path)
        g_unlink(c->path);
    g_free(c->path);
    g_free(c);
}

/*
 * The control API server: newline-delimited JSON-RPC 2.0 (https://www.jsonrpc.org/
 * specification) over a unix stream socket, on the VM's main loop.
 *
 * Each line a client sends is one request object; each answer is one line.  Requests of one
 * client are answered in order.  Several clients may connect; notifications (requests
 * without an id, sent by the server) go to every client.  A line that is not JSON, not a
 * request, or longer than FERRY_CONTROL_MAX_LINE gets a JSON-RPC error; an oversized line also
 * closes that client's connection, since the rest of it cannot be framed.  The methods and
 * their parameters are listed in docs/control-api.md.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#define FERRY_CONTROL_MAX_LINE (1024 * 1024) /* bytes per request */

/* JSON-RPC 2.0 error codes (specification section 5.1) */
#define FERRY_JSONRPC_PARSE_ERROR      -32700
#define FERRY_JSONRPC_INVALID_REQUEST  -32600
#define FERRY_JSONRPC_METHOD_NOT_FOUND -32601
#define FERRY_JSONRPC_INVALID_PARAMS   -32602
#define FERRY_JSONRPC_SERVER_ERROR     -32000 /* the method failed; message says why */

/*
 * A method: @params is the request's "params" object (NULL if absent).  Returns the result
 * (owned by the caller; NULL means JSON null) or sets @error (its message goes to the client;
 * G_IO_ERROR_INVALID_ARGUMENT maps to INVALID_PARAMS, anything else to SERVER_ERROR).
 */
typedef JsonNode *(*FerryControlMethodFn)(void *opaque, JsonObject *params, GError **error);

typedef struct {
    const char *name;
    FerryControlMethodFn fn;
} FerryControlMethod;

typedef struct FerryControl FerryControl;

/*
 * Listens on @path (an existing socket file is replaced).  @methods ends with a NULL name
 * and, like @opaque, must outlive the server.
 */
FerryControl *ferry_control_new(const char *path, const FerryControlMethod *methods,
                                void *opaque, GError **error);

/* Sends a notification {"jsonrpc":"2.0","method":@method,"params":@params} to every client.
 * Takes ownership of @params (an object node, or NULL). */
void ferry_control_notify(FerryControl *c, const char *method, JsonNode *params);

/*
 * Runs the default main context until every client's queued output is written or
 * @timeout_ms passes (used at exit so the answer to "quit" and the final notification go
 * out).
 */
void ferry_control_flush(FerryControl *c, unsigned timeout_ms);

/* Closes every connection and removes the socket file. */
void ferry_control_free(FerryControl *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryControl, ferry_control_free)

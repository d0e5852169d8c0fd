/*
 * Shared by channel.c (sockets) and channel-stream.c (the GIOStream of a connection).
 */
#pragma once

#include "migration/channel.h"
#include "migration/tls.h"

/*
 * Dead-peer detection on TCP connections (tcp(7)): keepalive probes after 5 s idle, every
 * 1 s, 5 missed = dead; unacknowledged data fails the connection after 10 s.  A link that
 * went down thus fails a blocked read or write within about 10 s.
 */
#define FERRY_CHANNEL_KEEPALIVE_IDLE_S     5
#define FERRY_CHANNEL_KEEPALIVE_INTERVAL_S 1
#define FERRY_CHANNEL_KEEPALIVE_COUNT      5
#define FERRY_CHANNEL_USER_TIMEOUT_MS      10000

/*
 * Wraps the connected, blocking stream socket @fd and, for tls:, the session @tls running
 * on it (nullable) as a connection (channel.h).  Both are owned from here on.  @what
 * ("connection to 10.0.0.2:4444", copied) starts transport error messages; @peer_role
 * ("destination" or "source", static) names the other end.
 */
GIOStream *ferry_channel_stream_new(int fd, FerryTlsSession *tls, const char *what,
                                    const char *peer_role);

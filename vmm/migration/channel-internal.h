/*
 * Shared by channel.c (sockets) and channel-stream.c (the GIOStream of a connection).
 */
#pragma once

#include "migration/channel.h"
#include "migration/tls.h"

/*
 * Wraps the connected, blocking stream socket @fd and, for tls:, the session @tls running
 * on it (nullable) as a connection (channel.h).  Both are owned from here on.  @what
 * ("connection to 10.0.0.2:4444", copied) starts transport error messages; @peer_role
 * ("destination" or "source", static) names the other end.
 */
GIOStream *ferry_channel_stream_new(int fd, FerryTlsSession *tls, const char *what,
                                    const char *peer_role);

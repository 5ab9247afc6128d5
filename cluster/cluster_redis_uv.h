/* cluster_redis_uv: hiredis async contexts driven by the node's libuv loop, a connect helper with
 * its own timeout, and REDIS_URL parsing.
 *
 * Why not hiredis's own adapters/libuv.h: in the Debian hiredis 0.14.1 it returns early when
 * uv_poll reports an error, and libuv has already stopped the poll handle by then. A refused
 * connect is reported exactly that way (EPOLLERR), so neither the connect nor the disconnect
 * callback ever fires and the connection hangs forever. This adapter hands a poll error to
 * hiredis as a read and a write event; hiredis then reads the socket error itself and runs its
 * normal failure path. hiredis 0.14.1 has no timeouts at all, hence clu_redis_connect's timer.
 *
 * Everything here runs on the loop thread. Handles belong to the adapter and are freed in their
 * uv_close callbacks, so the loop must keep running after a context is freed until uv_run
 * returns; uv_loop_close() then returns 0. */
#ifndef CLUSTER_CLUSTER_REDIS_UV_H
#define CLUSTER_CLUSTER_REDIS_UV_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <uv.h>

#include "core/core.h"

/* ---- low level: attach --------------------------------------------------------------------- */

/* Attaches ac to loop by filling ac->ev (the five hiredis hooks and ev.data); ac->data stays the
 * caller's. Call it right after redisAsyncConnect() and before redisAsyncSetConnectCallback()
 * or any command, because those already ask for write events. The adapter's state is released
 * by hiredis's cleanup hook when the context is freed (by hiredis after a failure, or by
 * redisAsyncFree/redisAsyncDisconnect); its poll handle is closed then and freed in the close
 * callback. The caller keeps using hiredis's own connect/disconnect callbacks.
 * Returns 0; CORE_EINVAL if ac is NULL, has an error already or is attached to an event library;
 * or the uv_poll_init error. */
int clu_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

/* ---- connect helper with timeout and handshake --------------------------------------------- */

/* The connection attempt ended. status 0: ac is connected and the server answered the handshake
 * command, ac is the caller's to use and to free with redisAsyncFree/redisAsyncDisconnect (both
 * are safe inside this callback). status < 0: ac is NULL and the context is gone or being freed
 * by hiredis; do not free it. Codes: CORE_ETIMEDOUT (no answer within the timeout),
 * UV_ECONNREFUSED and the other connect(2) errors as negative errno values, UV_EOF (the peer
 * closed), CORE_EPROTO (the peer does not speak RESP or refused the handshake), CORE_EAGAIN (the
 * server answered LOADING/BUSY/MASTERDOWN: up but not serving yet), UV_ECANCELED (the caller
 * freed the context before the attempt ended), UV_EIO (any other I/O error). */
typedef void (*clu_redis_connect_cb)(redisAsyncContext *ac, int status, void *ud);

/* A context that had been reported connected went away. status 0: the caller freed or
 * disconnected it; UV_EOF: the server closed the connection; CORE_EPROTO: the reply stream was
 * malformed; UV_EIO: an I/O error (reset, ...). It runs from inside hiredis while the context
 * is being freed: do not touch the context. Pending command callbacks have already run with a
 * NULL reply. */
typedef void (*clu_redis_disconnect_cb)(int status, void *ud);

typedef struct {
    const char *ip; /* numeric IPv4 address: hiredis resolves names with a blocking call */
    int port;
    int db;                          /* > 0: the handshake is SELECT db instead of PING */
    uint64_t timeout_ms;             /* whole attempt, TCP connect plus handshake; 0 = no timeout */
    clu_redis_connect_cb on_connect; /* required */
    clu_redis_disconnect_cb on_disconnect; /* optional */
    void *ud;
} clu_redis_connect_opts_t;

/* Starts a non-blocking connection attached to loop and queues the handshake (PING, or SELECT db)
 * so "connected" means a Redis server answered, not merely that a TCP handshake completed (a
 * process that accepts and never answers, or a full accept queue, both end in CORE_ETIMEDOUT).
 * On 0, *out is the context: commands may be queued on it at once (hiredis sends them after
 * connecting; on failure their callbacks run with a NULL reply), and on_connect fires exactly
 * once: later from the loop, never from inside this call; or, if the caller frees the context
 * before the attempt ended, from inside that redisAsyncFree with UV_ECANCELED. ac->data is left
 * to the caller. The timeout timer frees the context with redisAsyncFree rather than
 * redisAsyncDisconnect: the latter waits for pending replies that a silent peer never sends, and
 * fires no callback at all before the TCP connect completed.
 * Returns CORE_EINVAL for bad options or a non-numeric address, CORE_ENOMEM, or the negative
 * errno of a connect(2) that failed at once; then on_connect never fires and *out is NULL. */
int clu_redis_connect(uv_loop_t *loop, const clu_redis_connect_opts_t *opts,
                      redisAsyncContext **out);

/* Maps the error state of a hiredis context to a code of core.h (0 when it has none). */
int clu_redis_error(const redisAsyncContext *ac);

/* ---- REDIS_URL ---------------------------------------------------------------------------- */

typedef struct {
    char host[16]; /* dotted-quad IPv4, NUL-terminated */
    int port;      /* 1..65535; 6379 when the URL gives none */
    int db;        /* 0..CLU_REDIS_MAX_DB; 0 when the URL gives none */
} clu_redis_addr_t;

#define CLU_REDIS_MAX_DB 9999

/* Parses "redis://A.B.C.D[:port][/db]". Host names are refused (hiredis would resolve them with
 * a blocking getaddrinfo on the loop thread), and so are credentials, query strings, IPv6 and
 * rediss:// (not supported by this client). Returns 0 or CORE_EINVAL; out is written only on
 * success. */
int clu_redis_parse_url(const char *url, clu_redis_addr_t *out);

#endif

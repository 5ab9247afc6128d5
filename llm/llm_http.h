/* llm_http: streaming HTTP POST requests to LLM providers over one libcurl multi handle driven
 * by the node's libuv loop (curl's socket and timer hooks on uv_poll and uv_timer, and
 * curl_multi_socket_action). Nothing blocks the loop and this module starts no thread; Debian's
 * libcurl resolves host names on short-lived threads of its own (its threaded resolver), numeric
 * addresses and "localhost" without any.
 *
 * Requests speak HTTP/1.1 and keep their connection alive: a later request to the same host
 * reuses an idle connection of an earlier one. The response body is streamed to on_data as it
 * arrives; nothing of it is buffered here, so the caller caps what it keeps. Response headers are
 * buffered up to LLM_HTTP_MAX_HEADER_BYTES / LLM_HTTP_MAX_HEADERS.
 *
 * Lifetimes follow libuv: every callback runs from the loop, never from inside a call of this
 * API, and the handles this module owns are freed in their close callbacks, so the loop must keep
 * running after llm_http_close until its done callback ran; uv_loop_close() then returns 0.
 * Everything runs on the loop thread.
 *
 * Nothing here logs a header, a URL or a body: they carry API keys. */
#ifndef LLM_LLM_HTTP_H
#define LLM_LLM_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/core.h"

/* Codes of on_done besides those of core.h: one line per code, its value and its message. */
#define LLM_HTTP_ERRNO_MAP(XX)                                                                     \
    XX(ECONNECT_TIMEOUT, -10101, "no connection within the connect timeout")                       \
    XX(EFIRST_BYTE_TIMEOUT, -10102, "no response byte within the first-byte timeout")              \
    XX(EIDLE_TIMEOUT, -10103, "the response stalled longer than the idle timeout")                 \
    XX(ETOTAL_TIMEOUT, -10104, "the request exceeded its total time limit")                        \
    XX(ETLS, -10105, "TLS handshake or certificate verification failed")                           \
    XX(ERESOLVE, -10106, "the host name could not be resolved")                                    \
    XX(EHEADERS, -10107, "the response headers exceed the limit")

enum {
#define LLM_HTTP_XX(name, val, msg) LLM_HTTP_##name = (val),
    LLM_HTTP_ERRNO_MAP(LLM_HTTP_XX)
#undef LLM_HTTP_XX
};

/* Text for a code of on_done: the codes above, else core_strerror. */
const char *llm_http_strerror(int err);

/* Caps on what a response may make this module buffer. */
#define LLM_HTTP_MAX_HEADER_BYTES (64 * 1024)
#define LLM_HTTP_MAX_HEADERS 128

/* on_data's return value that pauses the transfer (see llm_http_cb_t). */
#define LLM_HTTP_PAUSE 1

typedef struct llm_http llm_http_t;         /* one per node: the multi handle and its handles */
typedef struct llm_http_req llm_http_req_t; /* one request */

/* A response header. name and value point into a buffer of this module that lives for the
 * on_headers call only; both are NUL-terminated too (value without surrounding whitespace). */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} llm_http_header_t;

/* Limits in milliseconds; 0 means none.
 * connect_ms:    from llm_http_post until a connection is ready to send the request (DNS, TCP and
 *                TLS included; an idle kept-alive connection is ready at once).
 * first_byte_ms: from then until the first byte of the response (its status line); the upload of
 *                the request body counts against it.
 * idle_ms:       the longest gap between two received bytes after the first one; the clock stops
 *                while the caller holds the transfer paused and restarts at llm_http_resume.
 * total_ms:      from llm_http_post to the end of the response, pauses included. */
typedef struct {
    uint32_t connect_ms, first_byte_ms, idle_ms, total_ms;
} llm_http_timeouts_t;

/* What on_done reports besides the status. Times are microseconds since llm_http_post; a phase
 * that was not reached is 0. */
typedef struct {
    int http_status;        /* of the final response; 0 if no response headers arrived */
    bool reused;            /* the request ran on a connection kept alive from an earlier one */
    uint64_t connect_us;    /* until the connection was ready for the request */
    uint64_t first_byte_us; /* until the first response byte */
    uint64_t total_us;      /* until on_done */
    uint64_t bytes_in;      /* body bytes handed to on_data */
} llm_http_stats_t;

typedef struct {
    /* Once, when the status line and all headers of the final response arrived, before any body
     * byte (interim 1xx responses are skipped). Optional. */
    void (*on_headers)(void *ud, int http_status, const llm_http_header_t *h, size_t n);
    /* Body bytes in order as they arrive, chunked encoding removed; buf is borrowed for the call.
     * Return 0, or LLM_HTTP_PAUSE to stop the transfer after these bytes (they count as
     * delivered) until llm_http_resume: libcurl then stops reading the socket, so the server is
     * held back by TCP flow control. Optional (the body is then discarded). */
    int (*on_data)(void *ud, const char *buf, size_t len);
    /* Exactly once at the end, unless llm_http_cancel ran first. status 0: the whole response
     * arrived (whatever its HTTP status; see st->http_status). Otherwise a negative code:
     * LLM_HTTP_E*_TIMEOUT (which limit of llm_http_timeouts_t fired), UV_ECONNREFUSED,
     * UV_ECONNRESET and other negative errno values of the socket, LLM_HTTP_ERESOLVE,
     * LLM_HTTP_ETLS, LLM_HTTP_EHEADERS, UV_EOF (the server closed the connection before the end
     * of the response), CORE_EPROTO (a malformed response), CORE_EINVAL (a malformed or non-HTTP
     * URL), CORE_ENOMEM, UV_ECANCELED (llm_http_close ran), UV_EIO (anything else). The request
     * is freed after on_done returns. Required. */
    void (*on_done)(void *ud, int status, const llm_http_stats_t *st);
} llm_http_cb_t;

typedef struct {
    const char *url;            /* http:// or https://; copied */
    const char *const *headers; /* NULL-terminated "Name: value" lines, or NULL; copied */
    const char *body;           /* request body, copied; may be NULL when body_len is 0 */
    size_t body_len;            /* sent with Content-Length (never "Expect: 100-continue") */
    llm_http_timeouts_t timeouts;
    llm_http_cb_t cb;
    void *ud; /* passed to every callback */
} llm_http_post_t;

/* Creates the multi handle and its timer and idle handles on loop. The first call initialises
 * libcurl for the process (curl_global_init). Returns NULL when libcurl cannot be set up. */
llm_http_t *llm_http_new(uv_loop_t *loop);

/* Starts closing: from the next loop turn on, every request not yet finished or cancelled ends
 * with on_done(UV_ECANCELED), with no more on_headers/on_data before that; then the connections
 * and the multi handle are closed, and done(ud) runs (optional) once the last handle of this
 * module went through its close callback. h is freed then. Safe from inside any callback;
 * llm_http_post fails with UV_ECANCELED from the moment it is called. Call it once. */
void llm_http_close(llm_http_t *h, void (*done)(void *ud), void *ud);

/* Starts a POST. On 0, *out (optional) is the request, valid until on_done returns or until
 * llm_http_cancel; the transfer starts on the next loop turn and every callback runs from the
 * loop later. Returns CORE_EINVAL for missing url or on_done, or a header line that is not
 * "Name: value" or holds CR or LF (header injection); UV_ECANCELED once llm_http_close ran;
 * CORE_ENOMEM if libcurl cannot make a handle. Then no callback ever runs. Safe from inside any
 * callback. */
int llm_http_post(llm_http_t *h, const llm_http_post_t *opts, llm_http_req_t **out);

/* Lets a transfer paused by on_data continue from the next loop turn; the idle clock restarts
 * now. Calling it from inside the on_data that is about to return LLM_HTTP_PAUSE is allowed
 * (the pause is then lifted at once). A no-op when r is not paused, or is finishing. */
void llm_http_resume(llm_http_req_t *r);

/* Abandons r: no callback of r runs after this returns, r must not be used again, and its
 * connection is closed on the next loop turn (an unfinished response cannot be reused). Safe from
 * inside any callback of r or of another request; a no-op inside r's own on_done. */
void llm_http_cancel(llm_http_req_t *r);

#endif

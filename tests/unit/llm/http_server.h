/* A tiny HTTP/1.1 server on the test's own libuv loop, on 127.0.0.1 and an ephemeral port, for
 * the llm_http tests. Keep-alive connections; requests are answered one after the other, and the
 * path picks the behaviour:
 *   /fixed        200 with Content-Length: 5 and the body "hello"
 *   /echo         200 with the request body as the response body
 *   /stream/N     200 chunked text/event-stream: N chunks "data: i\n\n", one per 1 ms tick
 *   /drip         like /stream but a chunk every 10 ms, forever
 *   /stall        the headers and one chunk, then silence
 *   /hang         silence (the request is read, nothing is answered)
 *   /big/N        N body bytes (byte i is i % 251), chunked, sent only as fast as the peer reads
 *                 (one 16 KiB write in flight, a small send buffer)
 *   /reset        the headers and one chunk, then a TCP reset
 *   /bighead      200 with more than 64 KiB of headers
 *   /status/503   503 with Retry-After: 3 and the body "busy"
 * It counts connections and bytes so tests can observe the client from the other end. */
#ifndef TESTS_UNIT_LLM_HTTP_SERVER_H
#define TESTS_UNIT_LLM_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ths ths_t;

/* Listens on 127.0.0.1:0; NULL on failure. */
ths_t *ths_start(uv_loop_t *loop);
int ths_port(const ths_t *s);
/* Called each time a client closes (or resets) a connection. */
void ths_on_peer_closed(ths_t *s, void (*cb)(void *ud), void *ud);
/* Closes the listener and every connection; the server is freed in the close callbacks. */
void ths_close(ths_t *s);

unsigned ths_accepted(const ths_t *s);
unsigned ths_peer_closed(const ths_t *s);
unsigned ths_requests(const ths_t *s);
/* Response bytes the kernel has taken (completed writes), over all connections. */
uint64_t ths_written(const ths_t *s);
/* The head (request line and headers, NUL-terminated) and the body of the last request. */
const char *ths_last_head(const ths_t *s);
const char *ths_last_body(const ths_t *s, size_t *len);

#endif

/* server: the chat protocol of the public listener: the lws protocol callback, and the transport
 * of chat clients (bounded write queues, batched direct writes, backpressure, close frames). */
#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>

#include "server/srv_int.h"

/* Pushes joined into one WebSocket message stay under this size: large enough that one write
 * serves hundreds of queued messages, small enough to keep latency for the last one low. */
#define BATCH_MAX_BYTES (64 * 1024)
/* A closing connection whose peer does not read gets this long before it is dropped. */
#define CLOSE_GRACE_S 10
/* Room before a batch for the WebSocket header we write ourselves (at most 10 bytes). */
#define FRAME_HEAD_MAX 16
#define WS_PATH "/connection/websocket"
/* The close opcode of lws_write(): private in lws 4.1's headers but handled by its ws writer. */
#define SRV_WRITE_CLOSE ((enum lws_write_protocol)4)

/* Asks lws for a writeable callback now: used to continue draining and to close. */
static void conn_request_write(srv_conn_t *c) {
    if (c->in_flush) {
        core_list_remove(&c->flush_link);
        c->in_flush = false;
    }
    c->want_write = true;
    lws_callback_on_writable(c->wsi);
}

static int conn_flush(srv_t *S, srv_conn_t *c);
static void conn_fail(srv_conn_t *c);

/* Writes the connections of the flush list in order, for at most budget_us (0: all of them);
 * the clock is read every 16 connections. Returns false when connections are left. */
static bool flush_all(srv_t *S, uint64_t budget_us) {
    uint64_t end = budget_us ? core_now_us() + budget_us : 0;
    unsigned n = 0;
    while (!core_list_empty(&S->flush)) {
        if (end && (++n & 15) == 0 && core_now_us() >= end) {
            S->st.flush_slices++;
            return false;
        }
        srv_conn_t *c = CORE_CONTAINER_OF(S->flush.next, srv_conn_t, flush_link);
        core_list_remove(&c->flush_link);
        c->in_flush = false;
        c->want_write = false;
        /* Bytes lws itself still holds (the upgrade answer, a close frame) go first, from its
         * writeable callback; otherwise the batch is written now. */
        if (c->closing || lws_partial_buffered(c->wsi))
            conn_request_write(c);
        else if (conn_flush(S, c) < 0)
            conn_fail(c);
    }
    return true;
}

static void flush_prepare_cb(uv_prepare_t *p);

static void start_prepare(srv_t *S) {
    if (!uv_is_active((uv_handle_t *)&S->flush_prepare) &&
        !uv_is_closing((uv_handle_t *)&S->flush_prepare))
        uv_prepare_start(&S->flush_prepare, flush_prepare_cb);
}

static void flush_idle_cb(uv_idle_t *h) {
    uv_idle_stop(h);
}

/* A flush of thousands of sockets takes milliseconds. It is cut into slices of
 * CHAT_FLUSH_SLICE_US of work, and the loop polls (without blocking) between slices: a
 * publication that arrives meanwhile is read and fanned out at once and reaches the connections
 * not yet written in this round, instead of waiting for the whole flush to end and then for its
 * turn in the next one; timers, pings and the admin listener get the same turns. A connection
 * that gets output after its write joins the list's tail, so each is still written once per
 * round and batches stay as large. The rest of the round goes on from the prepare handle after
 * the next poll, which an active idle handle makes return at once. (Not from a timer of 0:
 * libuv 1.44 runs a timer restarted from its own callback again before polling.) */
static void flush_rest_later(srv_t *S) {
    start_prepare(S);
    if (!uv_is_closing((uv_handle_t *)&S->flush_idle))
        uv_idle_start(&S->flush_idle, flush_idle_cb);
}

/* The flush with a write delay. */
static void flush_cb(uv_timer_t *t) {
    srv_t *S = t->data;
    if (!flush_all(S, S->cfg.flush_slice_us))
        flush_rest_later(S);
}

/* lws reads at most rx_buffer_size bytes from a WebSocket per readiness event, and that buffer
 * is allocated per connection for its life, so it is small (see srv__public_protocols). A
 * connection that sends faster than that per pass (a busy publisher) would be served one such
 * piece per loop pass and fall behind: a streaming connection (see LWS_CALLBACK_RECEIVE) is read
 * again before the pass ends, a few times at most, while its reads keep ending inside frames. */
#define REREAD_ROUNDS 16

static void reread_all(srv_t *S) {
    for (int round = 0; round < REREAD_ROUNDS && !core_list_empty(&S->reread); round++) {
        core_list_t batch;
        core_list_init(&batch);
        /* What this round's reads receive goes on S->reread again, for the next round. */
        while (!core_list_empty(&S->reread)) {
            core_list_t *it = S->reread.next;
            core_list_remove(it);
            core_list_insert_tail(&batch, it);
        }
        while (!core_list_empty(&batch)) {
            srv_conn_t *c = CORE_CONTAINER_OF(batch.next, srv_conn_t, reread_link);
            core_list_remove(&c->reread_link);
            if (c->closing || c->rx_paused)
                continue;
            struct lws_pollfd pfd = {
                .fd = lws_get_socket_fd(c->wsi), .events = LWS_POLLIN, .revents = LWS_POLLIN};
            /* May close the connection and free c: nothing of c is used after it. */
            lws_service_fd(S->ctx, &pfd);
        }
    }
    /* Past the bound, the rest waits for the next pass, as lws alone would have it. */
    while (!core_list_empty(&S->reread))
        core_list_remove(S->reread.next);
}

/* The flush without a write delay, before each poll (see flush_rest_later). */
static void flush_prepare_cb(uv_prepare_t *p) {
    srv_t *S = p->data;
    uv_prepare_stop(p);
    reread_all(S);
    if (!flush_all(S, S->cfg.flush_slice_us))
        flush_rest_later(S);
}

/* Without a write delay (the default), output queued anywhere in a loop pass (socket reads,
 * broker answers, timers) leaves just before the loop next waits for events: one write per
 * connection per pass, so an idle node answers at once and batches grow with the load by
 * themselves, since a busy pass queues more. With CHAT_WRITE_DELAY_MS > 0, new output for an
 * idle connection waits that long instead, so that everything published meanwhile leaves in
 * the same write. */
static void conn_schedule_write(srv_conn_t *c) {
    srv_t *S = c->srv;
    if (c->want_write || c->in_flush)
        return;
    c->want_write = true;
    c->in_flush = true;
    core_list_insert_tail(&S->flush, &c->flush_link);
    if (S->cfg.write_delay_ms == 0) {
        /* A prepare handle runs before the loop polls, after every callback of the pass. */
        start_prepare(S);
    } else if (!uv_is_active((uv_handle_t *)&S->flush_timer)) {
        /* The loop's clock is read once per turn; output queued late in a long turn (the
         * memory broker's answers run after a flush of thousands of sockets) would otherwise
         * find its window already over and lose the batching. */
        uv_update_time(uv_handle_get_loop((uv_handle_t *)&S->flush_timer));
        uv_timer_start(&S->flush_timer, flush_cb, S->cfg.write_delay_ms, 0);
    }
}

static void conn_close(srv_conn_t *c, int code, const char *reason) {
    if (c->closing)
        return;
    c->closing = true;
    c->close_code = code;
    /* The close frame allows 123 bytes of reason. */
    c->close_reason = core_strndup(reason, strnlen(reason, 123));
    int slot = srv_disconnect_slot(code);
    if (slot >= 0)
        c->srv->st.disconnects[slot]++;
    conn_request_write(c);
    /* A peer that never reads never makes its socket writeable, so the close frame may never
     * go out: drop the socket after a grace period. */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, CLOSE_GRACE_S);
}

static void conn_drop_queue(srv_conn_t *c) {
    c->srv->st.write_queue_bytes -= c->wq.bytes;
    srv_wq_clear(&c->wq);
}

static int t_send(void *tctx, core_buf_t *b) {
    srv_conn_t *c = tctx;
    if (c->closing)
        return 0;
    if (srv_wq_push(&c->wq, b) != 0) {
        /* A slow reader: its backlog is dropped at once so memory stays bounded. */
        conn_drop_queue(c);
        conn_close(c, 3008, "slow");
        return CORE_ELIMIT;
    }
    c->srv->st.write_queue_bytes += b->len;
    conn_schedule_write(c);
    return 0;
}

static void t_close(void *tctx, int code, const char *reason) {
    conn_close(tctx, code, reason);
}

static size_t t_queued(void *tctx) {
    const srv_conn_t *c = tctx;
    return c->wq.bytes;
}

static void t_peer(void *tctx, char *buf, size_t len) {
    const srv_conn_t *c = tctx;
    lws_get_peer_simple(c->wsi, buf, len);
}

static const chat_transport_t transport = {t_send, t_close, t_queued, t_peer};

/* Server-to-client WebSocket header (FIN, the codec's opcode, unmasked) for a payload of len
 * bytes, written to end at `end`. Returns the header length. */
static size_t ws_header(char *end, size_t len, uint8_t opcode) {
    unsigned char *h;
    if (len < 126) {
        h = (unsigned char *)end - 2;
        h[1] = (unsigned char)len;
    } else if (len <= 0xffff) {
        h = (unsigned char *)end - 4;
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
    } else {
        h = (unsigned char *)end - 10;
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    h[0] = (unsigned char)(0x80 | opcode);
    return (size_t)((unsigned char *)end - h);
}

/* One non-blocking send of bytes in wire form. Returns bytes taken (0 when the socket is full)
 * or -1 on error. */
static ssize_t send_raw(int fd, const char *p, size_t len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    return n;
}

/* Waits for the socket to take c's unsent tail: reads pause, since a read could make lws answer
 * (a pong) behind it, and lws calls back when the socket is writeable. Never from inside
 * OpenSSL (the TLS write BIO): lws may not be entered from there, and doing so corrupted the
 * session's records. */
static void conn_wait_writeable(srv_conn_t *c) {
    if (!c->rx_paused) {
        c->rx_paused = true;
        lws_rx_flow_control(c->wsi, 0);
    }
    conn_request_write(c);
}

/* Keeps bytes the socket did not take, to go before anything else written to c. */
static void conn_keep_tail(srv_conn_t *c, const char *p, size_t len) {
    c->srv->st.write_short++;
    core_str_append(&c->tx, p, len);
}

/* ---- The write side of TLS sessions.
 * OpenSSL hands each record it makes (16 KiB of payload at most) to its write BIO on its own,
 * and a socket BIO sends each with a write call of its own: a 64 KiB batch cost four writes on
 * the node and four reads in the client, and a spiral at the fan-out limit, since batches
 * grow with the load. From ESTABLISHED on, a session's write BIO is this one instead: while a
 * batch of several records is encrypted they gather in S->tls_out and leave with one send();
 * any other record (a one-record batch, a close frame, close_notify, a post-handshake message)
 * is sent at once, or queued behind the connection's unsent tail. Records the socket does not take
 * wait in c->tx as they are, so the BIO takes every byte and OpenSSL never holds a half-written
 * record of its own. Reads keep lws's socket BIO. */
struct srv_tls_out {
    int fd;
    srv_conn_t *c; /* NULL once lws closed the session: lws shuts TLS down after that */
};

static BIO_METHOD *tls_out_method;

static int tls_out_write(BIO *b, const char *p, int len) {
    struct srv_tls_out *o = BIO_get_data(b);
    srv_conn_t *c = o->c;
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (c && c->srv->tls_gathering == c) {
        core_str_append(&c->srv->tls_out, p, (size_t)len);
        return len;
    }
    if (c && c->tx_off < c->tx.len) {
        core_str_append(&c->tx, p, (size_t)len);
        return len;
    }
    ssize_t n = send_raw(o->fd, p, (size_t)len);
    if (n < 0)
        return -1;
    if (n < len) {
        if (!c) {
            /* After the session: a last close_notify, which may as well be retried by lws. */
            if (n == 0) {
                BIO_set_retry_write(b);
                return -1;
            }
            return (int)n;
        }
        /* The tail goes out from the next flush (only libuv is touched here). */
        conn_keep_tail(c, p + n, (size_t)(len - n));
        conn_schedule_write(c);
    }
    return len;
}

static long tls_out_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b, (void)num, (void)ptr;
    /* Nothing is buffered in the BIO itself: a flush has nothing to do. */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int tls_out_destroy(BIO *b) {
    free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

/* Puts the gathering BIO under c's TLS session. Returns -1 when out of memory. */
static int tls_out_attach(srv_conn_t *c, SSL *ssl) {
    if (!tls_out_method) {
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "chat tls out");
        if (!m || !BIO_meth_set_write(m, tls_out_write) || !BIO_meth_set_ctrl(m, tls_out_ctrl) ||
            !BIO_meth_set_destroy(m, tls_out_destroy)) {
            BIO_meth_free(m);
            return -1;
        }
        tls_out_method = m;
    }
    struct srv_tls_out *o = malloc(sizeof *o);
    BIO *b = o ? BIO_new(tls_out_method) : NULL;
    if (!b) {
        free(o);
        return -1;
    }
    o->fd = lws_get_socket_fd(c->wsi);
    o->c = c;
    BIO_set_data(b, o);
    BIO_set_init(b, 1);
    /* The read BIO stays lws's socket BIO (it shares it with the write side until now: this
     * drops only the write side's reference). */
    SSL_set0_wbio(ssl, b);
    c->tls_out = o;
    return 0;
}

/* Writes one frame to c's socket; what the socket does not take is kept in c->tx. Over TLS a
 * frame of several records is encrypted into S->tls_out first and leaves with one send(); one
 * record the BIO sends as OpenSSL makes it, which spares the copy. Returns -1 when the
 * connection failed. */
static int conn_send(srv_t *S, srv_conn_t *c, const char *p, size_t len) {
    SSL *ssl = lws_get_ssl(c->wsi);
    if (ssl) {
        if (!c->tls_out)
            return -1;
        bool gather = len > SSL3_RT_MAX_PLAIN_LENGTH;
        if (gather) {
            S->tls_out.len = 0;
            S->tls_gathering = c;
        }
        size_t done = 0;
        while (done < len) {
            ERR_clear_error();
            size_t left = len - done;
            int n = SSL_write(ssl, p + done, left > INT_MAX ? INT_MAX : (int)left);
            if (n <= 0)
                break; /* the BIO takes every byte: the session or its socket is broken */
            done += (size_t)n;
        }
        S->tls_gathering = NULL;
        if (done < len)
            return -1;
        if (!gather) {
            if (c->tx_off < c->tx.len)
                conn_wait_writeable(c);
            return 0;
        }
        p = S->tls_out.ptr;
        len = S->tls_out.len;
    }
    ssize_t n = send_raw(lws_get_socket_fd(c->wsi), p, len);
    if (n < 0)
        return -1;
    if ((size_t)n < len) {
        conn_keep_tail(c, p + n, len - (size_t)n);
        conn_wait_writeable(c);
    }
    return 0;
}

/* The batching of a connection's output: moves queued messages (up to BATCH_MAX_BYTES) into
 * one WebSocket message in S->scratch, joined as the client's codec joins them, and puts the
 * frame header with the codec's opcode before it. *frame points at the header, *hl is its length
 * and *len the payload's; *oldest is when the first message was built. The queue must not be empty.
 */
static void ws_batch_frame(srv_t *S, srv_conn_t *c, char **frame, size_t *hl, size_t *len,
                           uint64_t *oldest) {
    uint32_t nmsgs;
    size_t before = c->wq.bytes;
    const chat_framing_t *fr = chat_client_framing(c->client);
    const srv_join_t join = {fr->join_size, fr->join_append};
    *len = srv_wq_fill_join(&c->wq, &join, &S->scratch, FRAME_HEAD_MAX, BATCH_MAX_BYTES, &nmsgs,
                            oldest);
    S->st.write_queue_bytes -= before - c->wq.bytes;
    char *payload = S->scratch.ptr + FRAME_HEAD_MAX;
    *hl = ws_header(payload, *len, fr->ws_opcode);
    *frame = payload - *hl;
}

/* Writes what the connection has queued, as far as the socket takes it, with one send() per
 * batch. Data frames bypass lws_write: lws may only write from its writeable callback, and on
 * libuv every writeable request re-arms the socket's poll handle (libuv's uv_poll_start
 * removes the fd from epoll and adds it back), which cost four extra syscalls per write and
 * capped fan-out well below the node's target. lws's writeable callback is used only when the
 * kernel refuses bytes. Returns -1 when the socket failed. */
static int conn_flush(srv_t *S, srv_conn_t *c) {
    if (c->tx_off < c->tx.len) {
        ssize_t n =
            send_raw(lws_get_socket_fd(c->wsi), c->tx.ptr + c->tx_off, c->tx.len - c->tx_off);
        if (n < 0)
            return -1;
        c->tx_off += (size_t)n;
        if (c->tx_off < c->tx.len) {
            conn_wait_writeable(c);
            return 0;
        }
        c->tx.len = c->tx_off = 0;
        if (c->tx.cap > BATCH_MAX_BYTES)
            core_str_free(&c->tx);
        if (c->rx_paused) {
            c->rx_paused = false;
            lws_rx_flow_control(c->wsi, 1);
        }
    }
    if (srv_wq_empty(&c->wq))
        return 0;
    char *frame;
    size_t hl, len;
    uint64_t oldest;
    ws_batch_frame(S, c, &frame, &hl, &len, &oldest);
    if (conn_send(S, c, frame, hl + len) < 0)
        return -1;
    S->st.write_calls++;
    S->st.write_bytes += len;
    core_hist_observe(&S->st.fanout_latency, (double)(core_now_us() - oldest) / 1e6);
    /* A tail left behind (conn_send asked for the writeable callback), more queued, or a close
     * frame to follow: lws calls back when the socket takes more. */
    if (c->tx_off < c->tx.len)
        return 0;
    if (!srv_wq_empty(&c->wq) || c->closing)
        conn_request_write(c);
    return 0;
}

/* The socket failed under a direct write: lws closes it on its next turn. */
static void conn_fail(srv_conn_t *c) {
    if (!c->closing) {
        c->closing = true;
        c->close_sent = true;
        c->srv->st.disconnects[srv_disconnect_slot(3009)]++;
    }
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static int on_writeable(srv_t *S, srv_conn_t *c) {
    /* lws also calls back on its own (after draining a partial write), possibly while the
     * session waits in the flush list: it leaves the list, since this callback serves it. */
    if (c->in_flush) {
        core_list_remove(&c->flush_link);
        c->in_flush = false;
    }
    c->want_write = false;
    if (conn_flush(S, c) < 0) {
        S->st.disconnects[srv_disconnect_slot(3009)]++;
        return -1;
    }
    if (c->want_write)
        return 0; /* more to write, or the socket is full: we are called again */
    if (c->closing && !c->close_sent) {
        /* The close frame is written here rather than by lws_close_reason() and a non-zero
         * return: Debian's lws 4.1 (libuv, _DEBUG build) force-closes such a socket without
         * sending the frame (upstream issue 3569). The socket closes when the peer answers
         * (LWS_CALLBACK_WS_PEER_INITIATED_CLOSE) or after a short wait. */
        unsigned char buf[LWS_PRE + 125];
        size_t rlen = strlen(c->close_reason);
        if (rlen > 123)
            rlen = 123;
        buf[LWS_PRE] = (unsigned char)(c->close_code >> 8);
        buf[LWS_PRE + 1] = (unsigned char)(c->close_code & 0xff);
        memcpy(buf + LWS_PRE + 2, c->close_reason, rlen);
        c->close_sent = true;
        if (lws_write(c->wsi, buf + LWS_PRE, rlen + 2, SRV_WRITE_CLOSE) < 0)
            return -1;
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, 3);
    }
    return 0;
}

static void on_receive(srv_t *S, srv_conn_t *c, const char *in, size_t len) {
    if (c->closing || !c->client)
        return;
    /* A frame of the kind the client's codec does not speak is refused on its first
     * fragment (chat refuses it too, for any other transport). */
    bool binary = lws_frame_is_binary(c->wsi);
    if (binary != (chat_client_framing(c->client)->ws_opcode == 2)) {
        conn_close(c, 3501,
                   binary ? "binary frames are not supported" : "text frames are not supported");
        return;
    }
    if (c->rx.len + len > S->cfg.max_frame_bytes) {
        core_str_free(&c->rx);
        conn_close(c, 3501, "message too large");
        return;
    }
    bool final = lws_is_final_fragment(c->wsi) && lws_remaining_packet_payload(c->wsi) == 0;
    if (final && c->rx.len == 0) {
        chat_client_on_frame(c->client, binary, in, len);
        return;
    }
    core_str_append(&c->rx, in, len);
    if (final) {
        chat_client_on_frame(c->client, binary, c->rx.ptr, c->rx.len);
        core_str_free(&c->rx);
    }
}

/* Decides an upgrade before lws answers it. A refusal is an HTTP answer, which a browser's
 * WebSocket reports as a failed connection and every client retries with its backoff: the
 * node-wide cap is a passing condition of this node, not a verdict on the client, so it is not
 * the close code 3504 (whose "connection limit" closes stop Centrifugo's SDKs from
 * reconnecting), and no session is set up for a client that cannot stay. Returns 0 to let the
 * upgrade proceed, 1 when an answer was sent. */
static int confirm_upgrade(srv_t *S, struct lws *wsi) {
    unsigned int status = srv__header_limit_status(wsi);
    if (status) {
        S->st.refused[SRV_REFUSED_HEADERS]++;
        lws_return_http_status(wsi, status, "request header fields too large");
        return 1;
    }
    char origin[256];
    /* A browser always names the page's origin; other clients usually send none. An Origin too
     * long to copy matches no entry. */
    int olen = lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
    if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) > 0 && olen <= 0)
        origin[0] = '\0';
    if (!srv_origin_allowed(S->cfg.allowed_origins,
                            lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) > 0 ? origin : NULL)) {
        S->st.refused[SRV_REFUSED_ORIGIN]++;
        lws_return_http_status(wsi, HTTP_STATUS_FORBIDDEN, "origin not allowed");
        return 1;
    }
    if (S->ws_open >= S->max_connections) {
        S->st.refused[SRV_REFUSED_LIMIT]++;
        lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "connection limit");
        return 1;
    }
    return 0;
}

/* The WebSocket subprotocol centrifuge-js names when it speaks Protobuf. */
#define PB_SUBPROTOCOL "centrifuge-protobuf"

static int cb_public(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len) {
    srv_t *S = lws_context_user(lws_get_context(wsi));
    srv_conn_t *c = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (S->draining)
            return 1;
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, WS_PATH) != 0)
            return 1;
        return 0;
    }
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(S, wsi);
    case LWS_CALLBACK_ESTABLISHED: {
        memset(c, 0, sizeof *c);
        S->ws_open++;
        core_list_init(&c->flush_link);
        core_list_init(&c->reread_link);
        c->mid_frame_pass = S->pass - 2; /* not streaming */
        c->wsi = wsi;
        c->srv = S;
        srv_wq_init(&c->wq, S->cfg.write_queue_messages, S->cfg.write_queue_bytes);
        SSL *ssl = lws_get_ssl(wsi);
        if (ssl && tls_out_attach(c, ssl) != 0) {
            /* Out of memory: the session cannot write, so it goes at once. */
            conn_fail(c);
            return 0;
        }
        /* Past the connect rate the session is closed before it costs a client: 3013 tells the
         * SDK to come back after its backoff, which spreads a reconnect storm out. */
        if (core_gcra_take(&S->connect_gcra, (double)uv_now(&S->loop), &S->connect_rate) > 0) {
            S->st.refused[SRV_REFUSED_RATE]++;
            conn_close(c, CORE_DISCONNECT_TOO_MANY_REQUESTS, "too many requests");
            return 0;
        }
        c->client = chat_client_new(S->node, &transport, c);
        S->st.accepted++;
        /* The wire format, as Centrifugo's SDKs ask for it: the WebSocket subprotocol
         * centrifuge-protobuf (centrifuge-js) or ?cf_protocol=protobuf (the mobile SDKs); JSON
         * otherwise. lws still holds the request's arguments here. */
        char proto[32];
        const char *want = lws_get_urlarg_by_name(wsi, "cf_protocol=", proto, sizeof proto);
        if (strcmp(lws_get_protocol(wsi)->name, PB_SUBPROTOCOL) == 0)
            want = "protobuf";
        if (chat_client_set_protocol(c->client, want) != 0) {
            conn_close(c, CORE_DISCONNECT_BAD_REQUEST, "bad request: unknown cf_protocol");
            return 0;
        }
        return 0;
    }
    case LWS_CALLBACK_RECEIVE:
        on_receive(S, c, in, len);
        /* A sender that streams: its reads end inside a frame in this pass and did in the
         * one before, so the rest is most likely in the socket already. A client that sends
         * now and then (one message split over two reads) is read on the next pass as lws
         * would, which spares it rereads that only answer EAGAIN. Over TLS lws reads one
         * record per pass, and a record usually holds whole frames, so there a frame received
         * in this pass and the one before marks a streaming sender too: without it a client
         * sending a record per message was served one message per pass. */
        if ((lws_remaining_packet_payload(wsi) > 0 || lws_is_ssl(wsi)) && !c->closing) {
            bool streaming = S->pass - c->mid_frame_pass <= 1;
            c->mid_frame_pass = S->pass;
            /* A removed link points at itself: linked means queued already. */
            if (streaming && core_list_empty(&c->reread_link)) {
                core_list_insert_tail(&S->reread, &c->reread_link);
                start_prepare(S);
            }
        }
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(S, c);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        /* After our close frame this is the peer's answer: the exchange is complete. */
        return c->close_sent ? -1 : 0;
    case LWS_CALLBACK_CLOSED:
        /* lws also reports the close of an upgrade that FILTER_PROTOCOL_CONNECTION refused,
         * whose session was never set up. */
        if (!c || !c->srv)
            return 0;
        S->ws_open--;
        /* Nothing may be queued for this session from here on: freeing the client emits leave
         * events and must not schedule writes on a session lws is about to free. */
        c->closing = true;
        if (c->client)
            chat_client_free(c->client);
        c->client = NULL;
        if (c->in_flush) {
            core_list_remove(&c->flush_link);
            c->in_flush = false;
        }
        core_list_remove(&c->reread_link); /* a no-op when not queued */
        conn_drop_queue(c);
        core_str_free(&c->rx);
        core_str_free(&c->tx);
        if (c->tls_out)
            c->tls_out->c = NULL; /* lws frees the session data before the TLS session */
        free(c->close_reason);
        c->close_reason = NULL;
        return 0;
    case LWS_CALLBACK_HTTP:
        return srv__public_http(S, wsi, c);
    case LWS_CALLBACK_ADD_HEADERS: {
        /* The upgrade response (HTTP responses carry the vhost's canned header). */
        struct lws_process_html_args *a = in;
        unsigned char *p = (unsigned char *)a->p;
        if (srv__add_node_cookie(wsi, &p, (unsigned char *)a->p + a->max_len))
            return 1;
        a->p = (char *)p;
        return 0;
    }
    default:
        return srv__http_common(wsi, reason, c, in, len);
    }
}

const struct lws_protocols srv__public_protocols[] = {
    /* rx_buffer_size is allocated per connection, for the connection's life (lws holds a
     * message's payload there until it is complete or the buffer full), so it is kept small:
     * idle sockets dominate a chat node's memory. Longer messages arrive in pieces that
     * on_receive joins; the cost is one copy of inbound commands over 128 bytes, which are few
     * next to the deliveries they cause. lws also reads no more than this per readiness event:
     * reread_all reads a receiving connection again within the pass. */
    {.name = "chat",
     .callback = cb_public,
     .per_session_data_size = sizeof(srv_conn_t),
     .rx_buffer_size = 128},
    /* The same sessions, named as centrifuge-js asks for the Protobuf form. */
    {.name = PB_SUBPROTOCOL,
     .callback = cb_public,
     .per_session_data_size = sizeof(srv_conn_t),
     .rx_buffer_size = 128},
    {0}};

/* "chat" is the default protocol of the public listener: plain HTTP requests reach its callback
 * too. */
static const struct lws_protocol_vhost_options pvo_default = {.name = "default", .value = "1"};
const struct lws_protocol_vhost_options srv__public_pvo = {
    .options = &pvo_default, .name = "chat", .value = ""};

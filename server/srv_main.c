/* server: chatd's main, the libwebsockets listeners on the program's libuv loop, the transport
 * of chat clients (write queues and backpressure), static files, health and metrics, drain. */
#include <libwebsockets.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin/admin.h"
#include "auth/auth.h"
#include "chat/chat.h"
#include "cluster/cluster.h"
#include "core/core.h"
#include "server/server.h"

#define MOD "server"
#define CHATD_VERSION "0.1.0"
/* Pushes joined into one WebSocket message stay under this size: large enough that one write
 * serves hundreds of queued messages, small enough to keep latency for the last one low. */
#define BATCH_MAX_BYTES (64 * 1024)
/* A closing connection whose peer does not read gets this long before it is dropped. */
#define CLOSE_GRACE_S 10
/* Room before a batch for the WebSocket header we write ourselves (at most 10 bytes). */
#define FRAME_HEAD_MAX 16
#define DRAIN_MAX_MS 5000
#define WS_PATH "/connection/websocket"
/* The close opcode of lws_write(): private in lws 4.1's headers but handled by its ws writer. */
#define SRV_WRITE_CLOSE ((enum lws_write_protocol)4)

typedef struct srv srv_t;

/* Per-session data of the public protocol: a WebSocket client, or one HTTP exchange. */
typedef struct {
    struct lws *wsi;
    srv_t *srv;
    chat_client_t *client;
    srv_wq_t wq;
    core_str_t rx; /* fragments of an incoming message */
    int close_code;
    char close_reason[64];
    bool closing;
    bool close_sent;
    bool want_write;
    bool in_flush;  /* on srv.flush, waiting for the coalescing timer */
    bool rx_paused; /* reads stopped while a frame is half written (see conn_flush) */
    core_str_t tx;  /* the unsent tail of a frame the socket did not take at once */
    size_t tx_off;
    core_list_t flush_link;
    char *body; /* HTTP response body being written */
    size_t body_len, body_off;
} srv_conn_t;

struct srv {
    uv_loop_t loop;
    srv_config_t cfg;
    struct lws_context *ctx;
    struct lws_vhost *pub_vh, *adm_vh;
    chat_node_t *node;
    clu_broker_t *broker;
    auth_keyring_t *keys;
    chat_ns_t *ns;
    size_t nns;
    bool demo;
    bool draining;
    adm_server_stats_t st;
    core_str_t scratch; /* the frame being written; writes are synchronous so one suffices */
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    uint64_t drain_deadline;
    core_list_t flush; /* connections with queued output, waiting for flush_timer */
    uv_timer_t flush_timer;
    adm_registry_t *registry;
    char public_addr[300]; /* host:port of the public listener, as the registry shows it */
    uint64_t started_ms;
    char cookie[128];                             /* the node cookie, set once the id is known */
    struct lws_protocol_vhost_options cookie_hdr; /* the same, for files lws serves itself */
};

/* ---- transport of chat clients ---- */

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

static void flush_cb(uv_timer_t *t) {
    srv_t *S = t->data;
    while (!core_list_empty(&S->flush)) {
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
}

/* New output for an idle connection waits a few milliseconds so that everything published
 * meanwhile leaves in the same write: the cost of fan-out is per write call, not per byte.
 * With a delay of 0 the flush still waits for the next loop turn, which batches whatever the
 * current turn queued. */
static void conn_schedule_write(srv_conn_t *c) {
    srv_t *S = c->srv;
    if (c->want_write || c->in_flush)
        return;
    c->want_write = true;
    c->in_flush = true;
    core_list_insert_tail(&S->flush, &c->flush_link);
    if (!uv_is_active((uv_handle_t *)&S->flush_timer))
        uv_timer_start(&S->flush_timer, flush_cb, S->cfg.write_delay_ms, 0);
}

static void conn_close(srv_conn_t *c, int code, const char *reason) {
    if (c->closing)
        return;
    c->closing = true;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason);
    int slot = adm_disconnect_slot(code);
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

static const chat_transport_t transport = {t_send, t_close};

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

/* One non-blocking send. Returns bytes taken (0 when the socket is full) or -1 on error. */
static ssize_t send_some(struct lws *wsi, const char *p, size_t len) {
    ssize_t n = send(lws_get_socket_fd(wsi), p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    return n;
}

/* Writes what the connection has queued, as far as the socket takes it, with one send() per
 * batch. Data frames bypass lws_write: lws may only write from its writeable callback, and on
 * libuv every writeable request re-arms the socket's poll handle (libuv's uv_poll_start
 * removes the fd from epoll and adds it back), which cost four extra syscalls per write and
 * capped fan-out well below the node's target. lws's writeable callback is used only when the
 * kernel refuses bytes. Returns -1 when the socket failed. */
static int conn_flush(srv_t *S, srv_conn_t *c) {
    if (c->tx_off < c->tx.len) {
        ssize_t n = send_some(c->wsi, c->tx.ptr + c->tx_off, c->tx.len - c->tx_off);
        if (n < 0)
            return -1;
        c->tx_off += (size_t)n;
        if (c->tx_off < c->tx.len) {
            conn_request_write(c);
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
    uint32_t nmsgs;
    uint64_t oldest;
    size_t before = c->wq.bytes;
    /* The client's codec says how its messages join in one frame and which opcode it has. */
    const chat_framing_t *fr = chat_client_framing(c->client);
    const srv_join_t join = {fr->join_size, fr->join_append};
    size_t len = srv_wq_fill_join(&c->wq, &join, &S->scratch, FRAME_HEAD_MAX, BATCH_MAX_BYTES,
                                  &nmsgs, &oldest);
    S->st.write_queue_bytes -= before - c->wq.bytes;
    char *payload = S->scratch.ptr + FRAME_HEAD_MAX;
    size_t hl = ws_header(payload, len, fr->ws_opcode);
    char *frame = payload - hl;
    ssize_t n = send_some(c->wsi, frame, hl + len);
    if (n < 0)
        return -1;
    S->st.write_calls++;
    S->st.write_bytes += len;
    core_hist_observe(&S->st.fanout_latency, (double)(core_now_us() - oldest) / 1e6);
    if ((size_t)n < hl + len) {
        /* The rest of this frame must go out before anything else on the socket, lws's own
         * control frames included: reads (which could make lws answer a ping) pause until
         * it has. */
        core_str_append(&c->tx, frame + n, hl + len - (size_t)n);
        c->tx_off = 0;
        if (!c->rx_paused) {
            c->rx_paused = true;
            lws_rx_flow_control(c->wsi, 0);
        }
        conn_request_write(c);
        return 0;
    }
    if (!srv_wq_empty(&c->wq) || c->closing)
        conn_request_write(c);
    return 0;
}

/* The socket failed under a direct write: lws closes it on its next turn. */
static void conn_fail(srv_conn_t *c) {
    if (!c->closing) {
        c->closing = true;
        c->close_sent = true;
        c->srv->st.disconnects[adm_disconnect_slot(3009)]++;
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
        S->st.disconnects[adm_disconnect_slot(3009)]++;
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

/* ---- HTTP responses ---- */

/* The public listener names its node in a cookie on every response, the WebSocket upgrade
 * included: a load balancer in front of several nodes routes the browser's next request (its
 * reconnect above all) to the node that holds its session, by this cookie. lws adds it to
 * every HTTP response as the vhost's canned header; this adds it to the upgrade response, which
 * lws builds without those. */
static int add_node_cookie(struct lws *wsi, unsigned char **p, unsigned char *end) {
    srv_t *S = lws_context_user(lws_get_context(wsi));
    if (!S->cookie[0])
        return 0;
    return lws_add_http_header_by_name(wsi, (const unsigned char *)"set-cookie:",
                                       (const unsigned char *)S->cookie, (int)strlen(S->cookie),
                                       p, end);
}

/* Sends headers now and the body (taken) from the writeable callback. */
static int http_respond(struct lws *wsi, srv_conn_t *c, unsigned int status, const char *ctype,
                        char *body, size_t len) {
    unsigned char buf[LWS_PRE + 1024];
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
    free(c->body);
    c->body = body;
    c->body_len = len;
    c->body_off = 0;
    if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_respond_text(struct lws *wsi, srv_conn_t *c, unsigned int status,
                             const char *text) {
    return http_respond(wsi, c, status, "text/plain; charset=utf-8", core_strdup(text),
                        strlen(text));
}

static int http_write_body(struct lws *wsi, srv_conn_t *c) {
    if (!c->body)
        return 0;
    size_t chunk = c->body_len - c->body_off;
    if (chunk > 16384)
        chunk = 16384;
    bool last = c->body_off + chunk == c->body_len;
    unsigned char buf[LWS_PRE + 16384];
    memcpy(buf + LWS_PRE, c->body + c->body_off, chunk);
    if (lws_write(wsi, buf + LWS_PRE, chunk, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) <
        (int)chunk)
        return -1;
    c->body_off += chunk;
    if (!last) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    free(c->body);
    c->body = NULL;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* What both listeners do with HTTP beyond routing: write bodies, free them, and let lws
 * handle the rest (static files among it). */
static int http_common(struct lws *wsi, enum lws_callback_reasons reason, srv_conn_t *c, void *in,
                       size_t len) {
    if (reason == LWS_CALLBACK_HTTP_WRITEABLE)
        return http_write_body(wsi, c);
    if (reason == LWS_CALLBACK_CLOSED_HTTP && c) {
        free(c->body);
        c->body = NULL;
    }
    return lws_callback_http_dummy(wsi, reason, c, in, len);
}

static bool demo_user_ok(const char *u) {
    size_t n = strlen(u);
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= 'A' && u[i] <= 'Z') ||
              (u[i] >= '0' && u[i] <= '9') || u[i] == '_' || u[i] == '-'))
            return false;
    return true;
}

static char *mint_demo_token(srv_t *S, const char *user) {
    json_t *claims =
        json_pack("{s:s, s:I, s:I, s:s, s:{s:s}}", "sub", user, "iat", (json_int_t)core_wall_s(),
                  "exp", (json_int_t)(core_wall_s() + 86400), "plan", "free", "info", "name", user);
    char *tok = auth_jwt_mint(S->keys, NULL, claims);
    json_decref(claims);
    return tok;
}

static int public_http(srv_t *S, struct lws *wsi, srv_conn_t *c) {
    char uri[256];
    if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0)
        return http_respond_text(wsi, c, 400, "bad request\n");
    if (strcmp(uri, "/healthz") == 0)
        return http_respond_text(wsi, c, 200, "ok\n");
    if (strcmp(uri, "/demo/token") == 0 && (S->demo || S->cfg.demo_tokens)) {
        char arg[64] = "";
        /* lws copies "user=NAME" into arg and returns a pointer to NAME. */
        const char *user = lws_get_urlarg_by_name(wsi, "user=", arg, sizeof arg);
        if (!user || !demo_user_ok(user))
            return http_respond_text(wsi, c, 400, "user must be 1-32 of [A-Za-z0-9_-]\n");
        char *tok = mint_demo_token(S, user);
        core_str_t s = {0};
        core_str_appends(&s, "{\"token\":");
        core_str_append_json_string(&s, tok, strlen(tok));
        core_str_appends(&s, ",\"user\":");
        core_str_append_json_string(&s, user, strlen(user));
        core_str_appends(&s, "}");
        free(tok);
        return http_respond(wsi, c, 200, "application/json", s.ptr, s.len);
    }
    return http_respond_text(wsi, c, 404, "not found\n");
}

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
    case LWS_CALLBACK_ESTABLISHED: {
        memset(c, 0, sizeof *c);
        core_list_init(&c->flush_link);
        c->wsi = wsi;
        c->srv = S;
        srv_wq_init(&c->wq, S->cfg.write_queue_messages, S->cfg.write_queue_bytes);
        char peer[64] = "";
        lws_get_peer_simple(wsi, peer, sizeof peer);
        c->client = chat_client_new(S->node, &transport, c, peer);
        S->st.accepted++;
        return 0;
    }
    case LWS_CALLBACK_RECEIVE:
        on_receive(S, c, in, len);
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
        conn_drop_queue(c);
        core_str_free(&c->rx);
        core_str_free(&c->tx);
        return 0;
    case LWS_CALLBACK_HTTP:
        return public_http(S, wsi, c);
    case LWS_CALLBACK_ADD_HEADERS: {
        /* The upgrade response (HTTP responses carry the vhost's canned header). */
        struct lws_process_html_args *a = in;
        unsigned char *p = (unsigned char *)a->p;
        if (add_node_cookie(wsi, &p, (unsigned char *)a->p + a->max_len))
            return 1;
        a->p = (char *)p;
        return 0;
    }
    default:
        return http_common(wsi, reason, c, in, len);
    }
}

/* ---- admin listener ---- */

static void snapshot(srv_t *S, adm_snapshot_t *snap, chat_stats_t *cs, clu_stats_t *bs) {
    chat_node_stats(S->node, cs);
    clu_stats(S->broker, bs);
    snap->node_id = S->cfg.node_id;
    snap->broker_name = S->broker->name;
    snap->ready = !S->draining && clu_ready(S->broker);
    snap->draining = S->draining;
    snap->shared_limits = clu_has_shared_limits(S->broker);
    snap->cluster_nodes = S->registry ? (uint32_t)adm_registry_size(S->registry) : 1;
    snap->chat = cs;
    snap->broker = bs;
    snap->server = &S->st;
}

/* Constant time in the length of the expected key: the comparison must not tell an attacker how
 * many leading bytes were right. */
static bool key_equal(const char *got, const char *want) {
    size_t gl = strlen(got), wl = strlen(want);
    unsigned char d = gl != wl;
    for (size_t i = 0; i < wl; i++)
        d |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return d == 0;
}

/* The server API's key, from "X-API-Key: K" or "Authorization: apikey K". */
static bool api_authorized(srv_t *S, struct lws *wsi) {
    char buf[256];
    int n = lws_hdr_custom_copy(wsi, buf, sizeof buf, "x-api-key:", 10);
    if (n > 0)
        return key_equal(buf, S->cfg.api_key);
    if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION) > 7 &&
        strncasecmp(buf, "apikey ", 7) == 0)
        return key_equal(buf + 7, S->cfg.api_key);
    return false;
}

static int api_error(struct lws *wsi, srv_conn_t *c, unsigned int status, int code,
                     const char *message) {
    core_str_t s = {0};
    core_str_appendf(&s, "{\"error\":{\"code\":%d,\"message\":", code);
    core_str_append_json_string(&s, message, strlen(message));
    core_str_appends(&s, "}}");
    return http_respond(wsi, c, status, "application/json", s.ptr, s.len);
}

/* The node's registry entry (Centrifugo's info fields, plus what a balancer and an operator
 * need: where it listens, whether it drains). */
static void node_self_info(void *ud, core_str_t *out) {
    srv_t *S = ud;
    chat_stats_t cs;
    chat_node_stats(S->node, &cs);
    core_str_appends(out, "{\"name\":");
    core_str_append_json_string(out, S->cfg.node_id, strlen(S->cfg.node_id));
    core_str_appends(out, ",\"address\":");
    core_str_append_json_string(out, S->public_addr, strlen(S->public_addr));
    core_str_appends(out, ",\"version\":");
    core_str_append_json_string(out, CHATD_VERSION, strlen(CHATD_VERSION));
    core_str_appendf(out,
                     ",\"num_clients\":%" PRIu64 ",\"num_channels\":%" PRIu64
                     ",\"uptime\":%" PRIu64 ",\"draining\":%s,\"ready\":%s"
                     ",\"updated_ms\":%" PRIu64 "}",
                     cs.connections, cs.channels, (core_now_ms() - S->started_ms) / 1000,
                     S->draining ? "true" : "false",
                     !S->draining && clu_ready(S->broker) ? "true" : "false", core_wall_ms());
}

static int admin_http(srv_t *S, struct lws *wsi, srv_conn_t *c, const char *uri) {
    if (strcmp(uri, "/healthz") == 0)
        return http_respond_text(wsi, c, 200, "ok\n");
    if (strcmp(uri, "/readyz") == 0) {
        if (S->draining)
            return http_respond_text(wsi, c, 503, "not ready: draining\n");
        if (!clu_ready(S->broker))
            return http_respond_text(wsi, c, 503, "not ready: broker unavailable\n");
        return http_respond_text(wsi, c, 200, "ready\n");
    }
    if (strcmp(uri, "/metrics") == 0) {
        adm_snapshot_t snap;
        chat_stats_t cs;
        clu_stats_t bs;
        snapshot(S, &snap, &cs, &bs);
        core_str_t body = {0};
        adm_metrics_render(&body, &snap);
        return http_respond(wsi, c, 200, "text/plain; version=0.0.4; charset=utf-8", body.ptr,
                            body.len);
    }
    if (strncmp(uri, "/api/", 5) == 0) {
        if (!api_authorized(S, wsi))
            return api_error(wsi, c, 401, 401, "unauthorized: X-API-Key required");
        if (strcmp(uri, "/api/info") == 0) {
            core_str_t body = {0};
            adm_registry_render_info(S->registry, &body);
            return http_respond(wsi, c, 200, "application/json", body.ptr, body.len);
        }
        return api_error(wsi, c, 404, 404, "unknown API method");
    }
    return http_respond_text(wsi, c, 404, "not found\n");
}

/* Per-session data of the admin listener: an HTTP exchange, and the path of a POST whose body
 * is still arriving. */
typedef struct {
    srv_conn_t base;
    char post_uri[64];
    bool post_too_long;
    size_t post_bytes; /* of the request body so far: only its size matters yet */
} adm_conn_t;

/* Request bodies the API reads at most (none reads one yet; Centrifugo's SDKs send "{}"). */
#define API_BODY_MAX 65536

static int cb_admin(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len) {
    srv_t *S = lws_context_user(lws_get_context(wsi));
    adm_conn_t *a = user;
    srv_conn_t *c = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return 1; /* no WebSockets on the admin listener */
    case LWS_CALLBACK_HTTP:
        if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0 &&
            lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
            /* Answered once the body is read: an answer before it would leave the body on
             * the connection, to be taken for the next request. */
            snprintf(a->post_uri, sizeof a->post_uri, "%s", (const char *)in);
            a->post_too_long = strlen((const char *)in) >= sizeof a->post_uri;
            a->post_bytes = 0;
            return 0;
        }
        /* A GET, or a POST without a body. */
        return admin_http(S, wsi, c, (const char *)in);
    case LWS_CALLBACK_HTTP_BODY:
        a->post_bytes += len;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (a->post_bytes > API_BODY_MAX)
            return api_error(wsi, c, 413, 413, "request body too large");
        if (a->post_too_long)
            return http_respond_text(wsi, c, 404, "not found\n");
        return admin_http(S, wsi, c, a->post_uri);
    default:
        return http_common(wsi, reason, c, in, len);
    }
}

/* ---- lifecycle ---- */

static const struct lws_protocols public_protocols[] = {
    /* rx_buffer_size is allocated per connection: small keeps idle sockets cheap, and longer
     * messages arrive in pieces that on_receive joins. */
    {"chat", cb_public, sizeof(srv_conn_t), 2048, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

static const struct lws_protocols admin_protocols[] = {
    {"admin", cb_admin, sizeof(adm_conn_t), 4096, 0, NULL, 0}, {NULL, NULL, 0, 0, 0, NULL, 0}};

static const struct lws_protocol_vhost_options pvo_default = {NULL, NULL, "default", "1"};
static const struct lws_protocol_vhost_options pvo_chat = {NULL, &pvo_default, "chat", ""};

static const struct lws_protocol_vhost_options mime_mjs = {NULL, NULL, ".mjs", "text/javascript"};
static const struct lws_protocol_vhost_options mime_map = {&mime_mjs, NULL, ".map",
                                                           "application/json"};

static void drain_finish(srv_t *S);

static void drain_tick(uv_timer_t *t) {
    srv_t *S = t->data;
    chat_stats_t cs;
    chat_node_stats(S->node, &cs);
    if (cs.sessions == 0 || core_now_ms() >= S->drain_deadline)
        drain_finish(S);
}

static void node_closed(void *ud) {
    (void)ud;
}

/* The broker fails what it still has pending (publishes, rate takes, fills) while closing, and
 * those callbacks reach into the node: the node goes only after the broker. */
static void broker_closed(void *ud) {
    srv_t *S = ud;
    chat_node_close(S->node, node_closed, S);
}

/* The node has left the registry (or Redis could not be told): the broker may go. */
static void registry_closed(void *ud) {
    srv_t *S = ud;
    clu_close(S->broker, broker_closed, S);
}

static void drain_finish(srv_t *S) {
    uv_timer_stop(&S->drain_timer);
    uv_close((uv_handle_t *)&S->sigterm, NULL);
    uv_close((uv_handle_t *)&S->sigint, NULL);
    uv_close((uv_handle_t *)&S->flush_timer, NULL);
    /* The first destroy closes every remaining socket, so every chat client is freed before
     * the node goes. */
    lws_context_destroy(S->ctx);
    adm_registry_t *reg = S->registry;
    S->registry = NULL;
    adm_registry_close(reg, registry_closed, S);
    uv_close((uv_handle_t *)&S->drain_timer, NULL);
}

static void begin_drain(srv_t *S) {
    if (S->draining)
        return;
    S->draining = true;
    chat_stats_t cs;
    chat_node_stats(S->node, &cs);
    CORE_LOGI(MOD, "draining", "sessions=%" PRIu64, cs.sessions);
    lws_context_deprecate(S->ctx, NULL);
    if (S->registry)
        adm_registry_beat(S->registry); /* balancers and peers learn it now, not at the next tick */
    chat_node_close_all(S->node, 3001, "shutdown");
    S->drain_deadline = core_now_ms() + DRAIN_MAX_MS;
    uv_timer_start(&S->drain_timer, drain_tick, 10, 10);
}

static void on_signal(uv_signal_t *h, int signum) {
    (void)signum;
    begin_drain(h->data);
}

/* "free=5/10,plus=10/20" into per-plan rates. */
static int parse_rates(const char *spec, chat_rate_t *rates, char *err, size_t errlen) {
    char *copy = core_strdup(spec), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        double rate;
        unsigned burst;
        int plan = eq ? (*eq = '\0', auth_plan_parse(tok)) : -1;
        if (plan < 0 || sscanf(eq + 1, "%lf/%u", &rate, &burst) != 2 || rate < 0 || !burst) {
            snprintf(err, errlen, "CHAT_RATE_LIMITS: expected plan=rate/burst, got \"%s\"", tok);
            rc = CORE_EINVAL;
            break;
        }
        rates[plan] = (chat_rate_t){rate, burst};
    }
    free(copy);
    return rc;
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct lws_vhost *make_vhost(srv_t *S, const char *name, const char *listen,
                                    const struct lws_protocols *protos,
                                    const struct lws_http_mount *mounts,
                                    const struct lws_protocol_vhost_options *pvo,
                                    const struct lws_protocol_vhost_options *headers) {
    char host[256];
    int port;
    srv_parse_hostport(listen, host, sizeof host, &port);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.vhost_name = name;
    info.port = port;
    info.iface = strcmp(host, "0.0.0.0") == 0 ? NULL : host;
    info.protocols = protos;
    info.mounts = mounts;
    info.pvo = pvo;
    info.headers = headers;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    info.keepalive_timeout = 30;
    struct lws_vhost *vh = lws_create_vhost(S->ctx, &info);
    if (!vh)
        CORE_LOGE(MOD, "cannot listen", "vhost=%s listen=%s", name, listen);
    return vh;
}

static void print_ready(srv_t *S) {
    char host[256], ahost[256];
    int port, aport;
    srv_parse_hostport(S->cfg.listen, host, sizeof host, &port);
    srv_parse_hostport(S->cfg.admin_listen, ahost, sizeof ahost, &aport);
    port = lws_get_vhost_listen_port(S->pub_vh);
    aport = lws_get_vhost_listen_port(S->adm_vh);
    if (!S->cfg.node_id) {
        char hn[128] = "node";
        gethostname(hn, sizeof hn);
        hn[sizeof hn - 1] = '\0';
        char id[200];
        /* Whatever the host name holds, the id must be cookie- and key-safe (and its only ':'
         * the one before the port). */
        for (char *q = hn; *q; q++)
            if (*q == ':' || !strchr(SRV_NODE_ID_CHARS, *q))
                *q = '-';
        snprintf(id, sizeof id, "%.50s:%d", hn, port);
        S->cfg.node_id = core_strdup(id);
    }
    /* Node ids are checked to be cookie-safe and at most 64 bytes (srv_node_id_ok). */
    snprintf(S->cookie, sizeof S->cookie, SRV_NODE_COOKIE "=%s; Path=/; HttpOnly; SameSite=Lax",
             S->cfg.node_id);
    const char *shown = strcmp(host, "0.0.0.0") == 0 ? "localhost" : host;
    if (S->demo) {
        char *tok = mint_demo_token(S, "demo");
        printf("chatd %s: demo mode (random secret)\n"
               "  web demo:   http://%s:%d/\n"
               "  demo token: %s\n"
               "  api key:    %s\n",
               CHATD_VERSION, shown, port, tok, S->cfg.api_key);
        free(tok);
    }
    if (S->cfg.advertise) {
        snprintf(S->public_addr, sizeof S->public_addr, "%s", S->cfg.advertise);
    } else if (strcmp(host, "0.0.0.0") == 0) {
        /* Every interface: the host name is the best guess of how peers reach it. */
        char hn[128] = "localhost";
        gethostname(hn, sizeof hn);
        hn[sizeof hn - 1] = '\0';
        snprintf(S->public_addr, sizeof S->public_addr, "%s:%d", hn, port);
    } else {
        snprintf(S->public_addr, sizeof S->public_addr, "%s:%d", host, port);
    }
    printf("chatd ready public=%s:%d admin=%s:%d node=%s\n", host, port, ahost, aport,
           S->cfg.node_id);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *config_path = getenv("CHAT_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            srv_config_help(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("chatd %s\n", CHATD_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else {
            fprintf(stderr, "chatd: unknown argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    static srv_t srv;
    srv_t *S = &srv;
    char err[512];
    if (srv_config_load(&S->cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    core_log_setup((core_log_level_t)core_log_level_parse(S->cfg.log_level),
                   strcmp(S->cfg.log_format, "json") == 0);
    if (S->cfg.database_url || S->cfg.database_read_url) {
        fprintf(stderr, "chatd: DATABASE_URL is not supported by this build yet; unset it\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    S->keys = auth_keyring_new();
    if (S->cfg.jwt_secret) {
        if (auth_keyring_parse(S->keys, S->cfg.jwt_secret) != 0) {
            fprintf(stderr, "chatd: CHAT_JWT_SECRET: expected a secret or kid:secret,...\n");
            return 2;
        }
    } else {
        char secret[49];
        core_random_id(secret, 48);
        auth_keyring_add(S->keys, NULL, secret, strlen(secret));
        S->demo = true;
    }
    if (!S->cfg.api_key) {
        char key[33];
        core_random_id(key, 32);
        S->cfg.api_key = core_strdup(key);
    }
    if (S->cfg.namespaces) {
        json_error_t je;
        json_t *obj = json_loads(S->cfg.namespaces, 0, &je);
        if (!obj || chat_namespaces_parse(obj, &S->ns, &S->nns, err, sizeof err) != 0) {
            fprintf(stderr, "chatd: CHAT_NAMESPACES: %s\n", obj ? err : je.text);
            json_decref(obj);
            return 2;
        }
        json_decref(obj);
    } else {
        chat_namespaces_default(&S->ns, &S->nns);
    }
    chat_config_t cc = {0};
    if (parse_rates(S->cfg.rate_limits, cc.plan_rate, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    unsigned tburst;
    if (sscanf(S->cfg.typing_rate, "%lf/%u", &cc.typing_rate.rate, &tburst) != 2 || !tburst) {
        fprintf(stderr, "chatd: CHAT_TYPING_RATE: expected rate/burst\n");
        return 2;
    }
    cc.typing_rate.burst = tburst;

    uv_loop_init(&S->loop);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    void *loops[1] = {&S->loop};
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   LWS_SERVER_OPTION_UV_NO_SIGSEGV_SIGFPE_SPIN;
    info.foreign_loops = loops;
    info.user = S;
    info.port = CONTEXT_PORT_NO_LISTEN;
    lws_set_log_level(core_log_enabled(CORE_LOG_DEBUG) ? LLL_ERR | LLL_WARN | LLL_NOTICE : LLL_ERR,
                      NULL);
    S->ctx = lws_create_context(&info);
    if (!S->ctx) {
        fprintf(stderr, "chatd: cannot create the libwebsockets context\n");
        return 1;
    }

    cc.namespaces = S->ns;
    cc.n_namespaces = S->nns;
    cc.keys = S->keys;
    cc.audience = S->cfg.jwt_audience;
    cc.issuer = S->cfg.jwt_issuer;
    cc.jwt_leeway_s = S->cfg.jwt_leeway;
    cc.ping_interval_s = S->cfg.ping_interval;
    cc.pong_timeout_s = S->cfg.pong_timeout;
    cc.stale_timeout_s = S->cfg.stale_timeout;
    cc.max_channels_per_conn = S->cfg.max_channels;
    cc.max_conns_per_user = S->cfg.max_connections_per_user;
    cc.dedupe_window_s = S->cfg.dedupe_window;
    cc.max_recover = S->cfg.history_max_limit;
    cc.max_errors = S->cfg.max_errors;
    cc.presence_ttl_s = S->cfg.presence_ttl;
    cc.version = CHATD_VERSION;
    cc.node_id = ""; /* set after the listeners are bound */

    static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,   0.25,   0.5,   1.0,  2.5};
    core_hist_init(&S->st.fanout_latency, bounds, sizeof bounds / sizeof bounds[0]);

    struct lws_http_mount m_files;
    memset(&m_files, 0, sizeof m_files);
    m_files.mountpoint = "/";
    m_files.mountpoint_len = 1;
    m_files.origin = S->cfg.web_root;
    m_files.def = "index.html";
    m_files.origin_protocol = LWSMPRO_FILE;
    m_files.extra_mimetypes = &mime_map;
    struct lws_http_mount m_demo = m_files;
    m_demo.mountpoint = "/demo/token";
    m_demo.mountpoint_len = (unsigned char)strlen(m_demo.mountpoint);
    m_demo.origin = "chat";
    m_demo.def = NULL;
    m_demo.origin_protocol = LWSMPRO_CALLBACK;
    m_demo.mount_next = &m_files;
    struct lws_http_mount m_health = m_demo;
    m_health.mountpoint = "/healthz";
    m_health.mountpoint_len = (unsigned char)strlen(m_health.mountpoint);
    m_health.mount_next = &m_demo;

    /* lws reads the value at each response; it is filled in once the node id is known. */
    S->cookie_hdr.name = "set-cookie:";
    S->cookie_hdr.value = S->cookie;
    S->pub_vh = make_vhost(S, "public", S->cfg.listen, public_protocols, &m_health, &pvo_chat,
                           &S->cookie_hdr);
    S->adm_vh = make_vhost(S, "admin", S->cfg.admin_listen, admin_protocols, NULL, NULL, NULL);
    if (!S->pub_vh || !S->adm_vh) {
        lws_context_destroy(S->ctx);
        return 1;
    }
    print_ready(S);
    cc.node_id = S->cfg.node_id;

    S->node = chat_node_new(&S->loop, &cc);
    if (S->cfg.redis_url) {
        /* Cluster mode: channels, history and presence live in Redis and are shared with every
         * node on it. The node starts even while Redis is down and reports not ready. */
        S->broker = clu_redis_new(&S->loop, chat_node_broker_events(), S->node, S->cfg.redis_url,
                                  S->cfg.node_id, S->cfg.history_max_limit);
        if (!S->broker) {
            fprintf(stderr, "chatd: REDIS_URL must be redis://A.B.C.D[:port][/db]\n");
            return 2;
        }
    } else {
        S->broker = clu_memory_new(&S->loop, chat_node_broker_events(), S->node,
                                   S->cfg.history_max_limit);
        clu_memory_set_max_bytes(S->broker, (size_t)S->cfg.history_memory_mb << 20);
    }
    chat_node_set_broker(S->node, S->broker);
    S->started_ms = core_now_ms();
    S->registry = adm_registry_new(&S->loop, S->broker, S->cfg.node_id,
                                   (uint32_t)((uint64_t)S->cfg.node_ttl * 1000), node_self_info, S);

    uv_signal_init(&S->loop, &S->sigterm);
    uv_signal_init(&S->loop, &S->sigint);
    S->sigterm.data = S->sigint.data = S;
    uv_signal_start(&S->sigterm, on_signal, SIGTERM);
    uv_signal_start(&S->sigint, on_signal, SIGINT);
    uv_timer_init(&S->loop, &S->drain_timer);
    S->drain_timer.data = S;
    core_list_init(&S->flush);
    uv_timer_init(&S->loop, &S->flush_timer);
    S->flush_timer.data = S;

    CORE_LOGI(MOD, "started", "node=%s broker=%s public=%s admin=%s", S->cfg.node_id,
              S->broker->name, S->cfg.listen, S->cfg.admin_listen);
    uv_run(&S->loop, UV_RUN_DEFAULT);
    /* On a foreign loop lws finishes its teardown (and unloads its event-loop plugin) only on a
     * second destroy once its handles are closed, which is when uv_run returns. */
    lws_context_destroy(S->ctx);
    int rc = uv_loop_close(&S->loop);
    if (rc != 0)
        CORE_LOGW(MOD, "loop not closed cleanly", "err=%s", uv_strerror(rc));
    core_str_free(&S->scratch);
    auth_keyring_free(S->keys);
    chat_namespaces_free(S->ns, S->nns);
    srv_config_free(&S->cfg);
    CORE_LOGI(MOD, "stopped", NULL);
    return 0;
}

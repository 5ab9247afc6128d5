/* libFuzzer driver for whole client sessions: two clients of one chat node on the in-memory
 * broker receive fuzzer-chosen frame sequences, so the state machine of chat/ (connect,
 * subscriptions, recovery, presence, publications crossing between clients, limits, closes)
 * meets hostile input, not only its codec. Each input gets a fresh loop, node and broker, which
 * are torn down at the end so leaked memory or handles show up.
 *
 * Input: one flags byte, then frames. A 0x00 byte before a frame sends it to client A, 0x01 to
 * client B; the first frame goes to A. 0x02 and the byte d after it advance the clock by d*d
 * seconds and run the timers (pings, pong and connect deadlines, expiry, presence and history
 * TTLs). None of these bytes can appear in JSON text outside strings, so the frames of a valid
 * session read as plain JSON.
 *   flags bit 0, bit 1: start client A (user u1), B (user u2) with a valid connect, because
 *                       random bytes never carry a valid HMAC
 *   bit 2: B connects as u1 too
 *   bits 3-4: plan claim of those tokens
 *   bit 5: the tokens list chat:lobby in `channels` (a server-side subscription)
 *   bit 6: a tiny history cap, so the broker evicts channel histories while they are used
 *   bit 7: the tokens expire a minute after the start
 *
 * Time and randomness belong to the input (the link wraps core's clock and random functions):
 * the clock starts at FUZZ_WALL_START and moves only as the input says, so rate limits and
 * deadlines do not depend on the speed of the machine; channel epochs are e0000001, e0000002, ...
 * in the order channels are created, so an input can name a current epoch in a recovering
 * subscribe or a history call. An input does the same on every run, and a crash reproduces.
 *
 * Besides memory errors, leaks and handles left open, it checks that every message chat sends
 * is one JSON object, that every close carries a protocol close code and a reason, and that once
 * the clients are gone the node's gauges are back at zero and it follows no channel. */
#include "auth/auth.h"
#include "chat/chat.h"
#include "cluster/cluster.h"
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fuzz-session-secret"
#define MAX_FRAME 65536 /* CHAT_MAX_FRAME_BYTES: the server closes larger frames itself */

enum {
    F_CONNECT_A = 1 << 0,
    F_CONNECT_B = 1 << 1,
    F_SAME_USER = 1 << 2,
    F_PLAN_SHIFT = 3,
    F_CHANNELS = 1 << 5,
    F_SMALL_HISTORY = 1 << 6,
    F_EXPIRING = 1 << 7,
};

enum { TO_A = 0, TO_B = 1, TIME = 2 };

#define FUZZ_WALL_START 1700000000 /* Unix seconds at the start of every input */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void __wrap_core_random(void *buf, size_t n);
void __wrap_core_random_id(char *out, size_t n);
uint64_t __wrap_core_now_ms(void);
uint64_t __wrap_core_now_us(void);
int64_t __wrap_core_wall_s(void);
int64_t __wrap_core_wall_ms(void);

static void check(bool ok) {
    if (!ok)
        abort();
}

/* ---- the input's clock and randomness ---- */

static uint64_t elapsed_us; /* since the start of the input */
static uint32_t rnd_state, id_count;

static void world_reset(void) {
    elapsed_us = 0;
    rnd_state = 0x9e3779b9u;
    id_count = 0;
}

/* The monotonic clock starts at an arbitrary 1000 s, like a machine that booted a while ago. */
uint64_t __wrap_core_now_us(void) {
    return 1000000000u + elapsed_us;
}

uint64_t __wrap_core_now_ms(void) {
    return __wrap_core_now_us() / 1000;
}

int64_t __wrap_core_wall_ms(void) {
    return (int64_t)FUZZ_WALL_START * 1000 + (int64_t)(elapsed_us / 1000);
}

int64_t __wrap_core_wall_s(void) {
    return __wrap_core_wall_ms() / 1000;
}

void __wrap_core_random(void *buf, size_t n) {
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++) {
        rnd_state ^= rnd_state << 13; /* xorshift32 */
        rnd_state ^= rnd_state >> 17;
        rnd_state ^= rnd_state << 5;
        p[i] = (uint8_t)rnd_state;
    }
}

/* "e" and the number of the id, zero-padded to n characters. */
void __wrap_core_random_id(char *out, size_t n) {
    uint32_t v = ++id_count;
    for (size_t i = n; i > 0; i--) {
        out[i - 1] = (char)('0' + v % 10);
        v /= 10;
    }
    if (n > 0)
        out[0] = 'e';
    out[n] = '\0';
}

/* FUZZ_SESSION_TRACE=1 prints every frame, close and message of the clients, to see what an
 * input does. */
static bool trace;

/* The recording transport of one connection. */
typedef struct {
    char name;
    chat_client_t *c;
    bool closed;   /* chat closed it: the server frees the client from its close path */
    unsigned sent; /* messages queued */
} conn_t;

static int t_send(void *tctx, core_buf_t *msg) {
    conn_t *k = tctx;
    if (k->closed)
        return 0; /* the server's transport drops output once it is closing */
    json_error_t e;
    json_t *j = json_loadb(msg->data, msg->len, 0, &e);
    check(json_is_object(j));
    json_decref(j);
    if (trace)
        fprintf(stderr, "%c <- %.*s\n", k->name, (int)msg->len, msg->data);
    /* Take and drop the queue's reference, so a buffer freed too early shows up here. */
    core_buf_unref(core_buf_ref(msg));
    k->sent++;
    return 0;
}

static void t_close(void *tctx, int code, const char *reason) {
    conn_t *k = tctx;
    check(!k->closed && code >= 3000 && code < 5000 && reason != NULL);
    if (trace)
        fprintf(stderr, "%c closed %d %s\n", k->name, code, reason);
    k->closed = true;
}

static const chat_transport_t transport = {t_send, t_close, NULL, NULL};

static auth_keyring_t *keys;
static chat_ns_t *namespaces;
static size_t n_namespaces;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    trace = getenv("FUZZ_SESSION_TRACE") != NULL;
    core_log_setup(trace ? CORE_LOG_DEBUG : CORE_LOG_ERROR, false);
    keys = auth_keyring_new();
    check(auth_keyring_add(keys, NULL, SECRET, strlen(SECRET)) == 0);
    chat_namespaces_default(&namespaces, &n_namespaces);
    return 0;
}

/* The server's defaults (docs/RUNTIME.md). */
static chat_config_t config(void) {
    chat_config_t cc = {
        .namespaces = namespaces,
        .n_namespaces = n_namespaces,
        .plan_rate = {{5, 10}, {10, 20}, {20, 40}, {50, 100}},
        .typing_rate = {2, 4},
        .keys = keys,
        .jwt_leeway_s = 30,
        .ping_interval_s = 25,
        .pong_timeout_s = 10,
        .stale_timeout_s = 10,
        .max_channels_per_conn = 128,
        .max_conns_per_user = 64,
        .dedupe_window_s = 120,
        .max_recover = 1000,
        .max_errors = 100,
        .presence_ttl_s = 30,
        .node_id = "fuzz-node",
        .version = "0.0.0-fuzz",
    };
    return cc;
}

/* Sends the client a connect with a valid token for user. */
static void connect_as(conn_t *k, const char *user, uint8_t flags) {
    json_t *claims =
        json_pack("{s:s, s:s, s:{s:s}}", "sub", user, "plan",
                  auth_plan_name((auth_plan_t)((flags >> F_PLAN_SHIFT) & 3)), "info", "name", user);
    if (flags & F_CHANNELS)
        json_object_set_new(claims, "channels", json_pack("[s]", "chat:lobby"));
    if (flags & F_EXPIRING)
        json_object_set_new(claims, "exp", json_integer(FUZZ_WALL_START + 60));
    char *token = auth_jwt_mint(keys, NULL, claims);
    check(token != NULL);
    json_decref(claims);
    core_str_t f = {0};
    core_str_appendf(&f, "{\"connect\":{\"token\":\"%s\",\"name\":\"fuzz\"},\"id\":1}", token);
    chat_client_on_frame(k->c, false, f.ptr, f.len);
    core_str_free(&f);
    free(token);
}

static void deliver(conn_t *k, const uint8_t *frame, size_t len) {
    if (k->c == NULL || len > MAX_FRAME)
        return;
    /* An exact-size heap copy, so a read past the frame is caught. */
    char *copy = malloc(len ? len : 1);
    check(copy != NULL);
    memcpy(copy, frame, len);
    if (trace)
        fprintf(stderr, "%c -> %.*s\n", k->name, (int)len, copy);
    chat_client_on_frame(k->c, false, copy, len);
    free(copy);
}

/* Between frames: the loop runs once, as between two socket reads, and a closed connection's
 * client is freed, as the server's close path does. */
static void settle(uv_loop_t *loop, conn_t *conns, size_t n) {
    uv_run(loop, UV_RUN_NOWAIT);
    for (size_t i = 0; i < n; i++) {
        if (conns[i].c != NULL && conns[i].closed) {
            chat_client_free(conns[i].c);
            conns[i].c = NULL;
        }
    }
}

typedef struct {
    uv_timer_t *t[8];
    int n;
} timers_t;

static void collect_timer(uv_handle_t *h, void *ud) {
    timers_t *ts = ud;
    if (h->type == UV_TIMER && uv_is_active(h)) {
        check(ts->n < 8);
        ts->t[ts->n++] = (uv_timer_t *)h;
    }
}

/* The clock moves on by secs, then every timer runs once, as the loop runs the due ones (they
 * all repeat and look at the clock themselves). libuv's own clock does not move, so the driver
 * calls them itself: timer_cb is a field of libuv's public struct, and calling it is all that
 * libuv does for a due timer. */
static void advance(uv_loop_t *loop, uint64_t secs) {
    elapsed_us += secs * 1000000;
    timers_t ts = {0};
    uv_walk(loop, collect_timer, &ts);
    for (int i = 0; i < ts.n; i++)
        if (uv_is_active((uv_handle_t *)ts.t[i]))
            ts.t[i]->timer_cb(ts.t[i]);
}

static void closed(void *ud) {
    (*(int *)ud)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    uint8_t flags = data[0];
    world_reset();
    uv_loop_t loop;
    check(uv_loop_init(&loop) == 0);
    chat_config_t cc = config();
    chat_node_t *node = chat_node_new(&loop, &cc);
    clu_broker_t *broker = clu_memory_new(&loop, chat_node_broker_events(), node, 1000);
    clu_memory_set_max_bytes(broker, (flags & F_SMALL_HISTORY) ? 2048 : (size_t)256 << 20);
    chat_node_set_broker(node, broker);

    conn_t conns[2] = {{.name = 'A'}, {.name = 'B'}};
    for (int i = 0; i < 2; i++)
        conns[i].c = chat_client_new(node, &transport, &conns[i]);
    if (flags & F_CONNECT_A)
        connect_as(&conns[0], "u1", flags);
    if (flags & F_CONNECT_B)
        connect_as(&conns[1], (flags & F_SAME_USER) ? "u1" : "u2", flags);
    settle(&loop, conns, 2);

    size_t pos = 1;
    conn_t *to = &conns[0];
    while (pos < size) {
        if (data[pos] == TIME) {
            uint64_t d = pos + 1 < size ? data[pos + 1] : 1;
            advance(&loop, d * d);
            settle(&loop, conns, 2);
            pos += 2;
            continue;
        }
        if (data[pos] == TO_A || data[pos] == TO_B)
            to = &conns[data[pos++]];
        size_t end = pos;
        while (end < size && data[end] > TIME)
            end++;
        deliver(to, data + pos, end - pos);
        settle(&loop, conns, 2);
        pos = end;
    }

    for (int i = 0; i < 2; i++)
        if (conns[i].c != NULL)
            chat_client_free(conns[i].c);
    /* With every client gone, the gauges are back at zero and the node follows no channel but
     * the server API's control channel, which it follows for its life. */
    chat_stats_t st;
    chat_node_stats(node, &st);
    check(st.connections == 0 && st.sessions == 0 && st.channels == 0);
    clu_stats_t bs;
    clu_stats(broker, &bs);
    check(bs.node_subscriptions == 1);
    int done = 0;
    chat_node_close(node, closed, &done);
    clu_close(broker, closed, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
    check(done == 2);
    check(uv_loop_close(&loop) == 0); /* no handle left open */
    return 0;
}

/* Unit tests for chat/chat_channel.c: the ordered feed of a channel. A node runs on its own
 * loop with a memory broker whose events pass through the test, so the test can drop a
 * publication from the feed (a lossy link) or inject one with another epoch; clients are
 * driven through a recording transport. Also a connect that recovers a server-side
 * subscription, which needs the same fixture. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chat/chat_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 64
#define SECRET "unit-test-secret-of-enough-length"

/* ---- recording transport ---- */

typedef struct {
    char *msgs[MAX_MSGS];
    size_t n;
    int close_code;
} rec_t;

static int rec_send(void *tctx, core_buf_t *b) {
    rec_t *r = tctx;
    assert_true(r->n < MAX_MSGS);
    r->msgs[r->n++] = core_strndup(b->data, b->len);
    return 0;
}

static void rec_close(void *tctx, int code, const char *reason) {
    rec_t *r = tctx;
    (void)reason;
    r->close_code = code;
}

static const chat_transport_t rec_transport = {rec_send, rec_close, NULL, NULL};

static void rec_clear(rec_t *r) {
    for (size_t i = 0; i < r->n; i++)
        free(r->msgs[i]);
    r->n = 0;
}

/* The offsets of the publication pushes recorded, in order. */
static size_t pub_offsets(const rec_t *r, uint64_t *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++) {
        json_t *m = json_loads(r->msgs[i], 0, NULL);
        json_t *pub = json_object_get(json_object_get(m, "push"), "pub");
        if (pub && k < cap)
            out[k++] = (uint64_t)json_integer_value(json_object_get(pub, "offset"));
        json_decref(m);
    }
    return k;
}

/* ---- fixture: loop, node, memory broker behind a filter ---- */

typedef struct {
    uv_loop_t loop;
    auth_keyring_t *keys;
    chat_ns_t *ns;
    size_t nns;
    chat_node_t *node;
    clu_broker_t *broker;
    uint64_t drop_from, drop_to; /* the feed loses these publications */
    int closed;
} fx_t;

static void f_on_pub(void *ud, const char *channel, const clu_pub_t *pub, const char *epoch) {
    fx_t *f = ud;
    if (pub->offset && pub->offset >= f->drop_from && pub->offset <= f->drop_to)
        return;
    chat_node_broker_events()->on_pub(f->node, channel, pub, epoch);
}

static void f_on_join(void *ud, const char *channel, const char *info, size_t len) {
    fx_t *f = ud;
    chat_node_broker_events()->on_join(f->node, channel, info, len);
}

static void f_on_leave(void *ud, const char *channel, const char *info, size_t len) {
    fx_t *f = ud;
    chat_node_broker_events()->on_leave(f->node, channel, info, len);
}

static const clu_events_t filter_events = {f_on_pub, f_on_join, f_on_leave, NULL};

static fx_t *fx_new(void) {
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->keys = auth_keyring_new();
    assert_int_equal(auth_keyring_add(f->keys, NULL, SECRET, strlen(SECRET)), 0);
    chat_namespaces_default(&f->ns, &f->nns);
    chat_config_t cc = {0};
    cc.namespaces = f->ns;
    cc.n_namespaces = f->nns;
    cc.keys = f->keys;
    cc.ping_interval_s = 25;
    cc.pong_timeout_s = 10;
    cc.stale_timeout_s = 10;
    cc.max_channels_per_conn = 16;
    cc.max_conns_per_user = 16;
    cc.dedupe_window_s = 60;
    cc.max_recover = 100;
    cc.presence_ttl_s = 60;
    cc.node_id = "unit";
    cc.version = "0";
    f->node = chat_node_new(&f->loop, &cc);
    f->broker = clu_memory_new(&f->loop, &filter_events, f, 1000);
    chat_node_set_broker(f->node, f->broker);
    return f;
}

static void closed_cb(void *ud) {
    ((fx_t *)ud)->closed++;
}

static void broker_closed(void *ud) {
    fx_t *f = ud;
    f->closed++;
    chat_node_close(f->node, closed_cb, f);
}

static void fx_free(fx_t *f) {
    clu_close(f->broker, broker_closed, f);
    for (int i = 0; i < 100 && f->closed < 2; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->closed, 2);
    assert_int_equal(uv_run(&f->loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    chat_namespaces_free(f->ns, f->nns);
    auth_keyring_free(f->keys);
    free(f);
}

/* Runs the loop until nothing is pending (bounded: answers are queued, never timers here). */
static void fx_settle(fx_t *f) {
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void send_cmd(chat_client_t *c, const char *text) {
    chat_client_on_frame(c, false, text, strlen(text));
}

/* A connected client of user that subscribed to channel. */
static chat_client_t *client_in(fx_t *f, rec_t *r, const char *user, const char *channel) {
    chat_client_t *c = chat_client_new(f->node, &rec_transport, r);
    json_t *claims = json_pack("{s:s}", "sub", user);
    char *token = auth_jwt_mint(f->keys, NULL, claims);
    json_decref(claims);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "{\"id\":1,\"connect\":{\"token\":\"%s\"}}", token);
    free(token);
    send_cmd(c, cmd);
    fx_settle(f);
    snprintf(cmd, sizeof cmd, "{\"id\":2,\"subscribe\":{\"channel\":\"%s\"}}", channel);
    send_cmd(c, cmd);
    fx_settle(f);
    assert_int_equal(r->close_code, 0);
    assert_true(r->n >= 2);
    assert_non_null(strstr(r->msgs[r->n - 1], "\"id\":2,\"subscribe\""));
    rec_clear(r);
    return c;
}

static void publish(fx_t *f, const char *channel, const char *data) {
    const chat_ns_t *ns = chat_ns_find(f->ns, f->nns, channel);
    clu_chan_opts_t o = {ns->history_size, ns->history_ttl_s, 60, ns->join_leave};
    clu_pub_t p = {0, data, strlen(data), NULL, 0, NULL};
    assert_int_equal(clu_publish(f->broker, channel, &p, &o, NULL, NULL), 0);
}

/* ---- tests ---- */

/* The feed loses offset 2: 3 is held, the gap is filled from history, and the client gets
 * 1, 2, 3, 4 in order, each once. */
static void test_gap_filled_in_order(void **state) {
    (void)state;
    fx_t *f = fx_new();
    rec_t r = {0};
    chat_client_t *c = client_in(f, &r, "alice", "chat:room");
    f->drop_from = f->drop_to = 2;
    publish(f, "chat:room", "{\"n\":1}");
    publish(f, "chat:room", "{\"n\":2}");
    publish(f, "chat:room", "{\"n\":3}");
    /* 3 arrived after 1 with 2 missing: it waits for the fill. */
    uint64_t off[8];
    assert_int_equal(pub_offsets(&r, off, 8), 1);
    assert_int_equal(off[0], 1);
    fx_settle(f);
    publish(f, "chat:room", "{\"n\":4}");
    fx_settle(f);
    size_t n = pub_offsets(&r, off, 8);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(off[i], i + 1);
    assert_int_equal(r.close_code, 0);
    chat_client_free(c);
    rec_clear(&r);
    fx_free(f);
}

/* Publications that arrive while a subscribe waits for its answer reach the new subscriber
 * after its answer, in order, and not twice. */
static void test_pending_subscriber_gets_feed_once(void **state) {
    (void)state;
    fx_t *f = fx_new();
    rec_t ra = {0}, rb = {0};
    chat_client_t *a = client_in(f, &ra, "alice", "chat:room");
    publish(f, "chat:room", "{\"n\":1}");
    chat_client_t *b = chat_client_new(f->node, &rec_transport, &rb);
    json_t *claims = json_pack("{s:s}", "sub", "bob");
    char *token = auth_jwt_mint(f->keys, NULL, claims);
    json_decref(claims);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "{\"id\":1,\"connect\":{\"token\":\"%s\"}}", token);
    free(token);
    send_cmd(b, cmd);
    fx_settle(f);
    send_cmd(b, "{\"id\":2,\"subscribe\":{\"channel\":\"chat:room\"}}");
    /* The subscribe waits for the broker's answer (from the loop); 2 arrives meanwhile. */
    publish(f, "chat:room", "{\"n\":2}");
    fx_settle(f);
    uint64_t off[8];
    size_t n = pub_offsets(&rb, off, 8);
    assert_int_equal(n, 1);
    assert_int_equal(off[0], 2);
    assert_int_equal(pub_offsets(&ra, off, 8), 2);
    chat_client_free(a);
    chat_client_free(b);
    rec_clear(&ra);
    rec_clear(&rb);
    fx_free(f);
}

/* A publication in another epoch means the channel's history was lost: every local subscriber
 * is closed with 3010 (insufficient state) and resynchronises. */
static void test_epoch_change_closes_with_3010(void **state) {
    (void)state;
    fx_t *f = fx_new();
    rec_t r = {0};
    chat_client_t *c = client_in(f, &r, "alice", "chat:room");
    publish(f, "chat:room", "{\"n\":1}");
    fx_settle(f);
    assert_int_equal(r.close_code, 0);
    clu_pub_t p = {1, "{\"n\":1}", 7, NULL, 0, NULL};
    chat_node_broker_events()->on_pub(f->node, "chat:room", &p, "OTHEREPO");
    assert_int_equal(r.close_code, CORE_DISCONNECT_INSUFFICIENT_STATE);
    chat_stats_t st;
    chat_node_stats(f->node, &st);
    assert_int_equal(st.state_lost, 1);
    chat_client_free(c);
    rec_clear(&r);
    fx_free(f);
}

/* A gap that history cannot fill (what the feed lost was trimmed from history meanwhile)
 * closes with 3010. */
static void test_unfillable_gap_closes_with_3010(void **state) {
    (void)state;
    fx_t *f = fx_new();
    rec_t r = {0};
    chat_client_t *c = client_in(f, &r, "alice", "chat:room");
    publish(f, "chat:room", "{\"n\":1}");
    fx_settle(f);
    /* The feed loses 2..250 while the room keeps its newest 200 only (namespace "chat"). */
    const chat_ns_t *ns = chat_ns_find(f->ns, f->nns, "chat:room");
    assert_int_equal(ns->history_size, 200);
    f->drop_from = 2;
    f->drop_to = 250;
    for (int i = 2; i <= 251; i++)
        publish(f, "chat:room", "{}");
    assert_int_equal(r.close_code, 0);
    fx_settle(f);
    assert_int_equal(r.close_code, CORE_DISCONNECT_INSUFFICIENT_STATE);
    uint64_t off[8];
    assert_int_equal(pub_offsets(&r, off, 8), 1); /* only 1: nothing out of order */
    chat_client_free(c);
    rec_clear(&r);
    fx_free(f);
}

/* A connect recovers a server-side subscription (a channel of its token) and gets its personal
 * one. The first answer's publications are borrowed for its callback only, and the connect
 * reply goes out after the second answer: the reply must carry copies, intact and in answer
 * order (the sanitizer build catches a reply that reads the first answer after it was freed). */
static void publish_done(int status, uint64_t offset, const char *epoch, void *ud) {
    assert_int_equal(status, 0);
    (void)offset;
    snprintf(ud, CLU_EPOCH_MAX, "%s", epoch);
}

static void publish_at(fx_t *f, const char *channel, const clu_pub_t *p, char *epoch) {
    const chat_ns_t *ns = chat_ns_find(f->ns, f->nns, channel);
    clu_chan_opts_t o = {ns->history_size, ns->history_ttl_s, 60, ns->join_leave};
    assert_int_equal(clu_publish(f->broker, channel, p, &o, publish_done, epoch), 0);
}

static void test_connect_recovers_server_side_sub(void **state) {
    (void)state;
    fx_t *f = fx_new();
    static const char info[] = "{\"user\":\"bob\",\"client\":\"c-b\"}";
    clu_pub_t p1 = {0, "{\"n\":1}", 7, NULL, 0, NULL};
    clu_pub_t p2 = {0, "{\"n\":2}", 7, info, sizeof info - 1, NULL};
    clu_pub_t p3 = {0, "{\"n\":3}", 7, NULL, 0, NULL};
    char epoch[CLU_EPOCH_MAX] = "", personal_epoch[CLU_EPOCH_MAX] = "";
    publish_at(f, "chat:news", &p1, epoch);
    publish_at(f, "chat:news", &p2, epoch);
    publish_at(f, "chat:news", &p3, epoch);
    publish_at(f, "personal:#alice", &p1, personal_epoch);
    fx_settle(f);
    assert_true(epoch[0] != '\0' && personal_epoch[0] != '\0');

    rec_t r = {0};
    chat_client_t *c = chat_client_new(f->node, &rec_transport, &r);
    json_t *claims = json_pack("{s:s,s:[s]}", "sub", "alice", "channels", "chat:news");
    char *token = auth_jwt_mint(f->keys, NULL, claims);
    json_decref(claims);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "{\"id\":1,\"connect\":{\"token\":\"%s\",\"subs\":{\"chat:news\":"
             "{\"recover\":true,\"offset\":1,\"epoch\":\"%s\"}}}}",
             token, epoch);
    free(token);
    send_cmd(c, cmd);
    /* The connect waits for the broker's history answers, from the loop. */
    assert_int_equal(r.n, 0);
    fx_settle(f);
    assert_int_equal(r.close_code, 0);
    assert_true(r.n >= 1);
    char want[768];
    snprintf(want, sizeof want,
             ",\"version\":\"0\",\"ping\":25,\"pong\":true,\"node\":\"unit\",\"subs\":{"
             "\"chat:news\":{\"recoverable\":true,\"positioned\":true,\"epoch\":\"%s\","
             "\"offset\":3,\"was_recovering\":true,\"recovered\":true,\"publications\":["
             "{\"data\":{\"n\":2},\"offset\":2,\"info\":%s},{\"data\":{\"n\":3},\"offset\":3}]},"
             "\"personal:#alice\":{\"recoverable\":true,\"positioned\":true,\"epoch\":\"%s\","
             "\"offset\":1}}}}",
             epoch, info, personal_epoch);
    const char *m = r.msgs[0];
    static const char head[] = "{\"id\":1,\"connect\":{\"client\":\"";
    assert_true(strncmp(m, head, sizeof head - 1) == 0);
    assert_true(strlen(m) > strlen(want));
    assert_string_equal(m + strlen(m) - strlen(want), want);
    chat_client_free(c);
    rec_clear(&r);
    fx_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gap_filled_in_order),
        cmocka_unit_test(test_pending_subscriber_gets_feed_once),
        cmocka_unit_test(test_epoch_change_closes_with_3010),
        cmocka_unit_test(test_unfillable_gap_closes_with_3010),
        cmocka_unit_test(test_connect_recovers_server_side_sub),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for the node's sweep (chat/chat_node.c): every client is visited once per round,
 * a slice per tick, so no tick pays for the whole population; first pings fall at jittered
 * times; a client freed under the sweep's cursor is stepped over. The test drives
 * chat__sweep_step with its own clock; clients sit on a counting transport. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chat/chat_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "unit-test-secret-of-enough-length"
#define NCLIENTS 1000
#define TICK_MS 20
#define TICKS_PER_ROUND 50
#define PING_S 25

/* ---- counting transport ---- */

typedef struct {
    uint32_t pings;     /* pings received */
    uint32_t ponged;    /* pings answered */
    uint64_t last_ping; /* the test clock at the last one */
    int close_code;
} cnt_t;

static uint64_t test_now; /* the clock of the step being run */

static int cnt_send(void *tctx, core_buf_t *b) {
    cnt_t *r = tctx;
    if (b->len == 2 && memcmp(b->data, "{}", 2) == 0) {
        r->pings++;
        r->last_ping = test_now;
    }
    return 0;
}

static void cnt_close(void *tctx, int code, const char *reason) {
    (void)reason;
    ((cnt_t *)tctx)->close_code = code;
}

static const chat_transport_t cnt_transport = {cnt_send, cnt_close, NULL, NULL};

/* ---- fixture ---- */

typedef struct {
    uv_loop_t loop;
    auth_keyring_t *keys;
    chat_ns_t *ns;
    size_t nns;
    chat_node_t *node;
    clu_broker_t *broker;
    int closed;
    chat_client_t *c[NCLIENTS];
    cnt_t r[NCLIENTS];
    uint64_t connected_ms; /* core_now_ms() once every client had connected */
} fx_t;

static void closed_cb(void *ud) {
    ((fx_t *)ud)->closed++;
}

static void broker_closed(void *ud) {
    fx_t *f = ud;
    f->closed++;
    chat_node_close(f->node, closed_cb, f);
}

static void settle(fx_t *f) {
    for (int i = 0; i < 20; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* A node with n connected clients, the sweep's own timer stopped (the test steps it). */
static fx_t *fx_new(size_t n) {
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
    cc.ping_interval_s = PING_S;
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
    uv_timer_stop(&f->node->sweep);
    f->broker = clu_memory_new(&f->loop, chat_node_broker_events(), f->node, 1000);
    chat_node_set_broker(f->node, f->broker);
    for (size_t i = 0; i < n; i++) {
        f->c[i] = chat_client_new(f->node, &cnt_transport, &f->r[i]);
        /* One user's connection cap is 16: each client its own user. */
        char user[32], tok_cmd[1024];
        snprintf(user, sizeof user, "u%zu", i);
        json_t *claims = json_pack("{s:s}", "sub", user);
        char *token = auth_jwt_mint(f->keys, NULL, claims);
        json_decref(claims);
        snprintf(tok_cmd, sizeof tok_cmd, "{\"id\":1,\"connect\":{\"token\":\"%s\"}}", token);
        free(token);
        chat_client_on_frame(f->c[i], false, tok_cmd, strlen(tok_cmd));
    }
    settle(f);
    f->connected_ms = core_now_ms();
    chat_stats_t st;
    chat_node_stats(f->node, &st);
    assert_int_equal(st.connections, n);
    return f;
}

static void fx_free(fx_t *f) {
    for (size_t i = 0; i < NCLIENTS; i++)
        if (f->c[i])
            chat_client_free(f->c[i]);
    clu_close(f->broker, broker_closed, f);
    for (int i = 0; i < 100 && f->closed < 2; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->closed, 2);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    chat_namespaces_free(f->ns, f->nns);
    auth_keyring_free(f->keys);
    free(f);
}

static void step(fx_t *f, uint64_t now) {
    test_now = now;
    chat__sweep_step(f->node, now, core_wall_s());
}

/* Every client answers the pings it got, as a live client does. */
static void answer_pings(fx_t *f, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (; f->r[i].ponged < f->r[i].pings; f->r[i].ponged++)
            chat_client_on_frame(f->c[i], false, "{}", 2);
}

static uint32_t total_pings(const fx_t *f, size_t n) {
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += f->r[i].pings;
    return k;
}

/* ---- tests ---- */

/* Every ping overdue at once (as after a stall): one tick sends at most a slice of them, and a
 * round of ticks reaches every client exactly once. */
static void test_tick_visits_a_slice(void **state) {
    (void)state;
    fx_t *f = fx_new(NCLIENTS);
    uint64_t late = f->connected_ms + 2 * PING_S * 1000;
    uint32_t slice = (NCLIENTS + TICKS_PER_ROUND - 1) / TICKS_PER_ROUND;
    for (int t = 0; t < TICKS_PER_ROUND; t++) {
        uint32_t before = total_pings(f, NCLIENTS);
        step(f, late + (uint64_t)t * TICK_MS);
        assert_true(total_pings(f, NCLIENTS) - before <= slice);
    }
    for (size_t i = 0; i < NCLIENTS; i++)
        assert_int_equal(f->r[i].pings, 1);
    fx_free(f);
}

/* Clients that connected together get their first pings spread over the second half of the
 * ping interval, never later than the interval (and a round) after connecting. */
static void test_first_pings_spread(void **state) {
    (void)state;
    fx_t *f = fx_new(NCLIENTS);
    uint32_t per_s[PING_S + 2] = {0};
    uint64_t t0 = f->connected_ms;
    for (uint64_t t = t0; t <= t0 + (PING_S + 1) * 1000; t += TICK_MS) {
        uint32_t before = total_pings(f, NCLIENTS);
        step(f, t);
        per_s[(t - t0) / 1000] += total_pings(f, NCLIENTS) - before;
        answer_pings(f, NCLIENTS);
    }
    for (size_t i = 0; i < NCLIENTS; i++) {
        assert_int_equal(f->r[i].pings, 1);
        assert_true(f->r[i].last_ping >= t0 + PING_S * 1000 / 2 - 1000);
    }
    /* Uniform over 12.5 s is 80 per second; all in one second would be 1,000. */
    uint32_t max = 0;
    for (int s = 0; s < PING_S + 2; s++)
        if (per_s[s] > max)
            max = per_s[s];
    assert_true(max < 250);
    /* Afterwards each client is pinged once per interval again. */
    for (uint64_t t = t0 + (PING_S + 1) * 1000; t <= t0 + (2 * PING_S + 2) * 1000; t += TICK_MS) {
        step(f, t);
        answer_pings(f, NCLIENTS);
    }
    for (size_t i = 0; i < NCLIENTS; i++) {
        assert_int_equal(f->r[i].pings, 2);
        assert_int_equal(f->r[i].close_code, 0);
    }
    fx_free(f);
}

/* The client under the sweep's cursor is freed between ticks: the sweep goes on with the next
 * one and still reaches every remaining client. */
static void test_cursor_client_freed(void **state) {
    (void)state;
    fx_t *f = fx_new(3);
    uint64_t late = f->connected_ms + 2 * PING_S * 1000;
    step(f, late); /* 3 clients, a slice of 1: visits the first, the cursor is on the second */
    assert_int_equal(total_pings(f, 3), 1);
    assert_int_equal(f->r[0].pings, 1);
    chat_client_free(f->c[1]);
    f->c[1] = NULL;
    step(f, late + TICK_MS);
    assert_int_equal(f->r[2].pings, 1);
    assert_int_equal(f->r[1].pings, 0);
    fx_free(f);
}

/* A pong overdue closes the client with 3012 on its visit, and only that client. */
static void test_pong_deadline(void **state) {
    (void)state;
    fx_t *f = fx_new(10);
    uint64_t t = f->connected_ms + PING_S * 1000 + 1000;
    for (int k = 0; k < TICKS_PER_ROUND; k++, t += TICK_MS)
        step(f, t);
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(f->r[i].pings, 1);
    /* Everyone but client 4 answers. */
    for (size_t i = 0; i < 10; i++)
        if (i != 4)
            chat_client_on_frame(f->c[i], false, "{}", 2);
    t += 10 * 1000;
    for (int k = 0; k < TICKS_PER_ROUND; k++, t += TICK_MS)
        step(f, t);
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(f->r[i].close_code, i == 4 ? CORE_DISCONNECT_NO_PONG : 0);
    fx_free(f);
}

/* Errors count per window: a client is closed for too many in one window, not for the same
 * number spread over two. */
static void test_error_window(void **state) {
    (void)state;
    fx_t *f = fx_new(2);
    f->node->cfg.max_errors = 3;
    const char *bad = "{\"id\":9,\"rpc\":{\"method\":\"no-such-method\"}}";
    for (int i = 0; i < 3; i++)
        chat_client_on_frame(f->c[0], false, bad, strlen(bad));
    assert_int_equal(f->r[0].close_code, 0);
    f->c[0]->window_ms -= 10000; /* the window is over */
    for (int i = 0; i < 3; i++)
        chat_client_on_frame(f->c[0], false, bad, strlen(bad));
    assert_int_equal(f->r[0].close_code, 0);
    for (int i = 0; i < 4; i++)
        chat_client_on_frame(f->c[1], false, bad, strlen(bad));
    assert_int_equal(f->r[1].close_code, CORE_DISCONNECT_TOO_MANY_ERRORS);
    fx_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tick_visits_a_slice), cmocka_unit_test(test_first_pings_spread),
        cmocka_unit_test(test_cursor_client_freed), cmocka_unit_test(test_pong_deadline),
        cmocka_unit_test(test_error_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

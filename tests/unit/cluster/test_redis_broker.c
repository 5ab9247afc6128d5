/* Unit tests for cluster/cluster_redis.c, the Redis broker, against a real redis-server on a
 * free loopback port started (and stopped, and restarted) by the test. Covered: offsets and
 * epoch of publications, delivery between two broker instances ("nodes") on one Redis, history
 * with since/limit/reverse and its unrecoverable cases, presence, no acknowledged publication
 * while the node's feed of the channel is not live, and an outage of Redis. Every
 * test drives its own loop under a watchdog and ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster/cluster.h"
#include "tests/unit/redis_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int redis_port;
static char redis_url[64];

static int spawn_redis(void) {
    return trs_restart("test_redis_broker");
}

static int kill_redis(void **state) {
    (void)state;
    trs_stop();
    return 0;
}

static int start_redis(void **state) {
    (void)state;
    if (trs_start("test_redis_broker") != 0)
        return -1;
    redis_port = trs_port();
    snprintf(redis_url, sizeof redis_url, "%s", trs_url());
    return 0;
}

/* A blocking side connection for what the broker interface does not expose (NUMSUB, garbage
 * PUBLISH, FLUSHALL). Blocking is fine here: the loop is not running while it is used. */
static long long sync_cmd_int(const char *fmt, const char *arg) {
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    redisReply *r = arg ? redisCommand(c, fmt, arg) : redisCommand(c, fmt);
    assert_non_null(r);
    long long v = 0;
    if (r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
             r->element[1]->type == REDIS_REPLY_INTEGER)
        v = r->element[1]->integer; /* PUBSUB NUMSUB ch -> [ch, n] */
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* ---- fixture -------------------------------------------------------------------------------- */

#define MAX_EV 128
#define MAX_HIST 32

typedef struct {
    char kind; /* 'p', 'j', 'l' */
    uint64_t offset;
    char epoch[CLU_EPOCH_MAX];
    char text[64]; /* data for pubs, info for join/leave */
} ev_t;

typedef struct fx fx_t;

typedef struct {
    fx_t *f;
    clu_broker_t *b;
    ev_t ev[MAX_EV];
    size_t nev;
} node_t;

struct fx {
    uv_loop_t loop;
    uv_timer_t watchdog, tick;
    bool stuck;
    int closed;
    /* last publish answer */
    int pubs_done, pub_status;
    uint64_t pub_offset;
    char pub_epoch[CLU_EPOCH_MAX];
    /* last history answer */
    int hist_done, hist_status;
    size_t hist_n;
    uint64_t hist_off[MAX_HIST], hist_top;
    char hist_epoch[CLU_EPOCH_MAX];
    char hist_first[64];
    /* last presence answers */
    int pres_done, pres_status;
    size_t pres_n;
    char pres_clients[8][32];
    char pres_users[8][32];
    int stats_done;
    uint32_t stats_clients, stats_users;
};

static void copy_text(char *dst, size_t cap, const char *src, size_t len) {
    assert_true(len < cap);
    if (len)
        memcpy(dst, src, len);
    dst[len] = '\0';
}

static ev_t *add_ev(node_t *n, char kind) {
    assert_true(n->nev < MAX_EV);
    ev_t *e = &n->ev[n->nev++];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    return e;
}

static void on_pub(void *ud, const char *channel, const clu_pub_t *pub, const char *epoch) {
    (void)channel;
    ev_t *e = add_ev(ud, 'p');
    e->offset = pub->offset;
    copy_text(e->epoch, sizeof e->epoch, epoch, strlen(epoch));
    copy_text(e->text, sizeof e->text, pub->data, pub->data_len);
}

static void on_join(void *ud, const char *channel, const char *info, size_t len) {
    (void)channel;
    copy_text(add_ev(ud, 'j')->text, 64, info, len);
}

static void on_leave(void *ud, const char *channel, const char *info, size_t len) {
    (void)channel;
    copy_text(add_ev(ud, 'l')->text, 64, info, len);
}

static const clu_events_t events = {on_pub, on_join, on_leave, NULL};

static void on_watchdog(uv_timer_t *t) {
    fx_t *f = t->data;
    f->stuck = true;
    uv_stop(&f->loop);
}

static void on_tick(uv_timer_t *t) {
    (void)t; /* only wakes uv_run(UV_RUN_ONCE) so run_until re-checks its condition */
}

static void fx_init(fx_t *f) {
    memset(f, 0, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->watchdog);
    f->watchdog.data = f;
    uv_timer_start(&f->watchdog, on_watchdog, 30000, 0);
    uv_unref((uv_handle_t *)&f->watchdog);
    uv_timer_init(&f->loop, &f->tick);
    sync_cmd_int("FLUSHALL", NULL); /* every test starts from empty channels */
    /* and with SUBSCRIBE allowed, whatever a failed test left behind */
    sync_cmd_int("ACL SETUSER default +subscribe", NULL);
}

typedef bool (*pred_fn)(void *arg);

/* Drives the loop until pred holds or timeout_ms passed; returns pred's final answer. */
static bool run_until(fx_t *f, pred_fn pred, void *arg, uint64_t timeout_ms) {
    uint64_t deadline = uv_hrtime() / 1000000u + timeout_ms;
    uv_timer_start(&f->tick, on_tick, 5, 5);
    while (!pred(arg) && uv_hrtime() / 1000000u < deadline && !f->stuck)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->tick);
    assert_false(f->stuck);
    return pred(arg);
}

static bool never(void *arg) {
    (void)arg;
    return false;
}

static void settle(fx_t *f, uint64_t ms) {
    run_until(f, never, NULL, ms);
}

static bool is_ready(void *arg) {
    return clu_ready(((node_t *)arg)->b);
}

static bool is_not_ready(void *arg) {
    return !clu_ready(((node_t *)arg)->b);
}

static void node_init(fx_t *f, node_t *n, const char *id) {
    memset(n, 0, sizeof *n);
    n->f = f;
    n->b = clu_redis_new(&f->loop, &events, n, redis_url, id, 100);
    assert_non_null(n->b);
    assert_true(run_until(f, is_ready, n, 5000));
}

static void on_closed(void *ud) {
    ((fx_t *)ud)->closed++;
}

static void fx_finish(fx_t *f, node_t **nodes, int n) {
    for (int i = 0; i < n; i++)
        clu_close(nodes[i]->b, on_closed, f);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_close((uv_handle_t *)&f->watchdog, NULL);
    /* Nothing else is left referenced: the run ends once every broker handle is closed. */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed, n);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* ---- operation helpers ---------------------------------------------------------------------- */

static void on_published(int status, uint64_t offset, const char *epoch, void *ud) {
    fx_t *f = ud;
    f->pubs_done++;
    f->pub_status = status;
    f->pub_offset = offset;
    copy_text(f->pub_epoch, sizeof f->pub_epoch, epoch, strlen(epoch));
}

static bool pubs_at_least(void *arg) {
    fx_t *f = *(fx_t **)arg;
    return f->pubs_done >= ((int *)((fx_t **)arg + 1))[0];
}

/* Publishes one and waits for its answer; returns the status. */
static int publish1(node_t *n, const char *ch, const char *data, uint32_t hsize) {
    fx_t *f = n->f;
    clu_chan_opts_t o = {.history_size = hsize, .history_ttl_s = 60, .presence_ttl_s = 0};
    clu_pub_t p = {0, data, strlen(data), "{\"user\":\"u\"}", 12, NULL};
    int before = f->pubs_done;
    assert_int_equal(clu_publish(n->b, ch, &p, &o, on_published, f), 0);
    struct {
        fx_t *f;
        int want;
    } w = {f, before + 1};
    assert_true(run_until(f, pubs_at_least, &w, 5000));
    return f->pub_status;
}

static void on_history(int status, const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch,
                       void *ud) {
    fx_t *f = ud;
    f->hist_done++;
    f->hist_status = status;
    f->hist_n = n;
    f->hist_top = top;
    copy_text(f->hist_epoch, sizeof f->hist_epoch, epoch, strlen(epoch));
    assert_true(n <= MAX_HIST);
    for (size_t i = 0; i < n; i++)
        f->hist_off[i] = pubs[i].offset;
    f->hist_first[0] = '\0';
    if (n)
        copy_text(f->hist_first, sizeof f->hist_first, pubs[0].data, pubs[0].data_len);
}

static bool hist_answered(void *arg) {
    return ((fx_t *)arg)->hist_done > 0;
}

static int history(node_t *n, const char *ch, bool has_since, uint64_t since, const char *epoch,
                   int32_t limit, bool reverse) {
    fx_t *f = n->f;
    clu_chan_opts_t o = {.history_size = 100, .history_ttl_s = 60};
    clu_history_req_t req = {has_since, since, epoch, limit, reverse};
    f->hist_done = 0;
    assert_int_equal(clu_history(n->b, ch, &o, &req, on_history, f), 0);
    assert_true(run_until(f, hist_answered, f, 5000));
    return f->hist_status;
}

static void expect_offsets(fx_t *f, const uint64_t *want, size_t n) {
    assert_int_equal(f->hist_n, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(f->hist_off[i], want[i]);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_bad_url(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_null(clu_redis_new(&loop, &events, NULL, "redis://localhost:6379", "n", 0));
    assert_null(clu_redis_new(&loop, &events, NULL, NULL, "n", 0));
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_publish_offsets(void **state) {
    (void)state;
    fx_t f;
    node_t a;
    fx_init(&f);
    node_init(&f, &a, "a");
    char epoch[CLU_EPOCH_MAX] = "";
    for (uint64_t i = 1; i <= 5; i++) {
        assert_int_equal(publish1(&a, "room", "{\"n\":1}", 100), 0);
        assert_int_equal(f.pub_offset, i);
        assert_true(strlen(f.pub_epoch) > 0);
        if (i == 1)
            strcpy(epoch, f.pub_epoch);
        assert_string_equal(f.pub_epoch, epoch);
    }
    /* Another channel counts on its own, with its own epoch. */
    assert_int_equal(publish1(&a, "other", "1", 100), 0);
    assert_int_equal(f.pub_offset, 1);
    /* A flushed script cache (NOSCRIPT) is survived by sending the body. */
    sync_cmd_int("SCRIPT FLUSH", NULL);
    assert_int_equal(publish1(&a, "other", "2", 100), 0);
    assert_int_equal(f.pub_offset, 2);
    assert_int_equal(publish1(&a, "other", "3", 100), 0);
    assert_int_equal(f.pub_offset, 3);
    /* Unstored: no offset. */
    assert_int_equal(publish1(&a, "room", "2", 0), 0);
    assert_int_equal(f.pub_offset, 0);
    clu_stats_t st;
    clu_stats(a.b, &st);
    assert_int_equal(st.publishes, 9);
    assert_int_equal(st.publish_errors, 0);
    node_t *nodes[] = {&a};
    fx_finish(&f, nodes, 1);
}

typedef struct {
    node_t *n;
    size_t want;
} evwait_t;

static bool has_events(void *arg) {
    evwait_t *w = arg;
    return w->n->nev >= w->want;
}

static void test_two_nodes(void **state) {
    (void)state;
    fx_t f;
    node_t a, b;
    fx_init(&f);
    node_init(&f, &a, "a");
    node_init(&f, &b, "b");
    assert_int_equal(clu_subscribe(b.b, "room"), 0);
    /* The interface has no subscribe confirmation; Redis says when it took effect. */
    for (int i = 0; i < 200 && sync_cmd_int("PUBSUB NUMSUB %s", "chat.pub.{room}") < 1; i++)
        settle(&f, 10);
    assert_int_equal(sync_cmd_int("PUBSUB NUMSUB %s", "chat.pub.{room}"), 1);

    for (int i = 1; i <= 20; i++) {
        char data[16];
        snprintf(data, sizeof data, "%d", i);
        assert_int_equal(publish1(&a, "room", data, 100), 0);
    }
    evwait_t w = {&b, 20};
    assert_true(run_until(&f, has_events, &w, 5000));
    settle(&f, 100); /* a duplicate would arrive by now */
    assert_int_equal(b.nev, 20);
    for (size_t i = 0; i < 20; i++) {
        assert_int_equal(b.ev[i].kind, 'p');
        assert_int_equal(b.ev[i].offset, i + 1);
        assert_string_equal(b.ev[i].epoch, f.pub_epoch);
    }
    assert_string_equal(b.ev[19].text, "20");
    assert_int_equal(a.nev, 0); /* a never subscribed */

    /* Join and leave travel the same way. */
    assert_int_equal(clu_join(a.b, "room", "{\"user\":\"x\"}", 12), 0);
    assert_int_equal(clu_leave(a.b, "room", "{\"user\":\"x\"}", 12), 0);
    w.want = 22;
    assert_true(run_until(&f, has_events, &w, 5000));
    assert_int_equal(b.ev[20].kind, 'j');
    assert_int_equal(b.ev[21].kind, 'l');
    assert_string_equal(b.ev[21].text, "{\"user\":\"x\"}");

    /* Garbage on the channel is counted and dropped. */
    sync_cmd_int("PUBLISH chat.pub.{room} %s", "not msgpack");
    clu_stats_t st;
    for (int i = 0; i < 200; i++) {
        clu_stats(b.b, &st);
        if (st.undecodable)
            break;
        settle(&f, 10);
    }
    assert_int_equal(st.undecodable, 1);
    assert_int_equal(st.delivered, 20);
    assert_int_equal(st.node_subscriptions, 1);

    /* After unsubscribing nothing more arrives. */
    assert_int_equal(clu_unsubscribe(b.b, "room"), 0);
    for (int i = 0; i < 200 && sync_cmd_int("PUBSUB NUMSUB %s", "chat.pub.{room}") > 0; i++)
        settle(&f, 10);
    assert_int_equal(publish1(&a, "room", "late", 100), 0);
    settle(&f, 100);
    assert_int_equal(b.nev, 22);
    node_t *nodes[] = {&a, &b};
    fx_finish(&f, nodes, 2);
}

static void test_history(void **state) {
    (void)state;
    fx_t f;
    node_t a;
    fx_init(&f);
    node_init(&f, &a, "a");
    /* An empty channel already has a stable epoch. */
    assert_int_equal(history(&a, "h", false, 0, NULL, -1, false), 0);
    assert_int_equal(f.hist_n, 0);
    assert_int_equal(f.hist_top, 0);
    char epoch0[CLU_EPOCH_MAX];
    strcpy(epoch0, f.hist_epoch);
    for (int i = 1; i <= 10; i++) {
        char data[16];
        snprintf(data, sizeof data, "%d", i);
        assert_int_equal(publish1(&a, "h", data, 100), 0);
    }
    assert_string_equal(f.pub_epoch, epoch0);
    char ep[CLU_EPOCH_MAX];
    strcpy(ep, f.pub_epoch);

    assert_int_equal(history(&a, "h", false, 0, NULL, -1, false), 0);
    expect_offsets(&f, (const uint64_t[]){1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 10);
    assert_string_equal(f.hist_first, "1");
    assert_int_equal(f.hist_top, 10);
    assert_string_equal(f.hist_epoch, ep);

    assert_int_equal(history(&a, "h", false, 0, NULL, 3, true), 0);
    expect_offsets(&f, (const uint64_t[]){10, 9, 8}, 3);

    assert_int_equal(history(&a, "h", true, 4, ep, 3, false), 0);
    expect_offsets(&f, (const uint64_t[]){5, 6, 7}, 3);

    assert_int_equal(history(&a, "h", true, 4, ep, -1, true), 0);
    expect_offsets(&f, (const uint64_t[]){3, 2, 1}, 3);

    assert_int_equal(history(&a, "h", true, 10, ep, -1, false), 0);
    assert_int_equal(f.hist_n, 0);

    assert_int_equal(history(&a, "h", false, 0, NULL, 0, false), 0);
    assert_int_equal(f.hist_n, 0);
    assert_int_equal(f.hist_top, 10);

    assert_int_equal(history(&a, "h", true, 4, "wrong", 3, false), CORE_EUNRECOVERABLE);
    assert_int_equal(f.hist_n, 0);
    assert_int_equal(f.hist_top, 10);
    assert_int_equal(history(&a, "h", true, 11, ep, 3, false), CORE_EUNRECOVERABLE);

    /* The history window: 5 kept out of 10. */
    for (int i = 1; i <= 10; i++)
        assert_int_equal(publish1(&a, "trim", "x", 5), 0);
    char tep[CLU_EPOCH_MAX];
    strcpy(tep, f.pub_epoch);
    assert_int_equal(history(&a, "trim", false, 0, NULL, -1, false), 0);
    expect_offsets(&f, (const uint64_t[]){6, 7, 8, 9, 10}, 5);
    assert_int_equal(history(&a, "trim", true, 2, tep, -1, false), CORE_EUNRECOVERABLE);
    assert_int_equal(history(&a, "trim", true, 5, tep, -1, false), 0);
    expect_offsets(&f, (const uint64_t[]){6, 7, 8, 9, 10}, 5);
    /* Backwards from inside the window is fine: older entries are just not there. */
    assert_int_equal(history(&a, "trim", true, 8, tep, -1, true), 0);
    expect_offsets(&f, (const uint64_t[]){7, 6}, 2);

    /* History lost (meta gone): a new epoch, old positions unrecoverable. */
    sync_cmd_int("DEL %s", "chat.meta.{h}");
    assert_int_equal(publish1(&a, "h", "again", 100), 0);
    assert_int_equal(f.pub_offset, 1);
    assert_string_not_equal(f.pub_epoch, epoch0);
    assert_int_equal(history(&a, "h", true, 10, epoch0, -1, false), CORE_EUNRECOVERABLE);
    node_t *nodes[] = {&a};
    fx_finish(&f, nodes, 1);
}

static void on_presence(int status, const clu_presence_t *e, size_t n, void *ud) {
    fx_t *f = ud;
    f->pres_done++;
    f->pres_status = status;
    f->pres_n = n;
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        copy_text(f->pres_clients[i], 32, e[i].client, strlen(e[i].client));
        copy_text(f->pres_users[i], 32, e[i].user, strlen(e[i].user));
        assert_memory_equal(e[i].info, "{\"i\":1}", 7);
    }
}

static void on_pstats(int status, uint32_t clients, uint32_t users, void *ud) {
    fx_t *f = ud;
    assert_int_equal(status, 0);
    f->stats_done++;
    f->stats_clients = clients;
    f->stats_users = users;
}

static bool pres_answered(void *arg) {
    fx_t *f = arg;
    return f->pres_done > 0 && f->stats_done > 0;
}

static void presence_query(node_t *n, const char *ch) {
    fx_t *f = n->f;
    f->pres_done = f->stats_done = 0;
    assert_int_equal(clu_presence(n->b, ch, on_presence, f), 0);
    assert_int_equal(clu_presence_stats(n->b, ch, on_pstats, f), 0);
    assert_true(run_until(f, pres_answered, f, 5000));
    assert_int_equal(f->pres_status, 0);
}

static void test_presence(void **state) {
    (void)state;
    fx_t f;
    node_t a, b;
    fx_init(&f);
    node_init(&f, &a, "a");
    node_init(&f, &b, "b");
    clu_chan_opts_t o = {.presence_ttl_s = 60};
    const char *clients[] = {"c1", "c2", "c3"}, *users[] = {"alice", "alice", "bob"};
    for (int i = 0; i < 3; i++) {
        clu_presence_t e = {clients[i], users[i], "{\"i\":1}", 7};
        assert_int_equal(clu_presence_add(i == 2 ? b.b : a.b, "p", &o, &e), 0);
    }
    /* presence_add has no callback; a query on each node's own connection runs after its adds
     * (one connection executes in order). Then the other node sees all of them. */
    presence_query(&a, "p");
    presence_query(&b, "p");
    assert_int_equal(f.pres_n, 3);
    assert_int_equal(f.stats_clients, 3);
    assert_int_equal(f.stats_users, 2);
    bool seen_c3 = false;
    for (size_t i = 0; i < 3; i++)
        if (strcmp(f.pres_clients[i], "c3") == 0)
            seen_c3 = strcmp(f.pres_users[i], "bob") == 0;
    assert_true(seen_c3);

    assert_int_equal(clu_presence_remove(a.b, "p", "c1"), 0);
    presence_query(&a, "p");
    assert_int_equal(f.pres_n, 2);
    assert_int_equal(f.stats_users, 2);

    /* Entries that are not refreshed expire. */
    clu_chan_opts_t shortttl = {.presence_ttl_s = 1};
    clu_presence_t e = {"c9", "carol", "{\"i\":1}", 7};
    assert_int_equal(clu_presence_add(a.b, "q", &shortttl, &e), 0);
    presence_query(&a, "q");
    assert_int_equal(f.pres_n, 1);
    settle(&f, 1200);
    presence_query(&a, "q");
    assert_int_equal(f.pres_n, 0);
    assert_int_equal(f.stats_clients, 0);
    node_t *nodes[] = {&a, &b};
    fx_finish(&f, nodes, 2);
}

/* ---- registry, shared limiter, command timeout ----------------------------------------- */

typedef struct {
    int done, status;
    size_t n;
    char ids[4][16];
    char infos[4][64];
    int64_t wait_ms;
} answer_t;

static void on_nodes(int status, const clu_node_t *nodes, size_t n, void *ud) {
    answer_t *a = ud;
    a->done++;
    a->status = status;
    a->n = n;
    assert_true(n <= 4);
    for (size_t i = 0; i < n; i++) {
        copy_text(a->ids[i], sizeof a->ids[i], nodes[i].id, strlen(nodes[i].id));
        copy_text(a->infos[i], sizeof a->infos[i], nodes[i].info, nodes[i].info_len);
    }
}

static bool answered(void *arg) {
    return ((answer_t *)arg)->done > 0;
}

static void beat(node_t *n, const char *id, const char *info, uint32_t ttl_ms, answer_t *a) {
    memset(a, 0, sizeof *a);
    assert_int_equal(clu_heartbeat(n->b, id, info, strlen(info), ttl_ms, on_nodes, a), 0);
    assert_true(run_until(n->f, answered, a, 5000));
    assert_int_equal(a->status, 0);
}

static const char *info_of(const answer_t *a, const char *id) {
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->ids[i], id) == 0)
            return a->infos[i];
    return NULL;
}

static void test_registry(void **state) {
    (void)state;
    fx_t f;
    node_t a, b;
    fx_init(&f);
    node_init(&f, &a, "a");
    node_init(&f, &b, "b");
    answer_t ans;
    beat(&a, "a", "{\"name\":\"a\"}", 60000, &ans);
    assert_int_equal(ans.n, 1);
    beat(&b, "b", "{\"name\":\"b\"}", 300, &ans);
    assert_int_equal(ans.n, 2);
    assert_string_equal(info_of(&ans, "a"), "{\"name\":\"a\"}");
    /* A newer announcement replaces the older one. */
    beat(&a, "a", "{\"name\":\"a\",\"draining\":true}", 60000, &ans);
    assert_string_equal(info_of(&ans, "a"), "{\"name\":\"a\",\"draining\":true}");
    /* b stops announcing: gone once its TTL passed on Redis's clock. */
    settle(&f, 400);
    beat(&a, "a", "{\"name\":\"a\"}", 60000, &ans);
    assert_int_equal(ans.n, 1);
    assert_null(info_of(&ans, "b"));
    /* TTL 0: a node leaving on purpose is gone at once. */
    beat(&b, "b", "{\"name\":\"b\"}", 60000, &ans);
    assert_int_equal(ans.n, 2);
    beat(&a, "a", "", 0, &ans);
    assert_int_equal(ans.n, 1);
    assert_string_equal(ans.ids[0], "b");
    node_t *nodes[] = {&a, &b};
    fx_finish(&f, nodes, 2);
}

static void on_rate(int status, int64_t wait_ms, void *ud) {
    answer_t *a = ud;
    a->done++;
    a->status = status;
    a->wait_ms = wait_ms;
}

static int64_t take(node_t *n, const char *key, int64_t interval_us, int64_t burst) {
    answer_t a = {0};
    assert_int_equal(clu_rate_take(n->b, key, interval_us, burst, on_rate, &a), 0);
    assert_true(run_until(n->f, answered, &a, 5000));
    assert_int_equal(a.status, 0);
    return a.wait_ms;
}

static void test_shared_limit(void **state) {
    (void)state;
    fx_t f;
    node_t a, b;
    fx_init(&f);
    node_init(&f, &a, "a");
    node_init(&f, &b, "b");
    assert_true(clu_has_shared_limits(a.b));
    /* One token per 10 s, burst 3: three takes from either node pass, the fourth waits about
     * the whole interval, however the takes are spread. */
    const int64_t interval = 10 * 1000 * 1000;
    assert_int_equal(take(&a, "pub:u", interval, 3), 0);
    assert_int_equal(take(&b, "pub:u", interval, 3), 0);
    assert_int_equal(take(&a, "pub:u", interval, 3), 0);
    int64_t wait = take(&b, "pub:u", interval, 3);
    assert_true(wait > 9000 && wait <= 10000);
    /* A refused take takes nothing: the wait only shrinks. */
    assert_true(take(&a, "pub:u", interval, 3) <= wait);
    /* Other keys are other buckets; the key expires once its bucket is full again. */
    assert_int_equal(take(&a, "pub:v", interval, 3), 0);
    assert_int_equal(take(&a, "one:u", interval, 1), 0);
    long long pttl = sync_cmd_int("PTTL %s", "chat.rate.{one:u}");
    assert_true(pttl > 9000 && pttl <= 10001);
    node_t *nodes[] = {&a, &b};
    fx_finish(&f, nodes, 2);
}

static bool has_text(void *arg) {
    node_t *n = *(node_t **)arg;
    const char *text = ((const char **)arg)[1];
    for (size_t i = 0; i < n->nev; i++)
        if (strcmp(n->ev[i].text, text) == 0)
            return true;
    return false;
}

/* A node acknowledges no publication into a channel it subscribed to while its feed of that
 * channel is not live: its own subscribers could not get it. Here the pub/sub connection is
 * killed and Redis refuses SUBSCRIBE (an ACL) until the test allows it again, so the command
 * connection works while the channel cannot be subscribed again. */
static void test_publish_needs_live_feed(void **state) {
    (void)state;
    fx_t f;
    node_t a, b;
    fx_init(&f);
    node_init(&f, &a, "a");
    node_init(&f, &b, "b");
    assert_int_equal(clu_subscribe(a.b, "room"), 0);
    for (int i = 0; i < 200 && sync_cmd_int("PUBSUB NUMSUB %s", "chat.pub.{room}") < 1; i++)
        settle(&f, 10);
    assert_int_equal(sync_cmd_int("PUBSUB NUMSUB %s", "chat.pub.{room}"), 1);
    assert_int_equal(publish1(&a, "room", "0", 100), 0);

    sync_cmd_int("ACL SETUSER default -subscribe", NULL);
    assert_int_equal(sync_cmd_int("CLIENT KILL TYPE pubsub", NULL), 1);
    assert_true(run_until(&f, is_not_ready, &a, 5000));
    /* Stored or not, into the subscribed channel: refused, whichever moment of the reconnect
     * attempts it meets. */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(publish1(&a, "room", "lost", 100), CORE_EAGAIN);
        assert_int_equal(publish1(&a, "room", "lost", 0), CORE_EAGAIN);
        settle(&f, 5);
    }
    /* Where the node has no subscriber, nobody of its own can miss it: acknowledged. */
    assert_int_equal(publish1(&a, "other", "x", 100), 0);
    assert_int_equal(publish1(&b, "room", "from b", 100), 0);
    assert_int_equal(f.pub_offset, 2);
    clu_stats_t st;
    clu_stats(a.b, &st);
    assert_int_equal(st.publish_errors, 20);
    assert_false(clu_ready(a.b));

    sync_cmd_int("ACL SETUSER default +subscribe", NULL);
    assert_true(run_until(&f, is_ready, &a, 5000));
    /* Ready means subscribed again: the next publication comes through the feed. */
    assert_int_equal(publish1(&a, "room", "back", 100), 0);
    assert_int_equal(f.pub_offset, 3);
    const void *w[2] = {&a, "back"};
    assert_true(run_until(&f, has_text, w, 5000));
    for (size_t i = 0; i < a.nev; i++)
        assert_string_not_equal(a.ev[i].text, "lost");
    node_t *nodes[] = {&a, &b};
    fx_finish(&f, nodes, 2);
}

static void test_command_timeout(void **state) {
    (void)state;
    fx_t f;
    node_t a;
    fx_init(&f);
    node_init(&f, &a, "a");
    /* A Redis that stops answering but keeps its sockets: only the broker's own timer can tell. */
    trs_signal(SIGSTOP);
    answer_t ans = {0};
    assert_int_equal(clu_rate_take(a.b, "pub:u", 1000, 1, on_rate, &ans), 0);
    uint64_t t0 = uv_hrtime() / 1000000u;
    assert_true(run_until(&f, answered, &ans, 8000));
    uint64_t took = uv_hrtime() / 1000000u - t0;
    trs_signal(SIGCONT);
    assert_int_equal(ans.status, CORE_EAGAIN);
    assert_true(took >= 2500 && took < 6000);
    clu_stats_t st;
    clu_stats(a.b, &st);
    assert_int_equal(st.timeouts, 1);
    assert_true(run_until(&f, is_ready, &a, 10000));
    assert_int_equal(take(&a, "pub:u", 1000, 1), 0);
    node_t *nodes[] = {&a};
    fx_finish(&f, nodes, 1);
}

static void test_outage(void **state) {
    fx_t f;
    node_t a;
    fx_init(&f);
    node_init(&f, &a, "a");
    assert_int_equal(clu_subscribe(a.b, "room"), 0);
    assert_int_equal(publish1(&a, "room", "1", 100), 0);
    assert_int_equal(f.pub_offset, 1);

    kill_redis(state);
    assert_true(run_until(&f, is_not_ready, &a, 5000));
    assert_int_equal(publish1(&a, "room", "2", 100), CORE_EAGAIN);
    assert_int_equal(publish1(&a, "room", "3", 0), CORE_EAGAIN);
    clu_stats_t st;
    clu_stats(a.b, &st);
    assert_int_equal(st.publish_errors, 2);

    assert_int_equal(spawn_redis(), 0);
    assert_true(run_until(&f, is_ready, &a, 10000));
    assert_int_equal(publish1(&a, "room", "4", 100), 0);
    assert_int_equal(f.pub_offset, 1); /* no persistence: the history restarted */
    /* The pub/sub connection re-subscribed on its own. */
    for (int i = 0; i < 300 && sync_cmd_int("PUBSUB NUMSUB %s", "chat.pub.{room}") < 1; i++)
        settle(&f, 10);
    assert_int_equal(publish1(&a, "room", "5", 100), 0);
    /* "4" may arrive too (when the re-subscribe beat its publish); one pub/sub connection
     * delivers in order, so once "5" is the newest event it has arrived. */
    for (int i = 0; i < 500 && !(a.nev > 0 && strcmp(a.ev[a.nev - 1].text, "5") == 0); i++)
        settle(&f, 10);
    assert_true(a.nev > 0);
    assert_string_equal(a.ev[a.nev - 1].text, "5");
    node_t *nodes[] = {&a};
    fx_finish(&f, nodes, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_url),
        cmocka_unit_test(test_publish_offsets),
        cmocka_unit_test(test_two_nodes),
        cmocka_unit_test(test_history),
        cmocka_unit_test(test_presence),
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_shared_limit),
        cmocka_unit_test(test_publish_needs_live_feed),
        cmocka_unit_test(test_command_timeout),
        cmocka_unit_test(test_outage), /* last: it restarts redis-server */
    };
    return cmocka_run_group_tests(tests, start_redis, kill_redis);
}

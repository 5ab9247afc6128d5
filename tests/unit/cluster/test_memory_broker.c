/* Unit tests for cluster/cluster_memory.c: the one-node broker behind the clu_* interface.
 * Every test runs on its own libuv loop and ends with the broker closed and the loop closed
 * cleanly. Operations take effect at once, but answers run from the loop (never before the call
 * returned), so results are read after a loop turn. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster/cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixture: a loop, a broker and recorded events ----------------------------------------- */

#define MAX_EVENTS 64

typedef struct {
    char kind; /* 'p' pub, 'j' join, 'l' leave */
    char channel[64];
    uint64_t offset;
    char data[128];
    char info[128];
    char epoch[CLU_EPOCH_MAX];
} event_t;

typedef struct {
    uv_loop_t loop;
    clu_broker_t *b;
    event_t ev[MAX_EVENTS];
    size_t nev;
    bool closed;
} fx_t;

static void copy_text(char *dst, size_t cap, const char *src, size_t len) {
    assert_true(len < cap);
    if (len)
        memcpy(dst, src, len);
    dst[len] = '\0';
}

static event_t *next_event(fx_t *f, char kind, const char *channel) {
    assert_true(f->nev < MAX_EVENTS);
    event_t *e = &f->ev[f->nev++];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    copy_text(e->channel, sizeof e->channel, channel, strlen(channel));
    return e;
}

static void on_pub(void *ud, const char *channel, const clu_pub_t *pub, const char *epoch) {
    event_t *e = next_event(ud, 'p', channel);
    e->offset = pub->offset;
    copy_text(e->data, sizeof e->data, pub->data, pub->data_len);
    if (pub->info)
        copy_text(e->info, sizeof e->info, pub->info, pub->info_len);
    copy_text(e->epoch, sizeof e->epoch, epoch, strlen(epoch));
}

static void on_join(void *ud, const char *channel, const char *info, size_t len) {
    event_t *e = next_event(ud, 'j', channel);
    copy_text(e->info, sizeof e->info, info, len);
}

static void on_leave(void *ud, const char *channel, const char *info, size_t len) {
    event_t *e = next_event(ud, 'l', channel);
    copy_text(e->info, sizeof e->info, info, len);
}

static const clu_events_t events = {on_pub, on_join, on_leave, NULL};

static fx_t *fx_new(uint32_t max_history_limit) {
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->b = clu_memory_new(&f->loop, &events, f, max_history_limit);
    assert_non_null(f->b);
    assert_string_equal(f->b->name, "memory");
    assert_true(clu_ready(f->b));
    return f;
}

static void closed_cb(void *ud) {
    fx_t *f = ud;
    assert_false(f->closed);
    f->closed = true;
}

static void fx_free(fx_t *f) {
    clu_close(f->b, closed_cb, f);
    while (!f->closed)
        assert_true(uv_run(&f->loop, UV_RUN_ONCE) >= 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

static void fx_turn(fx_t *f) {
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* ---- publish and history helpers ------------------------------------------------------------ */

typedef struct {
    int calls;
    int status;
    uint64_t offset;
    char epoch[CLU_EPOCH_MAX];
} pub_res_t;

static void publish_cb(int status, uint64_t offset, const char *epoch, void *ud) {
    pub_res_t *r = ud;
    r->calls++;
    r->status = status;
    r->offset = offset;
    copy_text(r->epoch, sizeof r->epoch, epoch, strlen(epoch));
}

static pub_res_t publish(fx_t *f, const char *channel, const char *data, const char *info,
                         uint32_t history_size) {
    clu_pub_t pub = {
        .data = data, .data_len = strlen(data), .info = info, .info_len = info ? strlen(info) : 0};
    clu_chan_opts_t opts = {.history_size = history_size, .history_ttl_s = 3600};
    pub_res_t r = {0};
    assert_int_equal(clu_publish(f->b, channel, &pub, &opts, publish_cb, &r), 0);
    fx_turn(f);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    return r;
}

#define MAX_HIST 64

typedef struct {
    int calls;
    int status;
    size_t n;
    uint64_t offsets[MAX_HIST];
    char data[MAX_HIST][32];
    char info[MAX_HIST][32];
    uint64_t top;
    char epoch[CLU_EPOCH_MAX];
} hist_res_t;

static void history_cb(int status, const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch,
                       void *ud) {
    hist_res_t *r = ud;
    r->calls++;
    r->status = status;
    r->n = n;
    assert_true(n <= MAX_HIST);
    for (size_t i = 0; i < n; i++) {
        r->offsets[i] = pubs[i].offset;
        copy_text(r->data[i], sizeof r->data[i], pubs[i].data, pubs[i].data_len);
        if (pubs[i].info)
            copy_text(r->info[i], sizeof r->info[i], pubs[i].info, pubs[i].info_len);
    }
    r->top = top;
    copy_text(r->epoch, sizeof r->epoch, epoch, strlen(epoch));
}

static hist_res_t history(fx_t *f, const char *channel, const clu_history_req_t *req) {
    clu_chan_opts_t opts = {.history_size = 10, .history_ttl_s = 3600};
    hist_res_t r;
    memset(&r, 0, sizeof r);
    assert_int_equal(clu_history(f->b, channel, &opts, req, history_cb, &r), 0);
    fx_turn(f);
    assert_int_equal(r.calls, 1);
    return r;
}

/* Asserts the answer's offsets equal the list. */
static void expect_offsets(const hist_res_t *r, const uint64_t *want, size_t n) {
    if (r->n != n) {
        print_error("got %zu publications:", r->n);
        for (size_t i = 0; i < r->n; i++)
            print_error(" %llu", (unsigned long long)r->offsets[i]);
        print_error("\n");
    }
    assert_int_equal(r->n, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(r->offsets[i], want[i]);
}

#define EXPECT_OFFSETS(r, ...)                                                                     \
    expect_offsets(&(r), (const uint64_t[]){__VA_ARGS__},                                          \
                   sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t))

/* Publishes n messages "m<i>" (i from 1) with history_size hs; returns the epoch. */
static void publish_n(fx_t *f, const char *channel, int n, uint32_t hs, char *epoch) {
    for (int i = 1; i <= n; i++) {
        char data[32];
        snprintf(data, sizeof data, "\"m%d\"", i);
        pub_res_t r = publish(f, channel, data, NULL, hs);
        if (i == 1)
            memcpy(epoch, r.epoch, CLU_EPOCH_MAX);
        else
            assert_string_equal(r.epoch, epoch);
    }
}

/* Over the byte cap, the least recently published channel loses its whole history under a
 * new epoch; the channel being published to keeps its own. */
static void test_memory_cap_evicts_least_recent(void **state) {
    (void)state;
    fx_t *f = fx_new(100);
    /* A publication of 4 data bytes costs at most 48 bytes with its record: the cap holds 6,
     * so two channels of 4 do not fit together, one does. */
    clu_memory_set_max_bytes(f->b, 6 * 48);
    char ea[CLU_EPOCH_MAX], eb[CLU_EPOCH_MAX], ec[CLU_EPOCH_MAX];
    publish_n(f, "chat:a", 4, 10, ea);
    clu_stats_t st;
    clu_stats(f->b, &st);
    assert_int_equal(st.evicted, 0);
    publish_n(f, "chat:b", 4, 10, eb);
    publish_n(f, "chat:c", 4, 10, ec);
    clu_stats(f->b, &st);
    assert_true(st.evicted >= 2);

    /* a was published to least recently: its position is gone and its epoch changed. */
    clu_history_req_t since_a = {
        .has_since = true, .since_offset = 2, .since_epoch = ea, .limit = 10};
    hist_res_t ra = history(f, "chat:a", &since_a);
    assert_int_equal(ra.status, CORE_EUNRECOVERABLE);
    assert_string_not_equal(ra.epoch, ea);
    /* c, published last, keeps all of its history. */
    clu_history_req_t all = {.limit = 10};
    hist_res_t rc = history(f, "chat:c", &all);
    assert_int_equal(rc.status, 0);
    assert_string_equal(rc.epoch, ec);
    EXPECT_OFFSETS(rc, 1, 2, 3, 4);
    fx_free(f);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_loop_lifecycle(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    fx_free(f);
}

static void test_publish_offsets_and_epoch(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX] = "";
    for (uint64_t i = 1; i <= 20; i++) {
        pub_res_t r = publish(f, "chat:a", "{\"x\":1}", "{\"user\":\"u1\"}", 10);
        assert_int_equal(r.offset, i);
        if (i == 1) {
            memcpy(epoch, r.epoch, sizeof epoch);
            assert_true(strlen(epoch) > 0);
            for (const char *p = epoch; *p; p++)
                assert_true((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                            (*p >= '0' && *p <= '9'));
        } else {
            assert_string_equal(r.epoch, epoch);
        }
    }
    /* Another channel has its own offsets and (with overwhelming probability) epoch. */
    pub_res_t o = publish(f, "chat:b", "1", NULL, 10);
    assert_int_equal(o.offset, 1);
    assert_string_not_equal(o.epoch, epoch);

    /* History agrees on top and epoch. */
    clu_history_req_t req = {.limit = 0};
    hist_res_t h = history(f, "chat:a", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0); /* limit 0: only the position */
    assert_int_equal(h.top, 20);
    assert_string_equal(h.epoch, epoch);

    clu_stats_t st;
    clu_stats(f->b, &st);
    assert_int_equal(st.publishes, 21);
    assert_int_equal(st.publish_errors, 0);
    assert_int_equal(st.delivered, 0); /* nobody subscribed */
    assert_int_equal(st.channels, 2);
    assert_int_equal(st.node_subscriptions, 0);
    fx_free(f);
}

static void test_history_forward_reverse_limit(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX];
    clu_pub_t pub = {.data = "\"m1\"", .data_len = 4, .info = "{\"user\":\"u\"}", .info_len = 12};
    clu_chan_opts_t opts = {.history_size = 10};
    pub_res_t first = {0};
    assert_int_equal(clu_publish(f->b, "chat:h", &pub, &opts, publish_cb, &first), 0);
    /* The broker never calls back before the call returned: the answer comes from the loop. */
    assert_int_equal(first.calls, 0);
    fx_turn(f);
    assert_int_equal(first.calls, 1);
    memcpy(epoch, first.epoch, sizeof epoch);
    for (int i = 2; i <= 5; i++) {
        char data[16];
        snprintf(data, sizeof data, "\"m%d\"", i);
        publish(f, "chat:h", data, NULL, 10);
    }

    /* Everything, oldest first, with data and info as published. */
    clu_history_req_t req = {.limit = -1};
    hist_res_t h = history(f, "chat:h", &req);
    assert_int_equal(h.status, 0);
    EXPECT_OFFSETS(h, 1, 2, 3, 4, 5);
    assert_string_equal(h.data[0], "\"m1\"");
    assert_string_equal(h.info[0], "{\"user\":\"u\"}");
    assert_string_equal(h.data[4], "\"m5\"");
    assert_string_equal(h.info[4], "");
    assert_int_equal(h.top, 5);
    assert_string_equal(h.epoch, epoch);

    /* Limit from the oldest end. */
    req = (clu_history_req_t){.limit = 2};
    h = history(f, "chat:h", &req);
    EXPECT_OFFSETS(h, 1, 2);
    assert_int_equal(h.top, 5);

    /* Reverse: newest first. */
    req = (clu_history_req_t){.limit = -1, .reverse = true};
    h = history(f, "chat:h", &req);
    EXPECT_OFFSETS(h, 5, 4, 3, 2, 1);
    assert_string_equal(h.data[0], "\"m5\"");
    req = (clu_history_req_t){.limit = 2, .reverse = true};
    h = history(f, "chat:h", &req);
    EXPECT_OFFSETS(h, 5, 4);

    /* A limit above what is kept returns what is kept. */
    req = (clu_history_req_t){.limit = 100};
    h = history(f, "chat:h", &req);
    EXPECT_OFFSETS(h, 1, 2, 3, 4, 5);

    /* Limit 0: only the position. */
    req = (clu_history_req_t){.limit = 0, .reverse = true};
    h = history(f, "chat:h", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 5);
    assert_string_equal(h.epoch, epoch);
    fx_free(f);
}

static void test_history_since(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX];
    publish_n(f, "chat:s", 5, 10, epoch);

    /* Forward: what came after the position. */
    clu_history_req_t req = {
        .has_since = true, .since_offset = 2, .since_epoch = epoch, .limit = -1};
    hist_res_t h = history(f, "chat:s", &req);
    assert_int_equal(h.status, 0);
    EXPECT_OFFSETS(h, 3, 4, 5);
    assert_string_equal(h.data[0], "\"m3\"");
    assert_int_equal(h.top, 5);
    assert_string_equal(h.epoch, epoch);

    req.limit = 2;
    h = history(f, "chat:s", &req);
    EXPECT_OFFSETS(h, 3, 4);

    req.since_offset = 0;
    req.limit = -1;
    h = history(f, "chat:s", &req);
    EXPECT_OFFSETS(h, 1, 2, 3, 4, 5);

    /* At the top: nothing missed. */
    req.since_offset = 5;
    h = history(f, "chat:s", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 5);

    /* Reverse: what came before the position, newest first. */
    req = (clu_history_req_t){
        .has_since = true, .since_offset = 4, .since_epoch = epoch, .limit = -1, .reverse = true};
    h = history(f, "chat:s", &req);
    assert_int_equal(h.status, 0);
    EXPECT_OFFSETS(h, 3, 2, 1);
    req.limit = 2;
    h = history(f, "chat:s", &req);
    EXPECT_OFFSETS(h, 3, 2);
    req.since_offset = 1;
    req.limit = -1;
    h = history(f, "chat:s", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0);
    req.since_offset = 5;
    h = history(f, "chat:s", &req);
    EXPECT_OFFSETS(h, 4, 3, 2, 1);

    /* Limit 0 with a valid position: status only. */
    req = (clu_history_req_t){.has_since = true, .since_offset = 1, .since_epoch = epoch};
    h = history(f, "chat:s", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 5);
    fx_free(f);
}

static void test_history_since_unrecoverable(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX];
    publish_n(f, "chat:u", 5, 10, epoch);

    /* Wrong or missing epoch. */
    clu_history_req_t req = {
        .has_since = true, .since_offset = 2, .since_epoch = "nope", .limit = -1};
    hist_res_t h = history(f, "chat:u", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 5);
    assert_string_equal(h.epoch, epoch);
    req.since_epoch = "";
    h = history(f, "chat:u", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);
    req.since_epoch = NULL;
    h = history(f, "chat:u", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);
    /* Also in reverse and with limit 0. */
    req = (clu_history_req_t){
        .has_since = true, .since_offset = 2, .since_epoch = "x", .reverse = true, .limit = -1};
    h = history(f, "chat:u", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);
    req.limit = 0;
    h = history(f, "chat:u", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);

    /* A position past the top does not exist in this epoch. */
    req = (clu_history_req_t){
        .has_since = true, .since_offset = 6, .since_epoch = epoch, .limit = -1};
    h = history(f, "chat:u", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 5);

    /* The channel is still intact afterwards. */
    req = (clu_history_req_t){.limit = -1};
    h = history(f, "chat:u", &req);
    EXPECT_OFFSETS(h, 1, 2, 3, 4, 5);
    fx_free(f);
}

static void test_history_trimmed_window(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX];
    /* Keep 3: after 10 publications, 8..10 remain, the ring having wrapped several times. */
    publish_n(f, "chat:t", 10, 3, epoch);
    clu_history_req_t req = {.limit = -1};
    hist_res_t h = history(f, "chat:t", &req);
    EXPECT_OFFSETS(h, 8, 9, 10);
    assert_string_equal(h.data[0], "\"m8\"");
    assert_string_equal(h.data[2], "\"m10\"");
    assert_int_equal(h.top, 10);
    req.reverse = true;
    h = history(f, "chat:t", &req);
    EXPECT_OFFSETS(h, 10, 9, 8);

    /* Right before the window is still contiguous. */
    req = (clu_history_req_t){
        .has_since = true, .since_offset = 7, .since_epoch = epoch, .limit = -1};
    h = history(f, "chat:t", &req);
    assert_int_equal(h.status, 0);
    EXPECT_OFFSETS(h, 8, 9, 10);
    req.since_offset = 8;
    h = history(f, "chat:t", &req);
    EXPECT_OFFSETS(h, 9, 10);

    /* Older than the window: the reader would miss 7 (and more). */
    req.since_offset = 6;
    h = history(f, "chat:t", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 10);
    assert_string_equal(h.epoch, epoch);
    req.since_offset = 0;
    h = history(f, "chat:t", &req);
    assert_int_equal(h.status, CORE_EUNRECOVERABLE);

    /* Offsets continue in the same epoch. */
    pub_res_t r = publish(f, "chat:t", "\"m11\"", NULL, 3);
    assert_int_equal(r.offset, 11);
    assert_string_equal(r.epoch, epoch);
    req = (clu_history_req_t){.limit = -1};
    h = history(f, "chat:t", &req);
    EXPECT_OFFSETS(h, 9, 10, 11);
    fx_free(f);
}

static void test_history_size_change(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX];
    publish_n(f, "chat:r", 5, 10, epoch);
    /* The namespace now keeps 3: the newest entries that fit stay, offsets continue. */
    pub_res_t r = publish(f, "chat:r", "\"m6\"", NULL, 3);
    assert_int_equal(r.offset, 6);
    assert_string_equal(r.epoch, epoch);
    clu_history_req_t req = {.limit = -1};
    hist_res_t h = history(f, "chat:r", &req);
    EXPECT_OFFSETS(h, 4, 5, 6);
    assert_string_equal(h.data[0], "\"m4\"");
    assert_string_equal(h.data[2], "\"m6\"");
    /* And grows again without losing anything. */
    r = publish(f, "chat:r", "\"m7\"", NULL, 8);
    assert_int_equal(r.offset, 7);
    h = history(f, "chat:r", &req);
    EXPECT_OFFSETS(h, 4, 5, 6, 7);
    fx_free(f);
}

static void test_history_limit_cap(void **state) {
    (void)state;
    fx_t *f = fx_new(3);
    char epoch[CLU_EPOCH_MAX];
    publish_n(f, "chat:c", 6, 10, epoch);
    clu_history_req_t req = {.limit = -1};
    hist_res_t h = history(f, "chat:c", &req);
    EXPECT_OFFSETS(h, 1, 2, 3);
    assert_int_equal(h.top, 6);
    req.limit = 100;
    h = history(f, "chat:c", &req);
    EXPECT_OFFSETS(h, 1, 2, 3);
    req.reverse = true;
    h = history(f, "chat:c", &req);
    EXPECT_OFFSETS(h, 6, 5, 4);
    req = (clu_history_req_t){
        .has_since = true, .since_offset = 1, .since_epoch = epoch, .limit = -1};
    h = history(f, "chat:c", &req);
    EXPECT_OFFSETS(h, 2, 3, 4);
    fx_free(f);
}

typedef struct {
    int calls;
    int status;
    size_t n;
    uint64_t first, last;
    bool ordered; /* consecutive offsets, in the order of the first two */
    bool data_ok; /* each data is "m<offset>" */
} scan_res_t;

static void scan_cb(int status, const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch,
                    void *ud) {
    (void)top;
    (void)epoch;
    scan_res_t *r = ud;
    r->calls++;
    r->status = status;
    r->n = n;
    r->ordered = r->data_ok = true;
    for (size_t i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof want, "\"m%llu\"", (unsigned long long)pubs[i].offset);
        if (pubs[i].data_len != strlen(want) || memcmp(pubs[i].data, want, pubs[i].data_len))
            r->data_ok = false;
        if (i > 0 && n > 1) {
            int64_t step = (int64_t)(pubs[1].offset - pubs[0].offset);
            if ((step != 1 && step != -1) || (int64_t)(pubs[i].offset - pubs[i - 1].offset) != step)
                r->ordered = false;
        }
    }
    if (n) {
        r->first = pubs[0].offset;
        r->last = pubs[n - 1].offset;
    }
}

static void test_history_large_answer(void **state) {
    (void)state;
    /* Answers larger than the broker's on-stack buffer (64 entries) take another path. */
    fx_t *f = fx_new(0);
    char epoch[CLU_EPOCH_MAX];
    publish_n(f, "chat:big", 250, 200, epoch);
    clu_chan_opts_t opts = {.history_size = 200};
    const struct {
        clu_history_req_t req;
        size_t n;
        uint64_t first, last;
    } cases[] = {
        {{.limit = -1}, 200, 51, 250},
        {{.limit = -1, .reverse = true}, 200, 250, 51},
        {{.limit = 65}, 65, 51, 115},
        {{.limit = 64}, 64, 51, 114},
        {{.limit = 100, .reverse = true}, 100, 250, 151},
        {{.has_since = true, .since_offset = 100, .since_epoch = epoch, .limit = -1},
         150,
         101,
         250},
        {{.has_since = true,
          .since_offset = 180,
          .since_epoch = epoch,
          .limit = -1,
          .reverse = true},
         129,
         179,
         51},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        scan_res_t r = {0};
        assert_int_equal(clu_history(f->b, "chat:big", &opts, &cases[k].req, scan_cb, &r), 0);
        fx_turn(f);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.status, 0);
        assert_int_equal(r.n, cases[k].n);
        assert_int_equal(r.first, cases[k].first);
        assert_int_equal(r.last, cases[k].last);
        assert_true(r.ordered);
        assert_true(r.data_ok);
    }
    fx_free(f);
}

static void test_empty_channel_history(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    clu_history_req_t req = {.limit = -1};
    hist_res_t h = history(f, "chat:none", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 0);
    assert_true(strlen(h.epoch) > 0);
    /* Reading does not leave state behind. */
    clu_stats_t st;
    clu_stats(f->b, &st);
    assert_int_equal(st.channels, 0);
    fx_free(f);
}

static void test_on_pub_only_subscribed(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    assert_int_equal(clu_subscribe(f->b, "chat:sub"), 0);
    /* Subscribing twice is the same as once. */
    assert_int_equal(clu_subscribe(f->b, "chat:sub"), 0);
    pub_res_t r = publish(f, "chat:sub", "{\"t\":1}", "{\"user\":\"u1\"}", 10);
    publish(f, "chat:other", "{\"t\":2}", NULL, 10);
    publish(f, "other", "{\"t\":3}", NULL, 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(f->ev[0].kind, 'p');
    assert_string_equal(f->ev[0].channel, "chat:sub");
    assert_int_equal(f->ev[0].offset, 1);
    assert_string_equal(f->ev[0].data, "{\"t\":1}");
    assert_string_equal(f->ev[0].info, "{\"user\":\"u1\"}");
    assert_string_equal(f->ev[0].epoch, r.epoch);

    clu_stats_t st;
    clu_stats(f->b, &st);
    assert_int_equal(st.node_subscriptions, 1);
    assert_int_equal(st.delivered, 1);
    assert_int_equal(st.publishes, 3);

    /* After unsubscribing nothing more arrives. */
    assert_int_equal(clu_unsubscribe(f->b, "chat:sub"), 0);
    assert_int_equal(clu_unsubscribe(f->b, "chat:sub"), 0);
    assert_int_equal(clu_unsubscribe(f->b, "never"), 0);
    publish(f, "chat:sub", "{\"t\":4}", NULL, 10);
    assert_int_equal(f->nev, 1);
    clu_stats(f->b, &st);
    assert_int_equal(st.node_subscriptions, 0);
    assert_int_equal(st.delivered, 1);

    /* Subscribing again resumes delivery, offsets continuing. */
    clu_subscribe(f->b, "chat:sub");
    publish(f, "chat:sub", "{\"t\":5}", NULL, 10);
    assert_int_equal(f->nev, 2);
    assert_int_equal(f->ev[1].offset, 3);
    assert_string_equal(f->ev[1].epoch, r.epoch);
    fx_free(f);
}

static void test_unstored_publication(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    clu_subscribe(f->b, "typing:room");
    pub_res_t r = publish(f, "typing:room", "{\"typing\":true}", NULL, 0);
    assert_int_equal(r.offset, 0);
    assert_int_equal(f->nev, 1);
    assert_int_equal(f->ev[0].offset, 0);
    assert_string_equal(f->ev[0].data, "{\"typing\":true}");
    r = publish(f, "typing:room", "{\"typing\":false}", NULL, 0);
    assert_int_equal(r.offset, 0);
    assert_int_equal(f->ev[1].offset, 0);
    /* Nothing was stored. */
    clu_history_req_t req = {.limit = -1};
    hist_res_t h = history(f, "typing:room", &req);
    assert_int_equal(h.status, 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.top, 0);

    /* Unstored into a channel nobody subscribed to: accepted, delivered nowhere, no state. */
    r = publish(f, "typing:empty", "{}", NULL, 0);
    assert_int_equal(r.offset, 0);
    assert_int_equal(f->nev, 2);
    clu_stats_t st;
    clu_stats(f->b, &st);
    assert_int_equal(st.channels, 1);

    /* The publish callback is optional. */
    clu_pub_t pub = {.data = "1", .data_len = 1};
    clu_chan_opts_t opts = {0};
    assert_int_equal(clu_publish(f->b, "typing:room", &pub, &opts, NULL, NULL), 0);
    assert_int_equal(f->nev, 3);
    fx_free(f);
}

/* ---- presence ---- */

typedef struct {
    int calls;
    int status;
    size_t n;
    char client[8][32];
    char user[8][32];
    char info[8][64];
} pres_res_t;

static void presence_cb(int status, const clu_presence_t *e, size_t n, void *ud) {
    pres_res_t *r = ud;
    r->calls++;
    r->status = status;
    r->n = n;
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        copy_text(r->client[i], 32, e[i].client, strlen(e[i].client));
        copy_text(r->user[i], 32, e[i].user, strlen(e[i].user));
        copy_text(r->info[i], 64, e[i].info, e[i].info_len);
    }
}

typedef struct {
    int calls;
    int status;
    uint32_t clients, users;
} stats_res_t;

static void stats_cb(int status, uint32_t clients, uint32_t users, void *ud) {
    stats_res_t *r = ud;
    r->calls++;
    r->status = status;
    r->clients = clients;
    r->users = users;
}

static pres_res_t presence(fx_t *f, const char *channel) {
    pres_res_t r;
    memset(&r, 0, sizeof r);
    assert_int_equal(clu_presence(f->b, channel, presence_cb, &r), 0);
    fx_turn(f);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    return r;
}

static stats_res_t presence_stats(fx_t *f, const char *channel) {
    stats_res_t r = {0};
    assert_int_equal(clu_presence_stats(f->b, channel, stats_cb, &r), 0);
    fx_turn(f);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 0);
    return r;
}

static int find_client(const pres_res_t *r, const char *client) {
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->client[i], client) == 0)
            return (int)i;
    return -1;
}

static void add(fx_t *f, const char *channel, const char *client, const char *user,
                const char *info) {
    clu_chan_opts_t opts = {.presence_ttl_s = 60};
    clu_presence_t e = {client, user, info, strlen(info)};
    assert_int_equal(clu_presence_add(f->b, channel, &opts, &e), 0);
}

static void test_presence(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    pres_res_t p = presence(f, "chat:p");
    assert_int_equal(p.n, 0);
    stats_res_t s = presence_stats(f, "chat:p");
    assert_int_equal(s.clients, 0);
    assert_int_equal(s.users, 0);

    add(f, "chat:p", "c1", "alice", "{\"client\":\"c1\",\"user\":\"alice\"}");
    add(f, "chat:p", "c2", "alice", "{\"client\":\"c2\",\"user\":\"alice\"}");
    add(f, "chat:p", "c3", "bob", "{\"client\":\"c3\",\"user\":\"bob\"}");
    add(f, "chat:q", "c4", "carol", "{\"client\":\"c4\"}");

    p = presence(f, "chat:p");
    assert_int_equal(p.n, 3);
    int i1 = find_client(&p, "c1"), i2 = find_client(&p, "c2"), i3 = find_client(&p, "c3");
    assert_true(i1 >= 0 && i2 >= 0 && i3 >= 0);
    assert_string_equal(p.user[i1], "alice");
    assert_string_equal(p.user[i2], "alice");
    assert_string_equal(p.user[i3], "bob");
    assert_string_equal(p.info[i3], "{\"client\":\"c3\",\"user\":\"bob\"}");
    assert_int_equal(find_client(&p, "c4"), -1);

    /* num_users counts distinct users. */
    s = presence_stats(f, "chat:p");
    assert_int_equal(s.clients, 3);
    assert_int_equal(s.users, 2);

    /* Adding the same client again replaces its entry. */
    add(f, "chat:p", "c1", "alice", "{\"v\":2}");
    p = presence(f, "chat:p");
    assert_int_equal(p.n, 3);
    assert_string_equal(p.info[find_client(&p, "c1")], "{\"v\":2}");
    s = presence_stats(f, "chat:p");
    assert_int_equal(s.clients, 3);
    assert_int_equal(s.users, 2);

    /* Removing one of alice's two connections keeps alice. */
    assert_int_equal(clu_presence_remove(f->b, "chat:p", "c2"), 0);
    s = presence_stats(f, "chat:p");
    assert_int_equal(s.clients, 2);
    assert_int_equal(s.users, 2);
    assert_int_equal(clu_presence_remove(f->b, "chat:p", "c1"), 0);
    s = presence_stats(f, "chat:p");
    assert_int_equal(s.clients, 1);
    assert_int_equal(s.users, 1);
    p = presence(f, "chat:p");
    assert_int_equal(p.n, 1);
    assert_string_equal(p.client[0], "c3");

    /* Removing what is not there is fine. */
    assert_int_equal(clu_presence_remove(f->b, "chat:p", "c1"), 0);
    assert_int_equal(clu_presence_remove(f->b, "chat:none", "c1"), 0);

    /* The other channel is separate. */
    s = presence_stats(f, "chat:q");
    assert_int_equal(s.clients, 1);
    assert_int_equal(s.users, 1);

    /* Empty presence and nothing else: the channel state goes away. */
    clu_presence_remove(f->b, "chat:p", "c3");
    p = presence(f, "chat:p");
    assert_int_equal(p.n, 0);
    clu_stats_t st;
    clu_stats(f->b, &st);
    assert_int_equal(st.channels, 1);
    /* c4 stays until close: the broker frees it then (ASan checks). */
    fx_free(f);
}

static void test_presence_many_users(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    char client[16], user[16];
    for (int i = 0; i < 100; i++) {
        snprintf(client, sizeof client, "c%d", i);
        snprintf(user, sizeof user, "u%d", i % 7);
        add(f, "chat:m", client, user, "{}");
    }
    stats_res_t s = presence_stats(f, "chat:m");
    assert_int_equal(s.clients, 100);
    assert_int_equal(s.users, 7);
    for (int i = 0; i < 100; i += 2) {
        snprintf(client, sizeof client, "c%d", i);
        clu_presence_remove(f->b, "chat:m", client);
    }
    s = presence_stats(f, "chat:m");
    assert_int_equal(s.clients, 50);
    assert_int_equal(s.users, 7);
    fx_free(f);
}

static void test_join_leave(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    const char *info = "{\"user\":\"u1\",\"client\":\"c1\"}";
    /* Not subscribed: no events. */
    assert_int_equal(clu_join(f->b, "chat:j", info, strlen(info)), 0);
    assert_int_equal(clu_leave(f->b, "chat:j", info, strlen(info)), 0);
    assert_int_equal(f->nev, 0);
    /* A channel with state (history, presence) but no node subscription: still no events. */
    publish(f, "chat:j", "1", NULL, 5);
    add(f, "chat:j", "c1", "u1", info);
    assert_int_equal(clu_join(f->b, "chat:j", info, strlen(info)), 0);
    assert_int_equal(clu_leave(f->b, "chat:j", info, strlen(info)), 0);
    assert_int_equal(f->nev, 0);

    clu_subscribe(f->b, "chat:j");
    assert_int_equal(clu_join(f->b, "chat:j", info, strlen(info)), 0);
    assert_int_equal(clu_join(f->b, "chat:other", info, strlen(info)), 0);
    assert_int_equal(clu_leave(f->b, "chat:j", info, 10), 0);
    fx_turn(f);
    assert_int_equal(f->nev, 2);
    assert_int_equal(f->ev[0].kind, 'j');
    assert_string_equal(f->ev[0].channel, "chat:j");
    assert_string_equal(f->ev[0].info, info);
    assert_int_equal(f->ev[1].kind, 'l');
    assert_string_equal(f->ev[1].channel, "chat:j");
    /* Exactly len bytes. */
    assert_string_equal(f->ev[1].info, "{\"user\":\"u");

    clu_unsubscribe(f->b, "chat:j");
    clu_join(f->b, "chat:j", info, strlen(info));
    assert_int_equal(f->nev, 2);
    fx_free(f);
}

static void test_channel_state_freed(void **state) {
    (void)state;
    fx_t *f = fx_new(0);
    clu_stats_t st;
    clu_subscribe(f->b, "a");
    clu_subscribe(f->b, "b");
    clu_stats(f->b, &st);
    assert_int_equal(st.channels, 2);
    assert_int_equal(st.node_subscriptions, 2);
    clu_unsubscribe(f->b, "a");
    clu_stats(f->b, &st);
    assert_int_equal(st.channels, 1);
    /* A channel with history outlives the subscription. */
    publish(f, "b", "1", NULL, 5);
    clu_unsubscribe(f->b, "b");
    clu_stats(f->b, &st);
    assert_int_equal(st.channels, 1);
    assert_int_equal(st.node_subscriptions, 0);
    fx_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_lifecycle),
        cmocka_unit_test(test_publish_offsets_and_epoch),
        cmocka_unit_test(test_history_forward_reverse_limit),
        cmocka_unit_test(test_history_since),
        cmocka_unit_test(test_history_since_unrecoverable),
        cmocka_unit_test(test_history_trimmed_window),
        cmocka_unit_test(test_history_size_change),
        cmocka_unit_test(test_history_limit_cap),
        cmocka_unit_test(test_history_large_answer),
        cmocka_unit_test(test_empty_channel_history),
        cmocka_unit_test(test_on_pub_only_subscribed),
        cmocka_unit_test(test_unstored_publication),
        cmocka_unit_test(test_presence),
        cmocka_unit_test(test_presence_many_users),
        cmocka_unit_test(test_join_leave),
        cmocka_unit_test(test_channel_state_freed),
        cmocka_unit_test(test_memory_cap_evicts_least_recent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

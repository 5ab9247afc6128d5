/* store: the durable broker (contract in store.h). It wraps the memory or the Redis broker and
 * adds Postgres where durability needs it: publishes of stored channels and history reads.
 * Every other operation is the inner broker's own (the ops table is a copy of inner's with
 * publish, history, stats and close replaced), so shared limits, presence and the registry
 * behave exactly as without a database. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

#define MOD "store"

typedef struct later {
    struct later *next;
    clu_publish_cb cb;
    void *ud;
    int status;
} later_t;

typedef struct {
    clu_ops_t ops; /* the broker's ops point here: see D() */
    const clu_ops_t *orig;
    clu_broker_t *inner;
    store_t *st;
    uv_loop_t *loop;
    uint32_t max_limit;
    /* Publish failures decided before the inner broker was asked: answered from the loop. */
    later_t *later, *later_tail;
    uv_idle_t later_idle;
    uint64_t history_from_store; /* history answers that needed Postgres */
    /* The persist stream's consumer (with Redis). */
    char *consumer;
    uint32_t claim_idle_ms;
    uint64_t claim_last_ms;
    uv_timer_t consume;
    uint32_t reads; /* persist stream reads in flight */
    bool behind;    /* the last read came back full: the stream holds more */
    bool info_pending;
    uint64_t info_last_ms;
    store_broker_stats_t bst;
    void (*close_done)(void *);
    void *close_ud;
} dur_t;

/* The broker keeps being the inner broker's own object, with its ops pointing at this copy:
 * every operation not replaced here gets the object it expects. */
#define D(b) CORE_CONTAINER_OF((b)->ops, dur_t, ops)

/* ---- publish without Redis: the node writes, and acknowledges after the commit ---- */

typedef struct {
    dur_t *d;
    clu_publish_cb cb;
    void *ud;
    char *channel;
    char *data;
    size_t data_len;
    char *info;
    size_t info_len;
    char *plan;
    uint64_t offset;
    char epoch[CLU_EPOCH_MAX];
} pubop_t;

static void pubop_free(pubop_t *op) {
    free(op->channel);
    free(op->data);
    free(op->info);
    free(op->plan);
    free(op);
}

static void pub_committed(int status, void *ud) {
    pubop_t *op = ud;
    /* A row the server refused was published but is not kept: the publisher learns it. */
    op->cb(status == 0 ? 0 : CORE_EAGAIN, op->offset, op->epoch, op->ud);
    pubop_free(op);
}

static void pub_inner_done(int status, uint64_t offset, const char *epoch, void *ud) {
    pubop_t *op = ud;
    if (status != 0 || offset == 0) {
        op->cb(status, offset, epoch, op->ud);
        pubop_free(op);
        return;
    }
    op->offset = offset;
    snprintf(op->epoch, sizeof op->epoch, "%s", epoch);
    store_msg_t m = {op->channel, op->epoch,    offset, op->data, op->data_len,
                     op->info,    op->info_len, 0,      op->plan};
    int rc = store_append(op->d->st, &m, pub_committed, op);
    if (rc != 0) {
        CORE_LOGW(MOD, "publication delivered but not stored: the store backlog is full",
                  "channel=%s offset=%" PRIu64, op->channel, offset);
        op->cb(CORE_EAGAIN, offset, epoch, op->ud);
        pubop_free(op);
    }
}

static void later_run(uv_idle_t *h) {
    dur_t *d = h->data;
    while (d->later) {
        later_t *l = d->later;
        d->later = l->next;
        if (!d->later)
            d->later_tail = NULL;
        l->cb(l->status, 0, "", l->ud);
        free(l);
    }
    uv_idle_stop(h);
}

static void answer_later(dur_t *d, clu_publish_cb cb, void *ud, int status) {
    later_t *l = core_calloc(1, sizeof *l);
    l->cb = cb;
    l->ud = ud;
    l->status = status;
    if (d->later_tail)
        d->later_tail->next = l;
    else
        d->later = l;
    d->later_tail = l;
    uv_idle_start(&d->later_idle, later_run);
}

static int dur_publish(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                       const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud) {
    dur_t *d = D(b);
    /* With Redis the publish script appends to the persist stream, checking its cap. */
    if (d->orig->persist_read || opts->history_size == 0 || !cb)
        return d->orig->publish(d->inner, channel, pub, opts, cb, ud);
    if (store_full(d->st)) {
        /* Refused before anyone sees it: a temporary error loses nothing. */
        answer_later(d, cb, ud, CORE_EAGAIN);
        return 0;
    }
    pubop_t *op = core_calloc(1, sizeof *op);
    op->d = d;
    op->cb = cb;
    op->ud = ud;
    op->channel = core_strdup(channel);
    op->data = core_strndup(pub->data, pub->data_len);
    op->data_len = pub->data_len;
    op->plan = pub->plan ? core_strdup(pub->plan) : NULL;
    if (pub->info) {
        op->info = core_strndup(pub->info, pub->info_len);
        op->info_len = pub->info_len;
    }
    int rc = d->orig->publish(d->inner, channel, pub, opts, pub_inner_done, op);
    if (rc != 0)
        pubop_free(op);
    return rc;
}

/* ---- history: the inner broker's window, Postgres for what lies before it ---- */

typedef struct {
    dur_t *d;
    clu_history_cb cb;
    void *ud;
    char *channel;
    clu_chan_opts_t opts;
    clu_history_req_t req;
    char since_epoch[CLU_EPOCH_MAX];
    uint32_t limit;
    uint64_t top;
    char epoch[CLU_EPOCH_MAX];
    /* What is gathered so far, in answer order, with its own copies of the strings. */
    clu_pub_t *pubs;
    size_t n;
    /* The window's publications kept aside while Postgres fills the gap before them. */
    clu_pub_t *tail;
    size_t ntail;
} hop_t;

/* Frees the strings of n publications (not their array). */
static void pubs_free_tail(clu_pub_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free((char *)p[i].data);
        free((char *)p[i].info);
    }
}

static void pubs_free(clu_pub_t *p, size_t n) {
    pubs_free_tail(p, n);
    free(p);
}

/* Appends copies of src (borrowed from a broker or store callback) to the answer. */
static void pubs_append(clu_pub_t **dst, size_t *n, const clu_pub_t *src, size_t m) {
    if (!m)
        return;
    *dst = core_realloc(*dst, (*n + m) * sizeof **dst);
    for (size_t i = 0; i < m; i++) {
        clu_pub_t *p = &(*dst)[*n + i];
        *p = src[i];
        p->data = core_strndup(src[i].data, src[i].data_len);
        p->info = src[i].info ? core_strndup(src[i].info, src[i].info_len) : NULL;
        p->plan = NULL;
    }
    *n += m;
}

static void hop_answer(hop_t *op, int status) {
    if (status == 0 && op->ntail) {
        /* The window's publications move into the answer: already copies, owned here. */
        size_t room = op->limit > op->n ? op->limit - op->n : 0;
        size_t take = op->ntail < room ? op->ntail : room;
        op->pubs = core_realloc(op->pubs, (op->n + op->ntail) * sizeof *op->pubs);
        memcpy(op->pubs + op->n, op->tail, op->ntail * sizeof *op->tail);
        free(op->tail);
        op->tail = NULL;
        pubs_free_tail(op->pubs + op->n + take, op->ntail - take);
        op->n += take;
        op->ntail = 0;
    }
    op->cb(status, status == 0 ? op->pubs : NULL, status == 0 ? op->n : 0, op->top, op->epoch,
           op->ud);
    pubs_free(op->pubs, op->n);
    pubs_free(op->tail, op->ntail);
    free(op->channel);
    free(op);
}

static void hop_inner_cb(int status, const clu_pub_t *pubs, size_t n, uint64_t top,
                         const char *epoch, void *ud);

/* Forward from a position the window no longer reaches: Postgres from there on, then the
 * window for what Postgres does not have yet (the persist stream may lag behind it). */
static void fwd_store_cb(int status, const clu_pub_t *pubs, size_t n, void *ud) {
    hop_t *op = ud;
    if (status != 0) {
        hop_answer(op, CORE_EAGAIN);
        return;
    }
    uint64_t next = op->req.since_offset + 1;
    if (n == 0 || pubs[0].offset != next) {
        /* Not kept anywhere (deleted by retention, or never stored): the reader cannot
         * recover, as without a database. */
        hop_answer(op, CORE_EUNRECOVERABLE);
        return;
    }
    size_t k = 0;
    while (k < n && pubs[k].offset == next + k)
        k++;
    pubs_append(&op->pubs, &op->n, pubs, k);
    uint64_t last = next + k - 1;
    if (op->n >= op->limit || last >= op->top) {
        hop_answer(op, 0);
        return;
    }
    /* The rest from the window, which must start right after what Postgres gave. */
    op->req.since_offset = last;
    op->req.limit = (int32_t)(op->limit - op->n);
    op->req.since_epoch = op->since_epoch;
    int rc = op->d->orig->history(op->d->inner, op->channel, &op->opts, &op->req, hop_inner_cb, op);
    if (rc != 0)
        hop_answer(op, CORE_EAGAIN);
}

/* The gap before the window (forward without a position) or past its oldest end (reverse). */
static void fill_store_cb(int status, const clu_pub_t *pubs, size_t n, void *ud) {
    hop_t *op = ud;
    if (status != 0) {
        hop_answer(op, CORE_EAGAIN);
        return;
    }
    pubs_append(&op->pubs, &op->n, pubs, n);
    hop_answer(op, 0);
}

static void hop_inner_cb(int status, const clu_pub_t *pubs, size_t n, uint64_t top,
                         const char *epoch, void *ud) {
    hop_t *op = ud;
    dur_t *d = op->d;
    bool continuing = op->n > 0; /* the second leg of a forward read from Postgres */
    op->top = top;
    snprintf(op->epoch, sizeof op->epoch, "%s", epoch ? epoch : "");
    if (continuing) {
        if (status != 0) {
            /* Postgres ends before the window begins: the persist stream has not caught up
             * yet. Temporary: a retry finds the rows. */
            hop_answer(op, status == CORE_EUNRECOVERABLE ? CORE_EAGAIN : status);
            return;
        }
        pubs_append(&op->pubs, &op->n, pubs, n);
        hop_answer(op, 0);
        return;
    }
    int rc = 0;
    if (status == CORE_EUNRECOVERABLE) {
        bool same_epoch = op->req.has_since && strcmp(op->since_epoch, op->epoch) == 0;
        if (!same_epoch || op->req.reverse || op->req.since_offset > top) {
            hop_answer(op, status);
            return;
        }
        d->history_from_store++;
        rc = store_read(d->st, op->channel, op->epoch, false, op->req.since_offset, 0, op->limit,
                        fwd_store_cb, op);
    } else if (status != 0) {
        hop_answer(op, status);
        return;
    } else if (!op->req.reverse) {
        uint64_t want = op->req.has_since ? op->req.since_offset + 1 : 1;
        uint64_t first = n ? pubs[0].offset : top + 1;
        if (op->req.has_since || first <= want || top == 0) {
            pubs_append(&op->pubs, &op->n, pubs, n);
            hop_answer(op, 0);
            return;
        }
        /* From the beginning: what Postgres holds before the window, then the window. */
        pubs_append(&op->tail, &op->ntail, pubs, n);
        d->history_from_store++;
        rc = store_read(d->st, op->channel, op->epoch, false, want - 1, first, op->limit,
                        fill_store_cb, op);
    } else {
        pubs_append(&op->pubs, &op->n, pubs, n);
        uint64_t lowest =
            n ? pubs[n - 1].offset
              : (op->req.has_since && op->req.since_offset <= top ? op->req.since_offset : top + 1);
        if (op->n >= op->limit || lowest <= 1 || top == 0) {
            hop_answer(op, 0);
            return;
        }
        d->history_from_store++;
        rc = store_read(d->st, op->channel, op->epoch, true, 0, lowest, op->limit - (uint32_t)op->n,
                        fill_store_cb, op);
    }
    if (rc != 0)
        hop_answer(op, CORE_EAGAIN);
}

static int dur_history(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                       const clu_history_req_t *req, clu_history_cb cb, void *ud) {
    dur_t *d = D(b);
    if (opts->history_size == 0 || req->limit == 0)
        return d->orig->history(d->inner, channel, opts, req, cb, ud);
    hop_t *op = core_calloc(1, sizeof *op);
    op->d = d;
    op->cb = cb;
    op->ud = ud;
    op->channel = core_strdup(channel);
    op->opts = *opts;
    op->req = *req;
    if (req->since_epoch)
        snprintf(op->since_epoch, sizeof op->since_epoch, "%s", req->since_epoch);
    op->req.since_epoch = req->since_epoch ? op->since_epoch : NULL;
    op->limit =
        req->limit < 0 || (uint32_t)req->limit > d->max_limit ? d->max_limit : (uint32_t)req->limit;
    int rc = d->orig->history(d->inner, channel, opts, req, hop_inner_cb, op);
    if (rc != 0) {
        free(op->channel);
        free(op);
    }
    return rc;
}

/* ---- the persist stream's consumer (with Redis) ---- */

#define CONSUME_BATCH 500

/* While reads come back full the stream has a backlog, and this many go out back to back. Each
 * read waits behind the publishes queued before it on the node's Redis connection: on a busy
 * machine that round trip was about 75 ms, so one read at a time capped a node at 500 entries
 * per round trip (under 7,000/s), and a cluster that fell behind stayed behind. */
#define CONSUME_READS_MAX 4
/* Entries read but not committed, in flight to this node included: past it nothing more is read
 * (what is read waits in memory). */
#define CONSUME_HELD_MAX ((CONSUME_READS_MAX + 4) * CONSUME_BATCH)

static void consume_tick(uv_timer_t *t);
#define CONSUME_TICK_MS 20

typedef struct cbatch cbatch_t;
typedef struct {
    cbatch_t *b;
    int status;
} centry_t;

struct cbatch {
    dur_t *d;
    size_t n, left;
    char **ids;
    centry_t *e;
};

static void cbatch_done(cbatch_t *b) {
    dur_t *d = b->d;
    /* Stored (or refused by the server for good, which was logged): acknowledged. The rest
     * stays pending under this node's name and is claimed again after the idle time. */
    const char **ack = core_calloc(b->n, sizeof *ack);
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].status == 0 || b->e[i].status == CORE_EINVAL)
            ack[k++] = b->ids[i];
    if (k && !d->close_done)
        d->orig->persist_ack(d->inner, ack, k);
    d->bst.persisted += k;
    free(ack);
    for (size_t i = 0; i < b->n; i++)
        free(b->ids[i]);
    free(b->ids);
    free(b->e);
    free(b);
}

static void centry_done(int status, void *ud) {
    centry_t *e = ud;
    e->status = status;
    if (--e->b->left == 0)
        cbatch_done(e->b);
}

static void consumed(int status, const clu_persist_entry_t *entries, size_t n, void *ud) {
    dur_t *d = ud;
    d->reads--;
    d->behind = status == 0 && n == CONSUME_BATCH;
    if (status != 0 || n == 0 || d->close_done)
        return;
    cbatch_t *b = core_calloc(1, sizeof *b);
    b->d = d;
    b->n = n;
    b->left = n + 1; /* one for this loop: the batch completes after it */
    b->ids = core_calloc(n, sizeof *b->ids);
    b->e = core_calloc(n, sizeof *b->e);
    store_cork(d->st);
    for (size_t i = 0; i < n; i++) {
        const clu_persist_entry_t *en = &entries[i];
        b->ids[i] = core_strdup(en->id);
        b->e[i].b = b;
        b->e[i].status = CORE_EAGAIN;
        store_msg_t m = {en->channel, en->epoch,    en->offset,  en->data, en->data_len,
                         en->info,    en->info_len, en->time_ms, en->plan};
        if (store_append(d->st, &m, centry_done, &b->e[i]) != 0)
            b->left--; /* not taken: stays pending */
    }
    store_uncork(d->st);
    d->bst.consumed += n;
    if (d->behind)
        uv_timer_start(&d->consume, consume_tick, 0, CONSUME_TICK_MS);
    if (--b->left == 0)
        cbatch_done(b);
}

static void info_done(int status, uint64_t length, int64_t age_ms, void *ud) {
    dur_t *d = ud;
    d->info_pending = false;
    if (status == 0) {
        d->bst.stream_length = length;
        d->bst.stream_age_ms = age_ms;
    }
}

static void consume_tick(uv_timer_t *t) {
    dur_t *d = t->data;
    uint64_t now = core_now_ms();
    if (!d->info_pending && now - d->info_last_ms >= 1000 &&
        d->orig->persist_info(d->inner, info_done, d) == 0) {
        d->info_pending = true;
        d->info_last_ms = now;
    }
    /* Read no faster than the database commits: what is read waits in memory. */
    uint32_t want = d->behind ? CONSUME_READS_MAX : 1;
    while (d->reads < want &&
           store_backlog(d->st) + (size_t)d->reads * CONSUME_BATCH < CONSUME_HELD_MAX) {
        uint32_t claim = 0;
        if (d->claim_idle_ms && now - d->claim_last_ms >= d->claim_idle_ms / 2) {
            claim = d->claim_idle_ms;
            d->claim_last_ms = now;
        }
        if (d->orig->persist_read(d->inner, d->consumer, CONSUME_BATCH, claim, consumed, d) != 0)
            break;
        d->reads++;
    }
}

void store_broker_stats(clu_broker_t *b, store_broker_stats_t *out) {
    dur_t *d = D(b);
    *out = d->bst;
    out->history_from_store = d->history_from_store;
}

/* ---- history_remove: the window and the database ---- */

typedef struct {
    dur_t *d;
    clu_publish_cb cb;
    void *ud;
    char *channel;
} remop_t;

static void rem_inner_done(int status, uint64_t top, const char *epoch, void *ud) {
    remop_t *op = ud;
    op->cb(status, top, epoch, op->ud);
    free(op->channel);
    free(op);
}

/* The database first: if its rows stayed, history past the window would still show them.
 * Entries still in the persist stream (cluster mode) may be stored after this. */
static void rem_store_done(int status, void *ud) {
    remop_t *op = ud;
    if (status != 0 ||
        op->d->orig->history_remove(op->d->inner, op->channel, rem_inner_done, op) != 0)
        rem_inner_done(status != 0 ? status : CORE_EAGAIN, 0, "", op);
}

static int dur_history_remove(clu_broker_t *b, const char *channel, clu_publish_cb cb, void *ud) {
    dur_t *d = D(b);
    remop_t *op = core_calloc(1, sizeof *op);
    op->d = d;
    op->cb = cb;
    op->ud = ud;
    op->channel = core_strdup(channel);
    if (store_channel_delete(d->st, channel, rem_store_done, op) != 0) {
        free(op->channel);
        free(op);
        answer_later(d, cb, ud, CORE_EAGAIN);
    }
    return 0;
}

/* ---- the rest ---- */

static bool dur_ready(clu_broker_t *b) {
    dur_t *d = D(b);
    /* A database outage leaves the node ready: publishing and fan-out go on (the backlog
     * waits), and only history past the window fails for a while. */
    return d->orig->ready(d->inner);
}

static void dur_stats(clu_broker_t *b, clu_stats_t *out) {
    dur_t *d = D(b);
    d->orig->stats(d->inner, out);
}

static void consume_closed(uv_handle_t *h) {
    dur_t *d = h->data;
    void (*done)(void *) = d->close_done;
    void *ud = d->close_ud;
    free(d->consumer);
    free(d);
    if (done)
        done(ud);
}

static void later_closed(uv_handle_t *h) {
    dur_t *d = h->data;
    uv_close((uv_handle_t *)&d->consume, consume_closed);
}

static void inner_closed(void *ud) {
    dur_t *d = ud;
    later_run(&d->later_idle);
    uv_close((uv_handle_t *)&d->later_idle, later_closed);
}

static void store_closed(void *ud) {
    dur_t *d = ud;
    d->orig->close(d->inner, inner_closed, d);
}

/* The store goes first: publishes waiting for their commit get their answers (committed within
 * a short wait, or a temporary error) while the node is still there to send them. */
static void dur_close(clu_broker_t *b, void (*done)(void *ud), void *ud) {
    dur_t *d = D(b);
    d->close_done = done;
    d->close_ud = ud;
    uv_timer_stop(&d->consume);
    store_close(d->st, 3000, store_closed, d);
}

clu_broker_t *store_broker_new(uv_loop_t *loop, clu_broker_t *inner, store_t *st,
                               uint32_t max_history_limit, const char *consumer,
                               uint32_t claim_idle_ms) {
    dur_t *d = core_calloc(1, sizeof *d);
    d->ops = *inner->ops;
    d->ops.publish = dur_publish;
    d->ops.history = dur_history;
    d->ops.history_remove = dur_history_remove;
    d->ops.ready = dur_ready;
    d->ops.stats = dur_stats;
    d->ops.close = dur_close;
    d->orig = inner->ops;
    d->inner = inner;
    inner->ops = &d->ops;
    d->st = st;
    d->loop = loop;
    d->max_limit = max_history_limit ? max_history_limit : 1000;
    uv_idle_init(loop, &d->later_idle);
    d->later_idle.data = d;
    d->consumer = core_strdup(consumer);
    d->claim_idle_ms = claim_idle_ms;
    uv_timer_init(loop, &d->consume);
    d->consume.data = d;
    if (d->orig->persist_read)
        uv_timer_start(&d->consume, consume_tick, CONSUME_TICK_MS, CONSUME_TICK_MS);
    return inner;
}

/* cluster: the one-node broker. Channels live in a hash map; each keeps a ring of its newest
 * publications, an epoch, and its presence entries. Operations take effect at once, but their
 * answers are copied and queued, and run from the loop (an idle handle drains the queue): a
 * caller is never called back before its call returned, as with the Redis broker. Events
 * (on_pub, on_join, on_leave) are delivered during the call that causes them.
 *
 * This file holds the channels (history, events, presence) and the lifecycle; the answer queue is
 * in cluster_memory_answer.c, semaphores, counters and deadlines in cluster_memory_coord.c. */
#include "cluster/cluster_memory_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void new_epoch(mchan_t *c) {
    core_random_id(c->epoch, 8);
}

static size_t pub_size(const stored_pub_t *p) {
    return sizeof *p + p->data_len + p->info_len;
}

static void pub_clear(mchan_t *c, stored_pub_t *p) {
    if (p->data)
        c->mb->bytes -= pub_size(p);
    free(p->data);
    free(p->info);
    memset(p, 0, sizeof *p);
}

static void stream_reset(mchan_t *c) {
    for (uint32_t i = 0; i < c->count; i++)
        pub_clear(c, &c->ring[(c->start + i) % c->ring_cap]);
    core_list_remove(&c->lru_link);
    c->start = c->count = 0;
    if (c->mb->keep_positions)
        return; /* the database keeps what was dropped here: same epoch, offsets go on */
    c->top = 0;
    new_epoch(c);
}

static mchan_t *chan_get(mem_broker_t *mb, const char *name, bool create) {
    mchan_t *c = core_map_get(mb->channels, name);
    if (c || !create)
        return c;
    c = core_calloc(1, sizeof *c);
    c->mb = mb;
    core_list_init(&c->lru_link);
    c->name = core_strdup(name);
    mpos_t *pos = mb->positions ? core_map_del(mb->positions, name) : NULL;
    if (pos) {
        memcpy(c->epoch, pos->epoch, sizeof c->epoch);
        c->top = pos->top;
        free(pos);
    } else {
        new_epoch(c);
    }
    core_map_put(mb->channels, c->name, c);
    return c;
}

/* A stream whose TTL passed since its last publication is gone, as it would be in Redis: the
 * next reader sees a new epoch and cannot recover across it. */
static void chan_expire_stream(mchan_t *c, uint64_t now) {
    if (c->ttl_s && c->last_pub_ms && now - c->last_pub_ms > (uint64_t)c->ttl_s * 1000) {
        stream_reset(c);
        c->last_pub_ms = 0;
    }
}

static void presence_entry_free(presence_entry_t *e) {
    free(e);
}

static presence_entry_t *presence_entry_new(const clu_presence_t *e) {
    size_t cl = strlen(e->client) + 1, ul = strlen(e->user) + 1;
    presence_entry_t *pe = core_malloc(sizeof *pe + cl + ul + e->info_len + 1);
    pe->client = (char *)(pe + 1);
    pe->user = pe->client + cl;
    pe->info = pe->user + ul;
    pe->info_len = e->info_len;
    memcpy(pe->client, e->client, cl);
    memcpy(pe->user, e->user, ul);
    memcpy(pe->info, e->info, e->info_len);
    pe->info[e->info_len] = '\0';
    return pe;
}

static void chan_free(mchan_t *c) {
    if (c->mb->keep_positions && c->top > 0) {
        mpos_t *pos = core_malloc(sizeof *pos);
        memcpy(pos->epoch, c->epoch, sizeof pos->epoch);
        pos->top = c->top;
        free(core_map_put(c->mb->positions, c->name, pos));
    }
    for (uint32_t i = 0; i < c->count; i++)
        pub_clear(c, &c->ring[(c->start + i) % c->ring_cap]);
    core_list_remove(&c->lru_link);
    free(c->ring);
    if (c->presence) {
        core_map_iter_t it = 0;
        void *v;
        while (core_map_next(c->presence, &it, NULL, &v))
            presence_entry_free(v);
        core_map_free(c->presence);
    }
    free(c->name);
    free(c);
}

static bool chan_idle(const mchan_t *c) {
    return !c->node_subscribed && c->count == 0 &&
           (!c->presence || core_map_size(c->presence) == 0);
}

static void chan_maybe_free(mem_broker_t *mb, mchan_t *c) {
    if (chan_idle(c)) {
        core_map_del(mb->channels, c->name);
        chan_free(c);
    }
}

/* Expired streams and idle channels are dropped over a round of SWEEP_ROUND_MS, a slice of
 * the channel map per tick, so that a node with tens of thousands of channels never stops its
 * loop for a whole pass over them. */
#define SWEEP_TICK_MS 100
#define SWEEP_ROUND_MS 10000
#define TICKS_PER_ROUND (SWEEP_ROUND_MS / SWEEP_TICK_MS)

static void sweep_cb(uv_timer_t *t) {
    mem_broker_t *mb = t->data;
    uint64_t now = core_now_ms();
    size_t quota = (core_map_size(mb->channels) + TICKS_PER_ROUND - 1) / TICKS_PER_ROUND;
    void *v;
    while (quota-- > 0) {
        if (!core_map_next(mb->channels, &mb->sweep_at, NULL, &v)) {
            mb->sweep_at = 0;
            break;
        }
        mchan_t *c = v;
        chan_expire_stream(c, now);
        chan_maybe_free(mb, c);
    }
    if (++mb->sweep_ticks % TICKS_PER_ROUND == 0)
        clu__mem_coord_sweep(mb);
}

/* Keeps stored history under the byte cap: the streams of the channels published to least
 * recently go first, as whole streams with a new epoch, so their readers learn that history
 * was lost (recovered:false) instead of missing publications silently. */
static void evict(mem_broker_t *mb, mchan_t *keep) {
    while (mb->max_bytes && mb->bytes > mb->max_bytes && mb->lru.next != &keep->lru_link) {
        mchan_t *c = CORE_CONTAINER_OF(mb->lru.next, mchan_t, lru_link);
        stream_reset(c);
        c->last_pub_ms = 0;
        mb->st.evicted++;
    }
}

void clu_memory_keep_positions(clu_broker_t *b) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mb->keep_positions = true;
    if (!mb->positions)
        mb->positions = core_map_new();
}

void clu_memory_set_position(clu_broker_t *b, const char *channel, const char *epoch,
                             uint64_t top) {
    mem_broker_t *mb = (mem_broker_t *)b;
    clu_memory_keep_positions(b);
    mchan_t *c = chan_get(mb, channel, false);
    if (c) {
        snprintf(c->epoch, sizeof c->epoch, "%s", epoch);
        c->top = top;
        return;
    }
    mpos_t *pos = core_calloc(1, sizeof *pos);
    snprintf(pos->epoch, sizeof pos->epoch, "%s", epoch);
    pos->top = top;
    free(core_map_put(mb->positions, channel, pos));
}

static int mem_publish(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                       const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    uint64_t now = core_now_ms();
    /* An unstored publication to a channel nobody here subscribed to goes nowhere. */
    mchan_t *c = chan_get(mb, channel, opts->history_size > 0);
    clu_pub_t out = *pub;
    out.offset = 0;
    if (opts->history_size > 0) {
        chan_expire_stream(c, now);
        if (c->ring_cap != opts->history_size) {
            /* The namespace's size changed (config reload) or this is the first publication:
             * keep the newest entries that fit. */
            stored_pub_t *ring = core_calloc(opts->history_size, sizeof *ring);
            uint32_t keep = c->count < opts->history_size ? c->count : opts->history_size;
            for (uint32_t i = 0; i < c->count; i++) {
                stored_pub_t *p = &c->ring[(c->start + i) % c->ring_cap];
                if (i >= c->count - keep)
                    ring[i - (c->count - keep)] = *p;
                else
                    pub_clear(c, p);
            }
            free(c->ring);
            c->ring = ring;
            c->ring_cap = opts->history_size;
            c->start = 0;
            c->count = keep;
        }
        stored_pub_t *slot;
        if (c->count == c->ring_cap) {
            slot = &c->ring[c->start];
            pub_clear(c, slot);
            c->start = (c->start + 1) % c->ring_cap;
            c->count--;
        }
        slot = &c->ring[(c->start + c->count) % c->ring_cap];
        c->count++;
        slot->offset = ++c->top;
        slot->data = core_strndup(pub->data, pub->data_len);
        slot->data_len = pub->data_len;
        if (pub->info) {
            slot->info = core_strndup(pub->info, pub->info_len);
            slot->info_len = pub->info_len;
        }
        c->last_pub_ms = now;
        c->ttl_s = opts->history_ttl_s;
        out.offset = slot->offset;
        mb->bytes += pub_size(slot);
        core_list_remove(&c->lru_link);
        core_list_insert_tail(&mb->lru, &c->lru_link);
        evict(mb, c);
    }
    mb->st.publishes++;
    const char *epoch = c ? c->epoch : "";
    uint64_t offset = out.offset;
    if (c && c->node_subscribed && b->events.on_pub) {
        mb->st.delivered++;
        b->events.on_pub(b->events_ud, channel, &out, epoch);
    }
    if (cb) {
        answer_t *a = clu__mem_answer_new(ANS_PUBLISH, (void *)cb, ud);
        a->top = offset;
        snprintf(a->epoch, sizeof a->epoch, "%s", epoch);
        clu__mem_answer_queue(mb, a);
    }
    return 0;
}

static int mem_subscribe(clu_broker_t *b, const char *channel) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, true);
    if (!c->node_subscribed) {
        c->node_subscribed = true;
        mb->st.node_subscriptions++;
    }
    return 0;
}

static int mem_unsubscribe(clu_broker_t *b, const char *channel) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, false);
    if (c && c->node_subscribed) {
        c->node_subscribed = false;
        mb->st.node_subscriptions--;
        chan_maybe_free(mb, c);
    }
    return 0;
}

static int mem_history(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                       const clu_history_req_t *req, clu_history_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    (void)opts;
    mchan_t *c = chan_get(mb, channel, true);
    chan_expire_stream(c, core_now_ms());
    uint32_t limit = req->limit < 0 ? mb->max_history_limit : (uint32_t)req->limit;
    if (limit > mb->max_history_limit)
        limit = mb->max_history_limit;
    uint64_t first = c->count ? c->ring[c->start].offset : c->top + 1;
    if (req->has_since) {
        bool epoch_ok = req->since_epoch && strcmp(req->since_epoch, c->epoch) == 0;
        /* A forward read must start right after the given position; a gap between it and
         * what is kept means the reader would silently miss publications. */
        bool gap = !req->reverse && req->since_offset + 1 < first;
        if (!epoch_ok || gap || req->since_offset > c->top) {
            answer_t *a = clu__mem_answer_new(ANS_HISTORY, (void *)cb, ud);
            a->status = CORE_EUNRECOVERABLE;
            a->top = c->top;
            memcpy(a->epoch, c->epoch, sizeof a->epoch);
            clu__mem_answer_queue(mb, a);
            chan_maybe_free(mb, c);
            return 0;
        }
    }
    answer_t *a = clu__mem_answer_new(ANS_HISTORY, (void *)cb, ud);
    clu_pub_t *out = NULL;
    size_t n = 0;
    if (limit > 0 && c->count > 0) {
        /* Index range [lo, hi) in logical order (0 = oldest kept). */
        uint64_t lo = 0, hi = c->count;
        if (req->has_since) {
            if (req->reverse)
                hi = req->since_offset > first ? req->since_offset - first : 0;
            else
                lo = req->since_offset + 1 - first;
        }
        if (hi > lo) {
            uint64_t avail = hi - lo;
            n = avail < limit ? (size_t)avail : limit;
            out = core_calloc(n, sizeof *out);
            for (size_t i = 0; i < n; i++) {
                uint64_t idx = req->reverse ? hi - 1 - i : lo + i;
                stored_pub_t *p = &c->ring[(c->start + idx) % c->ring_cap];
                /* Offsets into the answer's copy for now: the channel may be evicted before
                 * the answer runs. */
                out[i] = (clu_pub_t){
                    p->offset,   (const char *)clu__mem_answer_copy(a, p->data, p->data_len),
                    p->data_len, NULL,
                    p->info_len, NULL};
                if (p->info)
                    out[i].info = (const char *)clu__mem_answer_copy(a, p->info, p->info_len);
            }
        }
    }
    memcpy(a->epoch, c->epoch, sizeof a->epoch);
    a->top = c->top;
    a->pubs = out;
    a->n = n;
    chan_maybe_free(mb, c);
    clu__mem_answer_queue(mb, a);
    return 0;
}

static int mem_history_remove(clu_broker_t *b, const char *channel, clu_publish_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, true);
    for (uint32_t i = 0; i < c->count; i++)
        pub_clear(c, &c->ring[(c->start + i) % c->ring_cap]);
    core_list_remove(&c->lru_link);
    c->start = c->count = 0;
    answer_t *a = clu__mem_answer_new(ANS_PUBLISH, (void *)cb, ud);
    a->top = c->top;
    memcpy(a->epoch, c->epoch, sizeof a->epoch);
    chan_maybe_free(mb, c);
    clu__mem_answer_queue(mb, a);
    return 0;
}

static int mem_join_leave(clu_broker_t *b, const char *channel, const char *info, size_t len,
                          bool join) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, false);
    if (!c || !c->node_subscribed)
        return 0;
    if (join && b->events.on_join)
        b->events.on_join(b->events_ud, channel, info, len);
    else if (!join && b->events.on_leave)
        b->events.on_leave(b->events_ud, channel, info, len);
    return 0;
}

static int mem_join(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return mem_join_leave(b, channel, info, len, true);
}

static int mem_leave(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return mem_join_leave(b, channel, info, len, false);
}

static int mem_presence_add(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                            const clu_presence_t *e) {
    mem_broker_t *mb = (mem_broker_t *)b;
    (void)opts;
    mchan_t *c = chan_get(mb, channel, true);
    if (!c->presence)
        c->presence = core_map_new_borrowed();
    presence_entry_t *old = core_map_get(c->presence, e->client);
    /* Entries here do not expire, so a node's periodic refresh of an unchanged entry has
     * nothing to do. */
    if (old && old->info_len == e->info_len && memcmp(old->info, e->info, e->info_len) == 0 &&
        strcmp(old->user, e->user) == 0)
        return 0;
    presence_entry_t *pe = presence_entry_new(e);
    core_map_put(c->presence, pe->client, pe);
    if (old)
        presence_entry_free(old);
    return 0;
}

static int mem_presence_remove(clu_broker_t *b, const char *channel, const char *client) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, false);
    if (!c || !c->presence)
        return 0;
    presence_entry_t *pe = core_map_del(c->presence, client);
    if (pe)
        presence_entry_free(pe);
    chan_maybe_free(mb, c);
    return 0;
}

static int mem_presence(clu_broker_t *b, const char *channel, clu_presence_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, false);
    size_t n = c && c->presence ? core_map_size(c->presence) : 0;
    answer_t *a = clu__mem_answer_new(ANS_PRESENCE, (void *)cb, ud);
    clu_presence_t *out = core_calloc(n ? n : 1, sizeof *out);
    size_t i = 0;
    if (n) {
        core_map_iter_t it = 0;
        const char *client;
        void *v;
        while (core_map_next(c->presence, &it, &client, &v)) {
            presence_entry_t *pe = v;
            out[i++] = (clu_presence_t){
                (const char *)clu__mem_answer_copy(a, client, strlen(client)),
                (const char *)clu__mem_answer_copy(a, pe->user, strlen(pe->user)),
                (const char *)clu__mem_answer_copy(a, pe->info, pe->info_len), pe->info_len};
        }
    }
    a->presence = out;
    a->n = i;
    clu__mem_answer_queue(mb, a);
    return 0;
}

static int mem_presence_stats(clu_broker_t *b, const char *channel, clu_presence_stats_cb cb,
                              void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mchan_t *c = chan_get(mb, channel, false);
    uint32_t clients = 0, users = 0;
    if (c && c->presence) {
        core_map_t *seen = core_map_new();
        core_map_iter_t it = 0;
        void *v;
        while (core_map_next(c->presence, &it, NULL, &v)) {
            presence_entry_t *pe = v;
            clients++;
            if (!core_map_put(seen, pe->user, pe))
                users++;
        }
        core_map_free(seen);
    }
    answer_t *a = clu__mem_answer_new(ANS_PRESENCE_STATS, (void *)cb, ud);
    a->clients = clients;
    a->users = users;
    clu__mem_answer_queue(mb, a);
    return 0;
}

static bool mem_ready(clu_broker_t *b) {
    (void)b;
    return true;
}

static void mem_stats(clu_broker_t *b, clu_stats_t *out) {
    mem_broker_t *mb = (mem_broker_t *)b;
    *out = mb->st;
    out->channels = core_map_size(mb->channels);
}

static void handle_closed(uv_handle_t *h) {
    mem_broker_t *mb = h->data;
    if (--mb->open_handles > 0)
        return;
    core_map_iter_t it = 0;
    void *v;
    mb->keep_positions = false; /* closing: nothing to keep them for */
    while (core_map_next(mb->channels, &it, NULL, &v))
        chan_free(v);
    core_map_free(mb->channels);
    if (mb->positions) {
        it = 0;
        while (core_map_next(mb->positions, &it, NULL, &v))
            free(v);
        core_map_free(mb->positions);
    }
    clu__mem_coord_free(mb);
    void (*done)(void *) = mb->close_done;
    void *ud = mb->close_ud;
    free(mb);
    if (done)
        done(ud);
}

static void mem_close(clu_broker_t *b, void (*done)(void *), void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mb->close_done = done;
    mb->close_ud = ud;
    /* Answers still queued run now, while the broker exists: their callers free what they
     * keep for the answer there, and learn the outcome of what already took effect. */
    while (mb->queue)
        clu__mem_answers_drain(mb);
    uv_close((uv_handle_t *)&mb->sweep, handle_closed);
    uv_close((uv_handle_t *)&mb->answers, handle_closed);
}

static const clu_ops_t mem_ops = {
    .publish = mem_publish,
    .subscribe = mem_subscribe,
    .unsubscribe = mem_unsubscribe,
    .history = mem_history,
    .history_remove = mem_history_remove,
    .join = mem_join,
    .leave = mem_leave,
    .presence_add = mem_presence_add,
    .presence_remove = mem_presence_remove,
    .presence = mem_presence,
    .presence_stats = mem_presence_stats,
    .heartbeat = clu__mem_heartbeat,
    .rate_take = NULL,
    .sem_acquire = clu__mem_sem_acquire,
    .sem_renew = clu__mem_sem_renew,
    .sem_release = clu__mem_sem_release,
    .counter_add = clu__mem_counter_add,
    .deadline_raise = clu__mem_deadline_raise,
    .deadline_clear = clu__mem_deadline_clear,
    .deadline_get = clu__mem_deadline_get,
    .ready = mem_ready,
    .stats = mem_stats,
    .close = mem_close,
};

clu_broker_t *clu_memory_new(uv_loop_t *loop, const clu_events_t *events, void *ud,
                             uint32_t max_history_limit) {
    mem_broker_t *mb = core_calloc(1, sizeof *mb);
    mb->base.ops = &mem_ops;
    mb->base.name = "memory";
    mb->base.events = *events;
    mb->base.events_ud = ud;
    mb->loop = loop;
    mb->channels = core_map_new_borrowed(); /* keyed by each channel's own name */
    mb->sems = core_map_new();
    mb->counters = core_map_new();
    mb->deadlines = core_map_new();
    core_list_init(&mb->lru);
    mb->max_history_limit = max_history_limit ? max_history_limit : 1000;
    uv_timer_init(loop, &mb->sweep);
    mb->sweep.data = mb;
    uv_timer_start(&mb->sweep, sweep_cb, SWEEP_TICK_MS, SWEEP_TICK_MS);
    uv_unref((uv_handle_t *)&mb->sweep);
    uv_idle_init(loop, &mb->answers);
    mb->answers.data = mb;
    mb->open_handles = 2;
    return &mb->base;
}

void clu_memory_set_max_bytes(clu_broker_t *b, size_t max_bytes) {
    ((mem_broker_t *)b)->max_bytes = max_bytes;
}

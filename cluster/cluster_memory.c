/* cluster: the one-node broker. Channels live in a hash map; each keeps a ring of its newest
 * publications, an epoch, and its presence entries. Operations take effect at once, but their
 * answers are copied and queued, and run from the loop (an idle handle drains the queue): a
 * caller is never called back before its call returned, as with the Redis broker. Events
 * (on_pub, on_join, on_leave) are delivered during the call that causes them. */
#include "cluster/cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t offset;
    char *data;
    size_t data_len;
    char *info;
    size_t info_len;
} stored_pub_t;

typedef struct {
    char *user;
    char *info;
    size_t info_len;
} presence_entry_t;

typedef struct mem_broker mem_broker_t;

typedef enum {
    ANS_PUBLISH,
    ANS_HISTORY,
    ANS_PRESENCE,
    ANS_PRESENCE_STATS,
    ANS_NODES,
    ANS_SEM,
    ANS_COUNTER,
    ANS_DEADLINES
} ans_kind_t;

/* One answer waiting for the loop. Strings it hands out point into `blob`, its own copy. */
typedef struct answer {
    struct answer *next;
    ans_kind_t kind;
    void *cb;
    void *ud;
    int status;
    uint64_t top; /* publish: the offset */
    uint32_t clients, users;
    char epoch[CLU_EPOCH_MAX];
    size_t n;
    clu_pub_t *pubs;
    clu_presence_t *presence;
    clu_node_t node;
    core_str_t blob;
    bool flag;       /* sem: granted; counter: allowed */
    int64_t value;   /* counter: its value after the call */
    int64_t *values; /* deadlines */
} answer_t;

/* One semaphore: its holders and when each lease expires (loop milliseconds). */
typedef struct {
    char **leases;
    uint64_t *until;
    uint32_t n, cap;
} msem_t;

typedef struct {
    int64_t value;
    int64_t expire_at_s;
} mcounter_t;

typedef struct {
    mem_broker_t *mb;
    core_list_t lru_link; /* in mb->lru while the channel keeps publications */
    char *name;
    char epoch[CLU_EPOCH_MAX];
    uint64_t top;       /* offset of the newest publication ever stored in this epoch */
    stored_pub_t *ring; /* capacity ring_cap, newest at (start + count - 1) % ring_cap */
    uint32_t ring_cap;
    uint32_t start;
    uint32_t count;
    uint64_t last_pub_ms;
    uint32_t ttl_s;
    bool node_subscribed;
    core_map_t *presence; /* client id -> presence_entry_t*, created on first add */
} mchan_t;

struct mem_broker {
    clu_broker_t base;
    uv_loop_t *loop;
    core_map_t *channels;
    size_t bytes;     /* stored publication bytes over all channels */
    size_t max_bytes; /* 0 = no cap */
    core_list_t lru;  /* channels with stored publications, least recently published first */
    uint32_t max_history_limit;
    uv_timer_t sweep;
    uv_idle_t answers;     /* active while `queue` holds answers */
    core_map_t *sems;      /* key -> msem_t */
    core_map_t *counters;  /* key -> mcounter_t */
    core_map_t *deadlines; /* key -> int64_t* (Unix ms) */
    answer_t *queue, *queue_tail;
    int open_handles;
    clu_stats_t st;
    void (*close_done)(void *);
    void *close_ud;
};

/* ---- answers run from the loop ---- */

static answer_t *answer_new(ans_kind_t kind, void *cb, void *ud) {
    answer_t *a = core_calloc(1, sizeof *a);
    a->kind = kind;
    a->cb = cb;
    a->ud = ud;
    return a;
}

/* Copies n bytes into the answer's blob and returns their offset there; pointers are set once
 * the blob stops growing (answer_fix). */
static uintptr_t answer_copy(answer_t *a, const char *p, size_t n) {
    uintptr_t off = a->blob.len;
    core_str_append(&a->blob, p ? p : "", n);
    core_str_append(&a->blob, "", 1); /* NUL: ids are used as C strings */
    return off;
}

static const char *answer_ptr(const answer_t *a, const char *off) {
    return a->blob.ptr + (uintptr_t)off;
}

static void answer_fix(answer_t *a) {
    for (size_t i = 0; i < a->n && a->pubs; i++) {
        a->pubs[i].data = answer_ptr(a, a->pubs[i].data);
        if (a->pubs[i].info)
            a->pubs[i].info = answer_ptr(a, a->pubs[i].info);
    }
    for (size_t i = 0; i < a->n && a->presence; i++) {
        a->presence[i].client = answer_ptr(a, a->presence[i].client);
        a->presence[i].user = answer_ptr(a, a->presence[i].user);
        a->presence[i].info = answer_ptr(a, a->presence[i].info);
    }
    if (a->kind == ANS_NODES && a->n) {
        a->node.id = answer_ptr(a, a->node.id);
        a->node.info = answer_ptr(a, a->node.info);
    }
}

static void answer_run(answer_t *a) {
    switch (a->kind) {
    case ANS_PUBLISH:
        ((clu_publish_cb)a->cb)(a->status, a->top, a->epoch, a->ud);
        break;
    case ANS_HISTORY:
        ((clu_history_cb)a->cb)(a->status, a->pubs, a->n, a->top, a->epoch, a->ud);
        break;
    case ANS_PRESENCE:
        ((clu_presence_cb)a->cb)(a->status, a->presence, a->n, a->ud);
        break;
    case ANS_PRESENCE_STATS:
        ((clu_presence_stats_cb)a->cb)(a->status, a->clients, a->users, a->ud);
        break;
    case ANS_NODES:
        ((clu_nodes_cb)a->cb)(a->status, a->n ? &a->node : NULL, a->n, a->ud);
        break;
    case ANS_SEM:
        ((clu_sem_cb)a->cb)(a->status, a->flag, a->ud);
        break;
    case ANS_COUNTER:
        ((clu_counter_cb)a->cb)(a->status, a->flag, a->value, a->ud);
        break;
    case ANS_DEADLINES:
        ((clu_deadlines_cb)a->cb)(a->status, a->values, a->n, a->ud);
        break;
    }
    free(a->values);
    free(a->pubs);
    free(a->presence);
    core_str_free(&a->blob);
    free(a);
}

/* Runs the answers queued so far; answers their callbacks queue wait for the next turn. */
static void answers_drain(mem_broker_t *mb) {
    answer_t *a = mb->queue;
    mb->queue = mb->queue_tail = NULL;
    while (a) {
        answer_t *next = a->next;
        answer_run(a);
        a = next;
    }
}

static void on_answers(uv_idle_t *h) {
    mem_broker_t *mb = h->data;
    answers_drain(mb);
    if (!mb->queue)
        uv_idle_stop(&mb->answers);
}

static void answer_queue(mem_broker_t *mb, answer_t *a) {
    answer_fix(a);
    if (mb->queue_tail)
        mb->queue_tail->next = a;
    else
        mb->queue = a;
    mb->queue_tail = a;
    if (!uv_is_active((uv_handle_t *)&mb->answers))
        uv_idle_start(&mb->answers, on_answers);
}

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
    new_epoch(c);
    core_map_put(mb->channels, name, c);
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
    free(e->user);
    free(e->info);
    free(e);
}

static void chan_free(mchan_t *c) {
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

static void coord_sweep(mem_broker_t *mb);

static void sweep_cb(uv_timer_t *t) {
    mem_broker_t *mb = t->data;
    uint64_t now = core_now_ms();
    core_map_iter_t it = 0;
    const char *key;
    void *v;
    while (core_map_next(mb->channels, &it, &key, &v)) {
        mchan_t *c = v;
        chan_expire_stream(c, now);
        chan_maybe_free(mb, c);
    }
    coord_sweep(mb);
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
        answer_t *a = answer_new(ANS_PUBLISH, (void *)cb, ud);
        a->top = offset;
        snprintf(a->epoch, sizeof a->epoch, "%s", epoch);
        answer_queue(mb, a);
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
            answer_t *a = answer_new(ANS_HISTORY, (void *)cb, ud);
            a->status = CORE_EUNRECOVERABLE;
            a->top = c->top;
            memcpy(a->epoch, c->epoch, sizeof a->epoch);
            answer_queue(mb, a);
            chan_maybe_free(mb, c);
            return 0;
        }
    }
    answer_t *a = answer_new(ANS_HISTORY, (void *)cb, ud);
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
                out[i] = (clu_pub_t){p->offset, (const char *)answer_copy(a, p->data, p->data_len),
                                     p->data_len, NULL, p->info_len};
                if (p->info)
                    out[i].info = (const char *)answer_copy(a, p->info, p->info_len);
            }
        }
    }
    memcpy(a->epoch, c->epoch, sizeof a->epoch);
    a->top = c->top;
    a->pubs = out;
    a->n = n;
    chan_maybe_free(mb, c);
    answer_queue(mb, a);
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
        c->presence = core_map_new();
    presence_entry_t *pe = core_calloc(1, sizeof *pe);
    pe->user = core_strdup(e->user);
    pe->info = core_strndup(e->info, e->info_len);
    pe->info_len = e->info_len;
    presence_entry_t *old = core_map_put(c->presence, e->client, pe);
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
    answer_t *a = answer_new(ANS_PRESENCE, (void *)cb, ud);
    clu_presence_t *out = core_calloc(n ? n : 1, sizeof *out);
    size_t i = 0;
    if (n) {
        core_map_iter_t it = 0;
        const char *client;
        void *v;
        while (core_map_next(c->presence, &it, &client, &v)) {
            presence_entry_t *pe = v;
            out[i++] = (clu_presence_t){(const char *)answer_copy(a, client, strlen(client)),
                                        (const char *)answer_copy(a, pe->user, strlen(pe->user)),
                                        (const char *)answer_copy(a, pe->info, pe->info_len),
                                        pe->info_len};
        }
    }
    a->presence = out;
    a->n = i;
    answer_queue(mb, a);
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
    answer_t *a = answer_new(ANS_PRESENCE_STATS, (void *)cb, ud);
    a->clients = clients;
    a->users = users;
    answer_queue(mb, a);
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

static void coord_free(mem_broker_t *mb);

static void handle_closed(uv_handle_t *h) {
    mem_broker_t *mb = h->data;
    if (--mb->open_handles > 0)
        return;
    core_map_iter_t it = 0;
    void *v;
    while (core_map_next(mb->channels, &it, NULL, &v))
        chan_free(v);
    core_map_free(mb->channels);
    coord_free(mb);
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
        answers_drain(mb);
    uv_close((uv_handle_t *)&mb->sweep, handle_closed);
    uv_close((uv_handle_t *)&mb->answers, handle_closed);
}

/* One node is the whole cluster: the registry is the caller itself. */
static int mem_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                         uint32_t ttl_ms, clu_nodes_cb cb, void *ud) {
    if (!cb)
        return 0;
    answer_t *a = answer_new(ANS_NODES, (void *)cb, ud);
    if (ttl_ms) {
        a->n = 1;
        a->node = (clu_node_t){(const char *)answer_copy(a, node_id, strlen(node_id)),
                               (const char *)answer_copy(a, info, len), len};
    }
    answer_queue((mem_broker_t *)b, a);
    return 0;
}

/* ---- semaphores, counters and deadlines of one node ---- */

static void sem_expire(mem_broker_t *mb, msem_t *s) {
    uint64_t now = uv_now(mb->loop);
    for (uint32_t i = 0; i < s->n;) {
        if (s->until[i] <= now) {
            free(s->leases[i]);
            s->leases[i] = s->leases[--s->n];
            s->until[i] = s->until[s->n];
        } else
            i++;
    }
}

static int sem_find(const msem_t *s, const char *lease) {
    for (uint32_t i = 0; i < s->n; i++)
        if (strcmp(s->leases[i], lease) == 0)
            return (int)i;
    return -1;
}

static msem_t *sem_get(mem_broker_t *mb, const char *key) {
    msem_t *s = core_map_get(mb->sems, key);
    if (!s) {
        s = core_calloc(1, sizeof *s);
        core_map_put(mb->sems, key, s);
    }
    sem_expire(mb, s);
    return s;
}

static void queue_sem(mem_broker_t *mb, clu_sem_cb cb, void *ud, bool granted) {
    answer_t *a = answer_new(ANS_SEM, (void *)cb, ud);
    a->flag = granted;
    answer_queue(mb, a);
}

static int mem_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits,
                           size_t n, const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    bool granted = true;
    for (size_t i = 0; i < n && granted; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        if (sem_find(s, lease) < 0 && s->n >= limits[i])
            granted = false;
    }
    uint64_t until = uv_now(mb->loop) + ttl_ms;
    for (size_t i = 0; i < n && granted; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        int at = sem_find(s, lease);
        if (at >= 0) {
            s->until[at] = until;
            continue;
        }
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 8;
            s->leases = core_realloc(s->leases, s->cap * sizeof *s->leases);
            s->until = core_realloc(s->until, s->cap * sizeof *s->until);
        }
        s->leases[s->n] = core_strdup(lease);
        s->until[s->n++] = until;
    }
    queue_sem(mb, cb, ud, granted);
    return 0;
}

static int mem_sem_renew(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                         uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    bool held = true;
    uint64_t until = uv_now(mb->loop) + ttl_ms;
    for (size_t i = 0; i < n; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        int at = sem_find(s, lease);
        if (at < 0)
            held = false;
        else
            s->until[at] = until;
    }
    if (cb)
        queue_sem(mb, cb, ud, held);
    return 0;
}

static int mem_sem_release(clu_broker_t *b, const char *const *keys, size_t n, const char *lease) {
    mem_broker_t *mb = (mem_broker_t *)b;
    for (size_t i = 0; i < n; i++) {
        msem_t *s = sem_get(mb, keys[i]);
        int at = sem_find(s, lease);
        if (at >= 0) {
            free(s->leases[at]);
            s->leases[at] = s->leases[--s->n];
            s->until[at] = s->until[s->n];
        }
    }
    return 0;
}

static int mem_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                           int64_t expire_at_s, clu_counter_cb cb, void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    mcounter_t *c = core_map_get(mb->counters, key);
    if (c && c->expire_at_s <= core_wall_s()) {
        free(core_map_del(mb->counters, key));
        c = NULL;
    }
    if (!c) {
        c = core_calloc(1, sizeof *c);
        core_map_put(mb->counters, key, c);
    }
    bool allowed = !(amount > 0 && limit > 0 && c->value + amount > limit);
    if (allowed) {
        c->value += amount;
        if (c->value < 0)
            c->value = 0;
        c->expire_at_s = expire_at_s;
    }
    answer_t *a = answer_new(ANS_COUNTER, (void *)cb, ud);
    a->flag = allowed;
    a->value = c->value;
    if (cb)
        answer_queue(mb, a);
    else
        free(a);
    return 0;
}

static int mem_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms) {
    mem_broker_t *mb = (mem_broker_t *)b;
    int64_t *d = core_map_get(mb->deadlines, key);
    if (!d) {
        d = core_calloc(1, sizeof *d);
        core_map_put(mb->deadlines, key, d);
    }
    if (until_ms > *d)
        *d = until_ms;
    return 0;
}

static int mem_deadline_get(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                            void *ud) {
    mem_broker_t *mb = (mem_broker_t *)b;
    answer_t *a = answer_new(ANS_DEADLINES, (void *)cb, ud);
    a->n = n;
    a->values = core_calloc(n ? n : 1, sizeof *a->values);
    int64_t now = core_wall_ms();
    for (size_t i = 0; i < n; i++) {
        int64_t *d = core_map_get(mb->deadlines, keys[i]);
        a->values[i] = d && *d > now ? *d : 0;
    }
    answer_queue(mb, a);
    return 0;
}

/* Forgets expired daily counters and semaphores nobody holds, so a long-lived node does not
 * keep one entry per user and day forever. */
static void coord_sweep(mem_broker_t *mb) {
    int64_t wall = core_wall_s();
    core_map_iter_t it = 0;
    const char *key;
    void *v;
    while (core_map_next(mb->counters, &it, &key, &v))
        if (((mcounter_t *)v)->expire_at_s <= wall)
            free(core_map_del(mb->counters, key));
    it = 0;
    while (core_map_next(mb->sems, &it, &key, &v)) {
        msem_t *s = v;
        sem_expire(mb, s);
        if (s->n == 0) {
            core_map_del(mb->sems, key);
            free(s->leases);
            free(s->until);
            free(s);
        }
    }
    int64_t wall_ms = core_wall_ms();
    it = 0;
    while (core_map_next(mb->deadlines, &it, &key, &v))
        if (*(int64_t *)v <= wall_ms)
            free(core_map_del(mb->deadlines, key));
}

static void coord_free(mem_broker_t *mb) {
    core_map_iter_t it = 0;
    void *v;
    while (core_map_next(mb->sems, &it, NULL, &v)) {
        msem_t *s = v;
        for (uint32_t i = 0; i < s->n; i++)
            free(s->leases[i]);
        free(s->leases);
        free(s->until);
        free(s);
    }
    core_map_free(mb->sems);
    it = 0;
    while (core_map_next(mb->counters, &it, NULL, &v))
        free(v);
    core_map_free(mb->counters);
    it = 0;
    while (core_map_next(mb->deadlines, &it, NULL, &v))
        free(v);
    core_map_free(mb->deadlines);
}

static const clu_ops_t mem_ops = {
    .publish = mem_publish,
    .subscribe = mem_subscribe,
    .unsubscribe = mem_unsubscribe,
    .history = mem_history,
    .join = mem_join,
    .leave = mem_leave,
    .presence_add = mem_presence_add,
    .presence_remove = mem_presence_remove,
    .presence = mem_presence,
    .presence_stats = mem_presence_stats,
    .heartbeat = mem_heartbeat,
    .rate_take = NULL,
    .sem_acquire = mem_sem_acquire,
    .sem_renew = mem_sem_renew,
    .sem_release = mem_sem_release,
    .counter_add = mem_counter_add,
    .deadline_raise = mem_deadline_raise,
    .deadline_get = mem_deadline_get,
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
    mb->channels = core_map_new();
    mb->sems = core_map_new();
    mb->counters = core_map_new();
    mb->deadlines = core_map_new();
    core_list_init(&mb->lru);
    mb->max_history_limit = max_history_limit ? max_history_limit : 1000;
    uv_timer_init(loop, &mb->sweep);
    mb->sweep.data = mb;
    uv_timer_start(&mb->sweep, sweep_cb, 10000, 10000);
    uv_unref((uv_handle_t *)&mb->sweep);
    uv_idle_init(loop, &mb->answers);
    mb->answers.data = mb;
    mb->open_handles = 2;
    return &mb->base;
}

void clu_memory_set_max_bytes(clu_broker_t *b, size_t max_bytes) {
    ((mem_broker_t *)b)->max_bytes = max_bytes;
}

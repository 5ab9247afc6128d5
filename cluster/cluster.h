/* cluster: the broker interface and its implementations. The broker stores and routes
 * publications, history, presence and join/leave events of channels. Everything above it
 * (chat/, server/) is written against this interface only, so the one-node in-memory broker and
 * the Redis broker are interchangeable.
 *
 * Callbacks: an operation that returns 0 completes exactly once through its callback, and never
 * before the operation function returned: answers run from the loop (the in-memory broker
 * queues its answers; the Redis broker queues failures detected before anything was sent). A
 * caller therefore never needs to count pending work before starting it. An operation that
 * returns a negative code (the broker is closing) does not call back. Answers still pending when
 * the broker closes run during clu_close, before its done callback. Data passed to callbacks is
 * borrowed for the duration of the callback.
 *
 * Events (clu_events_t) are not answers: the in-memory broker delivers on_pub, on_join and
 * on_leave during the call that caused them (publish, join, leave). */
#ifndef CLUSTER_CLUSTER_H
#define CLUSTER_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/core.h"

#define CLU_EPOCH_MAX 16

/* One publication as the broker stores and delivers it. data and info are JSON texts. */
typedef struct {
    uint64_t offset;  /* position in the channel's history; 0 when not stored */
    const char *data; /* JSON value, the application payload */
    size_t data_len;
    const char *info; /* JSON object {"user","client",...} of the publisher, or NULL */
    size_t info_len;
    const char *plan; /* the publisher's plan, kept with durable history (retention); or NULL */
} clu_pub_t;

/* Per-channel options that come from the channel's namespace. */
typedef struct {
    uint32_t history_size;   /* publications kept; 0 = not stored (no offset) */
    uint32_t history_ttl_s;  /* whole stream expires this long after its last publication */
    uint32_t presence_ttl_s; /* presence entries expire unless refreshed (cluster brokers) */
    bool join_leave;         /* an expired presence entry is announced as a leave */
} clu_chan_opts_t;

/* Events the broker delivers to the node for channels the node subscribed to. */
typedef struct {
    /* A publication. epoch is the channel's current epoch (NUL-terminated). */
    void (*on_pub)(void *ud, const char *channel, const clu_pub_t *pub, const char *epoch);
    /* Join or leave of a subscriber anywhere; info is the ClientInfo JSON object. */
    void (*on_join)(void *ud, const char *channel, const char *info, size_t len);
    void (*on_leave)(void *ud, const char *channel, const char *info, size_t len);
    /* The node's feed of channel was (re)established, e.g. after its pub/sub connection came
     * back: publications may have been missed meanwhile, and the node checks the history.
     * Brokers do not judge loss themselves: the node sees it from offsets and epochs. */
    void (*on_resync)(void *ud, const char *channel);
} clu_events_t;

typedef void (*clu_publish_cb)(int status, uint64_t offset, const char *epoch, void *ud);

typedef struct {
    bool has_since; /* position given: return publications after (or before) it */
    uint64_t since_offset;
    const char *since_epoch; /* checked when has_since; mismatch = CORE_EUNRECOVERABLE */
    int32_t limit;           /* 0 = none, only the position; < 0 = up to the broker's cap */
    bool reverse;            /* newest first */
} clu_history_req_t;

/* History answer: pubs in the requested order, the channel's top offset and epoch. When the
 * request had a position that is no longer contiguous with what is kept (trimmed or expired),
 * status is CORE_EUNRECOVERABLE and pubs is empty. */
typedef void (*clu_history_cb)(int status, const clu_pub_t *pubs, size_t n, uint64_t top,
                               const char *epoch, void *ud);

typedef struct {
    const char *client; /* client id */
    const char *user;
    const char *info; /* ClientInfo JSON object */
    size_t info_len;
} clu_presence_t;

typedef void (*clu_presence_cb)(int status, const clu_presence_t *entries, size_t n, void *ud);
typedef void (*clu_presence_stats_cb)(int status, uint32_t num_clients, uint32_t num_users,
                                      void *ud);
typedef void (*clu_status_cb)(int status, void *ud);

/* One live node of the registry: its id and the JSON object it last announced. The strings are
 * borrowed for the duration of the callback. */
typedef struct {
    const char *id;
    const char *info;
    size_t info_len;
} clu_node_t;

typedef void (*clu_nodes_cb)(int status, const clu_node_t *nodes, size_t n, void *ud);

/* Answer of a rate-limit take: wait_ms 0 = allowed (one token taken), else the milliseconds
 * until one would be. */
typedef void (*clu_rate_cb)(int status, int64_t wait_ms, void *ud);

/* Answer of a semaphore call: granted true = the lease holds a slot in every semaphore asked
 * (acquire) or still holds them (renew). */
typedef void (*clu_sem_cb)(int status, bool granted, void *ud);
/* Answer of a counter add: allowed false = the limit would have been passed (nothing added);
 * value is the counter after the call. */
typedef void (*clu_counter_cb)(int status, bool allowed, int64_t value, void *ud);
/* Values of shared deadlines, Unix milliseconds; 0 = none or passed. */
typedef void (*clu_deadlines_cb)(int status, const int64_t *values, size_t n, void *ud);

/* Counters every broker keeps, read by the admin module. */
typedef struct {
    uint64_t publishes;          /* accepted publish calls */
    uint64_t publish_errors;     /* publish calls that failed */
    uint64_t delivered;          /* publications handed to on_pub */
    uint64_t undecodable;        /* inter-node envelopes dropped */
    uint64_t channels;           /* channels with state in the broker (gauge) */
    uint64_t node_subscriptions; /* channels the node subscribed to (gauge) */
    uint64_t evicted;            /* channel histories dropped to stay under a memory cap */
    uint64_t timeouts;           /* backing-store connections dropped for not answering */
    /* Round trips of backing-store commands by operation, owned by the broker (valid until its
     * next call); none (0) for a broker without one. */
    const core_hist_t *latency;
    const char *const *latency_ops;
    size_t nlatency;
} clu_stats_t;

/* One entry of the persist stream (cluster brokers with persistence on): a stored publication
 * on its way to the database. Strings are borrowed for the duration of the callback. */
typedef struct {
    const char *id; /* the stream entry's id, for clu_persist_ack */
    const char *channel;
    const char *epoch;
    uint64_t offset;
    const char *data;
    size_t data_len;
    const char *info; /* NULL when the publication had none */
    size_t info_len;
    const char *plan; /* NULL when the publication had none */
    int64_t time_ms;  /* when it was appended (the stream id's time) */
} clu_persist_entry_t;

typedef void (*clu_persist_cb)(int status, const clu_persist_entry_t *entries, size_t n, void *ud);
/* The persist stream's length and the age of its oldest entry in ms (0 when empty). */
typedef void (*clu_persist_info_cb)(int status, uint64_t length, int64_t oldest_age_ms, void *ud);

typedef struct clu_broker clu_broker_t;

/* The implementation table. Implementations fill one and embed `clu_broker_t` first. */
typedef struct {
    int (*publish)(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                   const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud);
    int (*subscribe)(clu_broker_t *b, const char *channel);
    int (*unsubscribe)(clu_broker_t *b, const char *channel);
    int (*history)(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                   const clu_history_req_t *req, clu_history_cb cb, void *ud);
    /* Drops a channel's stored publications and keeps its position (offset, epoch), as
     * Centrifugo's history_remove: readers behind it then learn that history is gone
     * (recovered:false). The callback gets (0, top, epoch). */
    int (*history_remove)(clu_broker_t *b, const char *channel, clu_publish_cb cb, void *ud);
    int (*join)(clu_broker_t *b, const char *channel, const char *info, size_t len);
    int (*leave)(clu_broker_t *b, const char *channel, const char *info, size_t len);
    int (*presence_add)(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                        const clu_presence_t *entry);
    int (*presence_remove)(clu_broker_t *b, const char *channel, const char *client);
    int (*presence)(clu_broker_t *b, const char *channel, clu_presence_cb cb, void *ud);
    int (*presence_stats)(clu_broker_t *b, const char *channel, clu_presence_stats_cb cb, void *ud);
    /* Announces this node (id, info JSON) for ttl_ms and answers with every live node;
     * ttl_ms 0 takes the node out. */
    int (*heartbeat)(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                     uint32_t ttl_ms, clu_nodes_cb cb, void *ud);
    /* Takes one token of the GCRA limiter `key` shared by every node (interval_us between
     * tokens, burst tokens at most). NULL in brokers of one node: the node limits locally. */
    int (*rate_take)(clu_broker_t *b, const char *key, int64_t interval_us, int64_t burst,
                     clu_rate_cb cb, void *ud);
    /* Lease semaphores, allowance counters and shared deadlines: see clu_sem_acquire,
     * clu_counter_add and clu_deadline_raise below. */
    int (*sem_acquire)(clu_broker_t *b, const char *const *keys, const uint32_t *limits, size_t n,
                       const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud);
    int (*sem_renew)(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                     uint32_t ttl_ms, clu_sem_cb cb, void *ud);
    int (*sem_release)(clu_broker_t *b, const char *const *keys, size_t n, const char *lease);
    int (*counter_add)(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                       int64_t expire_at_s, clu_counter_cb cb, void *ud);
    int (*deadline_raise)(clu_broker_t *b, const char *key, int64_t until_ms);
    int (*deadline_clear)(clu_broker_t *b, const char *key);
    int (*deadline_get)(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                        void *ud);
    /* The persist stream, consumed by every node as one group (NULL in brokers without one):
     * new entries for this consumer, or with claim_idle_ms > 0 the entries any consumer has
     * held unacknowledged that long (a dead node's), now this consumer's. */
    int (*persist_read)(clu_broker_t *b, const char *consumer, uint32_t count,
                        uint32_t claim_idle_ms, clu_persist_cb cb, void *ud);
    /* Entries stored for good: acknowledged and removed from the stream. Fire and forget. */
    int (*persist_ack)(clu_broker_t *b, const char *const *ids, size_t n);
    int (*persist_info)(clu_broker_t *b, clu_persist_info_cb cb, void *ud);
    bool (*ready)(clu_broker_t *b);
    void (*stats)(clu_broker_t *b, clu_stats_t *out);
    void (*close)(clu_broker_t *b, void (*done)(void *ud), void *ud);
} clu_ops_t;

struct clu_broker {
    const clu_ops_t *ops;
    const char *name; /* "memory", "redis" */
    clu_events_t events;
    void *events_ud;
};

/* Publishes into channel. With opts->history_size > 0 the publication gets the next offset and
 * is kept in history; the callback gets (0, offset, epoch). Temporary failures: CORE_EAGAIN.
 * A broker acknowledges a publication only when the node's own subscribers of the channel get
 * it through on_pub: while the node's feed of a channel it subscribed to is not live (the Redis
 * broker's pub/sub connection down, or its re-subscription after a reconnect not confirmed
 * yet), publishing into that channel fails with CORE_EAGAIN. */
static inline int clu_publish(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                              const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud) {
    return b->ops->publish(b, channel, pub, opts, cb, ud);
}
/* The node starts (stops) receiving events of channel. Calls are not counted: the caller
 * subscribes once when its first local subscriber arrives and unsubscribes after the last. */
static inline int clu_subscribe(clu_broker_t *b, const char *channel) {
    return b->ops->subscribe(b, channel);
}
static inline int clu_unsubscribe(clu_broker_t *b, const char *channel) {
    return b->ops->unsubscribe(b, channel);
}
static inline int clu_history(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                              const clu_history_req_t *req, clu_history_cb cb, void *ud) {
    return b->ops->history(b, channel, opts, req, cb, ud);
}
static inline int clu_history_remove(clu_broker_t *b, const char *channel, clu_publish_cb cb,
                                     void *ud) {
    return b->ops->history_remove(b, channel, cb, ud);
}
static inline int clu_join(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return b->ops->join(b, channel, info, len);
}
static inline int clu_leave(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return b->ops->leave(b, channel, info, len);
}
static inline int clu_presence_add(clu_broker_t *b, const char *channel,
                                   const clu_chan_opts_t *opts, const clu_presence_t *e) {
    return b->ops->presence_add(b, channel, opts, e);
}
static inline int clu_presence_remove(clu_broker_t *b, const char *channel, const char *client) {
    return b->ops->presence_remove(b, channel, client);
}
static inline int clu_presence(clu_broker_t *b, const char *channel, clu_presence_cb cb, void *ud) {
    return b->ops->presence(b, channel, cb, ud);
}
static inline int clu_presence_stats(clu_broker_t *b, const char *channel, clu_presence_stats_cb cb,
                                     void *ud) {
    return b->ops->presence_stats(b, channel, cb, ud);
}
static inline int clu_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                                uint32_t ttl_ms, clu_nodes_cb cb, void *ud) {
    return b->ops->heartbeat(b, node_id, info, len, ttl_ms, cb, ud);
}
/* True when limits taken through clu_rate_take hold across the nodes of the broker. */
static inline bool clu_has_shared_limits(clu_broker_t *b) {
    return b->ops->rate_take != NULL;
}
/* Fails with CORE_EAGAIN (through cb) while the shared store is unreachable: the caller then
 * limits locally. */
static inline int clu_rate_take(clu_broker_t *b, const char *key, int64_t interval_us,
                                int64_t burst, clu_rate_cb cb, void *ud) {
    return b->ops->rate_take(b, key, interval_us, burst, cb, ud);
}
/* Takes one slot of each semaphore keys[i] (at most limits[i] holders) for lease, all or none,
 * for ttl_ms unless renewed; an expired lease frees its slot by itself, so a killed node's
 * slots come back within the TTL. Holders are counted on the store's clock. Fails with
 * CORE_EAGAIN while the shared store is unreachable. */
static inline int clu_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits,
                                  size_t n, const char *lease, uint32_t ttl_ms, clu_sem_cb cb,
                                  void *ud) {
    return b->ops->sem_acquire(b, keys, limits, n, lease, ttl_ms, cb, ud);
}
/* Extends lease in every key by ttl_ms; granted false when it had expired (its slots may be
 * someone else's now). */
static inline int clu_sem_renew(clu_broker_t *b, const char *const *keys, size_t n,
                                const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    return b->ops->sem_renew(b, keys, n, lease, ttl_ms, cb, ud);
}
/* Gives the lease's slots back; idempotent, fire and forget. */
static inline int clu_sem_release(clu_broker_t *b, const char *const *keys, size_t n,
                                  const char *lease) {
    return b->ops->sem_release(b, keys, n, lease);
}
/* Adds amount to the counter key unless the result would exceed limit (limit <= 0: unchecked;
 * a negative amount, a refund, is never refused and never takes the counter below 0). The key
 * expires at expire_at_s (Unix seconds): daily allowances reset by expiring. */
static inline int clu_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                                  int64_t expire_at_s, clu_counter_cb cb, void *ud) {
    return b->ops->counter_add(b, key, amount, limit, expire_at_s, cb, ud);
}
/* Raises the shared deadline key to at least until_ms (Unix ms); it expires then. Fire and
 * forget: nodes read it with clu_deadline_get. */
static inline int clu_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms) {
    return b->ops->deadline_raise(b, key, until_ms);
}
/* Removes the shared deadline key (an operator's decision to end it early). Fire and forget. */
static inline int clu_deadline_clear(clu_broker_t *b, const char *key) {
    return b->ops->deadline_clear(b, key);
}
static inline int clu_deadline_get(clu_broker_t *b, const char *const *keys, size_t n,
                                   clu_deadlines_cb cb, void *ud) {
    return b->ops->deadline_get(b, keys, n, cb, ud);
}
/* True when the broker can serve (its backing store is reachable). */
static inline bool clu_ready(clu_broker_t *b) {
    return b->ops->ready(b);
}
static inline void clu_stats(clu_broker_t *b, clu_stats_t *out) {
    b->ops->stats(b, out);
}
/* Releases the broker; done runs once every handle is closed (it may run synchronously). */
static inline void clu_close(clu_broker_t *b, void (*done)(void *ud), void *ud) {
    b->ops->close(b, done, ud);
}

/* The one-node broker: history, presence and routing in this process's memory.
 * max_history_limit caps how many publications one history call returns. */
clu_broker_t *clu_memory_new(uv_loop_t *loop, const clu_events_t *events, void *ud,
                             uint32_t max_history_limit);
/* Caps the bytes of stored publications of a memory broker (0 = no cap). Over the cap, whole
 * channel histories are dropped, least recently published first; each dropped channel gets a new
 * epoch. The channel being published to is never dropped by its own publication. */
void clu_memory_set_max_bytes(clu_broker_t *b, size_t max_bytes);
/* With a database behind it: a channel's position (epoch, newest offset) is kept when its
 * stream expires or is evicted, and when the channel is otherwise forgotten, so offsets go on
 * in the same epoch and the database's older rows stay reachable. */
void clu_memory_keep_positions(clu_broker_t *b);
/* Sets a channel's position (from the database at start); keeps positions from then on. */
void clu_memory_set_position(clu_broker_t *b, const char *channel, const char *epoch, uint64_t top);

/* The cluster broker: history, presence and routing in Redis (redis_url "redis://A.B.C.D[:port]
 * [/db]", numeric IPv4 only), shared by every node on the same Redis. Connects at once and
 * keeps reconnecting with jittered backoff; ready() is true while both connections (commands,
 * pub/sub) are up and every channel is subscribed again after a reconnect, and operations fail
 * with CORE_EAGAIN (through their callback) while the command connection is not (publishes into
 * a subscribed channel also while its feed is not live, see clu_publish). node_id names
 * this node in logs. max_history_limit caps how many publications one history call returns
 * (0: 1000). Returns NULL for a bad URL. Callbacks run later from the loop, failures detected
 * before anything was sent (Redis down) included. */
clu_broker_t *clu_redis_new(uv_loop_t *loop, const clu_events_t *events, void *ud,
                            const char *redis_url, const char *node_id, uint32_t max_history_limit);
/* Turns on the persist stream of a Redis broker: every stored publication is also appended to
 * it by the publish script, which refuses publishes (CORE_EAGAIN) while the stream holds
 * max_backlog entries; channel positions no longer expire (the database keeps the history
 * behind them). */
void clu_redis_set_persist(clu_broker_t *b, uint32_t max_backlog);

#endif
